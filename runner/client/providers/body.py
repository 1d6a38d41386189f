"""Reading a response body within bounds: a cap on its size (decompressed bytes, as
aiohttp hands them over) and an idle timeout between bytes, for whole bodies and streams.

Either limit ends the attempt with a retryable ApiError naming the limit; neither costs
more than a comparison and a clock read per chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import aiohttp

from runner.errors import ApiError, Kind

MB = 1024 * 1024


@dataclass(slots=True, frozen=True)
class Limits:
    """max_bytes: a response's size (and an SSE line's length); idle_s: seconds without a
    byte once the response has begun (None: no idle timeout)."""

    max_bytes: int = 32 * MB
    idle_s: float | None = 30.0


def too_large(limits: Limits, what: str = "the response") -> ApiError:
    return ApiError(
        Kind.MALFORMED,
        f"{what} is larger than the {limits.max_bytes / MB:.3g} MB cap (max_response_mb)",
        retryable=True,
    )


async def read_body(resp: aiohttp.ClientResponse, limits: Limits) -> bytes:
    """The whole body, or ApiError once it passes the cap or stalls. A declared length is
    checked before reading; the idle timeout runs between pieces, as for chunked bodies (a
    slow body that keeps arriving is not cut)."""
    declared = resp.content_length
    if declared is not None and not resp.headers.get("Content-Encoding"):
        if declared > limits.max_bytes:
            raise too_large(limits)
        if resp.content.is_eof():  # all of it has arrived already: nothing can stall
            return await resp.read()
    parts = [chunk async for chunk in chunks(resp, limits)]
    return b"".join(parts)


async def chunks(resp: aiohttp.ClientResponse, limits: Limits) -> AsyncGenerator[bytes, None]:
    """The body as it arrives, chunk by chunk, within the cap and the idle timeout."""
    content = resp.content
    idle = Idle(limits.idle_s, resp.close)
    total = 0
    try:
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError):
                idle.check()  # the connection was closed by the idle timeout
                raise
            idle.check()
            if not chunk:
                return
            idle.touch()
            total += len(chunk)
            if total > limits.max_bytes:
                raise too_large(limits)
            yield chunk
    finally:
        idle.stop()


class Idle:
    """Calls `expire` (closing the response) once `seconds` pass without touch(); check()
    then raises ApiError(timeout). One timer per idle period, not one per chunk: touch()
    only notes the time. Nothing is cancelled, so it is safe wherever the reader stops."""

    __slots__ = ("seconds", "expire", "last", "fired", "_loop", "_handle")

    def __init__(self, seconds: float | None, expire: Callable[[], object]):
        self.seconds = seconds
        self.expire = expire
        self.fired = False
        self._handle: asyncio.TimerHandle | None = None
        if seconds is not None:
            self._loop = asyncio.get_running_loop()
            self.last = self._loop.time()
            self._handle = self._loop.call_at(self.last + seconds, self._due)

    def touch(self) -> None:
        if self._handle is not None:
            self.last = self._loop.time()

    def _due(self) -> None:
        assert self.seconds is not None
        now = self._loop.time()
        if now - self.last >= self.seconds:
            self.fired, self._handle = True, None
            self.expire()
        else:
            self._handle = self._loop.call_at(self.last + self.seconds, self._due)

    def check(self) -> None:
        if self.fired:
            raise ApiError(
                Kind.TIMEOUT, f"no data for {self.seconds:g} s (idle_timeout_s)", retryable=True
            )

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
