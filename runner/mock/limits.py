"""Provider limits the mock enforces, as OpenAI does: requests and tokens per second (token
buckets refilled continuously), requests in progress; 429 with retry-after-ms / Retry-After
past a limit, and x-ratelimit-* headers on every answer.

A bucket of capacity `burst` refills at `rate` a second. A request is admitted when every
bucket holds its cost (1 request; the reply's total tokens, capped at the capacity) and fewer
than `limit_concurrency` requests are in progress; it is then charged. Otherwise the answer is
an immediate 429: for an empty bucket, retry-after is the time until it holds the cost again;
past the concurrency limit, the configured retry_after_ms. The headers say what OpenAI's say:
x-ratelimit-limit-X (the capacity), x-ratelimit-remaining-X (what is left after this request)
and x-ratelimit-reset-X (the time until the bucket is full again, as a Go duration: "1s",
"6m0s", "20ms"), for X = requests and tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's time.Duration): "0s", "7ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class Bucket:
    """A token bucket: `capacity` at most, refilled continuously at `rate` a second."""

    __slots__ = ("kind", "rate", "capacity", "level", "stamp")

    def __init__(self, kind: str, rate: float, burst: float, now: float) -> None:
        self.kind, self.rate = kind, rate
        self.capacity = burst if burst > 0 else max(1.0, rate)  # default: one second's worth
        self.level, self.stamp = self.capacity, now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, cost: float) -> float:
        """Seconds until the bucket holds `cost` (0: it does now)."""
        return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)

    def headers(self, out: dict[str, str]) -> None:
        k, level = self.kind, max(0.0, self.level)
        out[f"x-ratelimit-limit-{k}"] = str(int(self.capacity))
        out[f"x-ratelimit-remaining-{k}"] = str(int(level))
        out[f"x-ratelimit-reset-{k}"] = go_duration((self.capacity - level) / self.rate)


@dataclass(slots=True)
class Verdict:
    """Admitted (retry_after_ms None) or not, with the headers the answer carries."""

    headers: dict[str, str]
    retry_after_ms: int | None = None
    reason: str = ""


class Limits:
    """The limits of one mock server; admit() before answering, done() after an admission."""

    def __init__(
        self,
        rps: float,
        burst: float,
        tps: float,
        concurrency: int,
        retry_after_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        now = clock()
        self.buckets = [Bucket(k, r, burst if k == "requests" else 0, now)
                        for k, r in (("requests", rps), ("tokens", tps)) if r > 0]  # fmt: skip
        self.concurrency, self.in_progress = concurrency, 0
        self.retry_after_ms, self.clock = retry_after_ms, clock

    def admit(self, tokens: int) -> Verdict:
        """Admit and charge a request costing `tokens`, or say why not and for how long."""
        now = self.clock()
        costs = [1.0 if b.kind == "requests" else float(tokens) for b in self.buckets]
        wait, reason = 0.0, ""
        for bucket, cost in zip(self.buckets, costs, strict=True):
            bucket.refill(now)
            if bucket.wait_s(cost) > wait:
                wait, reason = bucket.wait_s(cost), f"Rate limit reached for {bucket.kind}"
        busy = self.concurrency > 0 and self.in_progress >= self.concurrency
        if not wait and not busy:
            for bucket, cost in zip(self.buckets, costs, strict=True):
                bucket.level -= min(cost, bucket.capacity)
            self.in_progress += 1
        headers: dict[str, str] = {}
        for bucket in self.buckets:
            bucket.headers(headers)
        if wait:
            return Verdict(headers, max(1, math.ceil(wait * 1000)), reason)
        if busy:
            why = f"Too many requests in progress (the limit is {self.concurrency})"
            return Verdict(headers, self.retry_after_ms, why)
        return Verdict(headers)

    def done(self) -> None:
        """An admitted request has been answered."""
        self.in_progress -= 1
