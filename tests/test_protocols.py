"""The four protocols through the runner: exact requests on the wire, same conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from conftest import CHAIN, KEY, play

FULL = CHAIN.replace("CONTEXT", "full")
SERVER = CHAIN.replace("CONTEXT", "server")


def responses_input(request: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["json"]["input"]]


def gemini_contents(request: dict) -> list[tuple[str, str]]:
    return [
        (c["role"], "".join(p["text"] for p in c["parts"])) for c in request["json"]["contents"]
    ]


def blocks_text(content: str | list) -> str:
    """Anthropic content: a string, or text blocks."""
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def sent_history(request: dict) -> list[tuple[str, str]]:
    """What a recorded request sent, in any of the four protocols: (role, text), system first."""
    body, path = request["json"], request["path"]
    if path == "/v1/chat/completions":
        return [(m["role"], m["content"]) for m in body["messages"]]
    if path == "/v1/responses":
        return [("system", body["instructions"])] + responses_input(request)
    if path == "/v1/messages":
        system = [("system", blocks_text(body["system"]))] if "system" in body else []
        return system + [(m["role"], blocks_text(m["content"])) for m in body["messages"]]
    head = [("system", body["systemInstruction"]["parts"][0]["text"])]
    return head + [("assistant" if r == "model" else r, t) for r, t in gemini_contents(request)]


PROTOCOLS = ["chat", "responses", "gemini", "anthropic"]
STREAMS = ["--stream", "--no-stream"]


@pytest.mark.parametrize("stream", [False, True])
def test_same_conversation_in_all_four_protocols(tmp_path, mock_server, stream):
    flag = "--stream" if stream else "--no-stream"
    records = {}
    for target in PROTOCOLS:
        played = play(tmp_path, FULL, flag, server=mock_server, targets=(target,))
        assert played.result.exit_code == 0, played.result.output
        records[target] = played.transcripts[0]
    chat, resp, gem, claude = records.values()
    assert chat["messages"] == resp["messages"] == gem["messages"] == claude["messages"]
    assert [t["usage"] for t in chat["turns"]] == [t["usage"] for t in gem["turns"]]
    # the same tokens; Anthropic caches only what cache_control marks (nothing here)
    uncached = [{**t["usage"], "cached_tokens": 0} for t in chat["turns"]]
    assert [t["usage"] for t in claude["turns"]] == uncached
    assert chat["messages"][-1]["content"].startswith("mock: 7 messages")
    assert {r["provider"] for r in records.values()} == {
        "openai-chat",
        "openai-responses",
        "gemini",
        "anthropic",
    }


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("target", PROTOCOLS)
def test_full_history_with_scripted_turns_in_every_protocol(tmp_path, mock_server, target, stream):
    played = play(tmp_path, FULL, stream, server=mock_server, targets=(target,))
    assert played.result.exit_code == 0, played.result.output
    r1, r2, r3 = (t["assistant"] for t in played.transcripts[0]["turns"])
    first = [("system", "Be brief."), ("user", "first question")]
    second = [*first, ("assistant", r1), ("assistant", "a scripted answer")]
    second.append(("user", "second question"))
    third = [*second, ("assistant", r2), ("user", "third question")]
    assert [sent_history(r) for r in mock_server.requests] == [first, second, third]
    assert r3.startswith("mock: 7 messages")  # the model saw the whole history
    streamed = [r["json"].get("stream") is True or r["query"].get("alt") == "sse"
                for r in mock_server.requests]  # fmt: skip
    assert streamed == [stream == "--stream"] * 3


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("target", PROTOCOLS)
def test_window_history_in_every_protocol(tmp_path, mock_server, target, stream):
    window = CHAIN.replace("CONTEXT", "{window: 2}")
    played = play(tmp_path, window, stream, server=mock_server, targets=(target,))
    assert played.result.exit_code == 0, played.result.output
    _, r2, _ = (t["assistant"] for t in played.transcripts[0]["turns"])
    system = ("system", "Be brief.")
    assert [sent_history(r) for r in mock_server.requests] == [
        [system, ("user", "first question")],
        [system, ("assistant", "a scripted answer"), ("user", "second question")],
        [system, ("assistant", r2), ("user", "third question")],
    ]


VARS = """
id: many
system: 'You talk to {{n}}.'
turns:
  - 'I am number {{n}}.'
  - assistant: 'Hello {{n}}.'
  - Who am I?
