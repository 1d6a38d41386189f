"""What every protocol adapter provides, and the one HTTP attempt they share."""

from __future__ import annotations

import email.utils
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from runner.encoding import from_json
from runner.errors import ApiError, Kind
from runner.providers.sse import iter_sse
from runner.records import Usage, no_usage


@dataclass(slots=True)
class Reply:
    """One generated reply, as the conversation and the records need it."""

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=no_usage)
    raw_usage: dict[str, Any] | None = None
    response_id: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    headers: Any = None  # the response's headers (rate-limit pacing reads them)


@dataclass(slots=True)
class Call:
    """What one turn asks of a model: messages are role/content dicts, the system prompt
    apart; previous_id chains to a stored response (server context)."""

    system: str | None
    messages: list[dict[str, str]]
    params: dict[str, Any]
    stream: bool
    previous_id: str | None = None


@dataclass(slots=True)
class Request:
    """One prepared HTTP request; built once per turn and reused by every attempt."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool

    def masked(self, key: str | None) -> str:
        """The request as text for people: credentials replaced by ***."""
        lines = [f"POST {mask(self.url, key)}"]
        for name, value in self.headers.items():
            secret = name.lower() in SECRET_HEADERS
            lines.append(f"{name}: {'***' if secret else mask(value, key)}")
        body = json.dumps(json.loads(self.body), ensure_ascii=False, indent=2)
        return "\n".join([*lines, "", mask(body, key)])


SECRET_HEADERS = {"authorization", "x-goog-api-key", "api-key", "x-api-key"}
KEY_PARAM = re.compile(r"([?&]key=)[^&#\s]+")


def mask(text: str, key: str | None) -> str:
    """Hide a key wherever it appears, and any ?key= query value."""
    if key:
        text = text.replace(key, "***")
    return KEY_PARAM.sub(r"\1***", text)


class StreamState:
    """Accumulates one streamed reply; each protocol subclasses it."""

    __slots__ = ("parts", "finish_reason", "raw_usage", "response_id", "started")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.raw_usage: dict[str, Any] | None = None
        self.response_id: str | None = None
        self.started = False  # set once the first text arrived (time to first token)

    def feed(self, event: str, data: str) -> bool:
        """Take one SSE event; return True once the terminal event has arrived."""
        raise NotImplementedError

    def reply(self) -> Reply:
        """The reply so far; raise ApiError(kind='stream') when it never finished."""
        raise NotImplementedError


class Provider:
    """A protocol adapter: builds requests, reads replies, classifies errors."""

    name = ""
    supports_server_context = False

    def __init__(self, base_url: str, model: str, key: str | None, auth: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.key = key
        self.auth = auth

    def build(self, call: Call) -> Request:
        """The HTTP request for one call."""
        raise NotImplementedError

    def parse(self, body: dict[str, Any]) -> Reply:
        """A non-streamed reply body."""
        raise NotImplementedError

    def stream_state(self) -> StreamState:
        raise NotImplementedError

    def error(self, status: int, headers: Any, body: str) -> ApiError:
        """Classify an HTTP error answer."""
        raise NotImplementedError


def loads(text: str | bytes, what: str) -> Any:
    """json.loads that turns a bad body into a retryable ApiError."""
    try:
        return from_json(text)
    except ValueError:
        snippet = text[:200] if isinstance(text, str) else text[:200].decode("utf-8", "replace")
        raise ApiError(
            Kind.MALFORMED, f"{what} is not valid JSON: {snippet!r}", retryable=True
        ) from None


def raise_error_payload(payload: dict[str, Any]) -> None:
    """An error object where a reply should be (mid-stream or in a 200 body) is a failure."""
    err = payload.get("error")
    if err:
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        raise ApiError(Kind.HTTP, f"the server sent an error: {message}", retryable=True)


def classify(
    status: int, message: str, retry_after: float | None = None, quota: bool = False
) -> ApiError:
    """The status rules shared by every protocol: what is retried and what is final."""
    if status in (401, 403):
        return ApiError(Kind.AUTH, message, status=status)
    if status == 429:
        if quota:
            return ApiError(Kind.QUOTA, message, status=status)
        return ApiError(
            Kind.RATE_LIMIT, message, status=status, retryable=True, retry_after=retry_after
        )
    retryable = status in (408, 409) or status >= 500
    return ApiError(Kind.HTTP, message, status=status, retryable=retryable, retry_after=retry_after)


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, then Retry-After (seconds or date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def send(session: aiohttp.ClientSession, provider: Provider, req: Request) -> Reply:
    """One HTTP attempt; transport failures become retryable ApiErrors."""
    try:
        return await _send(session, provider, req)
    except ApiError:
        raise
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        # JSON of the wrong shape (a gateway's own envelope, say): retried like a bad body
        raise ApiError(
            Kind.MALFORMED, f"unexpected response shape: {exc!r}", retryable=True
        ) from None
    except TimeoutError:
        raise ApiError(Kind.TIMEOUT, "the request timed out", retryable=True) from None
    except aiohttp.ClientPayloadError as exc:
        raise ApiError(Kind.STREAM, f"the response was cut off: {exc}", retryable=True) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ApiError(Kind.CONNECTION, f"{type(exc).__name__}: {exc}", retryable=True) from None


async def _send(session: aiohttp.ClientSession, provider: Provider, req: Request) -> Reply:
    start = time.perf_counter()
    async with session.post(req.url, data=req.body, headers=req.headers) as resp:
        if resp.status >= 400:
            text = await resp.text(errors="replace")
            err = provider.error(resp.status, resp.headers, text)
            err.headers = resp.headers
            raise err
        if not req.stream:
            reply = provider.parse(loads(await resp.read(), "response body"))
            reply.latency_ms = reply.ttft_ms = (time.perf_counter() - start) * 1000
            reply.headers = resp.headers
            return reply
        state = provider.stream_state()
        ttft = None
        async for event, data in iter_sse(resp.content):
            done = state.feed(event, data)
            if ttft is None and state.started:
                ttft = (time.perf_counter() - start) * 1000
            if done:
                break
        reply = state.reply()
        reply.latency_ms = (time.perf_counter() - start) * 1000
        reply.ttft_ms = ttft
        reply.headers = resp.headers
        return reply
