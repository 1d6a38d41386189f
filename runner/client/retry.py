"""The one retry loop, its backoff policy, and the breaker that stops a target."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runner.client.limits import Sleep
from runner.client.providers.base import Reply
from runner.errors import ApiError, Kind
from runner.results.failures import failure_key


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    max_retries: int = 6
    base_s: float = 0.5  # first backoff ceiling; doubles per attempt
    max_wait_s: float = 60.0  # cap on any single wait, the server's included

    def wait(self, attempt: int, err: ApiError, rand: Callable[[], float]) -> float:
        """Seconds before the next attempt: the server's word, else full-jitter backoff. The
        server's word is spread by up to a tenth of itself (or of the backoff, if shorter), so
        that requests it refused at once (one Retry-After for all) do not come back at once;
        a rate limit's refusals then queue in the pacer, which spreads them at its rate. More
        spread would delay a run's last conversations: a whole-second Retry-After plus half of
        it came out as 1.08-1.10 x the ideal on 3-5 s runs, a tenth as 1.01-1.09."""
        if err.retry_after is not None:
            spread = rand() * min(err.retry_after, self.base_s * 2**attempt) / 10
            return min(err.retry_after + spread, self.max_wait_s)
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
    """Stops a target, so that nothing more is sent to it: when it refuses the key (401/403),
    or when its first `same_failures` final failures (an error not retried, or the last of
    a request's retries) are all alike and nothing has succeeded: gateways that answer a
    bad key with a 400 or a 500, a base URL that answers 404. An attempt that could not
    connect (refused, DNS, TLS) counts at once, attempt by attempt: nobody is there."""

    def __init__(self, target: str, same_failures: int = 0):
        self.target = target
        self.error: ApiError | None = None  # set when open: what every later call raises
        self.same_failures = same_failures
        self._first: ApiError | None = None  # the first final failure, while all are alike
        self._alike = 0
        self._deciding = same_failures > 0  # until a success or an unlike final failure

    def check(self) -> None:
        """Raise, without sending, once the breaker is open."""
        if self.error is not None:  # a new exception each time: each gets its own traceback
            raise ApiError(self.error.kind, self.error.message)

    def observe(self, err: ApiError) -> None:
        """An attempt's error: open on an answered auth failure (not on one this breaker
        raised itself); count a final one (not retried), or one that could not connect."""
        if err.kind is Kind.AUTH and err.status is not None:
            self.error = ApiError(
                Kind.AUTH, f"not sent: {self.target} refused the key ({err.message})"
            )
        if not err.retryable or err.unreachable:
            self._final(err)

    def gave_up(self, err: ApiError) -> None:
        """The retry loop's last error: count it when it could have been retried (an error
        not retried, or that could not connect, was counted by observe). Rate limits are
        pacing, not a broken target."""
        if err.retryable and not err.unreachable:
            self._final(err if err.kind is not Kind.RATE_LIMIT else None)

    def succeeded(self) -> None:
        """A reply came back: the target works, alike failures no longer stop it."""
        self._deciding = False

    def _final(self, err: ApiError | None) -> None:
        if not self._deciding:
            return
        # an answered failure, or no connection made at all; not a timeout (the server is there)
        counted = err is not None and (err.status is not None or err.unreachable)
        if err is None or not counted or not _alike(self._first or err, err):
            self._deciding = False
            return
        self._first, self._alike = self._first or err, self._alike + 1
        if self._alike >= self.same_failures and self.error is None:
            self._deciding = False
            why = f"with {err.status} ({err.message})" if err.status else f"({err.message})"
            self.error = ApiError(
                err.kind,
                f"not sent: {self.target} failed {self._alike} times in a row from the start {why}",
            )


def _alike(a: ApiError, b: ApiError) -> bool:
    """The same failure, request ids in the message aside (runner/results/failures.py)."""
    return failure_key(a.as_record()) == failure_key(b.as_record())
