"""What every protocol adapter provides, and the one HTTP attempt they share."""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from runner.encoding import clean_text, from_json
from runner.errors import ApiError, Kind
from runner.finish import normalise
from runner.providers.body import Limits, chunks, read_body
from runner.providers.drain import drain
from runner.providers.sse import iter_sse
from runner.records import Usage, no_usage


@dataclass(slots=True)
class Reply:
    """One generated reply, as the conversation and the records need it."""

    text: str
    finish_reason_raw: str | None  # the provider's own value
    usage: Usage = field(default_factory=no_usage)
    raw_usage: dict[str, Any] | None = None
    response_id: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    headers: Any = None  # the response's headers (rate-limit pacing reads them)

    @property
    def finish_reason(self) -> str | None:
        """The finish reason in the one vocabulary of runner/finish.py."""
        return normalise(self.finish_reason_raw)


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

    def masked(self, key: str | None, hidden: str = "***") -> str:
        """The request as text for people: credentials replaced by `hidden`."""
        lines = [f"POST {mask(self.url, key, hidden)}"]
        for name, value in self.headers.items():
            secret = name.lower() in SECRET_HEADERS
            lines.append(f"{name}: {hidden if secret else mask(value, key, hidden)}")
        body = json.dumps(json.loads(self.body), ensure_ascii=False, indent=2)
        return "\n".join([*lines, "", mask(body, key, hidden)])


LIMITS = Limits()  # the defaults: 32 MB, 30 s idle
SECRET_HEADERS = {"authorization", "x-goog-api-key", "api-key", "x-api-key"}
KEY_PARAM = re.compile(r"([?&]key=)[^&#\s]+")
KEY_PREFIX = 8  # this many leading characters of a key, or more, are masked wherever seen
MESSAGE_CHARS = 500  # an error message is cut to this length, after masking


def mask(text: str, key: str | None, hidden: str = "***") -> str:
    """Hide a key wherever it appears, and any part of it that starts it and is at least
    KEY_PREFIX long (a server that cut it short), and any ?key= query value. A key shorter
    than KEY_PREFIX (a local server's dummy) is hidden only where it stands alone: the key
    `x` leaves "unexpected" whole."""
    if key and len(key) < KEY_PREFIX:
        text = re.sub(rf"(?<![\w-]){re.escape(key)}(?![\w-])", hidden, text)
    elif key:
        text = text.replace(key, hidden)
        head = key[: min(KEY_PREFIX, len(key))]
        start = text.find(head)
        while start >= 0:
            end = start + len(head)
            while end < len(text) and end - start < len(key) and text[end] == key[end - start]:
                end += 1
            text = text[:start] + hidden + text[end:]
            start = text.find(head, start + len(hidden))
    return KEY_PARAM.sub(lambda m: m.group(1) + hidden, text)


def cut_message(message: str) -> str:
    """An error message cut for records and screens (mask it first: a cut may split a key)."""
    return message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS] + "…"


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
    accepts_seed = False  # a `seed` param makes sampling reproducible

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


def malformed(message: str) -> ApiError:
    """A body that is not what the protocol defines: retried (a proxy's hiccup, say)."""
    return ApiError(Kind.MALFORMED, message, retryable=True)


def want(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it has the shape the protocol defines for `what`, else a malformed error."""
    if not isinstance(value, kind):
        raise malformed(f"{what} is a {type(value).__name__}, not what the protocol defines")
    return value


def items(value: Any, what: str) -> list[Any]:
    """A list the protocol defines (absent or null: empty)."""
    return [] if value is None else want(value, list, what)


def fields(value: Any, what: str) -> dict[str, Any]:
    """An object the protocol defines (absent or null: empty)."""
    return {} if value is None else want(value, dict, what)


def text_or_none(value: Any, what: str) -> str | None:
    return None if value is None else want(value, str, what)


def tokens(raw: dict[str, Any], key: str) -> int:
    """A token count of a usage object: a whole number of at least 0 (absent or null: 0)."""
    value = raw.get(key)
    if type(value) is int and value >= 0:  # the common case, first
        return value
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise malformed(f"usage {key} is {value!r}, not a token count")
    return value


def try_json(text: str) -> Any:
    """The JSON in an error body, or None when there is none."""
    try:
        return from_json(text.removeprefix(BOM))
    except ValueError:
        return None


BOM = "\ufeff"  # a byte order mark some servers put before a body: not part of the JSON
# values a reply's JSON may hold: each costs 30-70 bytes parsed (an empty object, 3 bytes of
# JSON, costs 64), so a body of 28 MB of `{},` would cost about 1 GB; no reply holds this many
MAX_VALUES = 250_000
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a JSON string, escapes and all
_STRINGS: dict[type, Any] = {str: re.compile(_STRING), bytes: re.compile(_STRING.encode())}


def values(text: str | bytes) -> int:
    """About how many values JSON text holds: its objects, arrays and commas (once there
    seem to be too many, only those outside strings count)."""
    count = _marks(text)
    if count > MAX_VALUES:  # commas and braces of a long reply text do not count
        count = _marks(_STRINGS[type(text)].sub(text[:0], text))
    return count


def _marks(text: Any) -> int:
    comma, brace, bracket = (",", "{", "[") if isinstance(text, str) else (b",", b"{", b"[")
    return int(text.count(comma) + text.count(brace) + text.count(bracket))


def loads(text: str | bytes, what: str) -> Any:
    """json.loads that turns a bad body into a retryable ApiError (a leading BOM is dropped).
    JSON of more than MAX_VALUES values is malformed before it is parsed."""
    text = text.removeprefix(b"\xef\xbb\xbf") if isinstance(text, bytes) else text.removeprefix(BOM)
    if values(text) > MAX_VALUES:
        raise malformed(f"{what} holds more than {MAX_VALUES:,} JSON values; no reply does")
    try:
        return from_json(text)
    except ValueError:
        snippet = text[:200] if isinstance(text, str) else text[:200].decode("utf-8", "replace")
        raise ApiError(
            Kind.MALFORMED, f"{what} is not valid JSON: {snippet!r}", retryable=True
        ) from None


def raise_error_payload(payload: dict[str, Any]) -> None:
    """An error object where a reply should be (mid-stream or in a 200 body) is a failure."""
    want(payload, dict, "the body")
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
    """Seconds the server asked us to wait: retry-after-ms, then Retry-After (seconds or an
    HTTP date). A hint that does not parse is ignored: the backoff decides instead."""
    ms = seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    given = seconds(value)
    if given is not None:
        return given
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError, OSError):
        return None
    return max(0.0, when - time.time())


def seconds(value: Any) -> float | None:
    """A number of seconds of at least 0 (a finite float), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, number) if math.isfinite(number) else None


