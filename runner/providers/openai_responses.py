"""OpenAI Responses API (POST {base_url}/responses), with server-side history."""

from __future__ import annotations

import json
from typing import Any

from runner.encoding import to_json
from runner.errors import ApiError, Kind
from runner.providers.base import Call, Reply, Request, StreamState, loads
from runner.providers.openai_chat import OpenAIProvider, openai_usage

# scenario params that belong in the `reasoning` object
REASONING_KEYS = {"reasoning_effort": "effort", "reasoning_summary": "summary"}
TERMINAL = {"response.completed", "response.incomplete", "response.failed", "response.done"}


def response_reply(response: dict[str, Any]) -> Reply:
    """Text, finish reason and usage of a Response object; failures raise."""
    status = response.get("status")
    if status == "failed" or response.get("error"):
        err = response.get("error") or {}
        code = err.get("code") or "failed"
        retryable = code in ("server_error", "rate_limit_exceeded")
        raise ApiError(
            Kind.HTTP, f"response failed ({code}): {err.get('message', '')}", retryable=retryable
        )
    text = output_text(response.get("output") or [])
    finish = status or "completed"  # a Response without a status is taken as complete
    if status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        finish = reason or "incomplete"
    raw = response.get("usage")
    usage = openai_usage(raw, "input_tokens", "output_tokens")
    return Reply(text, finish, usage, raw, response.get("id"))


def output_text(output: list[dict[str, Any]]) -> str:
    """Join the output_text parts of message items; reasoning items carry no answer text."""
    texts = []
    for item in output:
        if item.get("type") != "message":
            continue
        for part in item.get("content") or ():
            if part.get("type") == "output_text":
                texts.append(part.get("text") or "")
            elif part.get("type") == "refusal":
                texts.append(part.get("refusal") or "")
    return "".join(texts)


class OpenAIResponses(OpenAIProvider):
    name = "openai-responses"
    supports_server_context = True

    def build(self, call: Call) -> Request:
        # the system prompt goes in `instructions`: it is not carried over by
        # previous_response_id, so it is sent again on every turn
        body: dict[str, Any] = {"model": self.model, "input": call.messages}
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
        if body.get("object") not in (None, "response") or "output" not in body:
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
        payload = loads(data, "stream event")
        kind = payload.get("type") or event
        if kind == "response.output_text.delta":
            self.parts.append(payload.get("delta") or "")
            self.started = True
        elif kind in TERMINAL:
            self.final = payload.get("response") or {}
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
