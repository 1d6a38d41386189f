"""What paces requests to one target: requests in flight, and the per-minute budgets a
models file tells (the server's own budgets are learned in runner/client/pacing.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

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
    later ones wait until it is positive again.
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
            while self.level < (need := min(cost, self.capacity)) - 1e-9:
                await self._sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= cost
