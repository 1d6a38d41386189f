"""Pacing to a server's rate limits, learned from where the server refuses.

A provider's stated limit is not the bucket that refuses: OpenAI states a per-minute
allowance (`x-ratelimit-limit-requests: 9000`) and may enforce it on a shorter window (150 a
second, a bucket of 15), so a request can be refused while `remaining` looks high. So a
budget is learned from the moments its bucket was *empty*: a 429 that names it, or an answer
whose `remaining` says it cannot hold another request. Between two such moments the server
admitted exactly what it refilled, so the refill rate is what was admitted in between over
the time between (within one request, see Budget._measured). Until two such moments are
seen, the rate the headers imply (the used part of `limit` over `reset`) stands in, else half
the rate requests went out at. Before the first one nothing waits: a bucket of any size is
spent at full speed first.
From the first empty moment on, requests wait until the learned bucket, refilled at the
learned rate and charged with what was sent since, holds them; requests refused meanwhile
wait their turn like any other, so retries go out spread at the rate, not as a herd.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.client.limits import Sleep
from runner.client.providers.ratelimits import X_RATELIMIT, RateHeaders, reset_seconds


@dataclass(slots=True, frozen=True)
class Mark:
    """A request as it left: when, what had been sent and refused before it, and (set by
    the Pacer) how many requests were on the wire with it, itself included."""

    at: float
    sent: float
    refused: float
    flying: int = 0


class Budget:
    """One of a server's budgets (requests or tokens), as learned from its empty moments."""

    MIN_UNITS = 4.0  # requests admitted between two empty moments before their rate counts
    LOW_UNITS = 400.0  # requests admitted between them before the estimate leans low
    KEEP_S = 60.0  # empty moments older than this no longer anchor the rate
    MIN_BURST_S = 0.1  # the learned bucket holds at least this long of its rate
    GUESS_GROWTH = 2.0  # a guessed rate doubles each second until an empty moment measures it

    def __init__(
        self,
        kind: str,
        clock: Callable[[], float],
        sleep: Sleep,
        max_wait_s: float,
        headers: RateHeaders = X_RATELIMIT,
    ):
        self.kind = kind
        self.names, self.reset = headers.names(kind), headers.reset
        self._clock, self._sleep, self.max_wait_s = clock, sleep, max_wait_s
        self.rate = 0.0  # units a second the server refills; 0: nothing waits yet
        self.stated_rate = 0.0  # the rate the headers imply (used of limit over reset)
        self.measured = False  # whether the rate was measured between empty moments
        self.guessed = False  # whether the rate is only a guess (half of what went out)
        self.basis = 0.0  # the used amount the stated rate was taken from
        self.capacity = math.inf  # the bucket's size, once a rate is measured
        self.burst = 0.0  # what the server took at once before its bucket first emptied
        self.level, self._stamp = 0.0, clock()
        self.began: float | None = None  # the first send
        self.sent = 0.0  # units sent so far
        self.refused = 0.0  # units refused so far
        self.empties: deque[Mark] = deque(maxlen=256)  # moments the bucket was empty
        self._lock = asyncio.Lock()

    async def take(self, cost: float) -> Mark:
        """Wait (once pacing) until the bucket holds the cost; charge it; mark the send."""
        if self.rate:
            async with self._lock:  # first come, first served
                self._refill()
                while self.level < min(cost, self.capacity) - 1e-9:
                    await self._sleep(min(self.max_wait_s, (cost - self.level) / self.rate))
                    self._refill()
                self.level -= cost
        mark = Mark(self._clock(), self.sent, self.refused)
        if self.began is None:
            self.began = mark.at
        self.sent += cost
        return mark

    def _refill(self) -> None:
        now = self._clock()
        if self.guessed:  # a guess may be low, and only a refusal would say: it grows until one
            self.rate *= self.GUESS_GROWTH ** (now - self._stamp)
        full = self.level + (now - self._stamp) * self.rate
        if full >= self.capacity:  # it filled up: what came before says nothing of the rate
            self.empties.clear()
        self.level, self._stamp = min(self.capacity, full), now

    def refused_at(self, mark: Mark, cost: float) -> None:
        """A request sent at `mark` was refused for this budget: the bucket was empty when
        the server decided, just before the refusal came back (a refusal is immediate; the
        send itself may have waited behind others, so its mark is earlier than the decision)."""
        self.refused += cost
        self._empty(Mark(self._clock(), mark.sent + cost, self.refused), cost)

    def emptied_at(self, mark: Mark, cost: float) -> None:
        """The request sent at `mark` was admitted, and its answer says the bucket cannot
        hold another like it."""
        self._empty(Mark(mark.at, mark.sent + cost, self.refused), cost)

    def _empty(self, moment: Mark, cost: float) -> None:
        if self.empties and moment.at <= self.empties[-1].at:
            return  # older news than the last empty moment
        now = self._clock()
        while self.empties and now - self.empties[0].at > self.KEEP_S:
            self.empties.popleft()
        self.empties.append(moment)
        measured = self._measured(cost)
        self.measured |= bool(measured)
        rate = measured or self.rate or self.stated_rate
        self.guessed = not rate or (self.guessed and not measured)
        rate = rate or self._half_sent(moment)
        self._set_rate(rate, cost)
        if measured and not self.burst:
            self.burst = self._burst(measured)
        # empty then; refilled since, and charged with what left after it
        self.level = min(self.capacity, (now - moment.at) * self.rate) - (self.sent - moment.sent)
        self._stamp = now

    def _set_rate(self, rate: float, cost: float) -> None:
        """Pace at `rate` (no slower than one request per max_wait_s: no wait a server
        causes is endless), in a bucket of the burst learned, and of at least MIN_BURST_S of
        the rate: a smaller one would lose to the event loop's late wake-ups what the
        server's bucket keeps."""
        self.rate = max(rate, cost / self.max_wait_s)
        if self.measured:
            self.capacity = max(cost, self.burst, self.rate * self.MIN_BURST_S)

    def _measured(self, unit: float) -> float:
        """The refill rate between the oldest kept empty moment and the newest; 0 when too
        little was admitted between them to tell. The count is exact within one request's
        cost (`unit`) either way (at each end the bucket could not hold one more): over a
        short span the estimate leans high by that, so an error shows as a refusal that
        lengthens the span; over a long one (LOW_UNITS requests) it leans low, by at most
        2 / LOW_UNITS, and refusals stop."""
        first, last = self.empties[0], self.empties[-1]
        admitted = (last.sent - first.sent) - (last.refused - first.refused)
        span, requests = last.at - first.at, admitted / unit
        if span <= 0 or requests < self.MIN_UNITS:
            return 0.0
        return (admitted + unit * (1.0 - min(2.0, 2.0 * requests / self.LOW_UNITS))) / span

    def _half_sent(self, moment: Mark) -> float:
        """Before any measure or statement: half the rate things were sent at until the first
        empty moment (more than the server takes, as it emptied; less refuses less while the
        next moments measure it)."""
        began = self.began if self.began is not None else moment.at
        return moment.sent / max(moment.at - began, 1e-3) / 2

    def _burst(self, rate: float) -> float:
        """The bucket's size: what was admitted before the first empty moment, less what the
        rate refilled meanwhile."""
        first = self.empties[0]
        began = self.began if self.began is not None else first.at
        return max(1.0, first.sent - first.refused - rate * (first.at - began))

    def retry_after(self, given: float, whole_second: bool) -> float:
        """The wait a 429 of this budget asks for, to be trusted to the second it is given in:
        a wait said in whole seconds alone (`whole_second`) cannot say less than 1 s, so once
        this budget's rate is measured, the learned bucket decides within its last second
        (the retry waits its turn in take(), as every other request does)."""
        return given - 1.0 if self.measured and whole_second and given >= 1 else given

    def stated(self, headers: Any, remaining: float) -> None:
        """The rate the headers imply: the used part of the stated limit over its reset.
        `remaining` is rounded down, so this leans high by up to one unit over the reset; the
        answer with the most used (the most exact) counts, unless much older."""
        seconds = reset_seconds(headers.get(self.names[2]) or "", self.reset)
        try:
            used = float(headers.get(self.names[0])) - remaining
        except (TypeError, ValueError):
            return
        if seconds and max(1.0, self.basis / 2) <= used < math.inf:
            self.stated_rate, self.basis = used / seconds, used
            if self.rate and not self.measured:  # pacing on its word: the newest is the best
                self.guessed = False
                self._set_rate(self.stated_rate, 1.0)


