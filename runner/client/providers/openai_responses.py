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
    fields,
    items,
    loads,
    text_or_none,
    want,
)
from runner.client.providers.openai_chat import OpenAIProvider, openai_message, openai_usage
from runner.encoding import to_json
from runner.errors import ApiError, Kind

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
    return Reply(text, finish, usage, raw, text_or_none(response.get("id"), "the response id"))


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
        messages = [openai_message(m) for m in call.messages]
        body: dict[str, Any] = {"model": self.model, "input": messages}
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
