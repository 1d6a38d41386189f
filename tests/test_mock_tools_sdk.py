"""The mock's tool-call replies in all four protocols, streamed and not, read by the official
openai, google-genai and anthropic SDKs; the mock echoes the results it is sent back."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from runner.mock import MockServer
from tests.conftest import TIMEOUT_S

ASK = 'Weather? call get_weather {"city": "Paris"} call get_weather {"city": "Oslo"}'
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PARIS, OSLO = {"city": "Paris"}, {"city": "Oslo"}


CHAT_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


def test_chat_tool_calls_read_by_the_sdk(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": ASK}]
    done = oai.chat.completions.create(model="m", messages=messages, tools=CHAT_TOOLS)
    choice = done.choices[0]
    calls = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", PARIS),
        ("get_weather", OSLO),
    ]
    assert len({c.id for c in calls}) == 2
    # the results sent back: the mock answers in text, echoing them
    messages.append(choice.message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": f"{k}0 C"} for k, c in
                 enumerate(calls, 1)]  # fmt: skip
    again = oai.chat.completions.create(model="m", messages=messages, tools=CHAT_TOOLS)
    text = again.choices[0].message.content or ""
    assert again.choices[0].finish_reason == "stop" and "tool results: 10 C; 20 C" in text


def test_chat_streamed_tool_calls_assemble_with_the_sdk(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": ASK}]
    with oai.chat.completions.stream(model="m", messages=messages, tools=CHAT_TOOLS) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [PARIS, OSLO]
    assert final.choices[0].finish_reason == "tool_calls"


RESPONSES_TOOLS: Any = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": False}
]


@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_calls_read_by_the_sdk(oai: openai.OpenAI, stream: bool) -> None:
    if stream:
        with oai.responses.stream(model="m", input=ASK, tools=RESPONSES_TOOLS) as events:
            done = events.get_final_response()
    else:
        done = oai.responses.create(model="m", input=ASK, tools=RESPONSES_TOOLS)
    calls = [item for item in done.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", PARIS),
        ("get_weather", OSLO),
    ]
    outputs: Any = [
        {"type": "function_call_output", "call_id": c.call_id, "output": "mild"} for c in calls
    ]
    again = oai.responses.create(
        model="m", input=outputs, previous_response_id=done.id, tools=RESPONSES_TOOLS
    )
    assert "tool results: mild; mild" in again.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_function_calls_read_by_the_sdk(server: MockServer, stream: bool) -> None:
    options = types.HttpOptions(base_url=server.base_url, timeout=TIMEOUT_S * 1000)
    client = genai.Client(api_key="k", http_options=options)
    declaration = types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[declaration])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    if stream:
        chunks = list(client.models.generate_content_stream(model="g", contents=ASK, config=config))
        calls = [c for chunk in chunks for c in chunk.function_calls or []]
    else:
        done = client.models.generate_content(model="g", contents=ASK, config=config)
        calls = done.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", PARIS), ("get_weather", OSLO)]
    history = [
        types.Content(role="user", parts=[types.Part(text=ASK)]),
        types.Content(role="model", parts=[types.Part(function_call=c) for c in calls]),
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name="get_weather", response={"output": "dry"})
                for _ in calls
            ],
        ),
    ]
    again = client.models.generate_content(model="g", contents=history, config=config)
    assert again.function_calls is None and 'tool results: {"output":"dry"}' in (again.text or "")


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_use_read_by_the_sdk(server: MockServer, stream: bool) -> None:
    client = anthropic.Anthropic(
        base_url=server.base_url, api_key="k", max_retries=0, timeout=TIMEOUT_S
    )
    tools: Any = [{"name": "get_weather", "input_schema": WEATHER}]
    messages: Any = [{"role": "user", "content": ASK}]
    if stream:
        with client.messages.stream(
            model="c", max_tokens=100, messages=messages, tools=tools
        ) as events:
            done = events.get_final_message()
    else:
        done = client.messages.create(model="c", max_tokens=100, messages=messages, tools=tools)
    uses = [b for b in done.content if b.type == "tool_use"]
    assert done.stop_reason == "tool_use"
    assert [(u.name, u.input) for u in uses] == [("get_weather", PARIS), ("get_weather", OSLO)]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in done.content]})
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "warm"} for u in uses]
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result`"):
        client.messages.create(  # a result missing: refused, as the API does
            model="c", max_tokens=100, tools=tools,
            messages=[*messages, {"role": "user", "content": results[:1]}],
        )  # fmt: skip
    messages.append({"role": "user", "content": results})
    again = client.messages.create(model="c", max_tokens=100, messages=messages, tools=tools)
    assert again.stop_reason == "end_turn"
    assert "tool results: warm; warm" in again.content[0].text  # type: ignore[union-attr]
    client.close()
