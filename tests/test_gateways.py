"""What a real gateway shows up: connections reused after streams, why conversations
failed, one finish-reason vocabulary, failing fast on a bad key, zero usage, dry runs."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from runner.client.providers import drain
from runner.finish import normalise
from tests.conftest import CHAIN, play

PROTOCOLS = ["chat", "responses", "gemini", "anthropic"]


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
@pytest.mark.parametrize("target", PROTOCOLS)
def test_every_reply_hands_its_connection_back_for_the_next(tmp_path, mock_server, target, stream):
    scenario = CHAIN.replace("CONTEXT", "full")
    played = play(
        tmp_path, scenario, stream, "-c", "1", "--repeat", "4", server=mock_server,
        targets=(target,),
    )  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert len(played.usage) == 12 and mock_server.state.answered == 12
    assert mock_server.state.connections == 1


def open_after_done(junk: bytes, hold_s: float | None) -> tuple[web.Application, list[object]]:
    """A chat endpoint that streams a whole reply and [DONE], then `junk`, and ends the body
    hold_s later (None: never), as gateways that flush every event do; and the connections
    it was asked on."""
    connections: list[object] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if not any(request.transport is c for c in connections):
            connections.append(request.transport)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        choice = {"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}
        chunk = json.dumps({"id": "c1", "choices": [choice]})
        await resp.write(f"data: {chunk}\n\ndata: [DONE]\n\n".encode() + junk)
        if hold_s is None:
            await asyncio.Event().wait()  # the body stays open until the server is closed
        await asyncio.sleep(hold_s)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app, connections


def test_a_body_ended_a_moment_after_done_still_hands_its_connection_back(tmp_path, serve_app):
    app, connections = open_after_done(b"", hold_s=0.05)
    played = play(tmp_path, "id: h\nturns: [hello]\n", "--stream", "-c", "1", "--repeat", "5",
                  server=serve_app(app))  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert len(connections) == 1  # without the drain: one per request


@pytest.mark.parametrize(
    ("drain_s", "junk"),
    [(0.05, b""), (3600.0, b": " + b"x" * 200_000 + b"\n\n")],
    ids=["time-cap", "byte-cap"],
)
def test_draining_a_body_held_open_gives_up_and_keeps_the_reply(
    tmp_path, serve_app, monkeypatch, drain_s, junk
):
    monkeypatch.setattr(drain, "DRAIN_S", drain_s)
    served = serve_app(open_after_done(junk, hold_s=None)[0])
    played = play(tmp_path, "id: h\nturns: [hello]\n", "--stream", server=served)
    assert played.result.exit_code == 0, played.result.output
    assert played.transcripts[0]["turns"][0]["assistant"] == "hi"


FINISHES = """
id: f
turns:
  - user: hello
    expect: {finish_reason: stop}
  - user: again, briefly
    params: {max_tokens: 5}
    expect: {finish_reason: LENGTH}
