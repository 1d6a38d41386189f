"""Google Gemini generateContent / streamGenerateContent?alt=sse, directly or via gateways."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from runner.client.providers import base, transport
from runner.client.providers.base import Call, Capabilities, Provider, Reply, Request, StreamState
from runner.client.providers.batchwire import BatchOutcome, BatchStatus
from runner.encoding import to_json
from runner.errors import ApiError, Kind
from runner.messages import Image, Message, Part, Tool, ToolCall, ToolResult
from runner.usage import Usage, no_usage

# scenario params (OpenAI-style or Gemini-style names) -> generationConfig keys
CONFIG_KEYS = {
    "temperature": "temperature",
    "top_p": "topP",
    "topP": "topP",
    "top_k": "topK",
    "topK": "topK",
    "max_tokens": "maxOutputTokens",
    "max_output_tokens": "maxOutputTokens",
    "maxOutputTokens": "maxOutputTokens",
    "stop": "stopSequences",
    "stop_sequences": "stopSequences",
    "stopSequences": "stopSequences",
    "seed": "seed",
    "candidate_count": "candidateCount",
    "candidateCount": "candidateCount",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "response_mime_type": "responseMimeType",
    "responseMimeType": "responseMimeType",
    "thinking_config": "thinkingConfig",
    "thinkingConfig": "thinkingConfig",
}
# request fields that sit next to generationConfig, not inside it
TOP_LEVEL = {"safetySettings", "safety_settings", "tools", "toolConfig", "cachedContent"}
RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")


def gemini_usage(raw: Any) -> Usage:
    """Thoughts are not inside candidatesTokenCount: output = candidates + thoughts."""
    if not raw:
        return no_usage()
    raw = base.want(raw, dict, "usageMetadata")
    prompt = base.tokens(raw, "promptTokenCount")
    thoughts = base.tokens(raw, "thoughtsTokenCount")
    output = base.tokens(raw, "candidatesTokenCount") + thoughts
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        reasoning_tokens=thoughts,
        cached_tokens=base.tokens(raw, "cachedContentTokenCount"),
        cache_write_tokens=0,
        total_tokens=base.tokens(raw, "totalTokenCount") or prompt + output,
    )


def gemini_contents(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as Gemini contents: the assistant is the "model"; each part a part; the
    results of one reply's calls go together in one user content (functionResponse parts)."""
    contents: list[dict[str, Any]] = []
    for message in messages:
        role = "model" if message.role == "assistant" else "user"
        parts = [gemini_part(part) for part in message.parts]
        if message.role == "tool" and contents and contents[-1].get("tool"):
            contents[-1]["parts"].extend(parts)
            continue
        contents.append({"role": role, "parts": parts, "tool": message.role == "tool"})
    for content in contents:
        del content["tool"]
    return contents


def gemini_part(part: Part) -> dict[str, Any]:
    """One part: text, inlineData (fileData for an https image), functionCall (its id and
    thoughtSignature only when the server gave them) or functionResponse (a result that is
    not a JSON object is wrapped as {"output": ...}, as the SDK does)."""
    if isinstance(part, ToolCall):
        call: dict[str, Any] = {"name": part.name, "args": base.arguments_object(part)}
        if part.wire_id:
            call["id"] = part.id
        out: dict[str, Any] = {"functionCall": call}
        if part.signature:
            out["thoughtSignature"] = part.signature
        return out
    if isinstance(part, ToolResult):
        value = base.result_value(part.content)
        response = value if isinstance(value, dict) else {"output": value}
        result: dict[str, Any] = {"name": part.name, "response": response}
        if part.wire_id:
            result["id"] = part.call_id
        return {"functionResponse": result}
    if isinstance(part, Image):
        if part.data is None:
            return {"fileData": {"mimeType": part.media_type, "fileUri": part.url}}
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    return {"text": part.text}


