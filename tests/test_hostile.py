"""Hostile servers: bad text, wrong shapes, bad hints, huge or stalled bodies, redirects.

Every server here is a real loopback socket answering with exactly the bytes a test gives
(conftest's raw_server), so what the runner sees is what a hostile server can send.
"""

from __future__ import annotations

import gzip
import itertools
import json
from typing import Any

import pytest
from conftest import KEY, STALL, RawRequest, play, raw_response

ONE_TURN = "id: t\nturns: [hello]\n"
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
FAST = {"max_wait_s": 0.01}


def strict_json(text: str) -> Any:
    """Parse as a strict reader does: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def strict_records(path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, read as strict UTF-8 JSON (one bad line fails the test)."""
    return [strict_json(line) for line in path.read_bytes().decode("utf-8").splitlines()]


def chat(content: Any = "fine", usage: Any = None, raw: str | None = None) -> bytes:
    """A Chat Completions answer; `raw` replaces the JSON text of the message content."""
    body = {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "@"}}],
        "usage": USAGE if usage is None else usage,
    }
    body["choices"][0]["finish_reason"] = "stop"
    text = json.dumps(body).replace('"@"', raw if raw is not None else json.dumps(content))
    return raw_response(text)


def chat_stream(raw_text: str) -> bytes:
    """A streamed Chat answer whose one delta's content is the JSON text raw_text."""
    events = [
        '{"id":"c1","choices":[{"index":0,"delta":{"content":' + raw_text + "}}]}",
        '{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        '{"id":"c1","choices":[],"usage":' + json.dumps(USAGE) + "}",
        "[DONE]",
    ]
    body = "".join(f"data: {e}\n\n" for e in events)
    return raw_response(body, headers={"Content-Type": "text/event-stream"})


def answers(*pieces: Any):
    """A responder giving the n-th request the n-th answer (the last one from then on)."""
    count = itertools.count()

    def respond(request: RawRequest) -> Any:
        return pieces[min(next(count), len(pieces) - 1)]

    return respond


def chunked(body: bytes) -> bytes:
    """An answer of unknown length (chunked), so only reading it shows how large it is."""
    data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return raw_response(data, headers={"Transfer-Encoding": "chunked"})


def only(played) -> dict[str, Any]:
    (record,) = played.transcripts
    return record


# ---------------------------------------------------------------- 1. text that is not Unicode


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('"hi \\ud83d there"', "hi \ufffd there"),  # an escaped unpaired surrogate
        ('"hi \udcff there"', None),  # raw bytes of a surrogate (invalid UTF-8)
        ('"\\ud83d\\ude00 ok"', "\U0001f600 ok"),  # a proper pair stays one character
    ],
)
def test_invalid_unicode_in_a_reply_is_replaced_alike_streamed_or_not(
    tmp_path, raw_server, raw, expected
):
    whole = raw_server(answers(chat(raw=raw)))
    streamed = raw_server(answers(chat_stream(raw)))
    texts = []
    for server, flag in ((whole, "--no-stream"), (streamed, "--stream")):
        played = play(tmp_path, ONE_TURN, flag, server=server, models=FAST)
        assert played.result.exit_code == 0, played.result.output
        (record,) = strict_records(played.run_dir / "transcripts.jsonl")
        texts.append(record["turns"][0]["assistant"])
        assert played.manifest["status"] == "finished"
    assert texts[0] == texts[1]  # one rule on both paths
    assert "\ufffd" in texts[0] or texts[0] == expected
    if expected is not None:
        assert texts[0] == expected


def test_invalid_unicode_in_an_error_message_fails_only_that_conversation(tmp_path, raw_server):
    bad = raw_response('{"error": {"message": "no \\ud800 way"}}', "400 Bad Request")
    server = raw_server(lambda r: bad if b"first" in r.body else chat())
    text = "id: t\nturns: ['{{w}}']\nvars: {w: [first, second, third]}\n"
    played = play(tmp_path, text, server=server, models=FAST)
    assert played.result.exit_code == 3, played.result.output
    records = strict_records(played.run_dir / "transcripts.jsonl")
    assert sorted(r["status"] for r in records) == ["failed", "ok", "ok"]
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["error"]["message"] == "no \ufffd way"
    assert played.manifest["status"] == "finished"
    assert len(strict_records(played.run_dir / "usage.jsonl")) == 3


# ---------------------------------------------------------------- 8. records that are not JSON