vars:
  n: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
"""


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("target", PROTOCOLS)
def test_vars_keep_each_conversation_its_own_history(tmp_path, mock_server, target, stream):
    played = play(tmp_path, VARS, stream, "-c", "6", server=mock_server, targets=(target,))
    assert played.result.exit_code == 0, played.result.output
    assert len(played.transcripts) == 12 and len(mock_server.requests) == 24
    for record in played.transcripts:
        n = record["vars"]["n"]
        assert record["messages"][:3] == [
            {"role": "system", "content": f"You talk to {n}."},
            {"role": "user", "content": f"I am number {n}."},
            {"role": "assistant", "content": record["turns"][0]["assistant"]},
        ]
        last = record["turns"][1]["assistant"]
        assert last.startswith("mock: 5 messages")
        assert f'earlier: user "I am number {n}."' in last and f'assistant "Hello {n}."' in last


def test_responses_requests_carry_the_history_as_input(tmp_path, mock_server):
    played = play(tmp_path, FULL, server=mock_server, targets=("responses",))
    assert played.result.exit_code == 0, played.result.output
    r1, r2, _ = (t["assistant"] for t in played.transcripts[0]["turns"])
    bodies = [r["json"] for r in mock_server.requests]
    assert all(r["path"] == "/v1/responses" for r in mock_server.requests)
    assert all(b["instructions"] == "Be brief." and "previous_response_id" not in b for b in bodies)
    assert responses_input(mock_server.requests[2]) == [
        ("user", "first question"),
        ("assistant", r1),
        ("assistant", "a scripted answer"),
        ("user", "second question"),
        ("assistant", r2),
        ("user", "third question"),
    ]
    assert mock_server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_server_context_chains_previous_response_id(tmp_path, mock_server):
    played = play(tmp_path, SERVER, server=mock_server, targets=("responses",))
    assert played.result.exit_code == 0, played.result.output
    record = played.transcripts[0]
    bodies = [r["json"] for r in mock_server.requests]
    first, second, third = bodies
    assert responses_input(mock_server.requests[0]) == [("user", "first question")]
    assert "previous_response_id" not in first
    assert responses_input(mock_server.requests[1]) == [
        ("assistant", "a scripted answer"),
        ("user", "second question"),
    ]
    assert responses_input(mock_server.requests[2]) == [("user", "third question")]
    assert all(b["store"] is True for b in bodies)
    assert second["previous_response_id"] != third["previous_response_id"]
    assert all(b["instructions"] == "Be brief." for b in bodies)  # not carried over: resent
    # the server held the history: the model saw all 7 messages, and the transcript has them all
    assert record["turns"][2]["assistant"].startswith("mock: 7 messages")
    assert len(record["messages"]) == 8
    assert [t["sent_messages"] for t in record["turns"]] == [2, 3, 2]


def test_server_context_with_streaming(tmp_path, mock_server):
    played = play(tmp_path, SERVER, "--stream", server=mock_server, targets=("responses",))
    assert played.result.exit_code == 0, played.result.output
    record = played.transcripts[0]
    assert record["turns"][2]["assistant"].startswith("mock: 7 messages")
    assert all(r["json"]["stream"] is True for r in mock_server.requests)


@pytest.mark.parametrize("target", ["chat", "gemini", "anthropic"])
def test_server_context_is_refused_for_other_protocols(tmp_path, mock_server, target):
    result = play(tmp_path, SERVER, server=mock_server, targets=(target,), name="chain.yaml").result
    assert result.exit_code == 2
    assert "chain.yaml:2:" in result.stderr and "openai-responses" in result.stderr
    assert mock_server.requests == []


def test_gemini_requests_use_contents_roles_and_system_instruction(tmp_path, mock_server):
    played = play(tmp_path, FULL, "--stream", server=mock_server, targets=("gemini",))
    assert played.result.exit_code == 0, played.result.output
    r1, r2, _ = (t["assistant"] for t in played.transcripts[0]["turns"])
    request = mock_server.requests[2]
    assert request["path"] == "/v1beta/models/m-gem:streamGenerateContent"
    assert request["query"].get("alt") == "sse"
    assert request["json"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert gemini_contents(request) == [
        ("user", "first question"),
        ("model", r1),
        ("model", "a scripted answer"),
        ("user", "second question"),
        ("model", r2),
        ("user", "third question"),
    ]
    assert request["headers"]["x-goog-api-key"] == KEY


@pytest.mark.parametrize(
    ("auth", "where"),
    [
        ("x-goog-api-key", lambda r: r["headers"].get("x-goog-api-key")),
        ("query", lambda r: r["query"].get("key")),
        ("bearer", lambda r: r["headers"].get("authorization", "").removeprefix("Bearer ")),
        ("raw", lambda r: r["headers"].get("authorization")),
    ],
)
def test_gemini_auth_modes_and_the_key_never_written(tmp_path, mock_server, auth, where):
    played = play(tmp_path, FULL, server=mock_server, targets=("gemini",), models={"auth": auth})
    result = played.result
    assert result.exit_code == 0, result.output
    assert all(where(r) == KEY for r in mock_server.requests)
    if auth == "raw":
        assert not mock_server.requests[0]["headers"]["authorization"].startswith("Bearer")
    for path in played.run_dir.iterdir():
        assert KEY not in path.read_text(encoding="utf-8")
    assert KEY not in result.output


def test_reasoning_tokens_and_cached_tokens_for_all_three(tmp_path, mock_server):
    params = {
        "chat": {"reasoning_effort": "high"},
        "responses": {"reasoning_effort": "high"},
        "gemini": {"thinkingConfig": {"thinkingBudget": 64, "includeThoughts": True}},
    }
    for target, p in params.items():
        text = "id: r\nturns: [a, b]\nparams: " + json.dumps(p)
        played = play(tmp_path, text, server=mock_server, targets=(target,))
        assert played.result.exit_code == 0, played.result.output
        record = played.transcripts[0]
        usage = record["turns"][1]["usage"]
        assert usage["reasoning_tokens"] == 64, target
        assert usage["cached_tokens"] > 0, target
        assert usage["output_tokens"] > usage["reasoning_tokens"], target
        assert record["turns"][1]["assistant"].startswith("mock:")  # thoughts not in the text
    body = mock_server.requests[-1]["json"]
    assert body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 64
    assert any(r["json"].get("reasoning") == {"effort": "high"} for r in mock_server.requests)


@pytest.mark.parametrize("target", PROTOCOLS)
def test_blocked_prompt_is_a_failure_not_an_empty_reply(tmp_path, mock_server, target):
    text = "id: b\nturns: ['please [[block]]']\n"
    played = play(tmp_path, text, server=mock_server, targets=(target,))
    assert played.result.exit_code == 3
    record = played.transcripts[0]
    assert record["status"] == "failed" and record["error"]["kind"] == "empty"
    assert "content_filter" in record["error"]["message"] or "SAFETY" in record["error"]["message"]
    assert [m["role"] for m in record["messages"]] == ["user"]


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_truncated_reply_keeps_its_finish_reason(tmp_path, mock_server, stream):
    finish, raw = {}, {}
    for target, key in (("chat", "max_tokens"), ("responses", "max_output_tokens"),
                        ("gemini", "maxOutputTokens"), ("anthropic", "max_tokens")):  # fmt: skip
        text = f"id: t\nturns: [hello]\nparams: {{{key}: 5}}\n"
        played = play(tmp_path, text, stream, server=mock_server, targets=(target,))
        assert played.result.exit_code == 0, played.result.output
        finish[target] = played.transcripts[0]["turns"][0]["finish_reason"]
        raw[target] = played.transcripts[0]["turns"][0]["finish_reason_raw"]
    assert finish == dict.fromkeys(PROTOCOLS, "length")
    assert raw == {"chat": "length", "responses": "max_output_tokens", "gemini": "MAX_TOKENS",
                   "anthropic": "max_tokens"}  # fmt: skip


def test_models_example_loads_and_names_keys_only_by_variable():
    from runner.spec.targets import load_models

    root = Path(__file__).resolve().parent.parent
    targets = load_models(str(root / "models.example.yaml"))
    assert {t.provider for t in targets.values()} == {
        "openai-chat",
        "openai-responses",
        "gemini",
        "anthropic",
    }
    assert targets["claude-sonnet"].cache is True
    assert targets["gemini-flash"].auth == "raw"
    assert targets["gpt52-pro"].params["reasoning"] == {"effort": "high"}
    assert targets["gemini-direct"].base_url == "https://generativelanguage.googleapis.com"
    assert all(t.key is None for t in targets.values())


def answers_failed_first(code: str) -> web.Application:
    """A Responses endpoint whose first answer to each request is HTTP 200, status failed."""
    answered: set[bytes] = set()
    failed = {"status": "failed", "error": {"code": code, "message": "the model gave up (test)"}}
    text = {"type": "output_text", "text": "fine", "annotations": []}
    completed = {
        "status": "completed",
        "error": None,
        "output": [{"type": "message", "role": "assistant", "content": [text]}],
        "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
    }

    async def respond(request: web.Request) -> web.Response:
        body = await request.read()  # a retry sends the same bytes
        first = body not in answered
        answered.add(body)
        head = {"id": f"resp_{len(answered)}", "object": "response", "output": [], "usage": None}
        return web.json_response({**head, **(failed if first else completed)})

    app = web.Application()
    app.router.add_post("/v1/responses", respond)
    return app


def test_a_responses_reply_failed_by_a_server_error_is_retried(tmp_path, serve_app):
    server = serve_app(answers_failed_first("server_error"))
    played = play(tmp_path, "id: f\nturns: [hello]\n", server=server, targets=("responses",))
    assert played.result.exit_code == 0, played.result.output
    assert [(u["attempt"], u["status"]) for u in played.usage] == [(1, "http"), (2, 200)]
    (record,) = played.transcripts
    assert record["status"] == "ok"
    assert (record["turns"][0]["assistant"], record["turns"][0]["attempts"]) == ("fine", 2)


def test_a_responses_reply_failed_for_its_prompt_is_final(tmp_path, serve_app):
    server = serve_app(answers_failed_first("invalid_prompt"))
    played = play(tmp_path, "id: f\nturns: [hello]\n", server=server, targets=("responses",))
    assert played.result.exit_code == 3
    assert [(u["attempt"], u["status"]) for u in played.usage] == [(1, "http")]
    (record,) = played.transcripts
    assert record["status"] == "failed" and record["error"]["kind"] == "http"
    assert "response failed (invalid_prompt)" in record["error"]["message"]
    assert "the model gave up (test)" in record["error"]["message"]


def test_a_streamed_response_failed_event_is_an_error(tmp_path, mock_server):
    # the mock's [[error]] marker: half the text, then response.failed (status failed)
    text = "id: f\nturns: ['please [[error]]']\n"
    played = play(
        tmp_path, text, "--stream", "--max-retries", "1", server=mock_server, targets=("responses",)
    )
    assert played.result.exit_code == 3
    assert [(u["attempt"], u["status"]) for u in played.usage] == [(1, "http"), (2, "http")]
    assert all(r["json"]["stream"] is True for r in mock_server.requests)
    assert len(mock_server.requests) == 2
    (record,) = played.transcripts
    assert record["status"] == "failed" and record["error"]["kind"] == "http"
    assert "response failed (server_error)" in record["error"]["message"]
    assert record["turns"] == []  # the half-streamed text is not kept as a reply
