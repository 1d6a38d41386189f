"""OpenAI Chat Completions (POST {base_url}/chat/completions), and every compatible gateway."""

from __future__ import annotations

from functools import cached_property
from typing import Any, cast

import aiohttp

from runner.client.providers import base, transport
from runner.client.providers.base import Call, Capabilities, Provider, Reply, Request, StreamState
from runner.client.providers.batchwire import BatchOutcome, BatchStatus
from runner.encoding import to_json
from runner.errors import ApiError, Kind
from runner.messages import Image, Message, Tool, ToolCall, ToolResult, call_record
from runner.usage import Usage, no_usage


def openai_usage(raw: Any, input_key: str, output_key: str) -> Usage:
    """Normalise a Chat (prompt/completion) or Responses (input/output) usage object."""
    if not raw:
        return no_usage()
    raw = base.want(raw, dict, "usage")
    inp, out = base.tokens(raw, input_key), base.tokens(raw, output_key)
    in_details = base.fields(raw.get(f"{input_key}_details"), "usage details")
    out_details = base.fields(raw.get(f"{output_key}_details"), "usage details")
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        reasoning_tokens=base.tokens(out_details, "reasoning_tokens"),
        cached_tokens=base.tokens(in_details, "cached_tokens"),
        cache_write_tokens=0,
        total_tokens=base.tokens(raw, "total_tokens") or inp + out,
    )


def openai_error(status: int, headers: Any, body: str) -> ApiError:
    """Classify an OpenAI error envelope {"error": {message, type, param, code}}."""
    message, quota = body.strip() or f"HTTP {status}", False
    payload = base.try_json(body)
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        quota = "insufficient_quota" in (err.get("type"), err.get("code"))
    elif isinstance(err, str):
        message = err
    return base.classify(status, message, base.retry_after(headers), quota)


def content_text(content: Any) -> str:
    """Message content as text: a string, or a list of parts whose text may be {"value": ...}.

    Parts without text (an image, say) are skipped; any other shape is malformed."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in base.want(content, list, "message content"):
        if isinstance(part, str):
            texts.append(part)
            continue
        text = base.want(part, dict, "a content part").get("text")
        if isinstance(text, dict):
            text = text.get("value")
        text = base.text_or_none(text, "a content part's text")
        if text:
            texts.append(text)
    return "".join(texts)


def choice_index(choice: Any, position: int) -> Any:
    """A choice's `index`; a gateway that leaves it out numbers choices by position."""
    return base.want(choice, dict, "a choice").get("index", position)


def first_choice(choices: list[Any]) -> dict[str, Any]:
    """The choice of index 0 (the one asked for, n=1), wherever it is in the list."""
    for position, choice in enumerate(choices):
        if choice_index(choice, position) == 0:
            return cast(dict[str, Any], choice)
    if not choices:
        raise ApiError(Kind.MALFORMED, "the response has no choices", retryable=True)
    raise base.malformed("the response has no choice of index 0")


def chat_message(message: Message) -> dict[str, Any]:
    """A message as Chat takes it: text as a string; an assistant's calls as `tool_calls`
    (content null when there is no text); a result as `role: tool` with its
    `tool_call_id`; a user turn with images as text and `image_url` parts."""
    if message.plain:
        return {"role": message.role, "content": message.text}
    first = message.parts[0]
    if isinstance(first, ToolResult):
        return {"role": "tool", "tool_call_id": first.call_id, "content": first.content}
    calls = message.calls
    if calls:
        return {"role": message.role, "content": message.text or None,
                "tool_calls": [call_record(c) for c in calls]}  # fmt: skip
    parts = [
        {"type": "image_url", "image_url": {"url": p.url}}
        if isinstance(p, Image)
        else {"type": "text", "text": p.text}
        for p in message.parts
    ]
    return {"role": message.role, "content": parts}


def chat_tool(tool: Tool) -> dict[str, Any]:
    """A tool as Chat declares it: {"type": "function", "function": {...}}."""
    return tool.record()


def chat_calls(message: dict[str, Any]) -> tuple[ToolCall, ...]:
    """The `tool_calls` of a Chat reply message; arguments that are not JSON: malformed."""
    calls = []
    for call in base.items(message.get("tool_calls"), "tool_calls"):
        function = base.fields(base.want(call, dict, "a tool call").get("function"), "a call")
        calls.append(
            ToolCall(
                base.want(call.get("id"), str, "a tool call's id"),
                base.want(function.get("name"), str, "a tool call's name"),
                base.arguments(function.get("arguments", ""), "a tool call's arguments"),
            )
        )
    return tuple(calls)