def gemini_tools(tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    """The tools as one functionDeclarations list."""
    return [{"functionDeclarations": [
        {"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools
    ]}]  # fmt: skip


class Gemini(Provider):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    key_env = "GEMINI_API_KEY"
    auth_modes = ("x-goog-api-key", "query", "bearer", "raw")
    capabilities = Capabilities(  # seed: generationConfig.seed; no GIF images
        seed=True,
        stream_usage=True,
        batch=True,
        images=True,
        url_image_type=True,  # fileData needs its mimeType
        tools=True,
        image_types=("image/png", "image/jpeg", "image/webp"),
    )
    mock_target = ("mock-gemini", "mock-gemini")

    def build(self, call: Call) -> Request:
        body: dict[str, Any] = {"contents": gemini_contents(call.messages)}
        if call.tools:
            body["tools"] = gemini_tools(call.tools)
        if call.system is not None:
            body["systemInstruction"] = {"parts": [{"text": call.system}]}
        config: dict[str, Any] = {}
        for key, value in call.params.items():
            if key in TOP_LEVEL:
                body[key] = value
            else:
                config[CONFIG_KEYS.get(key, key)] = value
        if config:
            body["generationConfig"] = config
        action = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        url = f"{self.base_url}/v1beta/models/{self.model}:{action}"
        headers = {"Content-Type": "application/json"}
        url = self._authorize(url, headers)
        return Request(url, headers, to_json(body), call.stream)

    def _authorize(self, url: str, headers: dict[str, str]) -> str:
        if not self.key:
            return url
        auth = self.auth
        if auth == "query":
            return f"{url}{'&' if '?' in url else '?'}key={quote(self.key, safe='')}"
        if auth == "bearer":
            headers["Authorization"] = f"Bearer {self.key}"
        elif auth == "raw":
            headers["Authorization"] = self.key
        else:
            headers["x-goog-api-key"] = self.key
        return url

    def parse(self, body: dict[str, Any] | list[Any]) -> Reply:
        """A reply body; a JSON array (streamGenerateContent without alt=sse, as some
        gateways answer) is read as its chunks, in order."""
        chunks = body if isinstance(body, list) else [body]
        if not chunks:
            raise base.malformed("the response is an empty array")
        state = GeminiStream()
        for chunk in chunks:
            state.take(base.want(chunk, dict, "a response chunk"))
        return state.result()

    def stream_state(self) -> StreamState:
        return GeminiStream()

    def error(self, status: int, headers: Any, body: str) -> ApiError:
        message, delay, quota = body.strip() or f"HTTP {status}", None, False
        err = base.try_json(body)
        err = err[0] if isinstance(err, list) and err else err
        err = err.get("error") if isinstance(err, dict) else None
        if isinstance(err, dict):
            message = f"{err.get('status', '')}: {err.get('message', '')}".strip(": ")
            details = err.get("details")
            delay = retry_delay(details if isinstance(details, list) else [])
            quota = "limit: 0" in message  # a free tier with no quota left is final
        return base.classify(
            status, message, delay if delay is not None else base.retry_after(headers), quota
        )

    def batch_wire(self) -> GeminiBatch:
        return GeminiBatch(self)


class GeminiBatch:
    """batchGenerateContent with inline requests (each with metadata.key), polled as
    batches/{id} until a terminal state (BATCH_STATE_* or JOB_STATE_*), its
    inlinedResponses read (by metadata.key, else by position: they keep the input order,
    and batch mode's custom ids are r0, r1, ...)."""

    max_lines, max_bytes = 1_000_000, 20 * 1000 * 1000  # inline requests: under 20 MB
    ended = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
    final_codes = frozenset({3, 5, 7, 16})  # INVALID_ARGUMENT, NOT_FOUND, PERMISSION, AUTH

    def __init__(self, provider: Gemini) -> None:
        self.provider = provider

    def _url(self, path: str) -> tuple[str, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        return self.provider._authorize(f"{self.provider.base_url}/v1beta/{path}", headers), headers

    async def create(self, session: Any, lines: list[tuple[str, Request]]) -> str:
        requests = [{"request": base.loads(r.body, "a request body"), "metadata": {"key": c}}
                    for c, r in lines]  # fmt: skip
        config = {"requests": {"requests": requests}}
        body = {"batch": {"display_name": "dialogue-runner round", "input_config": config}}
        url, headers = self._url(f"models/{self.provider.model}:batchGenerateContent")
        got = await transport.call(session, self.provider, "POST", url, headers=headers,
                                   data=to_json(body))  # fmt: skip
        made = base.want(base.loads(got, "an operation"), dict, "an operation")
        name = str(base.want(made.get("name"), str, "a batch name")).removeprefix("batches/")
        return name

    async def poll(self, session: Any, batch_id: str) -> BatchStatus:
        url, headers = self._url(f"batches/{batch_id}")
        got = await transport.call(session, self.provider, "GET", url, headers=headers)
        op = base.want(base.loads(got, "an operation"), dict, "an operation")
        meta = base.fields(op.get("metadata"), "an operation's metadata")
        raw = str(meta.get("state") or ("SUCCEEDED" if op.get("done") else "PENDING"))
        state = raw.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
        return BatchStatus(state, state in self.ended, base.fields(meta.get("batchStats"), "s"),
                           op)  # fmt: skip

    async def results(self, session: Any, status: BatchStatus) -> BatchOutcome:
        raw = status.raw
        output = raw.get("response") or base.fields(raw.get("metadata"), "metadata").get("output")
        inlined = base.fields(base.fields(output, "output").get("inlinedResponses"), "responses")
        out: BatchOutcome = {}
        for i, item in enumerate(base.items(inlined.get("inlinedResponses"), "responses")):
            item = base.want(item, dict, "an inlined response")
            key = base.fields(item.get("metadata"), "metadata").get("key")
            key = key if isinstance(key, str) else f"r{i}"  # batch.py's custom ids, in order
            out[key] = self._answer(item)
        return out

    def _answer(self, item: dict[str, Any]) -> Reply | ApiError:
        if "error" in item and item["error"]:
            err = base.fields(item["error"], "an inlined error")
            code = err.get("code")
            message = f"{err.get('status', '')}: {err.get('message', '')}".strip(": ")
            return ApiError(Kind.HTTP, message, retryable=code not in self.final_codes)
        try:
            return self.provider.parse(base.fields(item.get("response"), "a response"))
        except ApiError as err:
            return err

    async def cancel(self, session: Any, batch_id: str) -> None:
        url, headers = self._url(f"batches/{batch_id}:cancel")
        await transport.call(session, self.provider, "POST", url, headers=headers, data=b"{}")


def retry_delay(details: list[Any]) -> float | None:
    """The google.rpc.RetryInfo delay ("37s", "0.5s") of a 429, if any."""
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(
            "google.rpc.RetryInfo"
        ):
            match = RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return base.seconds(match.group(1))
    return None


class GeminiStream(StreamState):
    """Chunks carry incremental text of candidate 0; usage is a running total (keep the last)."""

    __slots__ = ("block_reason", "calls")

    def __init__(self) -> None:
        super().__init__()
        self.block_reason: str | None = None
        self.calls: list[ToolCall] = []  # functionCall parts arrive whole

    def feed(self, event: str, data: str) -> bool:
        self.take(base.loads(data, "stream chunk"))
        return False  # the stream ends when the connection closes

    def take(self, chunk: dict[str, Any]) -> None:
        base.raise_error_payload(chunk)
        if chunk.get("usageMetadata"):
            self.raw_usage = base.want(chunk["usageMetadata"], dict, "usageMetadata")
        feedback = base.fields(chunk.get("promptFeedback"), "promptFeedback")
        block = base.text_or_none(feedback.get("blockReason"), "blockReason")
        self.block_reason = block or self.block_reason
        self.response_id = base.text_or_none(chunk.get("responseId"), "responseId") or (
            self.response_id
        )
        for cand in base.items(chunk.get("candidates"), "candidates"):
            if base.want(cand, dict, "a candidate").get("index", 0) != 0:
                continue
            content = base.fields(cand.get("content"), "a candidate's content")
            for part in base.items(content.get("parts"), "a candidate's parts"):
                text = base.text_or_none(base.want(part, dict, "a part").get("text"), "a text")
                if text and not part.get("thought"):
                    self.parts.append(text)
                    self.started = True
                if part.get("functionCall") is not None:
                    self.calls.append(function_call(part))
                    self.started = True
            if cand.get("finishReason"):
                self.finish_reason = base.want(cand["finishReason"], str, "finishReason")

    def reply(self) -> Reply:
        if self.finish_reason is None and self.block_reason is None:
            raise ApiError(Kind.STREAM, "the stream ended before a finishReason", retryable=True)
        return self.result()

    def result(self) -> Reply:
        finish = self.finish_reason
        if self.block_reason and not self.parts:
            finish = f"blocked:{self.block_reason}"
        usage = gemini_usage(self.raw_usage)
        text, calls = "".join(self.parts), tuple(self.calls)
        return Reply(text, finish, usage, self.raw_usage, self.response_id, tool_calls=calls)


def function_call(part: dict[str, Any]) -> ToolCall:
    """A functionCall part (args an object); without an id, the call's id is left for the
    conversation to give (and is not sent back)."""
    call = base.want(part["functionCall"], dict, "a functionCall")
    given = base.text_or_none(call.get("id"), "a functionCall's id")
    args = base.fields(call.get("args"), "a functionCall's args")
    return ToolCall(
        given or "",
        base.want(call.get("name"), str, "a functionCall's name"),
        to_json(args).decode(),
        wire_id=bool(given),
        signature=base.text_or_none(part.get("thoughtSignature"), "a thoughtSignature"),
    )
