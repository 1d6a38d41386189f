"""Anthropic Messages through the runner: the request on the wire, auth, max_tokens, stop
reasons, errors and overloads, rate-limit headers, prompt caching and what it costs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from aiohttp import web
from conftest import KEY, play
from multidict import CIMultiDict

from runner.client.client import TargetClient
from runner.client.providers.anthropic import Anthropic, rfc3339_seconds
from runner.client.providers.ratelimits import reset_seconds
from runner.cost import cost
from runner.messages import Message
from runner.mock import MockOptions, MockThread
from runner.spec.targets import Target

TWO = "id: two\nsystem: Be brief.\nturns: [first question, second question]\n"


def models(base_url: str, **fields: Any) -> str:
    """A models file (JSON is YAML) with one anthropic target `claude` at base_url."""
    target = {"provider": "anthropic", "model": "m-claude", "base_url": base_url,
              "api_key_env": "TEST_API_KEY", "max_wait_s": 0.2, **fields}  # fmt: skip
    return json.dumps({"targets": {"claude": target}})


def test_the_request_on_the_wire(tmp_path, mock_server):
    played = play(tmp_path, TWO, server=mock_server, targets=("anthropic",))
    assert played.result.exit_code == 0, played.result.output
    first, second = mock_server.requests
    assert first["path"] == "/v1/messages"
    assert first["headers"]["x-api-key"] == KEY and "authorization" not in first["headers"]
    assert first["headers"]["anthropic-version"] == "2023-06-01"
    assert first["json"] == {
        "model": "m-claude",
        "messages": [{"role": "user", "content": "first question"}],
        "system": "Be brief.",
        "max_tokens": 4096,  # the API requires one: the provider's default
    }
    reply = played.transcripts[0]["turns"][0]["assistant"]
    assert second["json"]["messages"][1] == {"role": "assistant", "content": reply}
    turn = played.transcripts[0]["turns"][0]
    assert turn["finish_reason"] == "stop" and turn["finish_reason_raw"] == "end_turn"
    assert turn["usage"]["cached_tokens"] == 0 == turn["usage"]["cache_write_tokens"]


def test_bearer_auth_a_version_a_beta_and_max_tokens_under_other_names(tmp_path, mock_server):
    params = {"anthropic_version": "2026-10-21", "anthropic_beta": ["a-beta", "b-beta"]}
    text = models(mock_server.base_url, auth="bearer", params=params)
    scenario = TWO + "params: {max_completion_tokens: 300, stop: '###'}\n"
    played = play(tmp_path, scenario, models=text, targets=("claude",))
    assert played.result.exit_code == 0, played.result.output
    for request in mock_server.requests:
        headers = request["headers"]
        assert headers["authorization"] == f"Bearer {KEY}" and "x-api-key" not in headers
        assert headers["anthropic-version"] == "2026-10-21"
        assert headers["anthropic-beta"] == "a-beta,b-beta"
        body = request["json"]
        assert body["max_tokens"] == 300 and body["stop_sequences"] == ["###"]
        assert not {"anthropic_version", "anthropic_beta", "max_completion_tokens"} & set(body)


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_thinking_tokens_are_reasoning_tokens_and_not_the_answer(tmp_path, mock_server, stream):
    scenario = "id: t\nturns: [hi]\nparams: {thinking: {type: enabled, budget_tokens: 1024}}\n"
    played = play(tmp_path, scenario, stream, server=mock_server, targets=("anthropic",))
    assert played.result.exit_code == 0, played.result.output
    turn = played.transcripts[0]["turns"][0]
    assert turn["assistant"].startswith("mock: 1 messages")  # the thinking block left out
    assert turn["usage"]["reasoning_tokens"] == 64
    assert turn["usage"]["output_tokens"] == 64 + (len(turn["assistant"]) + 3) // 4


def test_a_stop_sequence_hit_is_a_stop(tmp_path, mock_server):
    scenario = "id: s\nturns:\n  - user: hi\n    params: {stop_sequences: [messages]}\n"
    played = play(tmp_path, scenario, "--stream", server=mock_server, targets=("anthropic",))
    turn = played.transcripts[0]["turns"][0]
    assert turn["assistant"] == "mock: 1 " and turn["finish_reason_raw"] == "stop_sequence"
    assert turn["finish_reason"] == "stop"


def overloaded_once() -> web.Application:
    """A Messages endpoint that answers each request's first attempt 529 overloaded_error."""
    seen: set[bytes] = set()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if body not in seen:
            seen.add(body)
            error = {"type": "overloaded_error", "message": "Overloaded"}
            payload = {"type": "error", "error": error, "request_id": "req_1"}
            return web.json_response(payload, status=529)
        message = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "text", "text": "fine"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 10,
                      "cache_creation_input_tokens": 5, "output_tokens_details": {
                          "thinking_tokens": 1}},
        }  # fmt: skip
        return web.json_response(message)

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    return app


