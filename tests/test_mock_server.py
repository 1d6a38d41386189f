"""The mock LLM server over a real socket: wire formats, reply scheme, chaining, faults."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runner.mock import MockOptions, make_reply, reply_text, start_mock, tokens
from runner.mock.reply import cached_tokens, digest, input_tokens

TIMEOUT_S = 10
ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
RESP = "/v1/responses"
GEM = "/v1beta/models/gemini-test:generateContent"
GEM_SSE = "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
USER_HI = [{"role": "user", "content": "hi"}]
GEM_HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def async_test(fn: Any) -> Any:
    """Run an async test function with asyncio.run under a timeout."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TIMEOUT_S))

    return wrapper


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[Any, aiohttp.ClientSession]]:
    """A started mock server and a client session for it."""
    server = await start_mock(MockOptions(**options))
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(server.base_url, timeout=timeout) as http:
            yield server, http
    finally:
        await server.close()


async def post(http: aiohttp.ClientSession, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    """POST JSON; (status, parsed JSON body)."""
    async with http.post(path, json=body, **kw) as r:
        return r.status, json.loads(await r.read())


async def post_raw(http: aiohttp.ClientSession, path: str, body: Any, **kw: Any) -> bytes:
    """POST JSON; the raw response body (expects 200)."""
    async with http.post(path, json=body, **kw) as r:
        assert r.status == 200
        return await r.read()


def sse_payloads(raw: bytes, sep: str = "\n\n") -> list[str]:
    """The `data:` payloads of an SSE body whose frames end with sep."""
    text = raw.decode()
    assert text.endswith(sep)
    frames = text[: -len(sep)].split(sep)
    assert all(f.startswith("data: ") and "\n" not in f.strip() for f in frames)
    return [f[len("data: ") :].strip() for f in frames]


def chat_body(messages: list[dict], **extra: Any) -> dict:
    return {"model": "gpt-test", "messages": messages, **extra}


# --- the reply scheme -------------------------------------------------------------


def test_reply_scheme_counts_quotes_and_clips() -> None:
    long = "x" * 70
    conv = [
        ("system", "sys"),
        ("user", "第一\n行"),
        ("assistant", "Scripted answer"),
        ("assistant", "mock: earlier generated"),
        ("user", long),
    ]
    expected = (
        f'mock: 5 messages; last user #{digest(long)}: "{"x" * 60}…"'
        ' | earlier: user "第一 行"; assistant "Scripted answer"'
    )
    assert reply_text(conv) == expected
    reply = make_reply(conv)
    assert reply.input_tokens == sum(tokens(t) + 3 for _, t in conv) == input_tokens(conv)
    assert reply.cached_tokens == sum(tokens(t) + 3 for _, t in conv[:-1]) // 16 * 16
    assert reply.text_tokens == tokens(expected)


def test_reply_without_earlier_and_truncation() -> None:
    conv = [("user", "hello")]
    assert reply_text(conv) == f'mock: 1 messages; last user #{digest("hello")}: "hello"'
    cut = make_reply(conv, reasoning=4, max_tokens=6)
    assert (cut.finish, cut.text_tokens, cut.reasoning_tokens) == ("length", 2, 4)
    assert cut.text == reply_text(conv)[:8]
    assert cached_tokens(conv) == 0


# --- OpenAI Chat --------------------------------------------------------------------


@async_test
async def test_chat_json_shape_and_content() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "My name is "}, {"type": "text", "text": "Li"}],
        },
        {"role": "assistant", "content": "Nice to meet you."},
        {"role": "user", "content": "Who am I?"},
    ]
    async with serving() as (_, http):
        status, data = await post(http, CHAT, chat_body(messages, reasoning_effort="high"))
    assert status == 200
    assert data["object"] == "chat.completion" and data["model"] == "gpt-test"
    assert data["id"].startswith("chatcmpl-") and isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["logprobs"] is None and choice["finish_reason"] == "stop"
    msg = choice["message"]
    assert msg["refusal"] is None and msg["annotations"] == [] and msg["role"] == "assistant"
    assert msg["content"].startswith(f"mock: 4 messages; last user #{digest('Who am I?')}:")
    assert msg["content"].endswith('| earlier: user "My name is Li"; assistant "Nice to meet you."')
    usage = data["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 64
    assert usage["completion_tokens"] == tokens(msg["content"]) + 64
    assert usage["prompt_tokens"] == (3 + 3) + (4 + 3) + (5 + 3) + (3 + 3)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 16


@async_test
async def test_chat_sse_framing_with_usage() -> None:
    messages = [{"role": "user", "content": "Tell me something long enough to split."}]
    async with serving() as (_, http):
        _, whole = await post(http, CHAT, chat_body(messages))
        body = chat_body(messages, stream=True, stream_options={"include_usage": True})
        async with http.post(CHAT, json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            raw = await r.read()
    assert b"event:" not in raw
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish, usage_chunk = chunks[-2], chunks[-1]
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    content = chunks[1:-2]
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert all(len(c["choices"][0]["delta"]["content"]) <= 12 for c in content)
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == whole["choices"][0]["message"]["content"]


@async_test
async def test_chat_sse_without_usage_flag() -> None:
    async with serving() as (_, http):
        raw = await post_raw(http, CHAT, chat_body(USER_HI, stream=True))
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@async_test
async def test_chat_max_tokens_gives_length() -> None:
    async with serving() as (_, http):
        _, data = await post(http, CHAT, chat_body(USER_HI, max_completion_tokens=3))
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "mock: 1 mess"
    assert data["usage"]["completion_tokens"] == 3


@async_test
async def test_bad_requests_are_400_with_envelopes() -> None:
    async with serving() as (_, http):
        async with http.post(
            CHAT, data=b"{not json", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
            assert set((await r.json())["error"]) == {"message", "type", "param", "code"}
        status, data = await post(http, CHAT, {"messages": USER_HI})
        assert (status, data["error"]["param"]) == (400, "model")
        status, data = await post(http, CHAT, chat_body([]))
        assert (status, data["error"]["param"]) == (400, "messages")
        status, data = await post(http, "/v1beta/models/g:countTokens", GEM_HI)
        assert status == 404 and data["error"]["status"] == "NOT_FOUND"
        status, data = await post(http, GEM, {"contents": []})
        assert status == 400 and data["error"]["status"] == "INVALID_ARGUMENT"


# --- OpenAI Responses ---------------------------------------------------------------


def responses_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, payload) per frame; checks that event names equal payload types."""
    text = raw.decode()
    assert text.endswith("\n\n") and "[DONE]" not in text
    events = []
    for frame in text[:-2].split("\n\n"):
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line[len("data: ") :])
        assert payload["type"] == event_line[len("event: ") :]
        events.append((payload["type"], payload))
    return events


@async_test
async def test_responses_json_shape() -> None:
    body = {"model": "gpt-test", "input": "Hello there", "instructions": "Be brief."}
    async with serving() as (_, http):
        status, data = await post(http, RESP, body)
    assert status == 200 and data["object"] == "response" and data["status"] == "completed"
    assert data["id"].startswith("resp_") and "output_text" not in data
    assert data["instructions"] == "Be brief." and data["error"] is None
    (message,) = data["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    (part,) = message["content"]
    assert part["type"] == "output_text"
    assert part["text"] == reply_text([("system", "Be brief."), ("user", "Hello there")])
    usage = data["usage"]
    assert usage["input_tokens"] == tokens("Be brief.") + 3 + tokens("Hello there") + 3
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert usage["input_tokens_details"]["cached_tokens"] == 0


@async_test
async def test_responses_sse_order_and_sequence() -> None:
    body = {"model": "gpt-test", "input": [{"role": "user", "content": "Stream this please"}]}
    async with serving() as (_, http):
        _, whole = await post(http, RESP, body)
        raw = await post_raw(http, RESP, {**body, "stream": True})
    events = responses_events(raw)
    kinds = [k for k, _ in events]
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    deltas = [p for k, p in events if k == "response.output_text.delta"]
    head = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    tail = [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds == head + ["response.output_text.delta"] * len(deltas) + tail
    assert events[0][1]["response"]["status"] == "in_progress"
    assert events[0][1]["response"]["usage"] is None
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["usage"] == whole["usage"]
    text = "".join(d["delta"] for d in deltas)
    assert text == whole["output"][0]["content"][0]["text"] == events[-4][1]["text"]


@async_test
async def test_responses_reasoning_item_and_tokens() -> None:
    body = {"model": "o-test", "input": "think", "reasoning": {"effort": "low"}}
    async with serving() as (_, http):
        _, data = await post(http, RESP, body)
        raw = await post_raw(http, RESP, {**body, "stream": True})
    reasoning, message = data["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == []
    assert message["type"] == "message"
    assert data["usage"]["output_tokens_details"]["reasoning_tokens"] == 16
    text = message["content"][0]["text"]
    assert data["usage"]["output_tokens"] == tokens(text) + 16
    events = responses_events(raw)
    assert events[2][1]["item"]["type"] == "reasoning" and events[2][1]["output_index"] == 0
    assert events[4][1]["item"]["type"] == "message" and events[4][1]["output_index"] == 1


@async_test
async def test_responses_max_output_tokens_incomplete() -> None:
    body = {"model": "gpt-test", "input": "hi", "max_output_tokens": 4}
    async with serving() as (_, http):
        _, data = await post(http, RESP, body)
        raw = await post_raw(http, RESP, {**body, "stream": True})
    assert data["status"] == "incomplete"
    assert data["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["output"][0]["content"][0]["text"] == "mock: 1 messages"
    assert data["usage"]["output_tokens"] == 4
    events = responses_events(raw)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"]["reason"] == "max_output_tokens"


@async_test
async def test_previous_response_id_chains_history() -> None:
    async with serving() as (_, http):
        first = {"model": "gpt-test", "input": "My name is Li.", "instructions": "sys"}
        _, one = await post(http, RESP, first)
        second = {"model": "gpt-test", "input": "Who am I?", "previous_response_id": one["id"]}
        _, two = await post(http, RESP, {**second, "instructions": "sys"})
        status, got = await post_raw_get(http, f"{RESP}/{one['id']}")
    text = two["output"][0]["content"][0]["text"]
    # system + "My name is Li." + mock reply + "Who am I?"
    assert text.startswith(f"mock: 4 messages; last user #{digest('Who am I?')}")
    assert text.endswith('| earlier: user "My name is Li."')
    assert two["previous_response_id"] == one["id"]
    assert two["usage"]["input_tokens_details"]["cached_tokens"] > 0
    assert (status, got) == (200, one)


async def post_raw_get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as r:
        return r.status, await r.json()


@async_test
async def test_previous_response_id_unknown_store_false_and_eviction() -> None:
    async with serving(max_stored_responses=2) as (_, http):
        status, data = await post(
            http, RESP, {"model": "m", "input": "x", "previous_response_id": "resp_nope"}
        )
        assert status == 400
        assert data["error"]["param"] == "previous_response_id"
        assert data["error"]["message"] == "Previous response with id 'resp_nope' not found."
        assert data["error"]["type"] == "invalid_request_error"
        _, unstored = await post(http, RESP, {"model": "m", "input": "x", "store": False})
        ids = [(await post(http, RESP, {"model": "m", "input": str(i)}))[1]["id"] for i in range(3)]
        for rid, ok in [(unstored["id"], False), (ids[0], False), (ids[1], True), (ids[2], True)]:
            status, _ = await post(
                http, RESP, {"model": "m", "input": "y", "previous_response_id": rid}
            )
            assert (status == 200) is ok
        status, data = await post_raw_get(http, f"{RESP}/resp_nope")
        assert status == 404 and data["error"]["message"]


@async_test
async def test_responses_accepts_replayed_output_items() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "A"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Scripted B", "annotations": []}],
        },
        {"type": "message", "role": "developer", "content": "dev note"},
        {"role": "user", "content": "C"},
    ]
    async with serving() as (_, http):
        _, data = await post(http, RESP, {"model": "m", "input": items})
    text = data["output"][0]["content"][0]["text"]
    assert text.startswith("mock: 4 messages;")
    assert text.endswith('| earlier: user "A"; assistant "Scripted B"')


# --- Gemini -------------------------------------------------------------------------


@async_test
async def test_gemini_json_camel_and_snake_case() -> None:
    contents = [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "thinking", "thought": True}, {"text": "Hello!"}]},
        {"parts": [{"text": "A joke?"}]},
    ]
    camel = {
        "contents": contents,
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}},
    }
    snake = {
        "contents": contents,
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "generation_config": {"thinking_config": {"thinking_budget": 1024}},
    }
    async with serving() as (_, http):
        _, a = await post(http, GEM, camel)
        _, b = await post(http, GEM, snake)
    assert a["candidates"] == b["candidates"]
    cand = a["candidates"][0]
    assert cand["finishReason"] == "STOP" and cand["index"] == 0
    assert cand["content"]["role"] == "model"
    text = cand["content"]["parts"][0]["text"]
    conv = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "A joke?")]
    assert text == reply_text(conv)
    use = a["usageMetadata"]
    assert use["thoughtsTokenCount"] == 64 and use["candidatesTokenCount"] == tokens(text)
    assert use["totalTokenCount"] == use["promptTokenCount"] + tokens(text) + 64
    assert use["promptTokenCount"] == input_tokens(conv)
    assert a["modelVersion"] == "gemini-test"


@async_test
async def test_gemini_thoughts_and_max_tokens_without_parts() -> None:
    cfg = {"thinkingConfig": {"thinkingBudget": -1, "includeThoughts": True}}
    async with serving() as (_, http):
        _, data = await post(http, GEM, {**GEM_HI, "generationConfig": cfg})
        _, cut = await post(
            http, GEM, {**GEM_HI, "generationConfig": {**cfg, "maxOutputTokens": 32}}
        )
        quiet = {"thinkingConfig": {"thinkingBudget": -1}, "maxOutputTokens": 32}
        _, bare = await post(http, GEM, {**GEM_HI, "generationConfig": quiet})
    thought, answer = data["candidates"][0]["content"]["parts"]
    assert thought["thought"] is True and "thought" not in answer
    assert data["usageMetadata"]["thoughtsTokenCount"] == 32
    cand = cut["candidates"][0]
    assert cand["finishReason"] == "MAX_TOKENS"
    assert [p.get("thought") for p in cand["content"]["parts"]] == [True]
    cand = bare["candidates"][0]
    assert cand["finishReason"] == "MAX_TOKENS" and cand["content"] == {"role": "model"}
    assert bare["usageMetadata"]["thoughtsTokenCount"] == 32


@async_test
async def test_gemini_sse_crlf_frames_incremental() -> None:
    body = {
        **GEM_HI,
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 8, "includeThoughts": True}},
    }
    async with serving() as (_, http):
        _, whole = await post(http, GEM, body)
        async with http.post(GEM_SSE, json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            raw = await r.read()
        array = await post_raw(http, GEM_SSE.split("?")[0], body)
    assert b"event:" not in raw and b"[DONE]" not in raw
    assert raw.count(b"\r\n\r\n") == raw.count(b"data: ")
    chunks = [json.loads(p) for p in sse_payloads(raw, "\r\n\r\n")]
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    assert parts[0] == {"text": "mock thought: reading 1 messages.", "thought": True}
    text = "".join(p["text"] for p in parts[1:])
    assert text == whole["candidates"][0]["content"]["parts"][1]["text"]
    assert [("finishReason" in c["candidates"][0]) for c in chunks] == [False] * (
        len(chunks) - 1
    ) + [True]
    assert chunks[-1]["usageMetadata"] == whole["usageMetadata"]
    running = [c["usageMetadata"]["totalTokenCount"] for c in chunks]
    assert running == sorted(running)
    assert [{**c, "responseId": ""} for c in json.loads(array)] == [
        {**c, "responseId": ""} for c in chunks
    ]


# --- faults ---------------------------------------------------------------------------


@async_test
async def test_error_rate_one_gives_only_retryable_errors() -> None:
    seen: dict[int, dict] = {}
    async with serving(error_rate=1.0, retry_after_ms=50) as (_, http):
        for _ in range(40):
            async with http.post(CHAT, json=chat_body(USER_HI)) as r:
                seen[r.status] = {"headers": dict(r.headers), "body": await r.json()}
            async with http.post(GEM, json=GEM_HI) as r:
                seen[r.status + 1000] = {"headers": dict(r.headers), "body": await r.json()}
    assert set(seen) == {429, 500, 503, 1429, 1500, 1503}
    assert seen[429]["headers"]["retry-after-ms"] == "50"
    assert seen[429]["headers"]["Retry-After"] == "1"
    assert seen[429]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert seen[429]["body"]["error"]["type"] == "rate_limit_error"
    assert seen[503]["body"]["error"] == {
        "message": seen[503]["body"]["error"]["message"],
        "type": "service_unavailable_error",
        "param": None,
        "code": "server_is_overloaded",
    }
    assert seen[500]["body"]["error"]["type"] == "server_error"
    gem429 = seen[1429]["body"]["error"]
    assert gem429["code"] == 429 and gem429["status"] == "RESOURCE_EXHAUSTED"
    assert gem429["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"}
    ]
    assert seen[1503]["body"]["error"]["status"] == "UNAVAILABLE"
    assert seen[1500]["body"]["error"]["status"] == "INTERNAL"


@async_test
async def test_seeded_faults_are_reproducible() -> None:
    async def statuses(seed: int) -> list[int]:
        async with serving(seed=seed, error_rate=0.5) as (_, http):
            out = []
            for _ in range(30):
                async with http.post(CHAT, json=chat_body(USER_HI)) as r:
                    out.append(r.status)
            return out

    first = await statuses(7)
    assert first == await statuses(7)
    assert 200 in first and len(set(first)) > 1


async def read_until_cut(http: aiohttp.ClientSession, path: str, body: Any) -> bytes:
    """Read a response body that the server cuts off; returns what arrived."""
    got = b""
    async with http.post(path, json=body) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in r.content.iter_any():
                got += chunk
    return got


@async_test
async def test_cut_rate_one_truncates_streams_and_bodies() -> None:
    async with serving(cut_rate=1.0) as (_, http):
        chat = await read_until_cut(http, CHAT, chat_body(USER_HI, stream=True))
        resp = await read_until_cut(http, RESP, {"model": "m", "input": "hi", "stream": True})
        gem = await read_until_cut(http, GEM_SSE, GEM_HI)
        body = await read_until_cut(http, CHAT, chat_body(USER_HI))
    assert chat.startswith(b"data: ") and b"[DONE]" not in chat
    assert b"response.created" in resp and b"response.completed" not in resp
    assert gem.startswith(b"data: ") and b"finishReason" not in gem
    assert body.startswith(b'{"id":"chatcmpl-')
    with pytest.raises(ValueError):
        json.loads(body)


@async_test
async def test_malformed_rate_one_gives_invalid_json() -> None:
    async with serving(malformed_rate=1.0) as (_, http):
        for path, body in [(CHAT, chat_body(USER_HI)), (GEM, GEM_HI), (RESP, {"model": "m"})]:
            raw = await post_raw(http, path, body)
            with pytest.raises(ValueError):
                json.loads(raw)
        raw = await post_raw(http, CHAT, chat_body(USER_HI, stream=True))
    (payload,) = sse_payloads(raw)
    with pytest.raises(ValueError):
        json.loads(payload)


@async_test
async def test_latency_and_slow_first_byte() -> None:
    # the server waits at least 100 - 20 + 150 ms before its first byte. It runs on this
    # event loop, so a client deadline of 220 ms (a timer armed before the server's) always
    # runs out first, however slow the machine: an ordering of two timers, not a measurement
    async with serving(latency_ms=100, jitter_ms=20, slow_rate=1.0, slow_ms=150) as (_, http):
        with pytest.raises(TimeoutError):
            await post(http, CHAT, chat_body(USER_HI), timeout=aiohttp.ClientTimeout(total=0.22))
        status, body = await post(http, CHAT, chat_body(USER_HI))
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("mock:")


@async_test
async def test_many_concurrent_requests() -> None:
    """500 requests in flight at once all get their own answer (no speed is asserted)."""
    server = await start_mock(MockOptions(latency_ms=200))
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(server.base_url, connector=connector) as http:
            bodies = [chat_body([{"role": "user", "content": str(i)}]) for i in range(500)]
            results = await asyncio.gather(*(post(http, CHAT, b) for b in bodies))
    finally:
        await server.close()
    assert all(status == 200 for status, _ in results)
    texts = [body["choices"][0]["message"]["content"] for _, body in results]
    assert all(f'"{i}"' in text for i, text in enumerate(texts))


# --- auth, recording, markers --------------------------------------------------------


@async_test
async def test_require_key_openai() -> None:
    async with serving(require_key="sk-good") as (_, http):
        for headers in [{}, {"Authorization": "Bearer sk-bad"}, {"Authorization": "sk-good"}]:
            status, data = await post(http, CHAT, chat_body(USER_HI), headers=headers)
            assert status == 401 and set(data["error"]) == {"message", "type", "param", "code"}
            assert "sk-" not in data["error"]["message"]
        status, _ = await post(http, RESP, {"model": "m", "input": "x"})
        assert status == 401
        good = {"Authorization": "Bearer sk-good"}
        assert (await post(http, CHAT, chat_body(USER_HI), headers=good))[0] == 200
        assert (await post(http, RESP, {"model": "m", "input": "x"}, headers=good))[0] == 200


GEMINI_AUTH_FORMS = [
    ({"x-goog-api-key": "{k}"}, ""),
    ({}, "key={k}"),
    ({"Authorization": "Bearer {k}"}, ""),
    ({"Authorization": "{k}"}, ""),
]


@pytest.mark.parametrize(("headers", "query"), GEMINI_AUTH_FORMS)
@async_test
async def test_require_key_gemini_forms(headers: dict, query: str) -> None:
    async with serving(require_key="g-key") as (_, http):
        for key, expected in [("g-key", 200), ("wrong", 401)]:
            hdrs = {k: v.format(k=key) for k, v in headers.items()}
            path = GEM + ("?" + query.format(k=key) if query else "")
            status, data = await post(http, path, GEM_HI, headers=hdrs)
            assert status == expected
        assert data["error"]["status"] == "UNAUTHENTICATED" and data["error"]["code"] == 401


@async_test
async def test_recording() -> None:
    async with serving(record=True) as (server, http):
        await post(http, CHAT, chat_body(USER_HI), headers={"Authorization": "Bearer k"})
        await post(http, GEM + "?key=q", GEM_HI)
    first, second = server.requests
    assert first["path"] == CHAT and first["json"] == chat_body(USER_HI)
    assert first["headers"]["authorization"] == "Bearer k" and first["query"] == {}
    assert second["path"] == GEM and second["query"] == {"key": "q"}


@async_test
async def test_blocked_marker_on_all_protocols() -> None:
    blocked = [{"role": "user", "content": "say it [[block]]"}]
    gem = {"contents": [{"parts": [{"text": "say it [[block]]"}]}]}
    async with serving() as (_, http):
        _, g = await post(http, GEM, gem)
        graw = await post_raw(http, GEM_SSE, gem)
        _, c = await post(http, CHAT, chat_body(blocked))
        craw = await post_raw(http, CHAT, chat_body(blocked, stream=True))
        _, r = await post(http, RESP, {"model": "m", "input": blocked})
    assert "candidates" not in g and g["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in json.loads(sse_payloads(graw, "\r\n\r\n")[0])
    choice = c["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None
    assert c["usage"]["completion_tokens"] == 0
    chunks = [json.loads(p) for p in sse_payloads(craw)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "content_filter"}
    assert r["output"] == []


@async_test
async def test_error_marker_fails_midstream() -> None:
    failing = [{"role": "user", "content": "please [[error]]"}]
    async with serving() as (_, http):
        status, data = await post(http, CHAT, chat_body(failing))
        assert status == 500 and data["error"]["type"] == "server_error"
        chat = sse_payloads(await post_raw(http, CHAT, chat_body(failing, stream=True)))
        resp = await post_raw(http, RESP, {"model": "m", "input": failing, "stream": True})
        gem = await post_raw(http, GEM_SSE, {"contents": [{"parts": [{"text": "[[error]]"}]}]})
    assert "[DONE]" not in chat and "error" in json.loads(chat[-1])
    assert responses_events(resp)[-1][0] == "response.failed"
    assert "error" in json.loads(sse_payloads(gem, "\r\n\r\n")[-1])


# --- serve() -------------------------------------------------------------------------


def test_serve_prints_url_and_stops_on_sigterm() -> None:
    code = "from runner.mock import MockOptions, serve; serve(MockOptions(), '127.0.0.1', 0)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", code]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            match = re.fullmatch(r"mock server listening on (http://127\.0\.0\.1:(\d+))\n", line)
            assert match and int(match.group(2)) > 0
            assert asyncio.run(asyncio.wait_for(ping(match.group(1)), TIMEOUT_S)) == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


async def ping(base_url: str) -> int:
    """Status of one chat request to a server at base_url."""
    async with aiohttp.ClientSession() as http:
        status, _ = await post(http, base_url + CHAT, chat_body(USER_HI))
        return status