class OpenAIProvider(Provider):
    """What the two OpenAI protocols share: bearer auth, the key variable, the error
    envelope, x-ratelimit-* headers with Go-duration resets (the defaults of Provider)."""

    default_base_url = "https://api.openai.com/v1"
    key_env = "OPENAI_API_KEY"
    auth_modes = ("bearer",)

    @cached_property
    def headers(self) -> dict[str, str]:
        """Built once: the key does not change during a run (aiohttp copies them per request)."""
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def error(self, status: int, headers: Any, body: str) -> ApiError:
        return openai_error(status, headers, body)

    def batch_wire(self) -> OpenAIBatch:
        return OpenAIBatch(self)


class OpenAIBatch:
    """The OpenAI Batch API: a JSONL file of {custom_id, method, url, body} uploaded
    (purpose batch), a batch made of it (window 24h), polled, its output and error files
    read; each line's body is read by the provider as a direct call's would be."""

    max_lines = 50_000
    max_bytes = 200 * 1000 * 1000
    ended = frozenset({"completed", "failed", "expired", "cancelled"})

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider = provider
        self.base = provider.base_url

    def line(self, custom_id: str, request: Request) -> bytes:
        """One input line: the exact body of a direct call, never streamed."""
        body = base.loads(request.body, "a request body")
        body.pop("stream", None)
        body.pop("stream_options", None)
        url = "/v1/" + request.url.removeprefix(self.base + "/")
        return to_json({"custom_id": custom_id, "method": "POST", "url": url, "body": body})

    async def create(self, session: Any, lines: list[tuple[str, Request]]) -> str:
        data = b"\n".join(self.line(c, r) for c, r in lines) + b"\n"
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename="round.jsonl", content_type="application/jsonl")
        auth = {k: v for k, v in self.provider.headers.items() if k != "Content-Type"}
        url = f"{self.base}/files"
        sent = await transport.call(session, self.provider, "POST", url, data=form, headers=auth)
        file_id = base.want(base.loads(sent, "a file object").get("id"), str, "a file id")
        endpoint = "/v1/" + lines[0][1].url.removeprefix(self.base + "/")
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
        made = await self._json(session, "POST", "/batches", data=to_json(body))
        return str(base.want(made.get("id"), str, "a batch id"))

    async def poll(self, session: Any, batch_id: str) -> BatchStatus:
        got = await self._json(session, "GET", f"/batches/{batch_id}")
        state = base.want(got.get("status"), str, "a batch status")
        counts = base.fields(got.get("request_counts"), "request_counts")
        return BatchStatus(state, state in self.ended, counts, got)

    async def results(self, session: Any, status: BatchStatus) -> BatchOutcome:
        """Each line of the output and error files by its custom id (any order)."""
        out: BatchOutcome = {}
        for key in ("output_file_id", "error_file_id"):
            file_id = status.raw.get(key)
            if not file_id:
                continue
            url = f"{self.base}/files/{file_id}/content"
            text = await transport.call(
                session, self.provider, "GET", url, headers=self.provider.headers
            )
            for raw in text.splitlines():
                if raw.strip():
                    item = base.want(base.loads(raw, "a batch output line"), dict, "a line")
                    out[str(item.get("custom_id"))] = self._answer(item)
        return out

    def _answer(self, item: dict[str, Any]) -> Reply | ApiError:
        response = item.get("response")
        if isinstance(response, dict):
            body, status = response.get("body"), response.get("status_code")
            if status == 200 and isinstance(body, dict):
                try:
                    return self.provider.parse(body)
                except ApiError as err:
                    return err
            return self.provider.error(int(status or 500), {}, to_json(body).decode())
        error = base.fields(item.get("error"), "a line's error")
        message = f"batch line failed: {error.get('code')}: {error.get('message')}"
        return ApiError(Kind.HTTP, message, retryable=True)

    async def cancel(self, session: Any, batch_id: str) -> None:
        await self._json(session, "POST", f"/batches/{batch_id}/cancel")

    async def _json(self, session: Any, method: str, path: str, data: Any = None) -> Any:
        url = f"{self.base}{path}"
        headers = self.provider.headers
        got = await transport.call(session, self.provider, method, url, headers=headers, data=data)
        return base.want(base.loads(got, "a batch object"), dict, "a batch object")


