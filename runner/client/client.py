"""One target's connection: HTTP session, provider, limits, and the retry loop per call."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import aiohttp

import runner
from runner.client.batch import SENDING, Batcher, BatchLog, request_key
from runner.client.cache import Cache
from runner.client.limits import AdaptiveLimit, TokenBucket
from runner.client.pacing import Mark, Pacer
from runner.client.providers import Call, Reply
from runner.client.providers.base import Request, cut_message, mask, whole_second_wait
from runner.client.providers.body import MB, Limits
from runner.client.providers.transport import Http, Transport
from runner.client.retry import Breaker, RetryPolicy, retrying
from runner.encoding import clean_text
from runner.errors import ApiError, Kind, internal
from runner.messages import Message, Tool
from runner.results.records import attempt_record
from runner.spec.targets import Target, provider_for

USER_AGENT = f"dialogue-runner/{runner.__version__}"
AttemptSink = Callable[[dict[str, Any]], None]
Where = int | tuple[int, int]  # a turn, or a turn and the request of its tool loop
At = tuple[str, Where, str | None]  # a conversation, where in it, and a role marking the record
BATCH_IN_FLIGHT = 10**9  # batch mode: no limit on the requests waiting for a round
NOTHING_HELD = contextlib.nullcontext()
Verdict = Callable[[str], object]  # raises a retryable ApiError when a reply is no verdict


class TargetClient:
    """Everything a conversation needs to get replies from one target."""

    def __init__(
        self,
        target: Target,
        stream: bool,
        on_attempt: AttemptSink,
        cache: Cache | None = None,
        transport: Transport | None = None,
        batches: BatchLog | None = None,
    ):
        self.target = target
        self.cache = cache  # replies replayed and stored (runner/client/cache.py); None: off
        # a batch never streams: streaming is dropped
        self.stream = (
            False if target.batch else target.stream if target.stream is not None else stream
        )
        self.on_attempt = on_attempt
        self.policy = RetryPolicy(max_retries=target.max_retries, max_wait_s=target.max_wait_s)
        # a batch takes every request of a round: the direct call's limits do not apply
        self.limit = AdaptiveLimit(BATCH_IN_FLIGHT if target.batch else target.concurrency)
        self.rpm = TokenBucket(target.rpm) if target.rpm and not target.batch else None
        self.tpm = TokenBucket(target.tpm) if target.tpm and not target.batch else None
        self.provider = provider_for(target)
        # the server's budgets, learned from its headers as the provider names them
        self.pacer = Pacer(max_wait_s=target.max_wait_s, headers=self.provider.rate_headers)
        self.breaker = Breaker(target.name, target.fail_fast_after)
        self.retries = 0  # shown by the progress line
        self.limits = Limits(
            max_bytes=int(target.max_response_mb * MB), idle_s=target.idle_timeout_s or None
        )
        self.session: aiohttp.ClientSession | None = None  # opened by start()
        self.transport = transport  # over HTTP once start() opened the session
        self.batches = batches  # the run's batch file: batch mode's transport needs it
        self.batcher: Batcher | None = None  # batch mode's transport, once started

    async def start(self) -> None:
        """Open the HTTP session (one connection pool sized to the target's concurrency) and
        the transport over it, unless a transport was given."""
        if self.transport is not None:
            return
        t = self.target
        timeout = aiohttp.ClientTimeout(
            total=t.timeout_s, sock_connect=t.connect_timeout_s, sock_read=t.first_byte_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=t.concurrency, limit_per_host=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}
        )
        if self.target.batch and self.batches is not None:
            self.transport = self.batcher = Batcher(
                self.session, self.provider, t.name, t.batch_poll_s, self.batches
            )
        else:
            self.transport = Http(self.session, self.provider, self.limits)

    def holding(self) -> contextlib.AbstractContextManager[None]:
        """A conversation of this target in flight: batch mode waits for all of them; a
        direct call holds nothing (one shared context, not a generator per conversation)."""
        return self.batcher.holding() if self.batcher is not None else NOTHING_HELD

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.session is not None:
            await self.session.close()

    def params(self) -> dict[str, Any]:
        """The target's params over its provider's defaults: what every request starts from."""
        return {**self.provider.default_params, **self.target.params}

    async def complete(
        self,
        system: str | None,
        messages: list[Message],
        params: dict[str, Any],
        previous_id: str | None,
        conversation_id: str,
        turn: int,
        judge: Verdict | None = None,
        sample: int = 0,
        cache_marks: bool | None = None,
        tools: tuple[Tool, ...] = (),
        request: int = 0,
        role: str | None = None,
    ) -> tuple[Reply, int]:
        """A reply for this turn, retried as the policy allows; returns (reply, attempts).

        With `judge`, this is a judge's request: its attempts are recorded as such, and a
        reply that `judge` refuses is retried like a malformed body. With a cache, a reply
        cached for this request (and SAMPLE) is replayed with 0 attempts. `cache_marks`
        (None: the target's `cache`) asks a provider with cache marks to mark the prompt for
        the server's prompt cache (not the reply cache). TOOLS are the tools the model may
        call; REQUEST numbers the requests of one turn's tool loop (usage records say it
        when there are tools). ROLE, when given, marks every usage record of this call (a
        simulated user's: "simulated_user")."""
        marks = self.target.cache if cache_marks is None else cache_marks
        call = Call(system, messages, params, self.stream, previous_id, marks, tools)
        where = (turn, request) if tools else turn
        sent = self.provider.build(call)

        # -- the reply cache (runner/client/cache.py): a hit is replayed, a miss stored once sent
        cached = self.cache.lookup(self.provider, call, sample) if self.cache else None
        if cached is not None and cached.reply is not None:
            record = cached.usage_record(conversation_id, where, self.target, bool(judge))
            self.on_attempt({**record, "role": role} if role else record)
            return cached.reply, 0

        tokens = self.provider.admission_tokens(sent, params)

        # a partial, not a closure: fewer objects per request in flight
        attempt = functools.partial(
            self._attempt, sent, tokens, (conversation_id, where, role), judge
        )
        try:
            reply, attempts = await retrying(attempt, self.policy)
        except ApiError as err:
            self.breaker.gave_up(err)
            raise
        if cached is not None:
            cached.store(reply, self.provider)
        return reply, attempts

    async def _attempt(
        self,
        request: Request,
        estimate: float,
        at: At,
        judge: Verdict | None,
        n: int,
    ) -> Reply:
        if self.rpm:
            await self.rpm.acquire()
        if self.tpm:
            await self.tpm.acquire(estimate)
        ticket = await self.limit.acquire()
        try:  # paced holding the slot: nothing queues between the pacing and the send
            marks = await self.pacer.acquire(estimate)
            self.breaker.check()  # it may have opened while we waited
        except BaseException:
            self.limit.release(ticket)
            raise
        self.retries += n > 0
        start = time.perf_counter()
        assert self.transport is not None, "start() first"
        key = ""
        if self.batcher is not None:  # batch mode alone reads the key: not per direct request
            key = request_key(*at[:2], n, judge is not None, at[2])
            SENDING.set(key)
        try:
            reply = await self.transport.send(request)  # the one place a request is sent
        except Exception as exc:  # anything but an ApiError is our bug: final, said where
            err = exc if isinstance(exc, ApiError) else internal(exc)
            self._failed(err, ticket, marks, estimate)
            self._record(at, n, err.label, None, start, judge is not None, key)
            raise err from None
        self.limit.release(ticket, ok=True)
        self.breaker.succeeded()
        self.pacer.answered(reply.headers, marks, estimate)
        self._record(at, n, 200, reply, start, judge is not None, key)
        if judge is not None:
            judge(reply.text)
        return reply

    def _failed(
        self,
        err: ApiError,
        ticket: tuple[int, int],
        marks: tuple[Mark, Mark],
        cost: float,
    ) -> None:
        """A refused attempt: a rate limit paces the
        target; an answer the provider calls an overload (503, or a 429 the pacer finds no
        empty budget behind: too many in flight) lowers the requests in flight."""
        err.message = cut_message(clean_text(mask(err.message, self.target.key)))
        if self.batcher is not None:  # a batch line's failure says nothing of the rates
            self.limit.release(ticket)
            self.breaker.observe(err)
            return
        empty = None
        if err.kind is Kind.RATE_LIMIT:
            empty = self.pacer.refused(err.headers, err.message, marks, cost)
            if empty is not None and err.retry_after is not None:
                whole = whole_second_wait(err.headers, err.retry_after)
                err.retry_after = empty.retry_after(err.retry_after, whole)
        else:
            self.pacer.failed()
        overloaded = err.retryable and err.status in self.provider.overloaded and empty is None
        self.limit.release(ticket, overloaded=overloaded)
        self.breaker.observe(err)

    def _record(
        self,
        at: At,
        n: int,
        status: int | str,
        reply: Reply | None,
        start: float,
        judge: bool,
        key: str = "",
    ) -> None:
        latency_ms = (time.perf_counter() - start) * 1000
        t, (cid, turn, role) = self.target, at
        record = attempt_record(cid, turn, n + 1, t.name, t.model, status, reply, latency_ms)
        if judge:
            record["judge"] = True
        if role:
            record["role"] = role
        if self.batcher is not None and (batch_id := self.batcher.batch_of(key)):
            if key in self.batcher.log.recorded:  # recorded before the run was resumed
                return
            record.update(batch_id=batch_id, batch=True, batch_key=key)
        self.on_attempt(record)
