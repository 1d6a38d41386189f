"""Fidelity of the mock server, judged by the official openai and google-genai SDKs."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types

from runner.mock import MockOptions, MockServer, MockThread, reply_text, start_mock, tokens
from tests.conftest import TIMEOUT_S


@pytest.fixture
def gem(server: MockServer) -> genai.Client:
    options = types.HttpOptions(base_url=server.base_url, timeout=TIMEOUT_S * 1000)
    return genai.Client(api_key="k", http_options=options)


# --- openai: Chat Completions -------------------------------------------------------


def test_chat_create(oai: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Scripted hello"},
        {"role": "user", "content": "你好"},
    ]
    done = oai.chat.completions.create(model="gpt-test", messages=messages, reasoning_effort="low")
    conv = [(m["role"], m["content"]) for m in messages]
    choice = done.choices[0]
    assert choice.message.content == reply_text(conv)
    assert choice.finish_reason == "stop" and done.model == "gpt-test"
    assert done.usage is not None
    assert done.usage.completion_tokens == tokens(reply_text(conv)) + 16
    assert done.usage.completion_tokens_details.reasoning_tokens == 16
    assert done.usage.prompt_tokens_details.cached_tokens == 16


def test_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Stream me a reply, please."}]
    stream = oai.chat.completions.create(
        model="gpt-test", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text([("user", "Stream me a reply, please.")])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == tokens(text)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_errors_raise_sdk_classes() -> None:
    with MockThread(MockOptions(require_key="right")) as srv:
        url = srv.base_url + "/v1"
        client = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with client, pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with MockThread(MockOptions(error_rate=1.0)) as srv:
        url = srv.base_url + "/v1"
        with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
            for _ in range(5):
                with pytest.raises((openai.RateLimitError, openai.InternalServerError)):
                    client.responses.create(model="m", input="x")


# --- openai: Responses ---------------------------------------------------------------


def test_responses_create_with_reasoning(oai: openai.OpenAI) -> None:
    resp = oai.responses.create(
        model="o-test",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "Scripted answer"},
            {"role": "user", "content": "Second question"},
        ],
        reasoning={"effort": "medium"},
    )
    conv = [
        ("system", "Be brief."),
        ("user", "First question"),
        ("assistant", "Scripted answer"),
        ("user", "Second question"),
    ]
    assert resp.output_text == reply_text(conv)
    assert resp.output[0].type == "reasoning" and resp.status == "completed"
    assert resp.usage is not None
    assert resp.usage.output_tokens_details.reasoning_tokens == 32
    assert resp.usage.output_tokens == tokens(resp.output_text) + 32
    expected_cached = sum(tokens(t) + 3 for _, t in conv[:-1]) // 16 * 16
    assert resp.usage.input_tokens_details.cached_tokens == expected_cached > 0


def test_responses_stream_events(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-test", input="Stream this", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == reply_text([("user", "Stream this")])
    assert final.usage is not None and final.usage.output_tokens == tokens(text)


def test_responses_previous_response_id(oai: openai.OpenAI) -> None:
    one = oai.responses.create(model="gpt-test", instructions="sys", input="My name is Li.")
    two = oai.responses.create(
        model="gpt-test", instructions="sys", input="Who am I?", previous_response_id=one.id
    )
    # the model sees: system, "My name is Li.", the first reply, "Who am I?"
    conv = [
        ("system", "sys"),
        ("user", "My name is Li."),
        ("assistant", one.output_text),
        ("user", "Who am I?"),
    ]
    assert two.output_text == reply_text(conv)
    assert two.output_text.startswith("mock: 4 messages;")
    assert oai.responses.retrieve(one.id).output_text == one.output_text
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="gpt-test", input="x", previous_response_id="resp_unknown")
    assert err.value.param == "previous_response_id"


def test_async_openai_client() -> None:
    async def go() -> str | None:
        srv = await start_mock()
        try:
            client = openai.AsyncOpenAI(base_url=srv.base_url + "/v1", api_key="k", max_retries=0)
            async with client:
                done = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "async"}]
                )
            return done.choices[0].message.content
        finally:
            await srv.close()

    text = asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    assert text == reply_text([("user", "async")])


# --- google-genai ---------------------------------------------------------------------


def test_gemini_generate_content_with_thoughts(gem: genai.Client) -> None:
    config = types.GenerateContentConfig(
        system_instruction="Be brief.",
        thinking_config=types.ThinkingConfig(thinking_budget=48, include_thoughts=True),
    )
    resp = gem.models.generate_content(model="gemini-test", contents="Hello", config=config)
    assert resp.text == reply_text([("system", "Be brief."), ("user", "Hello")])
    parts = resp.candidates[0].content.parts
    assert parts[0].thought is True and "mock thought" in parts[0].text
    use = resp.usage_metadata
    assert use.thoughts_token_count == 48 and use.candidates_token_count == tokens(resp.text)
    assert use.total_token_count == use.prompt_token_count + use.candidates_token_count + 48
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP


def test_gemini_stream(gem: genai.Client) -> None:
    chunks = list(gem.models.generate_content_stream(model="gemini-test", contents="Stream it"))
    assert len(chunks) > 1
    text = "".join(c.text or "" for c in chunks)
    assert text == reply_text([("user", "Stream it")])
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count == tokens(text)


def test_gemini_max_tokens_and_blocked(gem: genai.Client) -> None:
    config = types.GenerateContentConfig(max_output_tokens=5)
    cut = gem.models.generate_content(model="gemini-test", contents="Hi", config=config)
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert cut.text == "mock: 1 messages; la"
    blocked = gem.models.generate_content(model="gemini-test", contents="x [[block]]")
    assert not blocked.candidates
    assert blocked.prompt_feedback.block_reason == types.BlockedReason.SAFETY


def test_gemini_chat_carries_history(gem: genai.Client) -> None:
    chat = gem.chats.create(model="gemini-test")
    first = chat.send_message("My name is Li.")
    second = chat.send_message("Who am I?")
    conv = [("user", "My name is Li."), ("assistant", first.text), ("user", "Who am I?")]
    assert second.text == reply_text(conv)
    assert second.text.startswith("mock: 3 messages;")
    assert second.text.endswith('| earlier: user "My name is Li."')


def test_gemini_error_classes() -> None:
    with MockThread(MockOptions(require_key="right")) as srv:
        client = genai.Client(
            api_key="wrong", http_options=types.HttpOptions(base_url=srv.base_url)
        )
        with pytest.raises(genai.errors.ClientError) as err:
            client.models.generate_content(model="g", contents="x")
        assert err.value.code == 401 and err.value.status == "UNAUTHENTICATED"
    with MockThread(MockOptions(error_rate=1.0)) as srv:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=srv.base_url))
        for _ in range(5):
            with pytest.raises(genai.errors.APIError) as err:
                client.models.generate_content(model="g", contents="x")
            assert err.value.code in (429, 500, 503)
