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
import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from runner.client.limits import Sleep
from runner.client.providers.ratelimits import X_RATELIMIT, RateHeaders, reset_seconds


@dataclass(slots=True)
class Mark:
    """A request as it left: when, what had been sent before it (its place in the order the
    server decides in), what was sent within NEAR_S before it, itself included (what the
    server may have decided in another order), and (set by the Pacer) how many requests
    were on the wire with it, itself included."""

    at: float
    sent: float
    near: float = 0.0
    flying: int = 0


class Budget:
    """One of a server's budgets (requests or tokens), as learned from its empty moments."""

    MIN_UNITS = 4.0  # requests admitted between two empty moments before their rate counts
    LOW_UNITS = 400.0  # requests admitted between them before the estimate leans low
    KEEP_S = 60.0  # empty moments older than this no longer anchor the rate
    KEEP = 256  # nor those past the newest 256
    KEEP_REFUSALS = 2048  # refusals kept to count what was admitted between empty moments
    NEAR_S = 0.05  # requests sent this close together may be decided in either order
    MIN_BURST_S = 0.1  # the learned bucket holds at least this long of its rate
    GUESS_GROWTH = 2.0  # a guessed rate doubles each second until an empty moment measures it
    PROBE_S = 1.0  # a measured rate that finds no empty moment this long while requests wait
    PROBE_GROWTH = 1.2  # ... grows by this each second waited, until one measures it again

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
        self.trusted = False  # ... with more admitted between than may have been reordered
        self.guessed = False  # whether the rate is only a guess (half of what went out)
        self.basis = 0.0  # the used amount the stated rate was taken from
        self.capacity = math.inf  # the bucket's size, once a rate is measured
        self.burst = 0.0  # what the server took at once before its bucket first emptied
        self.took = math.inf  # ... as first seen, before its rate is measured (no refill)
        self.level, self._stamp = 0.0, clock()
        self._emptied = self._stamp  # when the last empty moment was heard of
        self.began: float | None = None  # the first send
        self.sent = 0.0  # units sent so far
        self.refusals: list[tuple[float, float]] = []  # (sent before, cost) of each refused
        self.empties: list[Mark] = []  # moments the bucket was empty, in the order sent
        self._recent: deque[tuple[float, float]] = deque()  # (at, sent) of the last NEAR_S
        self._lock = asyncio.Lock()

    async def wait(self, cost: float) -> None:
        """Once pacing (a rate learned): wait until the bucket holds the cost, and charge it."""
        async with self._lock:  # first come, first served
            self._refill()
            while self.level < min(cost, self.capacity) - 1e-9:
                wait = min(self.max_wait_s, (cost - self.level) / self.rate)
                await self._sleep(wait)
                self._refill()
                if self.measured and self._clock() - self._emptied > self.PROBE_S:
                    # a measure a little low would never be refused into a better one
                    self.rate *= self.PROBE_GROWTH**wait
            self.level -= cost

    def mark(self, cost: float, on_wire: float, flying: int = 0) -> Mark:
        """Mark a send of COST (after wait(), when pacing): no more sent NEAR_S before it
        than is ON_WIRE with it; FLYING is the Pacer's count to keep (see Mark)."""
        at, recent = self._clock(), self._recent
        recent.append((at, self.sent))
        while recent[0][0] < at - self.NEAR_S:
            recent.popleft()
        near = self.sent + cost - recent[0][1]
        mark = Mark(at, self.sent, min(near, on_wire), flying)
        if self.began is None:
            self.began = at
        self.sent += cost
        return mark

    def _refill(self) -> None:
        now = self._clock()
        if self.guessed:  # a guess may be low, and only a refusal would say: it grows until one
            self.rate *= self.GUESS_GROWTH ** (now - self._stamp)
        full = self.level + (now - self._stamp) * self.rate
        if full >= self.capacity and self.measured:  # it filled up: what came before says
            # nothing of the rate
            self.empties.clear()
        self.level, self._stamp = min(self.capacity, full), now

    def not_taken(self, mark: Mark, cost: float) -> None:
        """A request sent at `mark` was refused (for this budget or another reason): the
        server took nothing of this budget for it."""
        bisect.insort(self.refusals, (mark.sent, cost))
        if len(self.refusals) > self.KEEP_REFUSALS:  # the oldest no longer count
            del self.refusals[: self.KEEP_REFUSALS // 4]

    def refused_at(self, mark: Mark, cost: float) -> None:
        """A request sent at `mark` was refused for this budget: the bucket was empty when
        the server decided, just before the refusal came back (a refusal is immediate; the
        request may have waited at the server behind others, a burst's at once)."""
        self.not_taken(mark, cost)
        decided = replace(mark, at=self._clock())  # just before the refusal came back
        self._empty(self._moment(decided, cost, self.sent - mark.sent - cost), cost)

    def emptied_at(self, mark: Mark, cost: float) -> None:
        """The request sent at `mark` was admitted, and its answer says the bucket cannot
        hold another like it (decided as it arrived: what was sent after it while it was
        answered is no more likely to be decided before it than what went just before)."""
        self._empty(self._moment(mark, cost, min(mark.near, self.sent - mark.sent - cost)), cost)

    @staticmethod
    def _moment(mark: Mark, cost: float, after: float) -> Mark:
        """The empty moment of the request sent at `mark`, in the order sent: what was sent
        up to it, and what the server may have decided on the other side of it: what was
        on the wire with it when it left, and `after` it, before it was decided (for a
        refusal, all sent before it came back: it was decided just before)."""
        return Mark(mark.at, mark.sent + cost, mark.near + after)

    def _empty(self, moment: Mark, cost: float) -> None:
        """An empty moment, kept in the order its request was sent (the order the server
        decided in; answers may come back in another)."""
        now = self._emptied = self._clock()
        bisect.insort(self.empties, moment, key=_sent)
        while len(self.empties) > self.KEEP or now - self.empties[0].at > self.KEEP_S:
            del self.empties[0]
        measured = self._measured(cost)
        self.measured |= bool(measured)
        rate = measured or self.rate or self.stated_rate
        self.guessed = not rate or (self.guessed and not measured)
        if not self.measured:
            self.took = min(self.took, self._burst(0.0))
        rate = rate or self._half_sent(moment)
        self._set_rate(rate, cost)
        if measured and not self.burst:
            self.burst = self._burst(measured)
        # empty then; refilled since, and charged with what left after it
        last = self.empties[-1]
        self.level = min(self.capacity, (now - last.at) * self.rate) - (self.sent - last.sent)
        self._stamp = now

    def _set_rate(self, rate: float, cost: float) -> None:
        """Pace at `rate` (no slower than one request per max_wait_s: no wait a server
        causes is endless), in a bucket of the burst learned, and of at least MIN_BURST_S of
        the rate: a smaller one would lose to the event loop's late wake-ups what the
        server's bucket keeps. Until the rate is measured, the bucket is what the server took
        before it first refused (so a wait's refill, the guess's growth included, lets through
        no more than it took then: refused requests retried together are not a herd)."""
        self.rate = max(rate, cost / self.max_wait_s)
        if self.measured:
            self.capacity = max(cost, self.burst, self.rate * self.MIN_BURST_S)
        elif self.took < math.inf:  # what it took at once, again at once: no more
            self.capacity = max(cost, self.took, self.rate * self.MIN_BURST_S)

    def _measured(self, unit: float) -> float:
        """The refill rate between the first kept empty moment and the last, in the order
        sent; 0 when too little was admitted between them to tell. What was admitted between
        is what was sent between less what was refused of it, exact within one request's
        cost (`unit`) at each end (the bucket could not hold one more) when the server
        decides in the order sent. It may not, for requests on the wire together (a burst
        sent at once): a burst's refusals, milliseconds apart, may then measure thousands a
        second. Such an error shows as refusals that correct it, but the measure is not
        `trusted` (to shorten a whole-second wait) until what was admitted outnumbers what may
        have been decided on the other side of either end (see _moment). Over a short
        span the estimate leans high, so an error shows as a refusal that lengthens the span;
        over a long one (LOW_UNITS requests) it leans low, by at most 2 / LOW_UNITS, and
        refusals stop."""
        first, last = self.empties[0], self.empties[-1]
        admitted = self._admitted(last.sent) - self._admitted(first.sent)
        span, requests = last.at - first.at, admitted / unit
        if span <= 0 or requests < self.MIN_UNITS:
            return 0.0
        self.trusted |= admitted >= first.near + last.near  # none decided on the wrong side
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
        return max(1.0, self._admitted(first.sent) - rate * (first.at - began))

    def _admitted(self, sent: float) -> float:
        """What the server took of the first `sent` units sent (of those still counted)."""
        refused = self.refusals[: bisect.bisect_left(self.refusals, (sent,))]
        return sent - sum(cost for _, cost in refused)

    def retry_after(self, given: float, whole_second: bool) -> float:
        """The wait a 429 of this budget asks for, to be trusted to the second it is given in:
        a wait said in whole seconds alone (`whole_second`) cannot say less than 1 s, so once
        this budget's rate is measured and `trusted` (see _measured), the learned bucket
        decides within its last second (the retry waits its turn in take(), as every other
        request does)."""
        return given - 1.0 if self.trusted and whole_second and given >= 1 else given

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
        self.heard = False  # whether any request was answered (refused, failed) yet
        self.blind = 0  # requests of the first burst (sent before that) the server took

    async def acquire(self, tokens: float) -> tuple[Mark, Mark]:
        """Wait until both budgets hold this request, charge it, and mark its sending."""
        if self.requests.rate:
            await self.requests.wait(1.0)
        if self.tokens.rate:
            await self.tokens.wait(tokens)
        self.flying += 1
        flying = self.flying  # only what is on the wire together can be decided out of order
        # sent before anything was heard: part of the first burst, which the server may
        # decide in any order, so its count on the wire says nothing (marked 0)
        return (
            self.requests.mark(1.0, flying, flying if self.heard else 0),
            self.tokens.mark(tokens, flying * tokens),
        )

    def answered(self, headers: Any, marks: tuple[Mark, Mark], tokens: float) -> None:
        """An admitted request's answer: the rates its headers imply (when it has headers),
        and the budget they say is empty."""
        self.flying, self.heard = self.flying - 1, True
        if not marks[0].flying:  # the first burst was on the wire at once: so was what it took
            self.blind += 1
        self.taken = max(self.taken, marks[0].flying, self.blind)
        if headers is None:
            return
        left = self._stated(headers)
        if left[0] is not None and left[0] < 1:
            self.requests.emptied_at(marks[0], 1.0)
        if left[1] is not None and left[1] < tokens:
            self.tokens.emptied_at(marks[1], tokens)

    def failed(self) -> None:
        """A request's attempt ended in an error that is not a 429."""
        self.flying, self.heard = self.flying - 1, True

    def refused(
        self, headers: Any, message: str, marks: tuple[Mark, Mark], tokens: float
    ) -> Budget | None:
        """A 429: the budget that was empty is the one the headers say cannot hold the
        request, else the token budget when the message names it (OpenAI: "... on tokens
        per min"), else the requests budget unless it was too many in flight (see the
        class). Returns the budget found empty, if any."""
        self.flying, self.heard = self.flying - 1, True
        req, tok = self._stated(headers) if headers is not None else (None, None)
        empty: Budget | None = self.requests
        if req is not None and req < 1:
            pass
        elif (tok is not None and tok < tokens) or "token" in message.lower():
            empty = self.tokens
        elif self._crowded(marks[0].flying):
            empty = None
        # the server took nothing of either budget; the one it says is empty was, then
        for budget, mark, cost in ((self.requests, marks[0], 1.0), (self.tokens, marks[1], tokens)):
            if budget is empty:
                budget.refused_at(mark, cost)
            else:
                budget.not_taken(mark, cost)
        return empty

    def _crowded(self, flying: int) -> bool:
        """Whether a refusal that names no budget came of too many requests in flight (0
        on the wire: sent in the first burst, which says nothing of a level: it is taken so,
        the in-flight limit lowered, but sets no level and no rate)."""
        if not flying or flying >= self.crowd:
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


def _sent(mark: Mark) -> float:
    return mark.sent
