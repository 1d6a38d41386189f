"""The mock's Gemini Batch API: batchGenerateContent with inline requests, the batch as
an operation (GET batches/{id}), cancel.

Each request is answered by this server's own generateContent after the options'
`batch_delay_ms`, in the input order (as Gemini keeps it); a `batch_fail_rate` share get
an INTERNAL error, the first `batch_expire` batches end EXPIRED with no output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from runner.mock.batches import Lines, delayed, expires, fails
from runner.mock.state import STATE_KEY

OPERATIONS = web.AppKey("gemini_batches", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OTHER: web.AppKey[Handler] = web.AppKey("gemini_batches_other")
TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main."
INTERNAL = {"code": 13, "message": "An internal error has occurred.", "status": "INTERNAL"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str, code: str = "INVALID_ARGUMENT") -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": code}}, status=status
    )


async def create(request: web.Request) -> web.Response:
    """POST /v1beta/models/{model}:batchGenerateContent (snake_case or camelCase)."""
    try:
        body = await request.json()
    except ValueError:
        return error(400, "Invalid JSON payload received.")
    batch = body.get("batch") if isinstance(body, dict) else None
    batch = batch if isinstance(batch, dict) else {}
    config = batch.get("input_config") or batch.get("inputConfig") or {}
    inline = config.get("requests") if isinstance(config, dict) else None
    items = inline.get("requests") if isinstance(inline, dict) else None
    if not isinstance(items, list) or not items:
        return error(400, "batch.input_config.requests.requests: a non-empty list is required")
    state = request.app[STATE_KEY]
    expire = expires(state)
    name = f"batches/{state.next_id()}"
    model = request.match_info["model"]
    metadata: dict[str, Any] = {
        "@type": TYPE + "GenerateContentBatch", "name": name, "model": f"models/{model}",
        "displayName": batch.get("display_name") or batch.get("displayName") or "",
        "state": "BATCH_STATE_PENDING", "createTime": _now(), "updateTime": _now(),
        "batchStats": {"requestCount": str(len(items)), "pendingRequestCount": str(len(items))},
    }  # fmt: skip
    operation: dict[str, Any] = {"name": name, "metadata": metadata}
    task = asyncio.create_task(_process(request, operation, items, model, expire))
    request.app[OPERATIONS][name.removeprefix("batches/")] = (operation, task)
    return web.json_response(operation)


async def _process(
    request: web.Request, operation: dict[str, Any], items: list[Any], model: str, expire: bool
) -> None:
    state, meta = request.app[STATE_KEY], operation["metadata"]
    meta["state"] = "BATCH_STATE_RUNNING"
    await delayed(state)
    if expire:
        meta.update(state="BATCH_STATE_EXPIRED", endTime=_now())
        operation["done"] = True
        return
    failing = [fails(state) for _ in items]
    version = request.path.split("/")[1]
    path = f"/{version}/models/{model}:generateContent" + (
        f"?{request.query_string}" if request.query_string else ""
    )
    asked = [(path, i.get("request")) for i, f in zip(items, failing, strict=True) if not f]
    answered = iter(await Lines(request).answer(asked))
    out = []
    for item, failed in zip(items, failing, strict=True):
        status, body = (500, None) if failed else next(answered)
        answer = {"response": body} if status == 200 else {"error": INTERNAL}
        out.append({**answer, "metadata": item.get("metadata") or {}})
    ok = sum("response" in x for x in out)
    output = {"inlinedResponses": {"inlinedResponses": out}}
    meta.update(state="BATCH_STATE_SUCCEEDED", endTime=_now(), updateTime=_now(), output=output)
    meta["batchStats"] = {"requestCount": str(len(items)), "successfulRequestCount": str(ok),
                          "failedRequestCount": str(len(items) - ok)}  # fmt: skip
    operation.update(done=True, response={"@type": TYPE + "GenerateContentBatchOutput", **output})


async def get(request: web.Request) -> web.StreamResponse:
    """GET /v1beta/batches/{id}: the operation (under /v1, an OpenAI batch's id is passed
    on: the two APIs share the path)."""
    found = request.app[OPERATIONS].get(request.match_info["batch_id"])
    if found is None and request.path.startswith("/v1/"):
        return await request.app[OTHER](request)
    if found is None:
        return error(404, "Requested entity was not found.", "NOT_FOUND")
    return web.json_response(found[0])


async def cancel(request: web.Request) -> web.Response:
    """POST /v1beta/batches/{id}:cancel -> {}; the operation ends CANCELLED (error code 1)."""
    found = request.app[OPERATIONS].get(request.match_info["batch_id"])
    if found is None:
        return error(404, "Requested entity was not found.", "NOT_FOUND")
    operation, task = found
    if not operation.get("done"):
        task.cancel()
        operation["metadata"].update(state="BATCH_STATE_CANCELLED", endTime=_now())
        operation.update(done=True, error={"code": 1, "message": "CANCELLED"})
    return web.json_response({})


def add_routes(app: web.Application, other: Handler) -> None:
    """Before the generic /models/{target} route: this one is more specific. OTHER answers
    GET /v1/batches/{id} of an id that is not Gemini's."""
    app[OPERATIONS], app[OTHER] = {}, other
    for version in ("v1beta", "v1"):
        app.router.add_post(f"/{version}/models/{{model}}:batchGenerateContent", create)
        app.router.add_get(f"/{version}/batches/{{batch_id}}", get)
        app.router.add_post(f"/{version}/batches/{{batch_id}}:cancel", cancel)
