"""Anthropic Messages (POST {base_url}/v1/messages), directly or via gateways.

The system prompt is the top-level `system`; `max_tokens` is required (4096 unless the
scenario or target says); the key goes in `x-api-key` (or `Authorization: Bearer` for
gateways, `auth: bearer`), with `anthropic-version` (the `anthropic_version` param, else
2023-06-01) and, if given, `anthropic-beta` (the `anthropic_beta` param). With `cache: true`
the system prompt and the newest message carry `cache_control: {type: ephemeral}`, so each
turn reads the earlier ones from the server's prompt cache (protocols.md §5.5).
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

from runner.client.providers import base, transport
from runner.client.providers.base import Call, Capabilities, Provider, Reply, Request, StreamState
from runner.client.providers.batchwire import BatchOutcome, BatchStatus
from runner.client.providers.ratelimits import RateHeaders
from runner.encoding import to_json
from runner.errors import ApiError, Kind
from runner.messages import Image, Message, Part, Text, Tool, ToolCall, ToolResult
from runner.usage import Usage, no_usage

VERSION = "2023-06-01"
EPHEMERAL = MappingProxyType({"type": "ephemeral"})
# the names other protocols give the answer's length, taken as max_tokens
MAX_TOKENS_ALIASES = ("max_completion_tokens", "max_output_tokens")
HEADER_PARAMS = {"anthropic_version": "anthropic-version", "anthropic_beta": "anthropic-beta"}
# an error's type -> the status it comes with when not streamed (protocols.md §5.4); an
# error event mid-stream is classified by it as that answer would be
TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "conflict_error": 409,
    "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}  # fmt: skip


def rfc3339_seconds(text: str) -> float | None:
    """Seconds from now until an RFC 3339 time ("2026-12-04T17:05:00Z"; past: 0)."""
    try:
        when = datetime.fromisoformat(text.strip())
        at = when.timestamp() if when.tzinfo is not None else None
    except (ValueError, OverflowError, OSError):  # not a time, or none a clock can hold
        return None
    return None if at is None else max(0.0, at - time.time())


def anthropic_usage(raw: Any) -> Usage:
    """input_tokens counts only what follows the last cache breakpoint: the input is it plus
    the tokens written to the cache and those read from it (read = cached)."""
    if not raw:
        return no_usage()
    raw = base.want(raw, dict, "usage")
    written = base.tokens(raw, "cache_creation_input_tokens")
    read = base.tokens(raw, "cache_read_input_tokens")
    inp = base.tokens(raw, "input_tokens") + written + read
    out = base.tokens(raw, "output_tokens")
    details = base.fields(raw.get("output_tokens_details"), "usage details")
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        reasoning_tokens=base.tokens(details, "thinking_tokens"),
        cached_tokens=read,
        cache_write_tokens=written,
        total_tokens=inp + out,
    )


def text_blocks(blocks: list[Any]) -> str:
    """The answer: the joined `text` blocks (thinking and tool blocks carry none)."""
    texts = []
    for block in blocks:
        if base.want(block, dict, "a content block").get("type") == "text":
            texts.append(base.text_or_none(block.get("text"), "a text block's text") or "")
    return "".join(texts)


def wire_message(message: Message, mark: bool) -> dict[str, Any]:
    """A message as Anthropic takes it: text as a string, or as blocks whose last carries
    the cache mark (an empty text cannot be a block: it goes unmarked); a result is a
    `tool_result` block of a user message."""
    role = "user" if message.role == "tool" else message.role
    if message.plain and (not mark or not message.text):
        return {"role": role, "content": message.text}
    blocks = [block(p) for p in message.parts if not (type(p) is Text and not p.text)]
    if mark and blocks:
        blocks[-1]["cache_control"] = dict(EPHEMERAL)
    return {"role": role, "content": blocks}


def block(part: Part) -> dict[str, Any]:
    """One content block: text, image (base64 source, or url source for an https URL),
    tool_use or tool_result."""
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name,
                "input": base.arguments_object(part)}  # fmt: skip
    if isinstance(part, ToolResult):
        return {"type": "tool_result", "tool_use_id": part.call_id, "content": part.content}
    if isinstance(part, Image):
        source: dict[str, Any] = {"type": "url", "url": part.url}
        if part.data is not None:
            source = {"type": "base64", "media_type": part.media_type, "data": part.data}
        return {"type": "image", "source": source}
    return {"type": "text", "text": part.text}


def wire_messages(messages: list[Message], cache: bool) -> list[dict[str, Any]]:
    """The messages, each result joined to the user message before it when that holds
    results only (parallel results go in one user message, before any text of it)."""
    out: list[dict[str, Any]] = []
    last = len(messages) - 1
    for i, message in enumerate(messages):
        wired = wire_message(message, cache and i == last)
        before = out[-1] if out else None
        if before is not None and _results_only(before) and message.role in ("tool", "user"):
            content = wired["content"]
            more = [{"type": "text", "text": content}] if isinstance(content, str) else content
            before["content"] = before["content"] + [b for b in more if b.get("text") != ""]
            continue
        out.append(wired)
    return out


def _results_only(message: dict[str, Any]) -> bool:
    content = message["content"]
    return isinstance(content, list) and all(b["type"] == "tool_result" for b in content)


def tool_uses(blocks: list[Any]) -> tuple[ToolCall, ...]:
    """The tool_use blocks of a reply as calls (input an object)."""
    return tuple(
        ToolCall(
            base.want(b.get("id"), str, "a tool_use id"),
            base.want(b.get("name"), str, "a tool_use name"),
            to_json(base.fields(b.get("input"), "a tool_use input")).decode(),
        )
        for b in blocks
        if b.get("type") == "tool_use"
    )


def anthropic_tool(tool: Tool) -> dict[str, Any]:
    """A tool as Anthropic declares it: its schema as `input_schema`."""
    out: dict[str, Any] = {"name": tool.name, "description": tool.description,
                           "input_schema": tool.parameters}  # fmt: skip
    if tool.strict is not None:
        out["strict"] = tool.strict
    return out


def stream_error(payload: dict[str, Any]) -> ApiError:
    """An `error` event, classified by the status its type stands for (an overload or a
    rate limit mid-stream paces and retries as the same answer before the stream would)."""
    err = base.fields(payload.get("error"), "an error event's error")
    kind = str(err.get("type") or "error")
    message = f"the server sent an error: {kind}: {err.get('message', '')}".rstrip(": ")
    return base.classify(TYPE_STATUS.get(kind, 500), message)


class Anthropic(Provider):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    key_env = "ANTHROPIC_API_KEY"
    auth_modes = ("x-api-key", "bearer")
    default_params = MappingProxyType({"max_tokens": 4096})  # the API requires one
    capabilities = Capabilities(
        stream_usage=True, batch=True, images=True, tools=True, cache_marks=True
    )
    overloaded = frozenset({429, 503, 529})  # 529 overloaded_error
    rate_headers = RateHeaders("anthropic-ratelimit-{budget}-{field}", rfc3339_seconds)
    reserves_max_tokens = False  # output tokens count as generated: max_tokens reserves none
    mock_target = ("mock-anthropic", "mock-anthropic")

    @cached_property
    def headers(self) -> dict[str, str]:
        """Built once: the key does not change during a run."""
        headers = {"Content-Type": "application/json", "anthropic-version": VERSION}
        if self.key and self.auth == "bearer":
            headers["Authorization"] = f"Bearer {self.key}"
        elif self.key:
            headers["x-api-key"] = self.key
        return headers

    def build(self, call: Call) -> Request:
        headers, params = self.headers, call.params
        if any(k in params for k in HEADER_PARAMS):
            headers = {**headers, **header_params(params)}
        messages = wire_messages(call.messages, call.cache)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if call.tools:
            body["tools"] = [anthropic_tool(t) for t in call.tools]
        if call.system is not None:
            system = {"type": "text", "text": call.system, "cache_control": dict(EPHEMERAL)}
            body["system"] = [system] if call.cache and call.system else call.system
        body.update(wire_params(params))
        if call.stream:
            body["stream"] = True
        return Request(f"{self.base_url}/v1/messages", headers, to_json(body), call.stream)

    def parse(self, body: dict[str, Any]) -> Reply:
        body = base.want(body, dict, "the body")
        if body.get("type") == "error":
            raise stream_error(body)
        if "content" not in body:
            raise base.malformed("the body is not a Message object (it has no content)")
        blocks = base.items(body.get("content"), "content")
        raw = body.get("usage")
        return Reply(
            text_blocks(blocks),
            base.text_or_none(body.get("stop_reason"), "stop_reason"),
            anthropic_usage(raw),
            raw,
            base.text_or_none(body.get("id"), "the message id"),
            tool_calls=tool_uses(blocks),
        )

    def stream_state(self) -> StreamState:
        return AnthropicStream()

    def error(self, status: int, headers: Any, body: str) -> ApiError:
        """The envelope {"type": "error", "error": {type, message}, "request_id"}."""
        message = body.strip() or f"HTTP {status}"
        payload = base.try_json(body)
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            message = f"{err.get('type', '')}: {err.get('message', '')}".strip(": ")
        return base.classify(status, message, base.retry_after(headers))

    def batch_wire(self) -> AnthropicBatch:
        return AnthropicBatch(self)


class AnthropicBatch:
    """Message Batches: {requests: [{custom_id, params}]}, polled until `ended`, results_url
    read (JSONL, any order): succeeded, errored (the error envelope), canceled or expired."""

    max_lines, max_bytes = 100_000, 256 * 1000 * 1000

    def __init__(self, provider: Anthropic) -> None:
        self.provider, self.url = provider, f"{provider.base_url}/v1/messages/batches"

    async def create(self, session: Any, lines: list[tuple[str, Request]]) -> str:
        requests = []
        for custom_id, request in lines:
            params = base.loads(request.body, "a request body")
            params.pop("stream", None)
            requests.append({"custom_id": custom_id, "params": params})
        headers = lines[0][1].headers  # the key, the version and any beta header
        made = await self._json(session, "POST", self.url, headers, to_json({"requests": requests}))
        return str(base.want(made.get("id"), str, "a batch id"))

    async def poll(self, session: Any, batch_id: str) -> BatchStatus:
        got = await self._json(session, "GET", f"{self.url}/{batch_id}")
        state = base.want(got.get("processing_status"), str, "processing_status")
        counts = base.fields(got.get("request_counts"), "request_counts")
        return BatchStatus(state, state == "ended", counts, got)

    async def results(self, session: Any, status: BatchStatus) -> BatchOutcome:
        url = base.text_or_none(status.raw.get("results_url"), "results_url")
        if not url:
            return {}
        head = self.provider.headers
        text = await transport.call(session, self.provider, "GET", url, headers=head)
        out: BatchOutcome = {}
        for raw in text.splitlines():
            if raw.strip():
                item = base.want(base.loads(raw, "a result line"), dict, "a result line")
                result = base.fields(item.get("result"), "a result")
                out[str(item.get("custom_id"))] = self._answer(result)
        return out

    def _answer(self, result: dict[str, Any]) -> Reply | ApiError:
        kind = result.get("type")
        try:
            if kind == "succeeded":
                return self.provider.parse(base.fields(result.get("message"), "a message"))
            if kind == "errored":  # the whole envelope; the docs' sample reads one level
                envelope = base.fields(result.get("error"), "a result's error")
                if envelope.get("type") != "error":
                    envelope = {"type": "error", "error": envelope}
                return stream_error(envelope)
        except ApiError as err:
            return err
        return ApiError(Kind.HTTP, f"the batch line was {kind}", retryable=True)

    async def cancel(self, session: Any, batch_id: str) -> None:
        await self._json(session, "POST", f"{self.url}/{batch_id}/cancel")

    async def _json(
        self, session: Any, method: str, url: str, head: Any = None, data: Any = None
    ) -> Any:
        head = head or self.provider.headers
        got = await transport.call(session, self.provider, method, url, headers=head, data=data)
        return base.want(base.loads(got, "a batch object"), dict, "a batch object")


def header_params(params: dict[str, Any]) -> dict[str, str]:
    """The headers params give: anthropic_version, anthropic_beta (a list joined by commas)."""
    out = {}
    for key, name in HEADER_PARAMS.items():
        value = params.get(key)
        if value is not None:
            out[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def wire_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params as the body takes them: header params left out, other protocols' names for
    the answer's length taken as max_tokens, `stop` as stop_sequences."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in HEADER_PARAMS:
            continue
        if key in MAX_TOKENS_ALIASES:
            out["max_tokens"] = value
        elif key == "stop":
            out["stop_sequences"] = [value] if isinstance(value, str) else value
        elif key != "max_tokens" or not any(a in params for a in MAX_TOKENS_ALIASES):
            out[key] = value
    return out


class AnthropicStream(StreamState):
    """Named events: message_start (id, input usage), text deltas, message_delta (stop
    reason, cumulative usage: the last value of each key counts), message_stop. A tool_use
    block's input arrives as input_json_delta fragments, parsed at its content_block_stop."""

    __slots__ = ("done", "uses", "calls")

    def __init__(self) -> None:
        super().__init__()
        self.done = False
        self.uses: dict[Any, list[str]] = {}  # block index -> [id, name, input so far]
        self.calls: list[ToolCall] = []

    def feed(self, event: str, data: str) -> bool:
        payload = base.want(base.loads(data, "stream event"), dict, "a stream event")
        kind = base.text_or_none(payload.get("type"), "an event's type") or event
        if kind == "content_block_delta":
            delta = base.fields(payload.get("delta"), "a delta")
            if delta.get("type") == "text_delta":
                self._text(base.text_or_none(delta.get("text"), "a text delta"))
            elif delta.get("type") == "input_json_delta" and payload.get("index") in self.uses:
                part = base.text_or_none(delta.get("partial_json"), "an input_json_delta")
                self.uses[payload.get("index")][2] += part or ""
        elif kind == "content_block_start":
            self._start(payload)
        elif kind == "content_block_stop" and payload.get("index") in self.uses:
            uid, name, given = self.uses.pop(payload.get("index"))
            self.calls.append(ToolCall(uid, name, base.arguments(given, "a tool_use input")))
        elif kind == "message_start":
            message = base.fields(payload.get("message"), "message_start's message")
            self.response_id = base.text_or_none(message.get("id"), "the message id")
            self._usage(message.get("usage"))
        elif kind == "message_delta":
            delta = base.fields(payload.get("delta"), "message_delta's delta")
            reason = base.text_or_none(delta.get("stop_reason"), "stop_reason")
            self.finish_reason = reason or self.finish_reason
            self._usage(payload.get("usage"))
        elif kind == "message_stop":
            self.done = True
            return True
        elif kind == "error":
            raise stream_error(payload)
        return False  # ping, thinking and tool deltas, and event types yet to come

    def _start(self, payload: dict[str, Any]) -> None:
        started = base.fields(payload.get("content_block"), "a content block")
        if started.get("type") == "text":
            self._text(base.text_or_none(started.get("text"), "a text block's text"))
        elif started.get("type") == "tool_use":
            uid = base.want(started.get("id"), str, "a tool_use id")
            name = base.want(started.get("name"), str, "a tool_use name")
            given = base.fields(started.get("input"), "a tool_use input")
            self.uses[payload.get("index")] = [uid, name, to_json(given).decode() if given else ""]
            self.started = True

    def _text(self, text: str | None) -> None:
        if text:
            self.parts.append(text)
            self.started = True

    def _usage(self, raw: Any) -> None:
        given = base.fields(raw, "usage")
        kept = {k: v for k, v in given.items() if v is not None}
        self.raw_usage = {**self.raw_usage, **kept} if self.raw_usage else kept

    def reply(self) -> Reply:
        if not self.done:
            raise ApiError(Kind.STREAM, "the stream ended before message_stop", retryable=True)
        usage = anthropic_usage(self.raw_usage)
        text, calls = "".join(self.parts), tuple(self.calls)
        return Reply(
            text, self.finish_reason, usage, self.raw_usage, self.response_id, tool_calls=calls
        )