def test_an_overload_529_is_retried_and_usage_adds_the_cache(tmp_path, serve_app):
    served = serve_app(overloaded_once())
    played = play(tmp_path, "id: o\nturns: [hi]\n", models=models(served.base_url),
                  targets=("claude",))  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert [u["status"] for u in played.usage] == [529, 200]
    turn = played.transcripts[0]["turns"][0]
    assert turn["assistant"] == "fine"  # the thinking block is not the answer
    assert turn["usage"] == {
        "input_tokens": 18,  # uncached + written + read
        "output_tokens": 2,
        "reasoning_tokens": 1,
        "cached_tokens": 10,
        "cache_write_tokens": 5,
        "total_tokens": 20,
    }


def test_a_mid_stream_error_event_is_retried_and_the_half_text_dropped(tmp_path, mock_server):
    text = "id: f\nturns: ['please [[error]]']\n"
    played = play(tmp_path, text, "--stream", "--max-retries", "1", server=mock_server,
                  targets=("anthropic",))  # fmt: skip
    assert played.result.exit_code == 3
    assert len(mock_server.requests) == 2
    (record,) = played.transcripts
    assert record["error"]["kind"] == "http" and "api_error" in record["error"]["message"]
    assert record["turns"] == []


@pytest.mark.parametrize(
    ("answer", "why"),
    [({"id": "m", "type": "message"}, "no content"), ([1, 2], "not what the protocol defines")],
)
def test_a_body_that_is_no_message_is_malformed(tmp_path, serve_app, answer, why):
    app = web.Application()

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app.router.add_post("/v1/messages", handle)
    where = models(serve_app(app).base_url, max_retries=1)
    played = play(tmp_path, "id: m\nturns: [hi]\n", models=where, targets=("claude",))
    assert [u["status"] for u in played.usage] == ["malformed"] * 2
    assert why in played.transcripts[0]["error"]["message"]


def test_rfc3339_resets():
    soon = (datetime.now(UTC) + timedelta(seconds=90)).isoformat().replace("+00:00", "Z")
    assert rfc3339_seconds(soon) == pytest.approx(90, abs=5)
    assert rfc3339_seconds("2001-01-01T00:00:00Z") == 0.0  # past: now
    assert rfc3339_seconds("2026-12-04T17:05:00") is None  # no zone: unsaid
    assert rfc3339_seconds("in 5 s") is None
    assert rfc3339_seconds("0001-01-01T00:00:00+14:00") == 0.0
    far = "9999-12-31T23:59:59-14:00"
    assert rfc3339_seconds(far) > 1e11 and reset_seconds(far, rfc3339_seconds) is None  # unsaid


