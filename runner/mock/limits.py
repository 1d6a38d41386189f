"""Provider limits the mock enforces, as OpenAI states and enforces them.

A limit is per minute (`rpm`, `tpm`), as OpenAI's limits page and its headers state it, but
it is enforced on a shorter window (OpenAI's "quantization": 60,000 requests a minute served
as 1,000 a second): a token bucket of `window_s` seconds' worth of the limit, refilled
continuously at limit/60 a second. A request costs one request and, against a token limit,
what OpenAI documents it is admitted at: max(max_tokens asked, its body's length / 4) (see
`admission_tokens`; capped at the bucket's size); it is admitted when every bucket holds its
cost and fewer than `concurrency` requests are in progress, and then charged. Otherwise the
answer is an immediate 429: for an empty bucket, retry-after is the time until it holds the
cost again; past the concurrency limit, the configured retry_after_ms. Refused requests are
not charged.

What the answers say (`headers`):
- "openai": x-ratelimit-limit-X is the per-minute limit, x-ratelimit-remaining-X what is
  left of a minute's allowance (a bucket of a minute's worth, charged alike), and
  x-ratelimit-reset-X the time until that allowance is whole again (a Go duration: "1s",
  "6m0s", "20ms"); 429s carry retry-after-ms and Retry-After. With a window shorter than a
  minute, a request can be refused while `remaining` is high, as OpenAI's can.
- "window": the limit per minute, but remaining and reset of the bucket that enforces it.
- "none": no x-ratelimit-* headers; 429s carry only Retry-After, in whole seconds.

The names follow the protocol (`style`): OpenAI's above, or Anthropic's
anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}, whose reset is the RFC 3339
time (UTC, milliseconds) at which the bucket is whole again and whose token `remaining` is
rounded to the nearest thousand, as Anthropic documents; Anthropic's 429s carry Retry-After
alone (whole seconds), never retry-after-ms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

HEADER_MODES = ("openai", "window", "none")


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's time.Duration): "0s", "7ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def rfc3339_in(seconds: float) -> str:
    """The UTC time `seconds` from now as Anthropic writes a reset: 2026-12-04T17:05:00.123Z."""
    when = datetime.now(UTC) + timedelta(seconds=max(0.0, seconds))
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class Bucket:
    """A token bucket: `capacity` at most, refilled continuously at `rate` a second."""

    __slots__ = ("rate", "capacity", "level", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, max(1.0, capacity)
        self.level, self.stamp = self.capacity, now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, cost: float) -> float:
        """Seconds until the bucket holds `cost` (0: it does now)."""
        return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)

    def charge(self, cost: float) -> None:
        self.level -= min(cost, self.capacity)


class Limit:
    """One per-minute limit (requests or tokens): the bucket that enforces it, and the
    minute's allowance the headers state."""

    __slots__ = ("kind", "per_minute", "enforced", "stated")

    def __init__(self, kind: str, per_minute: float, window_s: float, now: float) -> None:
        self.kind, self.per_minute = kind, per_minute
        rate = per_minute / 60.0
        self.enforced = Bucket(rate, rate * window_s, now)
        self.stated = Bucket(rate, per_minute, now)

    def headers(self, mode: str, out: dict[str, str], style: str = "openai") -> None:
        bucket = self.stated if mode == "openai" else self.enforced
        k, level = self.kind, max(0.0, bucket.level)
        reset_s = (bucket.capacity - level) / bucket.rate
        if style == "anthropic":
            out[f"anthropic-ratelimit-{k}-limit"] = f"{self.per_minute:g}"
            shown = math.floor(level / 1000 + 0.5) * 1000 if k == "tokens" else int(level)
            out[f"anthropic-ratelimit-{k}-remaining"] = str(shown)
            out[f"anthropic-ratelimit-{k}-reset"] = rfc3339_in(reset_s)
            return
        out[f"x-ratelimit-limit-{k}"] = f"{self.per_minute:g}"
        out[f"x-ratelimit-remaining-{k}"] = str(int(level))
        out[f"x-ratelimit-reset-{k}"] = go_duration(reset_s)


MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def admission_tokens(body: Any, length: int, style: str = "openai") -> int:
    """What a request is charged against a token limit when it is admitted, as its provider
    documents it: OpenAI, the larger of the max_tokens it asks for and the tokens estimated
    from its characters (its body's length / 4); Anthropic, its input alone (output tokens
    are counted as generated: max_tokens reserves nothing)."""
    estimate = math.ceil(length / 4)
    if style == "anthropic" or not isinstance(body, dict):
        return estimate
    config = body.get("generationConfig")
    values = [body.get(k) for k in MAX_TOKEN_KEYS]
    values.append(config.get("maxOutputTokens") if isinstance(config, dict) else None)
    asked = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return max([estimate, *asked])


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
        rpm: float,
        tpm: float,
        window_s: float,
        concurrency: int,
        retry_after_ms: int,
        headers: str = "openai",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if headers not in HEADER_MODES:
            raise ValueError(f"headers must be one of {', '.join(HEADER_MODES)}")
        now = clock()
        self.limits = [Limit(k, m, window_s, now)
                       for k, m in (("requests", rpm), ("tokens", tpm)) if m > 0]  # fmt: skip
        self.concurrency, self.in_progress = concurrency, 0
        self.tokens_admitted = 0  # what admitted requests were charged (GET /mock/stats)
        self.retry_after_ms, self.mode, self.clock = retry_after_ms, headers, clock

    def admit(self, tokens: int, style: str = "openai") -> Verdict:
        """Admit and charge a request costing `tokens`, or say why not and for how long;
        the headers are named in the protocol's `style` (openai or anthropic)."""
        now = self.clock()
        wait, reason = 0.0, ""
        for limit in self.limits:
            cost = 1.0 if limit.kind == "requests" else float(tokens)
            limit.enforced.refill(now)
            limit.stated.refill(now)
            if limit.enforced.wait_s(cost) > wait:
                wait = limit.enforced.wait_s(cost)
                reason = f"Rate limit reached for {limit.kind} per min: Limit {limit.per_minute:g}"
        busy = self.concurrency > 0 and self.in_progress >= self.concurrency
        if not wait and not busy:
            for limit in self.limits:
                cost = 1.0 if limit.kind == "requests" else float(tokens)
                limit.enforced.charge(cost)
                limit.stated.charge(cost)
            self.in_progress += 1
            self.tokens_admitted += tokens
        headers: dict[str, str] = {}
        if self.mode != "none":
            for limit in self.limits:
                limit.headers(self.mode, headers, style)
        if wait:
            return Verdict(headers, max(1, math.ceil(wait * 1000)), reason)
        if busy:
            why = f"Too many requests in progress (the limit is {self.concurrency})"
            return Verdict(headers, self.retry_after_ms, why)
        return Verdict(headers)

    def done(self) -> None:
        """An admitted request has been answered."""
        self.in_progress -= 1