class OpenAIChat(OpenAIProvider):
    name = "openai-chat"
    capabilities = Capabilities(seed=True, stream_usage=True, batch=True, images=True, tools=True)
    mock_target = ("mock", "mock-chat")

    def build(self, call: Call) -> Request:
        messages = [chat_message(m) for m in call.messages]
        if call.system is not None:
            messages.insert(0, {"role": "system", "content": call.system})
        body = {"model": self.model, "messages": messages, **call.params}
        if call.tools:
            body["tools"] = [chat_tool(t) for t in call.tools]
        if call.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        url = f"{self.base_url}/chat/completions"
        return Request(url, self.headers, to_json(body), call.stream)

    def parse(self, body: dict[str, Any]) -> Reply:
        base.raise_error_payload(body)
        choice = first_choice(base.items(body.get("choices"), "choices"))
        message = base.fields(choice.get("message"), "a choice's message")
        text = content_text(message.get("content"))
        if not text:
            text = base.text_or_none(message.get("refusal"), "a refusal") or ""
        raw = body.get("usage")
        return Reply(
            text,
            base.text_or_none(choice.get("finish_reason"), "finish_reason"),
            openai_usage(raw, "prompt_tokens", "completion_tokens"),
            raw,
            base.text_or_none(body.get("id"), "the response id"),
            tool_calls=chat_calls(message),
        )

    def stream_state(self) -> StreamState:
        return ChatStream()


class ChatStream(StreamState):
    """Text deltas joined; tool-call fragments joined by `index` (a fragment with another
    `id` at a used index starts a new call: some servers give every call index 0)."""

    __slots__ = ("done", "calls", "slots")

    def __init__(self) -> None:
        super().__init__()
        self.done = False
        self.calls: list[list[str]] = []  # [id, name, arguments so far], in order
        self.slots: dict[Any, int] = {}  # a fragment's index -> its call in self.calls

    def feed(self, event: str, data: str) -> bool:
        if data == "[DONE]":
            self.done = True
            return True
        chunk = base.loads(data, "stream chunk")
        base.raise_error_payload(chunk)
        if chunk.get("usage"):
            self.raw_usage = base.want(chunk["usage"], dict, "usage")
        self.response_id = self.response_id or base.text_or_none(chunk.get("id"), "the id")
        choices = chunk.get("choices")
        if choices:
            for position, choice in enumerate(base.want(choices, list, "choices")):
                if choice_index(choice, position) == 0:
                    self._choice(choice)
        return False

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if delta:
            content = base.want(delta, dict, "a delta").get("content")
            text = content if isinstance(content, str) else content_text(content)
            if text:
                self.parts.append(text)
                self.started = True
            for position, fragment in enumerate(base.items(delta.get("tool_calls"), "tool_calls")):
                self._fragment(base.want(fragment, dict, "a tool call delta"), position)
        if choice.get("finish_reason"):
            self.finish_reason = base.want(choice["finish_reason"], str, "finish_reason")

    def _fragment(self, fragment: dict[str, Any], position: int) -> None:
        index, given = fragment.get("index", position), fragment.get("id")
        slot = self.slots.get(index)
        if slot is None or (given and self.calls[slot][0] and given != self.calls[slot][0]):
            slot = self.slots[index] = len(self.calls)
            self.calls.append(["", "", ""])
            self.started = True
        call = self.calls[slot]
        function = base.fields(fragment.get("function"), "a tool call delta's function")
        call[0] = call[0] or base.text_or_none(given, "a tool call's id") or ""
        call[1] += base.text_or_none(function.get("name"), "a tool call's name") or ""
        call[2] += base.text_or_none(function.get("arguments"), "arguments") or ""

    def reply(self) -> Reply:
        # some gateways omit [DONE]; a finish reason plus the usage chunk is complete too
        if not self.done and not (self.finish_reason and self.raw_usage):
            raise ApiError(Kind.STREAM, "the stream ended before [DONE]", retryable=True)
        usage = openai_usage(self.raw_usage, "prompt_tokens", "completion_tokens")
        calls = tuple(
            ToolCall(i, n, base.arguments(a, "a tool call's arguments")) for i, n, a in self.calls
        )
        text = "".join(self.parts)
        return Reply(
            text, self.finish_reason, usage, self.raw_usage, self.response_id, tool_calls=calls
        )