def remaining(headers: Any, name: str) -> float | None:
    """A stated `remaining`, or None when absent or not a finite number."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


class Pacer:
    """Paces one target to the request and token budgets its server enforces, learned from
    its 429s and its rate-limit headers, named and read as its provider declares (by default
    OpenAI's x-ratelimit-*, also sent by Azure OpenAI, Groq and many OpenAI-compatible
    servers); a server that states nothing is paced by its 429s alone.

    A 429 whose headers do not say a budget is empty is an empty budget, or too many
    requests in flight (which pacing at a rate would only hold back: the requests in flight
    are found by runner/client/limits.py). It is taken for too many in flight when it came
    with more requests on the wire than the server ever took at once, or with as many as
    an earlier such refusal (the level the server refuses at); for an empty budget when the
    server has taken as many at once or more (a rate refuses whatever is in flight)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_wait_s: float = 60.0,
        headers: RateHeaders = X_RATELIMIT,
    ):
        self.requests = Budget("requests", clock, sleep, max_wait_s, headers)
        self.tokens = Budget("tokens", clock, sleep, max_wait_s, headers)
        self.flying = 0  # requests sent and not yet answered
        self.taken = 0  # the most requests on the wire with one the server admitted
        self.crowd = math.inf  # the fewest on the wire with one refused for being too many

    async def acquire(self, tokens: float) -> tuple[Mark, Mark]:
        """Wait until both budgets hold this request, charge it, and mark its sending."""
        req, tok = await self.requests.take(1.0), await self.tokens.take(tokens)
        self.flying += 1
        return Mark(req.at, req.sent, req.refused, self.flying), tok

    def answered(self, headers: Any, marks: tuple[Mark, Mark], tokens: float) -> None:
        """An admitted request's answer: the rates its headers imply (when it has headers),
        and the budget they say is empty."""
        self.flying -= 1
        self.taken = max(self.taken, marks[0].flying)
        if headers is None:
            return
        left = self._stated(headers)
        if left[0] is not None and left[0] < 1:
            self.requests.emptied_at(marks[0], 1.0)
        if left[1] is not None and left[1] < tokens:
            self.tokens.emptied_at(marks[1], tokens)

    def failed(self) -> None:
        """A request's attempt ended in an error that is not a 429."""
        self.flying -= 1

    def refused(
        self, headers: Any, message: str, marks: tuple[Mark, Mark], tokens: float
    ) -> Budget | None:
        """A 429: the budget that was empty is the one the headers say cannot hold the
        request, else the token budget when the message names it (OpenAI: "... on tokens
        per min"), else the requests budget unless it was too many in flight (see the
        class). Returns the budget found empty, if any."""
        self.flying -= 1
        req, tok = self._stated(headers) if headers is not None else (None, None)
        if req is not None and req < 1:
            on_tokens = False
        elif (tok is not None and tok < tokens) or "token" in message.lower():
            on_tokens = True
        elif self._crowded(marks[0].flying):
            return None
        else:
            on_tokens = False
        if on_tokens:
            self.tokens.refused_at(marks[1], tokens)
            return self.tokens
        self.requests.refused_at(marks[0], 1.0)
        return self.requests

    def _crowded(self, flying: int) -> bool:
        """Whether a refusal that names no budget came of too many requests in flight."""
        if flying >= self.crowd:
            return True
        if flying > self.taken:
            self.crowd = flying
            return True
        return False

    def _stated(self, headers: Any) -> tuple[float | None, float | None]:
        """What each budget's `remaining` says (None: not said), each taken as its word."""
        lefts = []
        for budget in (self.requests, self.tokens):
            left = remaining(headers, budget.names[1])
            if left is not None:
                budget.stated(headers, left)
            lefts.append(left)
        return lefts[0], lefts[1]