def test_anthropic_rate_limit_headers_feed_the_pacer_and_529_is_an_overload():
    client = TargetClient(Target("t", "anthropic", "m", concurrency=32), False, lambda r: None)
    reset = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()

    async def said() -> None:
        marks = await client.pacer.acquire(10)
        headers = CIMultiDict({"anthropic-ratelimit-requests-limit": "50",
                               "anthropic-ratelimit-requests-remaining": "20",
                               "anthropic-ratelimit-requests-reset": reset,
                               "x-ratelimit-remaining-requests": "0"})  # fmt: skip
        client.pacer.answered(headers, marks, 10)
        error = client.provider.error(
            529,
            CIMultiDict(),
            '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        )
        assert error.retryable and error.message == "overloaded_error: Overloaded"
        client._failed(error, await client.limit.acquire(), marks, 10)

    asyncio.run(said())
    assert client.pacer.requests.stated_rate == pytest.approx(0.5, rel=0.1)  # 30 over 60 s
    assert not client.pacer.requests.empties  # x-ratelimit-* is not its name: not read
    assert client.limit.limit < 32  # fewer requests in flight after an overload


def test_the_mock_limits_are_read_from_its_anthropic_headers():
    with MockThread(MockOptions(limit_rpm=60, limit_window_s=60)) as server:
        target = Target("t", "anthropic", "m", base_url=server.base_url)
        client = TargetClient(target, True, lambda r: None)

        async def ask() -> str:
            await client.start()
            try:
                hi = [Message.of_text("user", "hi")]
                reply, _ = await client.complete(None, hi, client.params(), None, "c", 0)
                return reply.text
            finally:
                await client.close()

        assert asyncio.run(ask()).startswith("mock: 1 messages")
    # one of 60 a minute used; whole again in about a second
    assert 0 < client.pacer.requests.stated_rate < 10


def ten_turns(tmp_path: Any, stream: str) -> Any:
    """A 10-turn conversation with a long system prompt, on two targets of one in-process
    mock each: without and with `cache: true`."""
    system = "You are a careful assistant. " * 70
    turns = [f"Question {i}: tell me about item {i}." for i in range(1, 11)]
    scenario = json.dumps({"id": "ten", "system": system, "turns": turns})
    price = {"input_per_mtok": 3.0, "cached_input_per_mtok": 0.3, "output_per_mtok": 15.0}
    plain = {"provider": "anthropic", "model": "m", "mock": {}, "price": price}
    text = json.dumps({"targets": {"plain": plain, "cached": {**plain, "cache": True}}})
    return play(tmp_path, scenario, stream, models=text, targets=("plain", "cached"))


def input_cost(usage: dict[str, int], price: dict[str, float]) -> float:
    """What the input of these tokens costs (the output priced at nothing)."""
    return cost(usage, {**price, "output_per_mtok": 0.0}) or 0.0


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_prompt_caching_cuts_the_input_cost_of_ten_turns(tmp_path, stream):
    played = ten_turns(tmp_path, stream)
    assert played.result.exit_code == 0, played.result.output
    records = {r["target"]: r for r in played.transcripts}
    plain, cached = records["plain"], records["cached"]
    assert plain["messages"] == cached["messages"]  # the same conversation
    assert plain["usage"]["input_tokens"] == cached["usage"]["input_tokens"]
    assert plain["usage"]["cached_tokens"] == 0 == plain["usage"]["cache_write_tokens"]
    turns = cached["turns"]
    assert turns[0]["usage"]["cached_tokens"] == 0 < turns[0]["usage"]["cache_write_tokens"]
    for before, turn in zip(turns, turns[1:], strict=False):  # each turn reads the one before
        asked = before["usage"]["input_tokens"]
        assert turn["usage"]["cached_tokens"] == asked
        assert turn["usage"]["cache_write_tokens"] == turn["usage"]["input_tokens"] - asked
    price = {"input_per_mtok": 3.0, "cached_input_per_mtok": 0.3}
    without, with_cache = (input_cost(r["usage"], price) for r in (plain, cached))
    # 8,111 input tokens at $3: $0.0243; with cache marks 6,883 read at $0.30 and 1,228
    # written at $3.75 (1.25 x input, the default): $0.0067, 73 % less
    assert without == pytest.approx(0.024333) and with_cache == pytest.approx(0.0066699)
    assert cached["cost_usd"] < plain["cost_usd"]


def test_cache_marks_on_the_wire_and_from_the_scenario(tmp_path):
    with MockThread(MockOptions(record=True)) as server:
        text = models(server.base_url)
        played = play(tmp_path, TWO + "cache: true\n", models=text, targets=("claude",))
        assert played.result.exit_code == 0, played.result.output
        second = server.requests[1]["json"]
    mark = {"type": "ephemeral"}
    assert second["system"] == [{"type": "text", "text": "Be brief.", "cache_control": mark}]
    contents = [m["content"] for m in second["messages"]]
    assert isinstance(contents[0], str) and isinstance(contents[1], str)
    assert contents[2] == [{"type": "text", "text": "second question", "cache_control": mark}]
    assert played.transcripts[0]["turns"][1]["usage"]["cached_tokens"] > 0


def test_a_scenario_may_turn_a_targets_cache_off_and_other_providers_ignore_it(
    tmp_path, mock_server
):
    text = models(mock_server.base_url, cache=True)
    played = play(tmp_path, TWO + "cache: false\n", models=text, targets=("claude",))
    assert played.result.exit_code == 0, played.result.output
    assert all(isinstance(r["json"]["system"], str) for r in mock_server.requests)
    chat = play(tmp_path, TWO + "cache: true\n", server=mock_server, targets=("chat",))
    assert chat.result.exit_code == 0, chat.result.output  # OpenAI caches on its own


def test_cache_must_be_a_bool_in_a_scenario(tmp_path, mock_server):
    played = play(tmp_path, TWO + "cache: yes please\n", server=mock_server,
                  targets=("anthropic",))  # fmt: skip
    assert played.result.exit_code == 2
    assert "s.yaml:4: 'cache' must be true or false" in played.result.stderr
    assert mock_server.requests == []


def test_the_built_in_mock_anthropic_target(tmp_path):
    played = play(tmp_path, TWO, "--stream", targets=("mock-anthropic",))
    assert played.result.exit_code == 0, played.result.output
    record = played.transcripts[0]
    assert record["provider"] == "anthropic" and record["model"] == "mock-anthropic"
    assert record["turns"][1]["assistant"].startswith("mock: 4 messages")
    assert Anthropic.mock_target == ("mock-anthropic", "mock-anthropic")


def test_an_error_event_mid_stream_is_classified_as_its_type_s_status_would_be():
    from runner.client.providers.anthropic import stream_error
    from runner.errors import Kind

    limited = stream_error({"type": "error", "error": {"type": "rate_limit_error"}})
    overloaded = stream_error({"type": "error", "error": {"type": "overloaded_error"}})
    bad = stream_error({"type": "error", "error": {"type": "invalid_request_error"}})
    assert (limited.kind, limited.status, limited.retryable) == (Kind.RATE_LIMIT, 429, True)
    assert (overloaded.status, overloaded.retryable) == (529, True)  # an overload: paced
    assert (bad.status, bad.retryable) == (400, False)


# every stop reason of the anthropic SDK's types, as the runner normalises it
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",  # cut off by the context window
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "other",  # not an end: the turn is to be sent back to continue
}


