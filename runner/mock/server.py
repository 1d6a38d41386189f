"""The mock LLM server: aiohttp app, routes, the per-request fault flow, start/stop and serve."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runner.mock import (
    anthropic,
    batch_anthropic,
    batch_gemini,
    batch_openai,
    chat,
    gemini,
    responses,
)
from runner.mock.faults import MockError
from runner.mock.limits import Limits, admission_tokens
from runner.mock.state import STATE_KEY, MockOptions, MockState, Plan
from runner.mock.wire import Out, Protocol, send, send_malformed

__all__ = ["MockOptions", "MockServer", "make_app", "serve", "start_mock"]

INVALID = object()  # a request body that is not JSON
MAX_BODY = 64 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 1.0
BACKLOG = 4096


async def read_json(request: web.Request) -> Any:
    """The parsed JSON body; None when empty, INVALID when not JSON."""
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return INVALID


async def answer(request: web.Request, proto: Protocol) -> web.StreamResponse:
    """Record, check the key, draw faults, wait, then answer (error, malformed or normal)."""
    state = request.app[STATE_KEY]
    opts = state.options
    state.answered += 1
    body = await read_json(request)
    if opts.record:
        state.record(request, None if body is INVALID else body)
    if opts.require_key is not None and not proto.authorized(request, opts.require_key):
        return proto.error(MockError(401), opts.retry_after_ms)
    plan = state.plan()
    if state.limits is not None:
        return await answer_limited(request, proto, body, plan, state.limits)
    if plan.delay:
        await asyncio.sleep(plan.delay)
    if plan.status:
        return proto.error(MockError(plan.status), opts.retry_after_ms)
    if plan.malformed:
        return await send_malformed(request, proto.is_stream(request, body))
    return await answer_normally(request, proto, body, plan.cut)


def prerender(request: web.Request, proto: Protocol, body: Any, plan: Plan) -> Out | MockError:
    """The answer rendered, or the error it will be."""
    if plan.status:
        return MockError(plan.status)
    if body is INVALID:
        return MockError(400, "We could not parse the JSON body of your request.")
    try:
        return proto.render(request, body, request.app[STATE_KEY])
    except MockError as err:
        return err


async def answer_limited(
    request: web.Request, proto: Protocol, body: Any, plan: Plan, limits: Limits
) -> web.StreamResponse:
    """Past a limit: an immediate 429. Admitted: the usual answer after the latency. Both
    carry the rate-limit headers (x-ratelimit-*, or the protocol's own)."""
    retry_ms = request.app[STATE_KEY].options.retry_after_ms
    tokens = admission_tokens(body, request.content_length or 0, proto.limit_style)
    verdict = limits.admit(tokens, proto.limit_style)
    if verdict.retry_after_ms is not None:
        resp = proto.error(MockError(429, verdict.reason), verdict.retry_after_ms)
        resp.headers.update(verdict.headers)
        if limits.mode == "none":  # Retry-After alone, in whole seconds
            resp.headers.pop("retry-after-ms", None)
        return resp
    try:  # rendered once admitted: a refused request leaves no trace (a prompt cache's)
        out = None if plan.malformed else prerender(request, proto, body, plan)
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if out is None:
            return await send_malformed(request, proto.is_stream(request, body))
        if isinstance(out, MockError):
            resp = proto.error(out, retry_ms)
            resp.headers.update(verdict.headers)
            return resp
        out.headers = {**out.headers, **verdict.headers} if out.headers else verdict.headers
        return await send(request, out, plan.cut)
    finally:
        limits.done()


async def answer_normally(
    request: web.Request, proto: Protocol, body: Any, cut: bool
) -> web.StreamResponse:
    """Render the reply (or a 4xx/5xx envelope) and send it, cut off midway when asked."""
    state = request.app[STATE_KEY]
    try:
        if body is INVALID:
            raise MockError(400, "We could not parse the JSON body of your request.")
        out = proto.render(request, body, state)
    except MockError as err:
        return proto.error(err, state.options.retry_after_ms)
    return await send(request, out, cut)


def handler(proto: Protocol) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler answering with one protocol."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await answer(request, proto)

    return handle


async def stats(request: web.Request) -> web.Response:
    """GET /mock/stats: connections accepted and API requests answered since the start."""
    state = request.app[STATE_KEY]
    body = {"connections": state.connections, "requests": state.answered,
            "tokens_admitted": state.limits.tokens_admitted if state.limits else 0,
            "batches_created": state.batches_created}  # fmt: skip
    return web.Response(text=json.dumps(body), content_type="application/json")


def count_connections(runner: web.AppRunner, state: MockState) -> None:
    """Count every connection the server accepts (aiohttp has no hook for it: wrap the
    low-level server's connection_made, which each new connection's handler calls once)."""
    server = runner.server
    assert server is not None  # set up already
    made = server.connection_made

    def counted(handler: Any, transport: Any) -> None:
        state.connections += 1
        made(handler, transport)

    server.connection_made = counted  # type: ignore[method-assign]


def make_app(options: MockOptions) -> web.Application:
    """The mock app: OpenAI Chat, OpenAI Responses, Gemini and Anthropic Messages routes over
    one MockState."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = MockState(options)
    app.router.add_post("/v1/chat/completions", handler(chat.PROTOCOL))
    app.router.add_post("/v1/responses", handler(responses.PROTOCOL))
    app.router.add_get("/v1/responses/{response_id}", responses.get_response)
    app.router.add_post("/v1/messages", handler(anthropic.PROTOCOL))
    app.router.add_get("/mock/stats", stats)
    # Gemini's batch routes first: more specific than /models/{target}, and GET
    # /v1/batches/{id} of an OpenAI batch is passed on to the OpenAI Batch API
    batch_gemini.add_routes(app, batch_openai.get)
    batch_openai.add_routes(app)
    batch_anthropic.add_routes(app)
    for version in ("v1beta", "v1"):
        app.router.add_post(f"/{version}/models/{{target}}", handler(gemini.PROTOCOL))
    return app


class MockServer:
    """A started mock server on a real socket."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.app = runner.app
        self.state = self.app[STATE_KEY]
        self.host, self.port = host, port
        self.base_url = f"http://{host}:{port}"
        self.requests: list[dict[str, Any]] = self.state.requests

    async def close(self) -> None:
        """Stop listening and finish (or cancel) requests in flight."""
        await self.runner.cleanup()

    async def __aenter__(self) -> MockServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_mock(
    options: MockOptions | None = None, host: str = "127.0.0.1", port: int = 0
) -> MockServer:
    """Start a mock server (port 0: a free port) in the running event loop."""
    app = make_app(options or MockOptions())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    count_connections(runner, app[STATE_KEY])
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    await site.start()
    return MockServer(runner, host, runner.addresses[0][1])


async def _serve(options: MockOptions, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await start_mock(options, host, port)
    print(f"mock server listening on {server.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def serve(options: MockOptions, host: str, port: int) -> None:
    """Run a mock server until SIGINT/SIGTERM, after printing its URL on one line."""
    asyncio.run(_serve(options, host, port))