def test_non_finite_numbers_from_a_server_are_written_as_null(tmp_path, raw_server):
    raw_usage = '{"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": NaN}'
    body = json.dumps({"id": "c", "choices": [{"message": {"content": "ok"}}], "usage": "@"})
    server = raw_server(answers(raw_response(body.replace('"@"', raw_usage))))
    played = play(tmp_path, ONE_TURN, server=server, models=FAST)
    assert played.result.exit_code == 0, played.result.output
    (record,) = strict_records(played.run_dir / "transcripts.jsonl")
    assert record["turns"][0]["raw_usage"]["cost"] is None
    assert record["usage"]["total_tokens"] == 5


# ---------------------------------------------------------------- 4. wrong shapes


def responses(content: Any) -> bytes:
    out = [{"type": "message", "content": content}]
    return raw_response(
        json.dumps({"id": "r", "object": "response", "status": "completed", "output": out})
    )


def gemini(parts: Any) -> bytes:
    cand = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}
    return raw_response(json.dumps({"candidates": [cand]}))


@pytest.mark.parametrize(
    "target, answer",
    [
        ("chat", chat({"text": "hi", "annotations": []})),  # content as an object
        ("chat", chat(usage={**USAGE, "prompt_tokens": "3"})),  # a count that is a string
        ("chat", chat(usage={"prompt_tokens": True})),
        ("chat", raw_response('"just a string"')),
        ("responses", responses({"type": "output_text", "text": "hi"})),
        ("responses", responses([{"type": "output_text", "text": ["h", "i"]}])),
        ("gemini", gemini({"text": "hi"})),
        ("gemini", gemini([{"text": {"value": "hi"}}])),
    ],
)
def test_a_body_of_the_wrong_shape_is_malformed_and_retried(tmp_path, raw_server, target, answer):
    server = raw_server(answers(answer))
    played = play(
        tmp_path, ONE_TURN, server=server, targets=(target,), models={**FAST, "max_retries": 2}
    )
    assert played.result.exit_code == 3, played.result.output
    record = only(played)
    assert record["status"] == "failed" and record["error"]["kind"] == "malformed"
    assert record["turns"] == []  # nothing was recorded as a reply
    assert [u["status"] for u in played.usage] == ["malformed"] * 3
    assert len(server.requests) == 3


# ---------------------------------------------------------------- 5. errors escaping classification


@pytest.mark.parametrize(
    "first",
    [
        raw_response(
            json.dumps(
                {
                    "error": {
                        "code": 429,
                        "status": "RESOURCE_EXHAUSTED",
                        "message": "slow down",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": "1.2.3s",
                            }
                        ],
                    }
                }
            ),
            "429 Too Many Requests",
        ),
        raw_response("{}", "503 Busy", {"Retry-After": "Fri, 31 Dec 999999999999 23:59:59 GMT"}),
        raw_response("{}", "503 Busy", {"Retry-After": "nan", "retry-after-ms": "1e999"}),
        raw_response("[" * 200_000 + "]" * 200_000),  # nested too deeply to read
        raw_response("[" * 200_000 + "]" * 200_000, "500 Oops"),  # an error body, the same
    ],
    ids=["retryDelay", "date-overflow", "nan-hint", "deep-json", "deep-json-error"],
)
def test_unreadable_hints_and_bodies_are_retried_and_every_attempt_recorded(
    tmp_path, raw_server, first
):
    ok = gemini([{"text": "fine"}])
    server = raw_server(answers(first, ok))
    played = play(tmp_path, ONE_TURN, server=server, targets=("gemini",), models=FAST)
    assert played.result.exit_code == 0, played.result.output
    assert only(played)["turns"][0]["assistant"] == "fine"
    statuses = [u["status"] for u in played.usage]
    assert len(statuses) == 2 and statuses[1] == 200
    assert statuses[0] in (429, 500, 503, "malformed")


# ---------------------------------------------------------- 6. no bound on what a server sends


SMALL = {**FAST, "max_response_mb": 0.01, "max_retries": 1}  # a 10 kB cap (10.24 kB)


@pytest.mark.parametrize(
    "answer",
    [
        chat("x" * 50_000),  # declared larger than the cap
        chunked(b'{"choices": "' + b"x" * 50_000 + b'"}'),  # no length given: read up to the cap
        raw_response(
            gzip.compress(b" " * 5_000_000 + chat()[-200:]),
            headers={"Content-Encoding": "gzip"},
        ),  # a gzip bomb: 5 MB from a few kB
    ],
    ids=["large", "lying-length", "gzip-bomb"],
)
def test_a_response_larger_than_the_cap_is_malformed(tmp_path, raw_server, answer):
    server = raw_server(answers(answer))
    played = play(tmp_path, ONE_TURN, server=server, models=SMALL)
    assert played.result.exit_code == 3, played.result.output
    error = only(played)["error"]
    assert error["kind"] == "malformed" and "MB cap" in error["message"], error