def test_every_stop_reason_of_the_sdk_is_mapped_here():
    from anthropic.types import StopReason

    assert set(get_args(StopReason)) == set(STOP_REASONS)


def stops_with(reason: str) -> web.Application:
    """A Messages endpoint that answers "cut" with the stop reason given, streamed or not."""

    async def handle(request: web.Request) -> web.StreamResponse:
        usage = {"input_tokens": 3, "output_tokens": 1}
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                   "content": [{"type": "text", "text": "cut"}], "stop_reason": reason,
                   "stop_sequence": None, "usage": usage}  # fmt: skip
        if not (await request.json()).get("stream"):
            return web.json_response(message)
        events = [
            {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": "cut"},
            },  # fmt: skip
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": usage},
            {"type": "message_stop"},
        ]
        text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        return web.Response(text=text, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    return app


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
@pytest.mark.parametrize(("raw", "normalised"), sorted(STOP_REASONS.items()))
def test_stop_reasons_normalise(tmp_path, serve_app, stream, raw, normalised):
    where = models(serve_app(stops_with(raw)).base_url)
    played = play(tmp_path, "id: s\nturns: [hi]\n", stream, models=where, targets=("claude",))
    assert played.result.exit_code == 0, played.result.output
    turn = played.transcripts[0]["turns"][0]
    assert (turn["assistant"], turn["finish_reason_raw"]) == ("cut", raw)
    assert turn["finish_reason"] == normalised
