"""One target's connection: HTTP session, provider, limits, and the retry loop per call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

import runner
from runner.providers import PROVIDERS, ApiError, Reply
from runner.providers.base import Request, mask, send
from runner.records import VERSION
from runner.retry import AdaptiveLimit, RetryPolicy, TokenBucket, retrying
from runner.targets import Target, mock_base_url

USER_AGENT = f"dialogue-runner/{runner.__version__}"
AttemptSink = Callable[[dict[str, Any]], None]


class TargetClient:
    """Everything a conversation needs to get replies from one target."""

    def __init__(self, target: Target, stream: bool, on_attempt: AttemptSink):
        self.target = target
        self.stream = target.stream if target.stream is not None else stream
        self.on_attempt = on_attempt
        self.policy = RetryPolicy(max_retries=target.max_retries, max_wait_s=target.max_wait_s)
        self.limit = AdaptiveLimit(target.concurrency)
        self.rpm = TokenBucket(target.rpm) if target.rpm else None
        self.tpm = TokenBucket(target.tpm) if target.tpm else None
        self.auth_error: ApiError | None = None  # the breaker: set by a 401/403
        self.retries = 0  # shown by the progress line
        self.provider = PROVIDERS[target.provider](
            target.base_url, target.model, target.key, target.auth
        )
        self.session: aiohttp.ClientSession | None = None
        self._mock: Any = None

    async def start(self) -> None:
        """Open the session (and the in-process mock server, for mock targets)."""
        if self.target.mock is not None:
            from runner.mock import MockOptions, start_mock

            self._mock = await start_mock(MockOptions(**self.target.mock))
            self.provider.base_url = mock_base_url(self.target.provider, self._mock.base_url)
        t = self.target
        timeout = aiohttp.ClientTimeout(
            total=t.timeout_s, sock_connect=t.connect_timeout_s, sock_read=t.first_byte_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=t.concurrency, limit_per_host=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}
        )

    async def close(self) -> None:
        if self.session:
            await self.session.close()
        if self._mock:
            await self._mock.close()

    async def complete(
        self,
        system: str | None,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        previous_id: str | None,
        conversation_id: str,
        turn: int,
    ) -> tuple[Reply, int]:
        """A reply for this turn, retried as the policy allows; returns (reply, attempts)."""
        request = self.provider.build(system, messages, params, self.stream, previous_id)
        try:  # the common case: one attempt, no retry machinery on the hot path
            return await self._attempt(request, conversation_id, turn, 0), 1
        except ApiError as err:
            failed = err
        attempts = 1

        async def attempt(n: int) -> Reply:
            nonlocal attempts
            attempts = n + 1
            return await self._attempt(request, conversation_id, turn, n)

        return await retrying(attempt, self.policy, after=failed), attempts

    async def _attempt(self, request: Request, cid: str, turn: int, n: int) -> Reply:
        estimate = len(request.body) // 4
        if self.rpm:
            await self.rpm.acquire()
        if self.tpm:
            await self.tpm.acquire(estimate)
        generation = await self.limit.acquire()
        if self.auth_error is not None:  # the breaker opened while we waited
            self.limit.release(generation)
            raise ApiError(
                "auth", f"not sent: {self.target.name} refused the key ({self.auth_error.message})"
            )
        self.retries += n > 0
        start = time.perf_counter()
        try:
            reply = await send(self.session, self.provider, request)
        except ApiError as err:
            err.message = mask(err.message, self.target.key)
            self.limit.release(generation, rate_limited=err.kind == "rate_limit")
            if err.kind == "auth" and err.status is not None:
                self.auth_error = err
            self._record(cid, turn, n, err.label, None, start)
            raise
        self.limit.release(generation, ok=True)
        if self.tpm:
            self.tpm.adjust(reply.usage.total_tokens - estimate)
        self._record(cid, turn, n, "ok", reply, start)
        return reply

    def _record(self, cid: str, turn: int, n: int, status: str, reply: Reply | None, start: float):
        usage = reply.usage if reply else None
        self.on_attempt({
            "version": VERSION,
            "conversation_id": cid,
            "turn": turn,
            "attempt": n + 1,
            "target": self.target.name,
            "model": self.target.model,
            "status": 200 if status == "ok" else status,
            "input_tokens": usage.input_tokens if usage else 0,
            "output_tokens": usage.output_tokens if usage else 0,
            "reasoning_tokens": usage.reasoning_tokens if usage else 0,
            "cached_tokens": usage.cached_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
            "ttft_ms": round(reply.ttft_ms, 2) if reply and reply.ttft_ms is not None else None,
            "ts": time.time(),
        })  # fmt: skip
