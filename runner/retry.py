"""The one retry loop, its backoff policy, and the breaker that stops a target."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runner.errors import ApiError, Kind
from runner.limits import Sleep
from runner.providers.base import Reply


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    max_retries: int = 6
    base_s: float = 0.5  # first backoff ceiling; doubles per attempt
    max_wait_s: float = 60.0  # cap on any single wait, the server's included

    def wait(self, attempt: int, err: ApiError, rand: Callable[[], float]) -> float:
        """Seconds before the next attempt: the server's word, else full-jitter backoff."""
        if err.retry_after is not None:
            return min(err.retry_after, self.max_wait_s)
        return rand() * min(self.max_wait_s, self.base_s * 2**attempt)


async def retrying(
    attempt_fn: Callable[[int], Awaitable[Reply]],
    policy: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> tuple[Reply, int]:
    """Call attempt_fn(0), (1), ... until a reply, a final error, or max_retries.

    Returns the reply and the number of attempts it took; raises the last ApiError.
    """
    attempt = 0
    while True:
        try:
            return await attempt_fn(attempt), attempt + 1
        except ApiError as err:
            if not err.retryable or attempt >= policy.max_retries:
                raise
            await sleep(policy.wait(attempt, err, rand))
        attempt += 1


class Breaker:
    """Opens when a target refuses the key (401/403): nothing more is sent to it."""

    def __init__(self, target: str):
        self.target = target
        self.error: ApiError | None = None

    def check(self) -> None:
        """Raise, without sending, once the breaker is open."""
        if self.error is not None:
            raise ApiError(
                Kind.AUTH, f"not sent: {self.target} refused the key ({self.error.message})"
            )

    def observe(self, err: ApiError) -> None:
        """Open on an answered auth failure (not on one this breaker raised itself)."""
        if err.kind is Kind.AUTH and err.status is not None:
            self.error = err
