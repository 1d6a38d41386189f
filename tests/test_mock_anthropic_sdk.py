"""Fidelity of the mock's Anthropic Messages API, judged by the official `anthropic` SDK."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import pytest

from runner.mock import MockOptions, MockServer, MockThread, reply_text, start_mock, tokens

TIMEOUT_S = 10
MODEL = "claude-test"


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    """One mock server (key required, requests recorded) for the whole module."""
    with MockThread(MockOptions(require_key="k", record=True)) as srv:
        yield srv


@pytest.fixture
def claude(server: MockServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT_S
    )
    yield client
    client.close()


def prompt_tokens(conv: list[tuple[str, str]]) -> int:
    """The mock's input tokens for a conversation: text tokens plus three a message."""
    return sum(tokens(text) + 3 for _, text in conv)


def test_create_with_system_and_history(claude: anthropic.Anthropic, server: MockServer) -> None:
    messages: Any = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Scripted hello"},
        {"role": "user", "content": [{"type": "text", "text": "你好"}]},
    ]
    done = claude.messages.create(
        model=MODEL, max_tokens=1024, system="Be brief.", messages=messages
    )
    conv = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Scripted hello")]
    conv.append(("user", "你好"))
    assert [b.type for b in done.content] == ["text"]
    assert done.content[0].text == reply_text(conv)  # type: ignore[union-attr]
    assert done.stop_reason == "end_turn" and done.stop_sequence is None
    assert done.model == MODEL and done.role == "assistant" and done.id.startswith("msg_")
    assert done.usage.input_tokens == prompt_tokens(conv)
    assert done.usage.output_tokens == tokens(reply_text(conv))
    assert done.usage.cache_read_input_tokens == 0 == done.usage.cache_creation_input_tokens
    sent = server.requests[-1]
    assert sent["path"] == "/v1/messages" and sent["headers"]["authorization"] == "Bearer k"
    assert sent["headers"]["anthropic-version"]  # the SDK's own version, accepted as is


