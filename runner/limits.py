"""What paces requests to one target: requests in flight, and per-minute budgets."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]


class AdaptiveLimit:
    """Requests in flight to one target: halves on a rate limit, creeps back after successes.

    A 429 shrinks the limit once per "generation": answers to requests sent before the
    last shrink do not shrink it again, so one burst of 429s is one halving.
    """

    def __init__(self, maximum: int):
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.generation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> int:
        """Wait for a slot; returns the generation to hand back to release()."""
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
        return self.generation

    def release(self, generation: int, rate_limited: bool = False, ok: bool = False) -> None:
        self.in_flight -= 1
        if rate_limited and generation == self.generation:
            self.limit = max(1.0, self.limit / 2)
            self.generation += 1
        elif ok and self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
        self._wake()

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
            while self.level < min(cost, self.capacity):
                await self._sleep((min(cost, self.capacity) - self.level) / self.rate)
                self._refill()
            self.level -= cost

    def adjust(self, delta: float) -> None:
        """Charge (or refund, when negative) the difference between estimate and actual."""
        self.level = min(self.capacity, self.level - delta)
