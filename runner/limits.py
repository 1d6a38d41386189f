"""What paces requests to one target: requests in flight, and per-minute budgets."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Sleep = Callable[[float], Awaitable[None]]


class AdaptiveLimit:
    """Requests in flight to one target, found by what the server refuses.

    A refusal (429 or 503 that is not an empty rate bucket) of a request sent with n in
    flight means the server takes fewer than n: the limit drops to n - 1, and at most by
    BETA at once (a refusal at a small n may be another client's doing). Below the level
    last refused the limit grows by one per round of successes; just under it, it waits
    PATIENCE rounds before probing one higher, sooner each time a probe succeeds. So it
    settles just under a concurrency limit and finds a higher one again. Only the first
    refusal of a "generation" counts: answers to requests sent before the last drop do not
    drop it again.
    """

    BETA = 0.7
    PATIENCE = 16.0

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.limit = float(maximum)
        self.ceiling = math.inf  # requests in flight when the server last refused one
        self.patience = self.PATIENCE
        self.in_flight = 0
        self.generation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> tuple[int, int]:
        """Wait for a slot; returns the ticket to hand back to release()."""
        while self.in_flight >= int(self.limit):
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # pass on the wake-up we were given
                raise
        self.in_flight += 1
        return self.generation, self.in_flight

    def release(self, ticket: tuple[int, int], overloaded: bool = False, ok: bool = False) -> None:
        generation, n = ticket
        self.in_flight -= 1
        if overloaded:
            if generation == self.generation:
                if n >= self.ceiling - 1:  # refused where it was before: a ceiling, wait
                    self.patience = self.PATIENCE  # long before probing it again
                self.ceiling = n
                self.limit = max(1.0, self.limit * self.BETA, n - 1.0)
                self.generation += 1
        elif ok and self.limit < self.maximum:
            self._grow(n)
        self._wake()

    def _grow(self, n: int) -> None:
        if n >= self.ceiling:  # the server took this many at once: the ceiling was low
            self.ceiling = n + 1
            self.patience = max(1.0, self.patience / 2)
        near = self.limit + 1 >= self.ceiling
        step = 1 / (self.limit * self.patience) if near else 1 / self.limit
        self.limit = min(float(self.maximum), self.limit + step)

    def _wake(self) -> None:
        free = int(self.limit) - self.in_flight
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


class TokenBucket:
    """A per-minute budget (requests or tokens), refilled continuously, one second of burst.

    Any 60 s window admits at most rate + rate/60. A request may overdraw the bucket;
    later ones wait until it is positive again. adjust() corrects an estimate afterwards.
    """

    def __init__(
        self,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.reserve = 0.0  # kept back: a request waits until cost + reserve is there
        self._clock, self._sleep = clock, sleep
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, cost: float = 1.0) -> None:
        async with self._lock:  # first come, first served
            self._refill()
            # (less a hair: a wait shorter than the clock's resolution would never end)
            while self.level < (need := min(cost + self.reserve, self.capacity)) - 1e-9:
                await self._sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= cost

    def adjust(self, delta: float) -> None:
        """Charge (or refund, when negative) the difference between estimate and actual."""
        self.level = min(self.capacity, self.level - delta)


REMAINING_REQUESTS, REMAINING_TOKENS = (
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
)
GO_PART = re.compile(r"(\d+(?:\.\d*)?)(h|ms|us|µs|ns|m|s)")
GO_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def reset_seconds(text: str) -> float | None:
    """A reset time as OpenAI writes it (a Go duration: "1s", "6m0s", "20ms", "2m59.56s")
    or as plain seconds ("0.5"); None when it is neither."""
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = GO_PART.findall(text)
    if not parts or sum(len(n) + len(u) for n, u in parts) != len(text.strip()):
        return None
    return sum(float(n) * GO_UNIT[u] for n, u in parts)


class Learned(TokenBucket):
    """A server's bucket as its x-ratelimit-* headers describe it: no pacing until they
    have been seen; then the level they state, less what was sent since and what waits to
    be sent, refilled at the rate they imply."""

    RESERVE = 0.02  # of the capacity, kept back for clock skew and estimation error

    def __init__(self, kind: str, clock: Callable[[], float], sleep: Sleep):
        super().__init__(0.0, clock, sleep)
        self.names = tuple(f"x-ratelimit-{w}-{kind}" for w in ("limit", "remaining", "reset"))
        self.sent = 0.0  # charged to requests sent so far
        self.pending = 0.0  # charged to requests that passed but are not sent yet
        self.basis = 0.0  # the used amount the rate was last inferred from

    async def take(self, cost: float) -> None:
        """Wait (once a rate is known) until the bucket holds the cost, and charge it."""
        if self.rate:
            await self.acquire(cost)
        else:
            self.level -= cost
        self.pending += cost

    def sending(self, cost: float) -> float:
        """The request is being sent now; returns what was sent before it."""
        self.pending -= cost
        self.sent += cost
        return self.sent

    def sync(self, headers: Any, remaining: str, sent_at: float, sent_then: float) -> float | None:
        """Take the server's word from one answer; returns what remained (None: not said)."""
        try:
            left = float(remaining)
        except ValueError:
            return None
        limit, reset = headers.get(self.names[0]), headers.get(self.names[2])
        seconds = reset_seconds(reset) if reset else None
        try:
            capacity = float(limit)
        except (TypeError, ValueError):
            return left
        used = capacity - left  # what the reset refills; `remaining` is rounded down, so
        if seconds and used >= max(1.0, self.basis / 2):  # the larger, the more exact
            self.rate = (used - 1 if used >= 2 else used) / seconds  # the slower bound
            self.basis = used
        if not self.rate:
            return left
        now = self._clock()
        self.capacity, self.reserve = max(1.0, capacity), self.RESERVE * capacity
        refilled = min(self.capacity, left + (now - sent_at) * self.rate)
        self.level = refilled - (self.sent - sent_then) - self.pending
        self._stamp = now
        return left


class Pacer:
    """Paces one target to the request and token budgets its server states in the headers
    of every answer (OpenAI's x-ratelimit-limit/remaining/reset-requests|tokens, also sent by
    Azure OpenAI, Groq and many OpenAI-compatible servers): a request waits until the
    server's bucket, as last stated and charged with what was sent since, holds its cost."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep):
        self.requests = Learned("requests", clock, sleep)
        self.tokens = Learned("tokens", clock, sleep)
        self.clock = clock

    def paced(self) -> bool:
        """True once the server has stated a budget (before that, nothing waits)."""
        return bool(self.requests.rate or self.tokens.rate)

    async def acquire(self, tokens: float) -> None:
        """Wait until both budgets hold this request, and charge it."""
        await self.requests.take(1.0)
        await self.tokens.take(tokens)

    def charge(self, tokens: float) -> None:
        """Charge a request without waiting (no budget known yet)."""
        self.requests.level -= 1.0
        self.requests.pending += 1.0
        self.tokens.level -= tokens
        self.tokens.pending += tokens

    def mark(self, tokens: float) -> tuple[float, float, float]:
        """Just before sending: when, and what had been sent by then (this one included)."""
        return self.clock(), self.requests.sending(1.0), self.tokens.sending(tokens)

    def observe(self, headers: Any, mark: tuple[float, float, float], tokens: float) -> bool:
        """Sync to an answer's headers; True when they say a budget cannot hold the request
        (a 429 from an empty bucket, not from too many requests in flight)."""
        requests, tokens_left = headers.get(REMAINING_REQUESTS), headers.get(REMAINING_TOKENS)
        if requests is None and tokens_left is None:  # the usual case: one cheap look
            return False
        sent_at, requests_then, tokens_then = mark
        exhausted = False
        if requests is not None:
            left = self.requests.sync(headers, requests, sent_at, requests_then)
            exhausted = left is not None and left < 1
        if tokens_left is not None:
            left = self.tokens.sync(headers, tokens_left, sent_at, tokens_then)
            exhausted |= left is not None and left < max(2 * tokens, self.tokens.reserve)
        return exhausted