async def send(
    session: aiohttp.ClientSession, provider: Provider, req: Request, limits: Limits = LIMITS
) -> Reply:
    """One HTTP attempt; transport failures become retryable ApiErrors, and a body that
    cannot be read as the protocol defines is malformed (retryable)."""
    try:
        reply = await _send(session, provider, req, limits)
    except ApiError:
        raise
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise unreachable(exc, req.url) from None  # before ValueError: a bad certificate is one
    except (AttributeError, TypeError, KeyError, IndexError, ValueError, RecursionError) as exc:
        # JSON of the wrong shape (a gateway's own envelope, say): retried like a bad body
        raise malformed(f"unexpected response shape: {type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise ApiError(Kind.TIMEOUT, "the request timed out", retryable=True) from None
    except aiohttp.ClientPayloadError as exc:
        raise ApiError(Kind.STREAM, f"the response was cut off: {exc}", retryable=True) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ApiError(Kind.CONNECTION, f"{type(exc).__name__}: {exc}", retryable=True) from None
    reply.text = clean_text(want(reply.text, str, "the reply text"))
    return reply


def unreachable(exc: aiohttp.ClientError, url: str) -> ApiError:
    """No connection was made: retryable, and named by host and port. Refused, DNS and TLS
    failures are counted attempt by attempt towards a target's fail-fast breaker; a connect
    timeout or a local error (too many open files) is not: a server busy accepting ten
    thousand connections, or this machine, is not a server that is not there."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    cause: object = exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        where, cause = f"{exc.host}:{exc.port}", exc.os_error
    there = True
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        why, there = "no answer within connect_timeout_s", False
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        why = f"the host name does not resolve ({_reason(cause)})"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = f"its TLS certificate is not trusted ({exc.certificate_error})"
    elif isinstance(exc, aiohttp.ClientSSLError):
        why = f"the TLS handshake failed; http or https? ({getattr(cause, 'reason', '') or cause})"
    elif isinstance(cause, ConnectionRefusedError):
        why = "connection refused (nothing listens there)"
    else:
        why, there = f"{type(cause).__name__}: {_reason(cause)}", False
    return ApiError(
        Kind.CONNECTION, f"cannot connect to {where}: {why}", retryable=True, unreachable=there
    )


def _reason(cause: object) -> str:
    """An OS error's own words, without its errno."""
    return str(getattr(cause, "strerror", None) or cause)


async def _send(
    session: aiohttp.ClientSession, provider: Provider, req: Request, limits: Limits
) -> Reply:
    start = time.perf_counter()
    # an API call never needs a redirect, and following one may carry the key elsewhere
    async with session.post(
        req.url, data=req.body, headers=req.headers, allow_redirects=False
    ) as resp:
        if resp.status >= 300:
            err = await answered_error(resp, provider, limits)
            err.headers = resp.headers
            raise err
        if not req.stream:
            reply = provider.parse(loads(await read_body(resp, limits), "response body"))
            reply.latency_ms = reply.ttft_ms = (time.perf_counter() - start) * 1000
            reply.headers = resp.headers
            return reply
        state = provider.stream_state()
        ttft = None
        async with contextlib.aclosing(chunks(resp, limits)) as body:
            async for event, data in iter_sse(body, limits.max_bytes):
                done = state.feed(event, data)
                if ttft is None and state.started:
                    ttft = (time.perf_counter() - start) * 1000
                if done:
                    break
        reply = state.reply()
        reply.latency_ms = (time.perf_counter() - start) * 1000
        reply.ttft_ms = ttft
        reply.headers = resp.headers
        await drain(resp.content)
        return reply


async def answered_error(
    resp: aiohttp.ClientResponse, provider: Provider, limits: Limits
) -> ApiError:
    """The error a 3xx, 4xx or 5xx answer stands for; its body is read within the limits."""
    if resp.status < 400:
        where = resp.headers.get("Location", "")
        return ApiError(
            Kind.HTTP,
            f"HTTP {resp.status}: the server redirects to {where!r}; API calls are not "
            "redirected (point base_url at the final address)",
            status=resp.status,
        )
    text = (await read_body(resp, limits)).decode("utf-8", "replace")
    err = provider.error(resp.status, resp.headers, text)
    if resp.status in (404, 405):  # most often a wrong base_url or model: say what was called
        err.message = f"{err.message} (POST {resp.url} answered {resp.status})"
    return err
