"""The transport seam: sending a built request and reading its reply, whole or streamed.

A `Transport` is all the client needs of the wire: `send(request) -> Reply`. `Http` is the
one over HTTP (aiohttp, the provider reading the replies, the body limits); `Capture` sends
nothing and keeps the requests (`--dry-run`). Failures of the transport are classified
here (timeouts, connections, cut streams); a body of the wrong shape is `malformed` only
where a provider's shape checks say so. Any other exception is a bug of ours: it is not
caught here, and the client records it as `internal`, not retried.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from runner.client.providers.base import Provider, Reply, Request, loads, want
from runner.client.providers.body import Limits, chunks, read_body
from runner.client.providers.drain import drain
from runner.client.providers.sse import iter_sse
from runner.encoding import clean_text
from runner.errors import ApiError, Kind

LIMITS = Limits()  # the defaults: 32 MB, 30 s idle


class Transport(Protocol):
    """Sends one built request and reads its reply; raises ApiError for what failed."""

    async def send(self, request: Request) -> Reply: ...


class Http:
    """The transport over HTTP: one session (its connection pool), the provider that reads
    the replies, the limits on what a server may send."""

    __slots__ = ("session", "provider", "limits")

    def __init__(
        self, session: aiohttp.ClientSession, provider: Provider, limits: Limits = LIMITS
    ) -> None:
        self.session, self.provider, self.limits = session, provider, limits

    async def send(self, request: Request) -> Reply:
        """One HTTP attempt: POST the request; the reply, whole or streamed, read by the
        provider. Transport failures become retryable ApiErrors."""
        start, provider, limits = time.perf_counter(), self.provider, self.limits
        try:
            # an API call never needs a redirect, and following one may carry the key elsewhere
            async with self.session.post(
                request.url, data=request.body, headers=request.headers, allow_redirects=False
            ) as resp:
                if resp.status >= 300:
                    err = await answered_error(resp, provider, limits)
                    err.headers = resp.headers
                    raise err
                if request.stream:
                    reply = await _streamed(resp, provider, limits, start)
                else:
                    reply = provider.parse(loads(await read_body(resp, limits), "response body"))
                    reply.latency_ms = reply.ttft_ms = (time.perf_counter() - start) * 1000
                reply.headers = resp.headers
        except (aiohttp.ClientError, OSError) as exc:
            raise classified(exc, request.url) from None
        return checked(reply)


def checked(reply: Reply) -> Reply:
    """A reply as the client takes it: its text a string, cleaned."""
    reply.text = clean_text(want(reply.text, str, "the reply text"))
    return reply


def classified(exc: aiohttp.ClientError | OSError, url: str) -> ApiError:
    """The retryable ApiError a failure of the transport stands for (a plain function
    called in an `except`, not a context manager: no generator per request in flight)."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return unreachable(exc, url)
    if isinstance(exc, TimeoutError):
        return ApiError(Kind.TIMEOUT, "the request timed out", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ApiError(Kind.STREAM, f"the response was cut off: {exc}", retryable=True)
    return ApiError(Kind.CONNECTION, f"{type(exc).__name__}: {exc}", retryable=True)


async def call(
    session: aiohttp.ClientSession,
    provider: Provider,
    method: str,
    url: str,
    limits: Limits = LIMITS,
    **kwargs: Any,
) -> bytes:
    """One call of a provider's other endpoints (a Batch API's): the whole body of a 2xx
    answer; any other answer or failure is the ApiError a direct call would raise."""
    try:
        async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
            if resp.status >= 300:
                err = await answered_error(resp, provider, limits)
                err.headers = resp.headers
                raise err
            return await read_body(resp, limits)
    except (aiohttp.ClientError, OSError) as exc:
        raise classified(exc, url) from None


class Capture:
    """A transport that sends nothing (`--dry-run`): it keeps each request it is given and
    answers it with a final error, so a conversation stops at its first request."""

    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def send(self, request: Request) -> Reply:
        self.requests.append(request)
        raise ApiError(Kind.HTTP, "not sent: a dry run")


def unreachable(exc: aiohttp.ClientError, url: str) -> ApiError:
    """No connection was made: retryable, and named by host and port. Refused, DNS and TLS
    failures are counted attempt by attempt towards a target's fail-fast breaker; a connect
    timeout or a local error (too many open files) is not: a server busy accepting ten
    thousand connections, or this machine, is not a server that is not there."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    cause: object = exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        where, cause = f"{exc.host}:{exc.port}", exc.os_error
    there = True
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        why, there = "no answer within connect_timeout_s", False
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        why = f"the host name does not resolve ({_reason(cause)})"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = f"its TLS certificate is not trusted ({exc.certificate_error})"
    elif isinstance(exc, aiohttp.ClientSSLError):
        why = f"the TLS handshake failed; http or https? ({getattr(cause, 'reason', '') or cause})"
    elif isinstance(cause, ConnectionRefusedError):
        why = "connection refused (nothing listens there)"
    else:
        why, there = f"{type(cause).__name__}: {_reason(cause)}", False
    return ApiError(
        Kind.CONNECTION, f"cannot connect to {where}: {why}", retryable=True, unreachable=there
    )


def _reason(cause: object) -> str:
    """An OS error's own words, without its errno."""
    return str(getattr(cause, "strerror", None) or cause)


async def _streamed(
    resp: aiohttp.ClientResponse, provider: Provider, limits: Limits, start: float
) -> Reply:
    """A streamed reply, read event by event by the provider; the rest of the body is
    drained so that the connection goes back to the pool."""
    state = provider.stream_state()
    ttft = None
    async with contextlib.aclosing(chunks(resp, limits)) as body:
        async for event, data in iter_sse(body, limits.max_bytes):
            done = state.feed(event, data)
            if ttft is None and state.started:
                ttft = (time.perf_counter() - start) * 1000
            if done:
                break
    reply = state.reply()
    reply.latency_ms = (time.perf_counter() - start) * 1000
    reply.ttft_ms = ttft
    await drain(resp.content)
    return reply


async def answered_error(
    resp: aiohttp.ClientResponse, provider: Provider, limits: Limits
) -> ApiError:
    """The error a 3xx, 4xx or 5xx answer stands for; its body is read within the limits."""
    if resp.status < 400:
        where = resp.headers.get("Location", "")
        return ApiError(
            Kind.HTTP,
            f"HTTP {resp.status}: the server redirects to {where!r}; API calls are not "
            "redirected (point base_url at the final address)",
            status=resp.status,
        )
    text = (await read_body(resp, limits)).decode("utf-8", "replace")
    err = provider.error(resp.status, resp.headers, text)
    if resp.status in (404, 405):  # most often a wrong base_url or model: say what was called
        err.message = f"{err.message} ({resp.method} {resp.url} answered {resp.status})"
    return err