"""
RAW_FINISHES = {
    "chat": ["stop", "length"],
    "responses": ["completed", "max_output_tokens"],
    "gemini": ["STOP", "MAX_TOKENS"],
    "anthropic": ["end_turn", "max_tokens"],
}


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
@pytest.mark.parametrize("target", PROTOCOLS)
def test_finish_reasons_are_one_vocabulary_with_the_providers_own_kept(
    tmp_path, mock_server, target, stream
):
    played = play(tmp_path, FINISHES, stream, server=mock_server, targets=(target,))
    assert played.result.exit_code == 0, played.result.output  # both checks passed
    turns = played.transcripts[0]["turns"]
    assert [t["finish_reason"] for t in turns] == ["stop", "length"]
    assert [t["finish_reason_raw"] for t in turns] == RAW_FINISHES[target]
    assert all(c["passed"] for t in turns for c in t["checks"])


@pytest.mark.parametrize("target", PROTOCOLS)
def test_a_blocked_prompt_fails_naming_the_normalised_and_the_raw_reason(
    tmp_path, mock_server, target
):
    played = play(tmp_path, "id: b\nturns: ['[[block]]']\n", server=mock_server, targets=(target,))
    error = played.transcripts[0]["error"]
    assert error["kind"] == "empty" and "finish reason: content_filter" in error["message"]
    if target == "gemini":
        assert "(blocked:SAFETY)" in error["message"]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("stop", "stop"), ("end_turn", "stop"), ("tool_calls", "tool_calls"),
     ("function_call", "tool_calls"), ("SAFETY", "content_filter"),
     ("blocked:PROHIBITED_CONTENT", "content_filter"), ("error", "error"),
     ("MALFORMED_FUNCTION_CALL", "error"), ("OTHER", "other"), ("incomplete", "other"),
     ("something_new", "other"), (None, None)],
)  # fmt: skip
def test_gateway_finish_reasons_normalise(raw, normalised):
    assert normalise(raw) == normalised


def test_an_expected_finish_reason_outside_the_vocabulary_is_bad_input(tmp_path, mock_server):
    text = "id: x\nturns:\n  - user: hi\n    expect: {finish_reason: MAX_TOKENS}\n"
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 2
    assert "s.yaml:4:" in played.result.output and "recorded as 'length'" in played.result.output
    assert "stop, length, content_filter, tool_calls, error, other" in played.result.output
    assert mock_server.state.answered == 0


def gateway(answers: list[tuple[int, str]]) -> tuple[web.Application, list[int]]:
    """An OpenAI-compatible gateway answering request i with answers[i] (the last one
    repeated): status 200 is a normal reply, any other an error with that message. Also
    returns [requests answered so far]."""
    count = [0]

    async def handle(request: web.Request) -> web.Response:
        status, message = answers[min(count[0], len(answers) - 1)]
        count[0] += 1
        if status != 200:
            body = {"error": {"message": message, "type": "invalid_request_error"}}
            return web.json_response(body, status=status)
        choice = {"index": 0, "message": {"role": "assistant", "content": message},
                  "finish_reason": "stop"}  # fmt: skip
        return web.json_response({"id": "c", "choices": [choice], "usage": None})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app, count


NO_DB = (400, "No connected db.")


def test_a_gateway_answering_400_to_everything_is_stopped_after_n(tmp_path, serve_app):
    app, count = gateway([NO_DB])
    played = play(tmp_path, "id: g\nturns: [hi]\n", "--repeat", "20", "-c", "1",
                  server=serve_app(app), models={"fail_fast_after": 3})  # fmt: skip
    assert played.result.exit_code == 3
    assert count[0] == 3 and len(played.usage) == 3
    errors = [t["error"] for t in played.transcripts]
    assert len(errors) == 20 and all(e["kind"] == "http" for e in errors)
    assert (
        sum(e == {"kind": "http", "message": "No connected db.", "status": 400} for e in errors)
        == 3
    )
    stopped = "not sent: chat failed 3 times in a row from the start with 400 (No connected db.)"
    assert [e["message"] for e in errors[3:]] == [stopped] * 17


@pytest.mark.parametrize(
    ("answers", "fail_fast_after"),
    [([NO_DB], 0), ([(200, "fine"), NO_DB], 3), ([NO_DB, (400, "Bad param."), NO_DB], 3),
     ([NO_DB, (500, "busy"), NO_DB], 3), ([(500, "busy"), (200, "fine"), (500, "busy")], 2),
     ([(429, "slow down"), (429, "slow down")], 2)],
    ids=["disabled", "one-success-first", "another-message", "a-5xx-between",
         "a-success-after-a-5xx", "rate-limited"],
)  # fmt: skip
def test_identical_failures_stop_a_target_only_from_the_start(
    tmp_path, serve_app, answers, fail_fast_after
):
    app, count = gateway(answers)
    models = {"fail_fast_after": fail_fast_after}
    played = play(tmp_path, "id: g\nturns: [hi]\n", "--repeat", "8", "-c", "1", "--max-retries",
                  "0", server=serve_app(app), models=models)  # fmt: skip
    assert count[0] == 8  # every conversation was sent
    assert not any("not sent" in (t["error"] or {}).get("message", "") for t in played.transcripts)


def test_a_gateway_answering_500_to_everything_is_stopped_after_n_conversations(
    tmp_path, serve_app
):
    app, count = gateway([(500, "invalid token")])
    played = play(tmp_path, "id: g\nturns: [hi]\n", "--repeat", "6", "-c", "1", "--max-retries",
                  "1", server=serve_app(app), models={"fail_fast_after": 2})  # fmt: skip
    assert played.result.exit_code == 3
    assert count[0] == 4  # two conversations, each tried twice
    messages = [t["error"]["message"] for t in played.transcripts]
    stopped = "not sent: chat failed 2 times in a row from the start with 500 (invalid token)"
    assert messages == ["invalid token"] * 2 + [stopped] * 4


def test_fail_fast_after_must_be_a_count(tmp_path, serve_app):
    played = play(tmp_path, "id: g\nturns: [hi]\n", server=serve_app(gateway([NO_DB])[0]),
                  models={"fail_fast_after": -1})  # fmt: skip
    assert played.result.exit_code == 2 and "'fail_fast_after'" in played.result.output


def test_the_summary_and_the_report_say_why_conversations_failed(tmp_path, serve_app):
    answers = [(400, f"No connected db. (request id: 2026112206271318394858{i:03d}AB)")
               for i in range(6)]  # fmt: skip
    app, _ = gateway(answers)
    played = play(tmp_path, "id: g\nturns: [hi]\n", "--repeat", "6", "-c", "1",
                  server=serve_app(app), models={"fail_fast_after": 3})  # fmt: skip
    assert played.result.exit_code == 3
    said = "No connected db. (request id: ***)"
    for output in (played.result.stdout, played.report().output):
        assert "most common failures:" in output
        assert f"chat      3×  http 400: {said}" in output
        assert (
            f"chat      3×  http: not sent: chat failed 3 times in a row from the start with 400 "
            f"({said})" in output
        )
    rows = json.loads(played.report("json").output)
    assert rows[0]["failures"][0] == {"count": 3, "kind": "http", "status": 400, "message": said}
    assert rows[0]["failures"][1]["status"] is None and len(rows[0]["failures"]) == 2
    assert f"| chat | 3 | http | 400 | {said} |" in played.report("markdown").output


def test_a_target_whose_replies_never_report_usage_gets_one_warning(
    tmp_path, serve_app, mock_server
):
    app, _ = gateway([(200, "fine")])
    played = play(tmp_path, CHAIN.replace("CONTEXT", "full"), "--repeat", "2",
                  server=serve_app(app))  # fmt: skip
    assert played.result.exit_code == 0
    warning = "none of 6 replies reported token usage, so tokens and cost show 0"
    assert played.result.stdout.count(warning) == 1 and played.report().output.count(warning) == 1
    assert warning in json.loads(played.report("json").output)[0]["warnings"][0]
    with_usage = play(tmp_path, "id: u\nturns: [hi]\n", "--stream", server=mock_server)
    assert (
        "warnings" not in with_usage.result.stdout and "most common" not in with_usage.result.stdout
    )
    assert json.loads(with_usage.report("json").output)[0]["warnings"] == []


@pytest.mark.parametrize("auth", ["x-goog-api-key", "query"])
def test_a_dry_run_needs_no_key_and_shows_where_it_would_go(tmp_path, mock_server, auth):
    unset = {"TEST_API_KEY": None}
    where = {"server": mock_server, "targets": ("chat", "gemini"), "models": {"auth": auth}}
    dry = play(tmp_path, "id: d\nturns: [hi]\n", "--dry-run", env=unset, **where)
    assert dry.result.exit_code == 0, dry.result.output
    assert "Authorization: <unset>" in dry.result.output
    gemini = "x-goog-api-key: <unset>" if auth != "query" else ":generateContent?key=<unset>"
    assert gemini in dry.result.output and "***" not in dry.result.output
    real = play(tmp_path, "id: d\nturns: [hi]\n", env=unset, **where)
    assert real.result.exit_code == 2 and "TEST_API_KEY, which is not set" in real.result.output
    assert mock_server.requests == []
