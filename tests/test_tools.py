"""Tool calls on the wire, in each protocol, streamed and not: a small raw aiohttp server
answers as each provider documents (protocols.md §6), and every request the runner sends
back is compared whole: calls, ids, results, their order and place."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from conftest import play

SCENARIO = """
id: trip
system: Be brief.
tools:
  - name: get_weather
    description: Current weather for a city
    parameters: {type: object, properties: {city: {type: string}}, required: [city]}
  - name: lookup_order
    description: An order's state
    parameters: {type: object, properties: {order_id: {type: string}}}
tool_results:
  get_weather: {temp_c: 21}
  lookup_order: "Order {{args.order_id}} shipped"
turns:
  - assistant: {tool_calls: [{name: get_weather, args: {city: Rome}}]}
  - tool: {name: get_weather, result: {temp_c: 25}}
  - assistant: It is 25 in Rome.
  - user: Weather in Paris and order A7?
    expect: {tool_called: {name: get_weather, args: {city: Paris}}, contains: [shipped]}
  - user: And Oslo?
    expect: {tool_called: [{name: get_weather, times: 1}], no_tool_called: lookup_order}
  - user: Thanks
    expect: {no_tool_called: true}
"""

PARIS, A7, OSLO = {"city": "Paris"}, {"order_id": "A7"}, {"city": "Oslo"}
# what the server answers, request by request: calls (id, name, args) with text, or text
SCRIPT: list[tuple[str, list[tuple[str, str, dict[str, Any]]]]] = [
    ("Let me check.", [("id_a", "get_weather", PARIS), ("id_b", "lookup_order", A7)]),
    ("Sunny, shipped.", []),
    ("", [("id_c", "get_weather", OSLO)]),
    ("Cold.", []),
    ("Bye.", []),
]
USAGE_CHAT = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def args_text(args: dict[str, Any]) -> str:
    return json.dumps(args, separators=(",", ":"))


def pieces(text: str, n: int = 3) -> list[str]:
    """TEXT cut in pieces of N characters: argument fragments split anywhere."""
    return [text[i : i + n] for i in range(0, len(text), n)]


# ---------------------------------------------------------------- answers, as documented


def chat_answer(text: str, calls: list, stream: bool) -> Any:
    finish = "tool_calls" if calls else "stop"
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": args_text(a)}}
                for i, n, a in calls
            ]
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [choice],
            "usage": USAGE_CHAT,
        }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": text}]
    for k, (i, n, _) in enumerate(calls):  # the first fragment: id, type, name
        fragment = {
            "index": k,
            "id": i,
            "type": "function",
            "function": {"name": n, "arguments": ""},
        }
        deltas.append({"tool_calls": [fragment]})
    # then the arguments, both calls interleaved, only index and a piece each
    cut = [pieces(args_text(a)) for _, _, a in calls]
    for j in range(max(map(len, cut), default=0)):
        for k, parts in enumerate(cut):
            if j < len(parts):
                deltas.append({"tool_calls": [{"index": k, "function": {"arguments": parts[j]}}]})
    chunks = [
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": d, "finish_reason": None}],
        }
        for d in deltas
    ]
    chunks.append({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({"id": "c1", "choices": [], "usage": USAGE_CHAT})
    return [*chunks, "[DONE]"]


def responses_answer(text: str, calls: list, stream: bool) -> Any:
    output: list[dict[str, Any]] = []
    if text:
        part = {"type": "output_text", "text": text, "annotations": []}
        output.append(
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        )
    items = [
        {
            "type": "function_call",
            "id": f"fc_{i}",
            "call_id": i,
            "name": n,
            "arguments": args_text(a),
            "status": "completed",
        }
        for i, n, a in calls
    ]
    usage = {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": output + items,
        "usage": usage,
    }
    if not stream:
        return response
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {**response, "status": "in_progress", "output": []},
        }
    ]
    if text:
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": text,
            }
        )
    for k, item in enumerate(items, start=len(output)):
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": k,
                "item": {**item, "arguments": "", "status": "in_progress"},
            }
        )
        for piece in pieces(item["arguments"]):
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": k,
                    "delta": piece,
                }
            )
        events.append(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item["id"],
                "output_index": k,
                "arguments": item["arguments"],
            }
        )
        events.append({"type": "response.output_item.done", "output_index": k, "item": item})
    return [*events, {"type": "response.completed", "response": response}]


def gemini_answer(text: str, calls: list, stream: bool) -> Any:
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for i, n, a in calls:  # ids given for the parallel calls only: Gemini may give none
        call = {"name": n, "args": a, **({"id": f"g_{i}"} if len(calls) > 1 else {})}
        parts.append({"functionCall": call})
    usage = {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}
    chunk = {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": usage,
    }
    return [chunk] if stream else chunk


def anthropic_answer(text: str, calls: list, stream: bool) -> Any:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
    stop = "tool_use" if calls else "end_turn"
    usage = {"input_tokens": 9, "output_tokens": 3}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": blocks,
        "stop_reason": stop,
        "usage": usage,
    }
    if not stream:
        return message
    head = {**message, "content": [], "stop_reason": None}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": head}]
    for k, block in enumerate(blocks):
        if block["type"] == "text":
            start, deltas = {"type": "text", "text": ""}, [{"type": "text_delta", "text": text}]
        else:
            start = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in ["", *pieces(args_text(block["input"]))]
            ]
        events.append({"type": "content_block_start", "index": k, "content_block": start})
        events += [{"type": "content_block_delta", "index": k, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": k})
    events.append({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage})
    return [*events, {"type": "message_stop"}]


ANSWERS: dict[str, Callable[[str, list, bool], Any]] = {
    "chat": chat_answer,
    "responses": responses_answer,
    "gemini": gemini_answer,
    "anthropic": anthropic_answer,
}
ROUTES = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "gemini": "/v1beta/models/{target}",
    "anthropic": "/v1/messages",
}


def scripted_server(protocol: str, stream: bool, script: list) -> tuple[web.Application, list]:
    """An app answering each request with the next answer of SCRIPT; the bodies it got."""
    bodies: list[dict[str, Any]] = []

    async def respond(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        text, calls = script[len(bodies) - 1]
        answer = ANSWERS[protocol](text, calls, stream)
        if not stream:
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in answer:
            data = event if isinstance(event, str) else json.dumps(event)
            named = f"event: {event['type']}\n" if protocol == "anthropic" and data != event else ""
            await resp.write(f"{named}data: {data}\n\n".encode())
        return resp

    app = web.Application()
    app.router.add_post(ROUTES[protocol], respond)
    return app, bodies


# ---------------------------------------------------------------- what must be sent back


def chat_call(i: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": i, "type": "function", "function": {"name": name, "arguments": args_text(args)}}


CHAT_HISTORY = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [chat_call("call_0_0", "get_weather", {"city": "Rome"})],
    },
    {"role": "tool", "tool_call_id": "call_0_0", "content": '{"temp_c":25}'},
    {"role": "assistant", "content": "It is 25 in Rome."},
    {"role": "user", "content": "Weather in Paris and order A7?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            chat_call("id_a", "get_weather", PARIS),
            chat_call("id_b", "lookup_order", A7),
        ],
    },
    {"role": "tool", "tool_call_id": "id_a", "content": '{"temp_c":21}'},
    {"role": "tool", "tool_call_id": "id_b", "content": "Order A7 shipped"},
    {"role": "assistant", "content": "Sunny, shipped."},
    {"role": "user", "content": "And Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [chat_call("id_c", "get_weather", OSLO)]},
    {"role": "tool", "tool_call_id": "id_c", "content": '{"temp_c":21}'},
    {"role": "assistant", "content": "Cold."},
    {"role": "user", "content": "Thanks"},
]


def fc(i: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function_call", "call_id": i, "name": name, "arguments": args_text(args)}


def fco(i: str, output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": i, "output": output}


RESPONSES_HISTORY = [
    fc("call_0_0", "get_weather", {"city": "Rome"}),
    fco("call_0_0", '{"temp_c":25}'),
    {"role": "assistant", "content": "It is 25 in Rome."},
    {"role": "user", "content": "Weather in Paris and order A7?"},
    {"role": "assistant", "content": "Let me check."},
    fc("id_a", "get_weather", PARIS),
    fc("id_b", "lookup_order", A7),
    fco("id_a", '{"temp_c":21}'),
    fco("id_b", "Order A7 shipped"),
    {"role": "assistant", "content": "Sunny, shipped."},
    {"role": "user", "content": "And Oslo?"},
    fc("id_c", "get_weather", OSLO),
    fco("id_c", '{"temp_c":21}'),
    {"role": "assistant", "content": "Cold."},
    {"role": "user", "content": "Thanks"},
]


def model(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


GEMINI_HISTORY = [
    model({"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}),
    user({"functionResponse": {"name": "get_weather", "response": {"temp_c": 25}}}),
    model({"text": "It is 25 in Rome."}),
    user({"text": "Weather in Paris and order A7?"}),
    model(
        {"text": "Let me check."},
        {"functionCall": {"name": "get_weather", "args": PARIS, "id": "g_id_a"}},
        {"functionCall": {"name": "lookup_order", "args": A7, "id": "g_id_b"}},
    ),
    user(
        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}, "id": "g_id_a"}},
        {
            "functionResponse": {
                "name": "lookup_order",
                "response": {"output": "Order A7 shipped"},
                "id": "g_id_b",
            }
        },
    ),
    model({"text": "Sunny, shipped."}),
    user({"text": "And Oslo?"}),
    model({"functionCall": {"name": "get_weather", "args": OSLO}}),  # no id given: none sent
    user({"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}),
    model({"text": "Cold."}),
    user({"text": "Thanks"}),
]


def use(i: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": i, "name": name, "input": args}


def result(i: str, content: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": i, "content": content}


ANTHROPIC_HISTORY = [
    {"role": "assistant", "content": [use("call_0_0", "get_weather", {"city": "Rome"})]},
    {"role": "user", "content": [result("call_0_0", '{"temp_c":25}')]},
    {"role": "assistant", "content": "It is 25 in Rome."},
    {"role": "user", "content": "Weather in Paris and order A7?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check."},
            use("id_a", "get_weather", PARIS),
            use("id_b", "lookup_order", A7),
        ],
    },
    {
        "role": "user",
        "content": [result("id_a", '{"temp_c":21}'), result("id_b", "Order A7 shipped")],
    },  # parallel: one message
    {"role": "assistant", "content": "Sunny, shipped."},
    {"role": "user", "content": "And Oslo?"},
    {"role": "assistant", "content": [use("id_c", "get_weather", OSLO)]},
    {"role": "user", "content": [result("id_c", '{"temp_c":21}')]},
    {"role": "assistant", "content": "Cold."},
    {"role": "user", "content": "Thanks"},
]

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ORDER = {"type": "object", "properties": {"order_id": {"type": "string"}}}
TOOLS = [
    ("get_weather", "Current weather for a city", WEATHER),
    ("lookup_order", "An order's state", ORDER),
]


def history_and_tools(protocol: str, body: dict[str, Any]) -> tuple[list, Any]:
    """The history a request sent and its tools, as the protocol puts them."""
    if protocol == "chat":
        return body["messages"], body["tools"]
    if protocol == "responses":
        assert body["instructions"] == "Be brief."
        return body["input"], body["tools"]
    if protocol == "gemini":
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        return body["contents"], body["tools"]
    assert body["system"] == "Be brief."
    return body["messages"], body["tools"]


EXPECTED = {
    "chat": (
        CHAT_HISTORY,
        [5, 8, 10, 12, 14],
        [
            {"type": "function", "function": {"name": n, "description": d, "parameters": p}}
            for n, d, p in TOOLS
        ],
    ),
    "responses": (
        RESPONSES_HISTORY,
        [4, 9, 11, 13, 15],
        [
            {"type": "function", "name": n, "description": d, "parameters": p, "strict": False}
            for n, d, p in TOOLS
        ],
    ),
    "gemini": (
        GEMINI_HISTORY,
        [4, 6, 8, 10, 12],
        [
            {
                "functionDeclarations": [
                    {"name": n, "description": d, "parameters": p} for n, d, p in TOOLS
                ]
            }
        ],
    ),
    "anthropic": (
        ANTHROPIC_HISTORY,
        [4, 6, 8, 10, 12],
        [{"name": n, "description": d, "input_schema": p} for n, d, p in TOOLS],
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("protocol", list(ANSWERS))
def test_a_tool_conversation_sends_the_exact_history_at_every_request(
    tmp_path, serve_app, protocol, stream
):
    app, bodies = scripted_server(protocol, stream, SCRIPT)
    flag = "--stream" if stream else "--no-stream"
    played = play(tmp_path, SCENARIO, flag, server=serve_app(app), targets=(protocol,))

    assert played.result.exit_code == 0, played.result.output
    history, lengths, tools = EXPECTED[protocol]
    sent = [history_and_tools(protocol, body) for body in bodies]
    assert [messages for messages, _ in sent] == [history[:n] for n in lengths]
    assert all(declared == tools for _, declared in sent)

    (record,) = played.transcripts
    assert record["version"] == 2 and record["status"] == "ok" and record["passed"] is True
    first, second, third = record["turns"]
    assert first["assistant"] == "Sunny, shipped." and first["request_attempts"] == [1, 1]
    assert [(c["name"], c["result"]) for c in first["tool_calls"]] == [
        ("get_weather", '{"temp_c":21}'),
        ("lookup_order", "Order A7 shipped"),
    ]
    assert first["usage"]["input_tokens"] == 18  # both requests of the turn
    assert (second["assistant"], third["assistant"]) == ("Cold.", "Bye.")
    assert "tool_calls" not in third
    # the usage records say which request of the turn's tool loop each was
    assert [(u["turn"], u["request"]) for u in played.usage] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
    ]


def test_call_ids_are_kept_exactly_in_the_record(tmp_path, serve_app):
    app, _ = scripted_server("chat", False, SCRIPT)
    played = play(tmp_path, SCENARIO, server=serve_app(app), targets=("chat",))
    (record,) = played.transcripts
    ids = [c["id"] for m in record["messages"] for c in m.get("tool_calls") or ()]
    results = [m["tool_call_id"] for m in record["messages"] if m["role"] == "tool"]
    assert ids == results == ["call_0_0", "id_a", "id_b", "id_c"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_arguments_that_are_not_json_are_a_malformed_reply(tmp_path, serve_app, stream):
    bodies: list = []

    async def respond(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        call = {
            "id": "id_x",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": Par'},
        }
        if not stream:
            choice = {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            }
            return web.json_response({"id": "c", "choices": [choice], "usage": USAGE_CHAT})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delta = {"tool_calls": [{"index": 0, **call}]}
        for chunk in (
            {"id": "c", "choices": [{"index": 0, "delta": delta}]},
            {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        ):
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", respond)
    flag = "--stream" if stream else "--no-stream"
    played = play(tmp_path, SCENARIO, flag, "--max-retries", "1", server=serve_app(app))

    assert played.result.exit_code == 3, played.result.output
    (record,) = played.transcripts
    assert record["error"]["kind"] == "malformed"
    assert "arguments is not valid JSON" in record["error"]["message"]
    assert len(bodies) == 2  # retried once, as a malformed body is
