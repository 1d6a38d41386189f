"""What the mock's Batch APIs share: the batch's delay (read as it passes, so that a test
may change it), the failure draw, and the lines answered by this server's own endpoints."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from runner.mock.state import STATE_KEY, MockState

LINES_AT_ONCE = 64
FORWARDED = ("authorization", "x-api-key", "anthropic-version", "x-goog-api-key")


async def delayed(state: MockState) -> None:
    """Wait out the options' batch_delay_ms."""
    began = time.monotonic()
    while time.monotonic() - began < state.options.batch_delay_ms / 1000:
        await asyncio.sleep(min(0.01, state.options.batch_delay_ms / 1000))


def expires(state: MockState) -> bool:
    """A new batch: counted; whether it is one of the first `batch_expire`."""
    state.batches_created += 1
    return state.batches_created <= state.options.batch_expire


def fails(state: MockState) -> bool:
    """Whether a line fails (the options' batch_fail_rate, seeded)."""
    rate = state.options.batch_fail_rate
    return bool(rate) and state.rng.random() < rate


class Lines:
    """Posts a batch's lines to this server as the direct calls they stand for."""

    def __init__(self, request: web.Request) -> None:
        self.origin = f"{request.scheme}://{request.host}"
        self.headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        self.state = request.app[STATE_KEY]

    async def answer(self, items: list[tuple[str, Any]]) -> list[tuple[int, Any]]:
        """(status, JSON body) of each (path, body), in order."""
        gate = asyncio.Semaphore(LINES_AT_ONCE)
        async with aiohttp.ClientSession(self.origin, headers=self.headers) as session:

            async def one(path: str, body: Any) -> tuple[int, Any]:
                async with gate, session.post(path, json=body) as resp:
                    return resp.status, await resp.json(content_type=None)

            return list(await asyncio.gather(*(one(p, b) for p, b in items)))