def test_stream_helper_text_and_final_message(claude: anthropic.Anthropic) -> None:
    system: Any = [{"type": "text", "text": "Be brief."}]
    messages: Any = [{"role": "user", "content": "Stream me a reply, please."}]
    with claude.messages.stream(
        model=MODEL, max_tokens=1024, system=system, messages=messages
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reply_text([("system", "Be brief."), ("user", "Stream me a reply, please.")])
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == tokens(text)
    assert final.usage.input_tokens == prompt_tokens(
        [("s", "Be brief."), ("u", messages[0]["content"])]
    )


def test_raw_stream_event_order(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Events, please."}]
    events = list(
        claude.messages.create(model=MODEL, max_tokens=99, messages=messages, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta" and kinds[1] == "content_block_start"
    assert kinds.count("content_block_delta") > 1 and kinds.count("content_block_stop") == 1
    start = events[0].message  # type: ignore[union-attr]
    assert start.stop_reason is None and start.content == []
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert delta.usage.output_tokens == tokens(text)  # type: ignore[union-attr]


def test_max_tokens_stop_sequence_refusal(claude: anthropic.Anthropic) -> None:
    hi: Any = [{"role": "user", "content": "Hi"}]
    cut = claude.messages.create(model=MODEL, max_tokens=5, messages=hi)
    assert cut.stop_reason == "max_tokens"
    assert cut.content[0].text == "mock: 1 messages; la"  # type: ignore[union-attr]
    stopped = claude.messages.create(
        model=MODEL, max_tokens=100, messages=hi, stop_sequences=["zzz", "messages"]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "messages"
    assert stopped.content[0].text == "mock: 1 "  # type: ignore[union-attr]
    blocked: Any = [{"role": "user", "content": "x [[block]]"}]
    refused = claude.messages.create(model=MODEL, max_tokens=100, messages=blocked)
    assert refused.stop_reason == "refusal" and refused.content == []
    assert refused.stop_details is not None and refused.stop_details.type == "refusal"


def test_thinking_blocks_streamed_and_not(claude: anthropic.Anthropic) -> None:
    hi: Any = [{"role": "user", "content": "Think first"}]
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    done = claude.messages.create(model=MODEL, max_tokens=2048, messages=hi, thinking=thinking)
    assert [b.type for b in done.content] == ["thinking", "text"]
    text = reply_text([("user", "Think first")])
    assert done.usage.output_tokens == tokens(text) + 64
    with claude.messages.stream(
        model=MODEL, max_tokens=2048, messages=hi, thinking=thinking
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == text  # type: ignore[union-attr]


def test_errors_raise_sdk_classes(server: MockServer) -> None:
    wrong = anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0)
    hi: Any = [{"role": "user", "content": "x"}]
    with wrong, pytest.raises(anthropic.AuthenticationError) as auth:
        wrong.messages.create(model=MODEL, max_tokens=10, messages=hi)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with MockThread(MockOptions(error_rate=1.0)) as srv:
        seen = set()
        with anthropic.Anthropic(base_url=srv.base_url, api_key="k", max_retries=0) as client:
            for _ in range(12):
                with pytest.raises(anthropic.APIStatusError) as err:
                    client.messages.create(model=MODEL, max_tokens=10, messages=hi)
                seen.add((err.value.status_code, type(err.value)))
                assert err.value.request_id and err.value.request_id.startswith("req_")
    assert (529, anthropic.OverloadedError) in seen
    assert {s for s, _ in seen} <= {429, 500, 529}


def test_marked_errors_and_missing_max_tokens(claude: anthropic.Anthropic) -> None:
    failing: Any = [{"role": "user", "content": "please fail [[error]]"}]
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model=MODEL, max_tokens=100, messages=failing)
    stream = claude.messages.create(model=MODEL, max_tokens=100, messages=failing, stream=True)
    with pytest.raises(anthropic.APIStatusError, match="api_error"):
        list(stream)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.post("/v1/messages", body=body, cast_to=anthropic.types.Message)


def test_prompt_caching_reads_a_prefix_it_has_seen(claude: anthropic.Anthropic) -> None:
    mark: Any = {"type": "ephemeral"}
    system: Any = [{"type": "text", "text": "A long shared system prompt.", "cache_control": mark}]
    history: list[Any] = []
    usages = []
    for turn in range(3):
        history.append(
            {
                "role": "user",
                "content": [{"type": "text", "text": f"Q{turn}", "cache_control": mark}],
            }
        )
        done = claude.messages.create(model=MODEL, max_tokens=500, system=system, messages=history)
        usages.append(done.usage)
        history[-1] = {"role": "user", "content": f"Q{turn}"}  # one breakpoint: the newest
        history.append({"role": "assistant", "content": done.content[0].text})  # type: ignore[union-attr]
    first, second, third = usages
    assert first.cache_read_input_tokens == 0 and first.input_tokens == 0
    assert first.cache_creation_input_tokens == prompt_tokens(
        [("s", system[0]["text"]), ("u", "Q0")]
    )
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert third.cache_read_input_tokens == (
        second.cache_read_input_tokens + second.cache_creation_input_tokens
    )
    assert first.cache_creation is not None and first.cache_creation.ephemeral_5m_input_tokens > 0
    unmarked: Any = [{"role": "user", "content": "Q0"}]
    plain = claude.messages.create(
        model=MODEL, max_tokens=500, system="A long shared system prompt.", messages=unmarked
    )
    assert plain.usage.cache_read_input_tokens == 0 == plain.usage.cache_creation_input_tokens


def test_rate_limit_headers_are_anthropic_ones() -> None:
    with MockThread(MockOptions(limit_rpm=2, limit_window_s=60)) as srv:
        hi: Any = [{"role": "user", "content": "x"}]
        with anthropic.Anthropic(base_url=srv.base_url, api_key="k", max_retries=0) as client:
            raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=9, messages=hi)
            client.messages.create(model=MODEL, max_tokens=9, messages=hi)
            with pytest.raises(anthropic.RateLimitError) as err:
                client.messages.create(model=MODEL, max_tokens=9, messages=hi)
    headers = raw.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    now = datetime.now(UTC)
    assert now - timedelta(seconds=5) < reset < now + timedelta(seconds=65)
    assert not any(k.lower().startswith("x-ratelimit") for k in headers)
    assert err.value.response.headers["retry-after"]
    assert err.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_rate_limit_headers_as_anthropic_documents_them() -> None:
    """Token `remaining` is rounded to the nearest thousand; a 429 says `retry-after` (whole
    seconds), and no `retry-after-ms`, which Anthropic does not send."""
    options = MockOptions(limit_rpm=1, limit_tpm=100_000, limit_window_s=60)
    with MockThread(options) as srv:
        hi: Any = [{"role": "user", "content": "x"}]
        with anthropic.Anthropic(base_url=srv.base_url, api_key="k", max_retries=0) as client:
            raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=9, messages=hi)
            with pytest.raises(anthropic.RateLimitError) as err:
                client.messages.create(model=MODEL, max_tokens=9, messages=hi)
    # about 30 of 100,000 used (refilled at 1,667 a second): 99,9xx, said as 100,000
    assert raw.headers["anthropic-ratelimit-tokens-remaining"] == "100000"
    refused = err.value.response.headers
    assert refused["anthropic-ratelimit-tokens-remaining"] == "100000"
    assert refused["anthropic-ratelimit-requests-remaining"] == "0"  # requests: not rounded
    assert int(refused["retry-after"]) >= 1 and "retry-after-ms" not in refused


def test_a_fault_429_says_only_retry_after() -> None:
    with MockThread(MockOptions(error_rate=1.0, retry_after_ms=50)) as srv:
        hi: Any = [{"role": "user", "content": "x"}]
        with anthropic.Anthropic(base_url=srv.base_url, api_key="k", max_retries=0) as client:
            seen = {}
            for _ in range(40):  # the seeded fault plan picks 429, 500 or 503 (said as 529)
                with pytest.raises(anthropic.APIStatusError) as err:
                    client.messages.create(model=MODEL, max_tokens=9, messages=hi)
                seen[err.value.status_code] = err.value.response.headers
    assert set(seen) == {429, 500, 529}
    assert seen[429]["retry-after"] == "1" and "retry-after-ms" not in seen[429]


def test_async_client_streams() -> None:
    async def go() -> tuple[str, str | None]:
        srv = await start_mock()
        try:
            client = anthropic.AsyncAnthropic(base_url=srv.base_url, api_key="k", max_retries=0)
            async with client:
                messages: Any = [{"role": "user", "content": "async"}]
                async with client.messages.stream(
                    model=MODEL, max_tokens=100, messages=messages
                ) as stream:
                    text = "".join([t async for t in stream.text_stream])
                    final = await stream.get_final_message()
            return text, final.stop_reason
        finally:
            await srv.close()

    text, reason = asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    assert text == reply_text([("user", "async")]) and reason == "end_turn"


def post_raw(server: MockServer, headers: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    """POST /v1/messages as the docs' curl examples do; (status, body, headers)."""
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "curl"}]}
    req = urllib.request.Request(
        server.base_url + "/v1/messages", data=json.dumps(body).encode(), method="POST"
    )
    for name, value in {"content-type": "application/json", **headers}.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_x_api_key_and_the_docs_version(server: MockServer) -> None:
    status, body, headers = post_raw(server, {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert status == 200 and body["content"][0]["text"] == reply_text([("user", "curl")])
    assert headers["request-id"].startswith("req_")
    status, body, headers = post_raw(server, {"x-api-key": "nope"})
    assert status == 401 and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert body["request_id"] == headers["request-id"]
