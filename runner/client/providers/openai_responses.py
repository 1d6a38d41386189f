"""OpenAI Responses API (POST {base_url}/responses), with server-side history."""

from __future__ import annotations

import json
from typing import Any

from runner.client.providers.base import (
    Call,
    Capabilities,
    Reply,
    Request,
    StreamState,
    arguments,
    fields,
    items,
    loads,
    text_or_none,
    want,
)
from runner.client.providers.openai_chat import OpenAIProvider, openai_usage
from runner.encoding import to_json
from runner.errors import ApiError, Kind
from runner.messages import Image, Message, Tool, ToolCall, ToolResult

# scenario params that belong in the `reasoning` object
REASONING_KEYS = {"reasoning_effort": "effort", "reasoning_summary": "summary"}
TERMINAL = {"response.completed", "response.incomplete", "response.failed", "response.done"}


def response_reply(response: Any) -> Reply:
    """Text, finish reason and usage of a Response object; failures raise."""
    response = want(response, dict, "the response")
    status = text_or_none(response.get("status"), "the response status")
    if status == "failed" or response.get("error"):
        err = fields(response.get("error"), "the response error")
        code = err.get("code") or "failed"
        retryable = code in ("server_error", "rate_limit_exceeded")
        raise ApiError(
            Kind.HTTP, f"response failed ({code}): {err.get('message', '')}", retryable=retryable
        )
    text = output_text(items(response.get("output"), "output"))
    finish = status or "completed"  # a Response without a status is taken as complete
    if status == "incomplete":
        details = fields(response.get("incomplete_details"), "incomplete_details")
        finish = text_or_none(details.get("reason"), "the incomplete reason") or "incomplete"
    raw = response.get("usage")
    usage = openai_usage(raw, "input_tokens", "output_tokens")
    rid = text_or_none(response.get("id"), "the response id")
    calls = function_calls(items(response.get("output"), "output"))
    return Reply(text, finish, usage, raw, rid, tool_calls=calls)


def function_calls(output: list[Any]) -> tuple[ToolCall, ...]:
    """The `function_call` output items as calls (their `call_id` is the call's id)."""
    return tuple(
        ToolCall(
            want(item.get("call_id"), str, "a function call's call_id"),
            want(item.get("name"), str, "a function call's name"),
            arguments(item.get("arguments", ""), "a function call's arguments"),
        )
        for item in output
        if want(item, dict, "an output item").get("type") == "function_call"
    )


def input_items(message: Message) -> list[dict[str, Any]]:
    """A message as Responses input items: text as a string; an assistant's calls as
    `function_call` items after its text; a result as a `function_call_output` item; a
    user turn with images as `input_text` and `input_image` parts."""
    if message.plain:
        return [{"role": message.role, "content": message.text}]
    first = message.parts[0]
    if isinstance(first, ToolResult):
        return [{"type": "function_call_output", "call_id": first.call_id, "output": first.content}]
    calls = message.calls
    if calls:
        said = [{"role": message.role, "content": message.text}] if message.text else []
        return said + [
            {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
            for c in calls
        ]
    parts = [
        {"type": "input_image", "image_url": p.url, "detail": "auto"}
        if isinstance(p, Image)
        else {"type": "input_text", "text": p.text}
        for p in message.parts
    ]
    return [{"role": message.role, "content": parts}]


def responses_tool(tool: Tool) -> dict[str, Any]:
    """A tool as Responses declares it: flat, no `function` wrapper; strict as given, else
    off (the schema is sent as written)."""
    return {"type": "function", "name": tool.name, "description": tool.description,
            "parameters": tool.parameters, "strict": bool(tool.strict)}  # fmt: skip


def output_text(output: list[Any]) -> str:
    """Join the output_text parts of message items; reasoning items carry no answer text."""
    texts = []
    for item in output:
        if want(item, dict, "an output item").get("type") != "message":
            continue
        for part in items(item.get("content"), "a message's content"):
            kind = want(part, dict, "a content part").get("type")
            if kind in ("output_text", "refusal"):
                key = "text" if kind == "output_text" else "refusal"
                texts.append(text_or_none(part.get(key), f"a part's {key}") or "")
    return "".join(texts)


class OpenAIResponses(OpenAIProvider):
    name = "openai-responses"
    capabilities = Capabilities(
        server_context=True, stream_usage=True, batch=True, images=True, tools=True
    )
    mock_target = ("mock-responses", "mock-responses")

    def build(self, call: Call) -> Request:
        # the system prompt goes in `instructions`: it is not carried over by
        # previous_response_id, so it is sent again on every turn
        messages = [item for m in call.messages for item in input_items(m)]
        body: dict[str, Any] = {"model": self.model, "input": messages}
        if call.tools:
            body["tools"] = [responses_tool(t) for t in call.tools]
        if call.system is not None:
            body["instructions"] = call.system
        body.update(self._params(call.params))
        if call.previous_id:
            body["previous_response_id"] = call.previous_id
        if call.stream:
            body["stream"] = True
        return Request(f"{self.base_url}/responses", self.headers, to_json(body), call.stream)

    @staticmethod
    def _params(params: dict[str, Any]) -> dict[str, Any]:
        """Chat-style names people write (max_tokens, reasoning_effort) mapped to Responses ones."""
        out: dict[str, Any] = {}
        reasoning = dict(params.get("reasoning") or {})
        for key, value in params.items():
            if key in REASONING_KEYS:
                reasoning[REASONING_KEYS[key]] = value
            elif key in ("max_tokens", "max_completion_tokens"):
                out["max_output_tokens"] = value
            elif key != "reasoning":
                out[key] = value
        if reasoning:
            out["reasoning"] = reasoning
        return out

    def parse(self, body: dict[str, Any]) -> Reply:
        if not isinstance(body, dict) or body.get("object") not in (None, "response"):
            raise ApiError(Kind.MALFORMED, "the body is not a Response object", retryable=True)
        if "output" not in body:
            raise ApiError(Kind.MALFORMED, "the body is not a Response object", retryable=True)
        return response_reply(body)

    def stream_state(self) -> StreamState:
        return ResponsesStream()


class ResponsesStream(StreamState):
    __slots__ = ("final",)

    def __init__(self) -> None:
        super().__init__()
        self.final: dict[str, Any] | None = None

    def feed(self, event: str, data: str) -> bool:
        if data == "[DONE]":
            return self.final is not None
        payload = want(loads(data, "stream event"), dict, "a stream event")
        kind = text_or_none(payload.get("type"), "an event's type") or event
        if kind == "response.output_text.delta":
            self.parts.append(text_or_none(payload.get("delta"), "a text delta") or "")
            self.started = True
        elif kind in TERMINAL:
            self.final = fields(payload.get("response"), "the final response")
            return True
        elif kind == "error":
            message = payload.get("message") or json.dumps(payload.get("error"))
            code = payload.get("code") or ""
            raise ApiError(Kind.HTTP, f"stream error {code}: {message}".strip(), retryable=True)
        return False

    def reply(self) -> Reply:
        if self.final is None:
            raise ApiError(
                Kind.STREAM, "the stream ended before response.completed", retryable=True
            )
        reply = response_reply(self.final)
        if not reply.text and self.parts:
            reply.text = "".join(self.parts)
        return reply
