"""What every protocol adapter declares and provides, and the shape checks they share.

A provider class owns its protocol: its name, default base URL, key variable, auth modes,
default params, capabilities, which answers mean "overloaded", how its rate-limit headers
read, its mock target; it builds requests and reads replies. Nothing else names a provider.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from runner.client.providers.ratelimits import X_RATELIMIT, RateHeaders
from runner.encoding import from_json
from runner.errors import ApiError, Kind
from runner.finish import normalise
from runner.messages import Message, Tool, ToolCall
from runner.usage import Usage, no_usage


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
    tool_calls: tuple[ToolCall, ...] = ()  # the calls the reply makes, in order
    batch_id: str | None = None  # batch mode: the batch whose line it is

    @property
    def finish_reason(self) -> str | None:
        """The finish reason in the one vocabulary of runner/finish.py."""
        return normalise(self.finish_reason_raw)


@dataclass(slots=True)
class Call:
    """What one turn asks of a model: the messages (the system prompt apart), each mapped
    to the wire by the provider; previous_id chains to a stored response (server context);
    cache asks a provider with cache marks to mark the prompt for the server's cache."""

    system: str | None
    messages: list[Message]
    params: dict[str, Any]
    stream: bool
    previous_id: str | None = None
    cache: bool = False
    tools: tuple[Tool, ...] = ()  # the tools the model may call


@dataclass(slots=True)
class Request:
    """One prepared HTTP request; built once per turn and reused by every attempt."""

    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool

    def __post_init__(self) -> None:
        # held while the request is in flight: orjson's bytes keep its 4 KiB working buffer
        # whatever their length (10,000 bodies of 100 bytes held 41 MB); a copy of the exact
        # size does not
        self.body = memoryview(self.body).tobytes()

    def masked(self, key: str | None, hidden: str = "***") -> str:
        """The request as text for people: credentials replaced by `hidden`; an image's
        base64 (a data URL, Gemini's or Anthropic's `data`) cut to its length."""
        lines = [f"POST {mask(self.url, key, hidden)}"]
        for name, value in self.headers.items():
            secret = name.lower() in SECRET_HEADERS
            lines.append(f"{name}: {hidden if secret else mask(value, key, hidden)}")
        shown = json.loads(self.body, object_hook=_short_images)
        body = json.dumps(shown, ensure_ascii=False, indent=2)
        return "\n".join([*lines, "", mask(body, key, hidden)])


IMAGE_DATA = re.compile(r"^(data:[\w/+.-]+;base64,)?[A-Za-z0-9+/=]{200,}$")


def _short_images(obj: dict[str, Any]) -> dict[str, Any]:
    """An object of a body with each long base64 value (an image) said by its length."""
    for k, v in obj.items():
        if isinstance(v, str) and len(v) >= 200 and IMAGE_DATA.match(v):
            head = v.split(",", 1)[0] + "," if v.startswith("data:") else ""
            obj[k] = f"{head}<{len(v) - len(head):,} characters of base64>"
    return obj


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


@dataclass(slots=True, frozen=True)
class Capabilities:
    """What a protocol can do beyond text turns with the whole history sent each time."""

    server_context: bool = False  # keeps the history on the server (context: server)
    seed: bool = False  # a `seed` param makes sampling reproducible
    stream_usage: bool = False  # a stream reports token usage
    batch: bool = False  # a batch API takes many requests at once
    images: bool = False  # image parts in messages
    image_types: tuple[str, ...] = ("image/png", "image/jpeg", "image/gif", "image/webp")
    url_image_type: bool = False  # an image by URL must say its type (Gemini's mimeType)
    tools: bool = False  # tool calls and tool results
    cache_marks: bool = False  # `cache: true` marks the prompt's prefix for the server's cache


MAX_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class Provider:
    """A protocol adapter: its declarations (below), then building requests, reading
    replies and classifying errors. Register a subclass in runner/client/providers/__init__.py."""

    name: ClassVar[str] = ""  # `provider:` in the models file, PROVIDER in -m PROVIDER:MODEL
    default_base_url: ClassVar[str] = ""  # its path is where the API sits on a mock server
    key_env: ClassVar[str] = ""  # the environment variable of the key, unless api_key_env says
    auth_modes: ClassVar[tuple[str, ...]] = ("bearer",)  # `auth:` values; the first by default
    default_params: ClassVar[Mapping[str, Any]] = {}  # under the target's and scenario's params
    capabilities: ClassVar[Capabilities] = Capabilities()
    overloaded: ClassVar[frozenset[int]] = frozenset({429, 503})  # too many requests in flight
    rate_headers: ClassVar[RateHeaders] = X_RATELIMIT  # how its rate-limit headers read
    # whether a token budget admits a request at max(max_tokens, characters / 4), as OpenAI
    # documents; False: at its input alone (Anthropic counts output as it is generated)
    reserves_max_tokens: ClassVar[bool] = True
    mock_target: ClassVar[tuple[str, str]] = ("", "")  # the built-in target: its name, model

    def __init__(self, base_url: str, model: str, key: str | None, auth: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.key = key
        self.auth = auth or self.auth_modes[0]

    def admission_tokens(self, request: Request, params: Mapping[str, Any]) -> float:
        """What a request costs against the server's token budget, known before it is sent:
        the tokens estimated from its characters (its body's length / 4), or its max_tokens
        when larger and the protocol reserves them (`reserves_max_tokens`)."""
        asked = [v for k in MAX_TOKEN_PARAMS if isinstance(v := params.get(k), int | float)]
        estimate = len(request.body) / 4
        return max([estimate, *asked]) if self.reserves_max_tokens else estimate

    @classmethod
    def mock_base_url(cls, server_url: str) -> str:
        """The base URL against a mock server at server_url: the API's path on it."""
        return server_url + urlsplit(cls.default_base_url).path.rstrip("/")

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

    def batch_wire(self) -> Any:
        """The protocol's Batch API (a providers/batchwire.BatchWire), or None when it has
        none (capabilities.batch)."""
        return None


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


def arguments(text: Any, what: str) -> str:
    """A call's arguments as the protocol sends them (JSON text of an object); anything else
    is a malformed reply."""
    text = want(text, str, what)
    try:
        value = from_json(text) if text.strip() else {}
    except ValueError:
        raise malformed(f"{what} is not valid JSON: {text[:200]!r}") from None
    want(value, dict, what)
    return text


def arguments_object(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as an object (Gemini's args, Anthropic's input)."""
    value = from_json(call.arguments) if call.arguments.strip() else {}
    return value if isinstance(value, dict) else {}


def result_value(content: str) -> Any:
    """A tool result's text as JSON when it is JSON, else the text."""
    try:
        return from_json(content)
    except ValueError:
        return content


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
    if len(text) > MAX_VALUES and values(text) > MAX_VALUES:  # each value takes a byte
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


def whole_second_wait(headers: Any, given: float) -> bool:
    """Whether GIVEN (retry_after's answer) came from a Retry-After of whole seconds alone,
    no retry-after-ms: a wait said that way cannot be less than a second."""
    if headers is None or headers.get("retry-after-ms") is not None:
        return False
    value = (headers.get("retry-after") or "").strip()
    return value.isdigit() and float(value) == given


def seconds(value: Any) -> float | None:
    """A number of seconds of at least 0 (a finite float), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, number) if math.isfinite(number) else None
