"""Replies that bend the protocol: a byte order mark, choices out of order or unnumbered, a
Gemini array body, a body that arrives slowly, JSON that would cost far more than its size.

Every server is a real loopback socket sending exactly the bytes a test gives."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

import pytest
from conftest import play, raw_response

ONE_TURN = "id: t\nturns: [hello]\n"
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
ONCE = {"max_wait_s": 0.01, "max_retries": 0}
BOM = b"\xef\xbb\xbf"


def answer(body: bytes, **headers: str) -> Any:
    return lambda request: raw_response(body, headers=headers or None)


def reply_of(played) -> str:
    assert played.result.exit_code == 0, played.result.output
    (record,) = played.transcripts
    return record["turns"][0]["assistant"]


def error_of(played) -> dict[str, Any]:
    (record,) = played.transcripts
    assert record["status"] == "failed", record
    return record["error"]


def sse(*events: dict[str, Any] | str) -> bytes:
    return "".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events
    ).encode()


def chat_chunks(*choices: list[dict[str, Any]]) -> bytes:
    """A Chat stream: one chunk per list of choices, then finish, usage and [DONE]."""
    chunks = [{"id": "c", "choices": c} for c in choices]
    end = {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return sse(*chunks, end, {"id": "c", "choices": [], "usage": USAGE}, "[DONE]")


# ---------------------------------------------------------------- a byte order mark


def test_a_bom_before_a_stream_keeps_its_first_event(tmp_path, raw_server):
    body = BOM + chat_chunks(
        [{"index": 0, "delta": {"content": "Hello "}}],
        [{"index": 0, "delta": {"content": "world"}}],
    )
    server = raw_server(answer(body, **{"Content-Type": "text/event-stream"}))
    played = play(tmp_path, ONE_TURN, "--stream", server=server, models=ONCE)
    assert reply_of(played) == "Hello world"


@pytest.mark.parametrize("target", ["chat", "gemini"])
def test_a_bom_before_a_json_body_is_not_malformed(tmp_path, raw_server, target):
    if target == "chat":
        body = {
            "id": "c",
            "choices": [{"index": 0, "message": {"content": "fine"}, "finish_reason": "stop"}],
        }
    else:
        body = {"candidates": [{"content": {"parts": [{"text": "fine"}]}, "finishReason": "STOP"}]}
    server = raw_server(answer(BOM + json.dumps(body).encode()))
    played = play(tmp_path, ONE_TURN, "--no-stream", server=server, targets=(target,), models=ONCE)
    assert reply_of(played) == "fine"


# ---------------------------------------------------------------- which choice is the reply


def test_a_stream_of_two_unnumbered_choices_takes_the_first_only(tmp_path, raw_server):
    body = chat_chunks([{"delta": {"content": "A"}}, {"delta": {"content": "B"}}])
    server = raw_server(answer(body, **{"Content-Type": "text/event-stream"}))
    played = play(tmp_path, ONE_TURN, "--stream", server=server, models=ONCE)
    assert reply_of(played) == "A"


def test_a_whole_reply_takes_the_choice_of_index_0_wherever_it_is(tmp_path, raw_server):
    choices = [
        {"index": 1, "message": {"content": "second"}, "finish_reason": "stop"},
        {"index": 0, "message": {"content": "first"}, "finish_reason": "stop"},
    ]
    server = raw_server(answer(json.dumps({"id": "c", "choices": choices}).encode()))
    played = play(tmp_path, ONE_TURN, "--no-stream", server=server, models=ONCE)
    assert reply_of(played) == "first"
    only_second = raw_server(answer(json.dumps({"id": "c", "choices": choices[:1]}).encode()))
    played = play(tmp_path, ONE_TURN, "--no-stream", server=only_second, models=ONCE)
    error = error_of(played)
    assert error["kind"] == "malformed" and "index 0" in error["message"]


def test_a_gemini_array_body_is_read_as_its_chunks(tmp_path, raw_server):
    chunks = [
        {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]},
        {
            "candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 2,
                "candidatesTokenCount": 1,
                "totalTokenCount": 3,
            },
        },
    ]
    server = raw_server(answer(json.dumps(chunks).encode()))
    played = play(
        tmp_path, ONE_TURN, "--no-stream", server=server, targets=("gemini",), models=ONCE
    )
    assert reply_of(played) == "Hello"
    assert played.transcripts[0]["usage"]["total_tokens"] == 3
    empty = raw_server(answer(b"[]"))
    played = play(tmp_path, ONE_TURN, "--no-stream", server=empty, targets=("gemini",), models=ONCE)
    assert error_of(played)["kind"] == "malformed"


# ---------------------------------------------------------------- a body that keeps arriving


class Trickle:
    """A loopback server sending its answer's head at once, then its body (of a declared
    length) a piece at a time, GAP seconds apart: it takes longer in all than the idle
    timeout, never idle that long."""

    GAP = 0.5

    def __init__(self, head: bytes, body: bytes, pieces: int):
        self.head, self.body, self.pieces = head, body, pieces
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the client may hang up (without the fix)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                conn.sendall(self.head)
                step = -(-len(self.body) // self.pieces)
                for start in range(0, len(self.body), step):
                    time.sleep(self.GAP)
                    conn.sendall(self.body[start : start + step])


def test_the_idle_timeout_is_between_bytes_not_a_deadline_for_a_body_of_known_length(tmp_path):
    body = json.dumps({"id": "c", "choices": [{"index": 0, "message": {"content": "slow, fine"}}]})
    whole = raw_response(body)
    head = whole[: len(whole) - len(body)]
    assert head.endswith(b"\r\n\r\n") and b"Content-Length" in head
    trickle = Trickle(head, whole[len(head) :], pieces=5)  # the body over 2.5 s
    try:
        models = {**ONCE, "idle_timeout_s": 2}
        played = play(tmp_path, ONE_TURN, "--no-stream", server=trickle, models=models)
        assert reply_of(played) == "slow, fine"
    finally:
        trickle.sock.close()


# ---------------------------------------------------------------- what a body may cost


def test_a_body_of_countless_empty_objects_is_refused_before_it_is_parsed(tmp_path, raw_server):
    # 300,000 `{}` (900 kB) would cost about 20 MB parsed; 28 MB of them cost about 900 MB
    reply = b'{"id":"c","choices":[{"index":0,"message":{"content":"hi"}}],"pad":['
    server = raw_server(answer(reply + b"{}," * 300_000 + b"{}]}"))
    played = play(tmp_path, ONE_TURN, "--no-stream", server=server, models=ONCE)
    error = error_of(played)
    assert error["kind"] == "malformed" and "JSON values" in error["message"]


def test_a_long_reply_full_of_commas_is_not_refused(tmp_path, raw_server):
    text = "a, {b}, [c]" * 100_000  # 300,000 commas and brackets, all inside the reply's text
    body = {"id": "c", "choices": [{"index": 0, "message": {"content": text}}], "usage": USAGE}
    server = raw_server(answer(json.dumps(body).encode()))
    played = play(tmp_path, ONE_TURN, "--no-stream", server=server, models=ONCE)
    assert reply_of(played) == text
