"""The mock's Anthropic Message Batches: create, get, cancel, and the results stream.

Each request's params are answered by this server's own /v1/messages after the options'
`batch_delay_ms`; a `batch_fail_rate` share are `errored` (api_error, the whole envelope),
the first `batch_expire` batches end with every line `expired`, a cancelled batch's lines
not yet answered are `canceled`; results come in shuffled order.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from runner.mock.batches import Lines, delayed, expires, fails
from runner.mock.state import STATE_KEY

BATCHES = web.AppKey("anthropic_batches", dict)
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PATH = "/v1/messages/batches"


def _now(later: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=later)).isoformat().replace("+00:00", "Z")


def error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message},
            "request_id": "req_mock"}  # fmt: skip
    return web.json_response(body, status=status)


async def create(request: web.Request) -> web.Response:
    """POST /v1/messages/batches {requests: [{custom_id, params}]} -> a message batch."""
    try:
        body = await request.json()
    except ValueError:
        return error(400, "invalid_request_error", "the body is not JSON")
    items = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return error(400, "invalid_request_error", "requests: a non-empty list is required")
    ids = [i.get("custom_id") if isinstance(i, dict) else None for i in items]
    bad = [c for c in ids if not isinstance(c, str) or not CUSTOM_ID.match(c)]
    if bad or len(set(ids)) < len(ids):
        why = f"custom_id {bad[0]!r} must match" if bad else "custom_id values must be unique"
        return error(400, "invalid_request_error", f"{why} ^[a-zA-Z0-9_-]{{1,64}}$")
    state = request.app[STATE_KEY]
    expire = expires(state)
    batch: dict[str, Any] = {
        "id": f"msgbatch_{state.next_id()}", "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": len(items), "succeeded": 0, "errored": 0,
                           "canceled": 0, "expired": 0},
        "ended_at": None, "created_at": _now(), "expires_at": _now(86_400),
        "cancel_initiated_at": None, "archived_at": None, "results_url": None,
    }  # fmt: skip
    request.app[BATCHES][batch["id"]] = {"batch": batch, "results": []}
    task = asyncio.create_task(_process(request, batch, items, expire))
    request.app[BATCHES][batch["id"]]["task"] = task
    return web.json_response(batch)


async def _process(
    request: web.Request, batch: dict[str, Any], items: list[dict[str, Any]], expire: bool
) -> None:
    state = request.app[STATE_KEY]
    try:
        await delayed(state)
        if expire:
            results = [(i["custom_id"], {"type": "expired"}) for i in items]
        else:
            results = await _answers(request, items, state)
    except asyncio.CancelledError:
        results = [(i["custom_id"], {"type": "canceled"}) for i in items]
    _end(request, batch, results)


async def _answers(
    request: web.Request, items: list[dict[str, Any]], state: Any
) -> list[tuple[str, dict[str, Any]]]:
    failing = [fails(state) for _ in items]
    asked = [
        ("/v1/messages", {k: v for k, v in i["params"].items() if k != "stream"})
        for i, f in zip(items, failing, strict=True)
        if not f
    ]
    answered = iter(await Lines(request).answer(asked))
    out = []
    for item, failed in zip(items, failing, strict=True):
        status, body = (500, None) if failed else next(answered)
        if status == 200:
            out.append((item["custom_id"], {"type": "succeeded", "message": body}))
            continue
        envelope = (
            body
            if isinstance(body, dict) and body.get("type") == "error"
            else {
                "type": "error",
                "error": {"type": "api_error", "message": "Internal server error"},
            }
        )
        out.append((item["custom_id"], {"type": "errored", "error": envelope}))
    return out


def _end(request: web.Request, batch: dict[str, Any], results: list[tuple[str, Any]]) -> None:
    request.app[STATE_KEY].rng.shuffle(results)
    entry = request.app[BATCHES][batch["id"]]
    entry["results"] = [{"custom_id": c, "result": r} for c, r in results]
    counts = batch["request_counts"]
    counts["processing"] = 0
    for _, result in results:
        counts[result["type"]] += 1
    base = f"{request.scheme}://{request.host}"
    batch.update(processing_status="ended", ended_at=_now(),
                 results_url=f"{base}{PATH}/{batch['id']}/results")  # fmt: skip


async def get(request: web.Request) -> web.Response:
    entry = request.app[BATCHES].get(request.match_info["batch_id"])
    if entry is None:
        return error(404, "not_found_error", "batch not found")
    return web.json_response(entry["batch"])


async def results(request: web.Request) -> web.Response:
    """The results as JSONL, once the batch has ended."""
    entry = request.app[BATCHES].get(request.match_info["batch_id"])
    if entry is None or entry["batch"]["processing_status"] != "ended":
        return error(404, "not_found_error", "no results for this batch (yet)")
    data = b"".join(json.dumps(r).encode() + b"\n" for r in entry["results"])
    return web.Response(body=data, content_type="application/binary")


async def cancel(request: web.Request) -> web.Response:
    """Canceling, then ended: lines not yet answered are canceled."""
    entry = request.app[BATCHES].get(request.match_info["batch_id"])
    if entry is None:
        return error(404, "not_found_error", "batch not found")
    batch = entry["batch"]
    if batch["processing_status"] == "in_progress":
        batch.update(processing_status="canceling", cancel_initiated_at=_now())
        entry["task"].cancel()
    return web.json_response(batch)


def add_routes(app: web.Application) -> None:
    app[BATCHES] = {}
    app.router.add_post(PATH, create)
    app.router.add_get(PATH + "/{batch_id}", get)
    app.router.add_get(PATH + "/{batch_id}/results", results)
    app.router.add_post(PATH + "/{batch_id}/cancel", cancel)