def test_a_stream_larger_than_the_cap_is_malformed(tmp_path, raw_server):
    event = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"word "}}]}\n\n'
    head = raw_response(b"", headers={"Content-Type": "text/event-stream", "Content-Length": "0"})
    body = event * 400  # short lines, 30 kB in all, and never a finish
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    server = raw_server(answers(head + body))
    played = play(tmp_path, ONE_TURN, "--stream", server=server, models=SMALL)
    error = only(played)["error"]
    assert error["kind"] == "malformed" and "larger than the 0.01 MB cap" in error["message"]


def test_an_sse_line_longer_than_the_cap_is_malformed(tmp_path, raw_server):
    head = raw_response(
        b"", headers={"Content-Type": "text/event-stream", "Content-Length": "999999999"}
    )
    pieces = [head, b'data: {"choices": "' + b"y" * 60_000]  # no newline, ever
    server = raw_server(answers(pieces))
    played = play(
        tmp_path, ONE_TURN, "--stream", server=server, models={**SMALL, "max_response_mb": 1}
    )
    # a 1 MB cap holds this line; a second, 10 kB, cap does not
    assert only(played)["error"]["kind"] in ("stream", "connection")
    small = play(tmp_path, ONE_TURN, "--stream", server=server, models=SMALL)
    error = only(small)["error"]
    assert error["kind"] == "malformed" and "cap" in error["message"], error


# ---------------------------------------------------------------- idle timeout


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_a_body_that_stalls_ends_at_the_idle_timeout_and_is_retried(tmp_path, raw_server, stream):
    stalled = [chat()[:-20], STALL]  # headers and most of the body, then nothing
    if stream == "--stream":
        stalled = [chat_stream('"partial"')[:-40], STALL]
    server = raw_server(answers(stalled, chat_stream('"fine"') if stream == "--stream" else chat()))
    # from the models file, or from the command line (which wins over a long one there)
    models = {**FAST, "idle_timeout_s": 0.2 if stream == "--no-stream" else 3600}
    flags = (stream,) if stream == "--no-stream" else (stream, "--idle-timeout", "0.2")
    played = play(tmp_path, ONE_TURN, *flags, server=server, models=models)
    assert played.result.exit_code == 0, played.result.output
    assert [u["status"] for u in played.usage] == ["timeout", 200]
    assert only(played)["turns"][0]["assistant"] == "fine"


# ---------------------------------------------------------------- 3. keys


def test_redirects_are_not_followed_and_the_key_stays_home(tmp_path, raw_server):
    elsewhere = raw_server(answers(gemini([{"text": "stolen"}])))
    moved = raw_response(
        "", "307 Temporary Redirect", {"Location": elsewhere.base_url + "/v1beta/models/x"}
    )
    server = raw_server(answers(moved))
    played = play(tmp_path, ONE_TURN, server=server, targets=("gemini",), models=FAST)
    assert played.result.exit_code == 3, played.result.output
    assert elsewhere.requests == []  # not followed: the key went nowhere else
    assert server.requests[0].headers["x-goog-api-key"] == KEY
    error = only(played)["error"]
    assert error["status"] == 307 and "redirect" in error["message"]
    assert len(server.requests) == 1  # final: a redirect does not go away by retrying


@pytest.mark.parametrize("echo", ["whole", "cut"])
def test_a_key_in_an_error_message_is_masked_before_the_message_is_cut(tmp_path, raw_server, echo):
    # a plain-text body with the key across the 500-character cut; or cut short by the server
    key = "SEKRIT-" + "M" * 40
    shown = key if echo == "whole" else key[:12]
    text = "x" * 467 + f" Incorrect API key: {shown}"
    if echo == "whole":
        bad = raw_response(text, "401 Unauthorized", {"Content-Type": "text/plain"})
    else:
        bad = raw_response(json.dumps({"error": {"message": text}}), "401 Unauthorized")
    server = raw_server(answers(bad))
    played = play(tmp_path, ONE_TURN, server=server, models=FAST, env={"TEST_API_KEY": key})
    error = only(played)["error"]
    assert error["kind"] == "auth"
    for path in played.run_dir.iterdir():
        assert "SEKRIT" not in path.read_text(encoding="utf-8"), path.name
    assert "SEKRIT" not in played.result.output
