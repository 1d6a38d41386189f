"""Options and per-app state of the mock server: seeded fault plan, ids, stored responses,
cached prompt prefixes."""

from __future__ import annotations

import itertools
import random
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runner.mock.limits import Limits
from runner.mock.reply import Message

ERROR_STATUSES = (429, 500, 503)


@dataclass
class MockOptions:
    """Behaviour of the mock server: latency and seeded fault injection (rates are 0..1)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int = 0
    error_rate: float = 0.0
    cut_rate: float = 0.0
    malformed_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 2000.0
    retry_after_ms: int = 50
    require_key: str | None = None
    record: bool = False
    max_stored_responses: int = 10000
    limit_rpm: float = 0.0  # requests a minute (0: no limit); see runner.mock.limits
    limit_tpm: float = 0.0  # tokens a minute (0: no limit)
    limit_window_s: float = 60.0  # the window the limits are enforced on (its bucket's size)
    limit_headers: str = "openai"  # what answers say of the limits: openai | window | none
    limit_concurrency: int = 0  # requests in progress at once
    batch_delay_ms: float = 0.0  # Batch APIs: how long a batch runs before its lines are answered
    batch_fail_rate: float = 0.0  # the share of a batch's lines that fail (500, in the errors)
    batch_expire: int = 0  # this many first batches expire, with no output


@dataclass(frozen=True, slots=True)
class Plan:
    """Fault decisions for one request: error status (0: none), malformed, cut, delay (s)."""

    status: int = 0
    malformed: bool = False
    cut: bool = False
    delay: float = 0.0


NO_FAULT = Plan()


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored Responses-API response: the conversation so far and the response object."""

    history: tuple[Message, ...]
    body: dict[str, Any]


class ResponseStore:
    """Bounded memory of responses for previous_response_id (oldest evicted first)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def get(self, response_id: str) -> Stored | None:
        """The stored response, or None when unknown or evicted."""
        return self._items.get(response_id)

    def put(self, response_id: str, stored: Stored) -> None:
        """Remember a response, evicting the oldest beyond the limit."""
        self._items[response_id] = stored
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class PrefixCache:
    """Bounded memory of prompt prefixes written to the cache (Anthropic's cache_control):
    a prefix's key is the hash of the model and the messages up to it (oldest evicted)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def add(self, key: bytes) -> None:
        """Remember (or refresh) a prefix, evicting the oldest beyond the limit."""
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)


class MockState:
    """Everything one app owns: options, the seeded RNG, ids, stored responses, the log."""

    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0  # accepted since start (keep-alive reuse keeps this low)
        self.answered = 0  # requests to the API routes, recorded or not
        self.batches_created = 0  # by the Batch APIs
        self.store = ResponseStore(options.max_stored_responses)
        self.prefixes = PrefixCache(options.max_stored_responses)
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        o = options
        self.limits: Limits | None = None
        if o.limit_rpm > 0 or o.limit_tpm > 0 or o.limit_concurrency > 0:
            self.limits = Limits(o.limit_rpm, o.limit_tpm, o.limit_window_s, o.limit_concurrency,
                                 o.retry_after_ms, o.limit_headers)  # fmt: skip
        self._faulty = any(
            (o.latency_ms, o.jitter_ms, o.error_rate, o.cut_rate, o.malformed_rate, o.slow_rate)
        )

    def next_id(self) -> str:
        """A fresh hex id, unique within this server (append it to a prefix like resp_)."""
        return f"{self._prefix}{next(self._ids):08x}"

    def next_number(self) -> int:
        """A fresh serial number (chatcmpl-<n>)."""
        return next(self._ids)

    def record(self, request: web.Request, body: Any) -> None:
        """Log a request (path, query, lower-cased headers, parsed JSON) when recording."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        entry = {"path": request.path, "query": dict(request.query), "headers": headers}
        self.requests.append({**entry, "json": body})

    def plan(self) -> Plan:
        """Draw this request's faults from the seeded RNG: error, else malformed, else cut/slow."""
        if not self._faulty:
            return NO_FAULT
        o, rng = self.options, self.rng
        delay_ms = self._latency_ms()
        if o.error_rate and rng.random() < o.error_rate:
            return Plan(status=rng.choice(ERROR_STATUSES), delay=delay_ms / 1000)
        if o.malformed_rate and rng.random() < o.malformed_rate:
            return Plan(malformed=True, delay=delay_ms / 1000)
        if o.slow_rate and rng.random() < o.slow_rate:
            delay_ms += o.slow_ms
        cut = bool(o.cut_rate) and rng.random() < o.cut_rate
        return Plan(cut=cut, delay=delay_ms / 1000)

    def _latency_ms(self) -> float:
        o = self.options
        jitter = self.rng.uniform(-o.jitter_ms, o.jitter_ms) if o.jitter_ms else 0.0
        return max(0.0, o.latency_ms + jitter)


STATE_KEY = web.AppKey("mock_state", MockState)
