"""The mock's OpenAI Batch API: files (upload, content), batches (create, get, cancel).

A batch's lines are answered by this same server's own endpoints (each line POSTed to
its `url` on this server, as a direct call would be), after the `batch_delay_ms` of the
options; a `batch_fail_rate` share of lines go to the error file as 500s, the first
`batch_expire` batches expire with no output, and output lines come in shuffled order.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from runner.mock.batches import Lines, delayed, expires, fails
from runner.mock.state import STATE_KEY

FILES = web.AppKey("batch_files", dict)
BATCHES = web.AppKey("batch_batches", dict)
ENDED = ("completed", "failed", "expired", "cancelled")


def error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


async def upload(request: web.Request) -> web.Response:
    """POST /v1/files (multipart: purpose, file) -> a file object."""
    form = await request.post()
    upload_file, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload_file, web.FileField) or purpose != "batch":
        return error(400, "expected multipart fields 'file' and purpose=batch")
    data = upload_file.file.read()
    state = request.app[STATE_KEY]
    file_id = f"file-{state.next_id()}"
    request.app[FILES][file_id] = data
    return web.json_response(_file(file_id, data, upload_file.filename, "batch"))


def _file(file_id: str, data: bytes, name: str, purpose: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
            "filename": name, "purpose": purpose}  # fmt: skip


async def content(request: web.Request) -> web.Response:
    """GET /v1/files/{id}/content: the file's bytes."""
    data = request.app[FILES].get(request.match_info["file_id"])
    if data is None:
        return error(404, "No such File object")
    return web.Response(body=data, content_type="application/octet-stream")


async def create(request: web.Request) -> web.Response:
    """POST /v1/batches {input_file_id, endpoint, completion_window} -> a batch object."""
    try:
        body = await request.json()
    except ValueError:
        return error(400, "We could not parse the JSON body of your request.")
    data = request.app[FILES].get(body.get("input_file_id"))
    if data is None:
        return error(404, "No such File object")
    if body.get("endpoint") not in ("/v1/chat/completions", "/v1/responses"):
        return error(400, f"unsupported endpoint {body.get('endpoint')!r}")
    if body.get("completion_window") != "24h":
        return error(400, "completion_window must be 24h")
    state = request.app[STATE_KEY]
    expire = expires(state)
    batch = _batch(f"batch_{state.next_id()}", body, len(data.splitlines()))
    request.app[BATCHES][batch["id"]] = batch
    batch["task"] = asyncio.create_task(_process(request, batch, data, expire))
    return web.json_response(_shown(batch))


def _batch(batch_id: str, body: dict[str, Any], lines: int) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
        "input_file_id": body["input_file_id"], "completion_window": "24h",
        "status": "validating", "output_file_id": None, "error_file_id": None,
        "created_at": now, "in_progress_at": None, "expires_at": now + 86_400,
        "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
        "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": lines, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }  # fmt: skip


def _shown(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "task"}


async def get(request: web.Request) -> web.Response:
    """GET /v1/batches/{id}."""
    batch = request.app[BATCHES].get(request.match_info["batch_id"])
    if batch is None:
        return error(404, "No such Batch object")
    return web.json_response(_shown(batch))


async def cancel(request: web.Request) -> web.Response:
    """POST /v1/batches/{id}/cancel: cancelling, then cancelled (no output)."""
    batch = request.app[BATCHES].get(request.match_info["batch_id"])
    if batch is None:
        return error(404, "No such Batch object")
    if batch["status"] not in ENDED:
        batch["task"].cancel()
        batch.update(status="cancelled", cancelling_at=int(time.time()),
                     cancelled_at=int(time.time()))  # fmt: skip
    return web.json_response(_shown(batch))


async def _process(request: web.Request, batch: dict[str, Any], data: bytes, expire: bool) -> None:
    """Answer every line after the delay; write the output and error files."""
    app, state = request.app, request.app[STATE_KEY]
    batch.update(status="in_progress", in_progress_at=int(time.time()))
    await delayed(state)
    if expire:
        batch.update(status="expired", expired_at=int(time.time()))
        return
    lines = [json.loads(x) for x in data.splitlines() if x.strip()]
    failing = [fails(state) for _ in lines]
    asked = [(x["url"], x.get("body")) for x, f in zip(lines, failing, strict=True) if not f]
    answered = iter(await Lines(request).answer(asked))
    answers = [
        _line(x, next(answered) if not f else None, state)
        for x, f in zip(lines, failing, strict=True)
    ]
    state.rng.shuffle(answers)
    out = [a for ok, a in answers if ok]
    failed = [a for ok, a in answers if not ok]
    now = int(time.time())
    batch.update(status="completed", finalizing_at=now, completed_at=now)
    batch["request_counts"].update(completed=len(out), failed=len(failed))
    for key, part in (("output_file_id", out), ("error_file_id", failed)):
        if part:
            file_id = f"file-{state.next_id()}"
            app[FILES][file_id] = b"".join(json.dumps(a).encode() + b"\n" for a in part)
            batch[key] = file_id


def _line(
    line: dict[str, Any], answer: tuple[int, Any] | None, state: Any
) -> tuple[bool, dict[str, Any]]:
    """One line's output: (it succeeded, the line); no answer: a drawn failure (a 500)."""
    status, body = answer or (500, {"error": {
        "message": "The server had an error processing your request.",
        "type": "server_error", "param": None, "code": None}})  # fmt: skip
    response = {"status_code": status, "request_id": state.next_id(), "body": body}
    out = {"id": f"batch_req_{state.next_id()}", "custom_id": line.get("custom_id"),
           "response": response, "error": None}  # fmt: skip
    return status == 200, out


def add_routes(app: web.Application) -> None:
    """The Batch API's routes (under /v1, like the API itself)."""
    app[FILES], app[BATCHES] = {}, {}
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files/{file_id}/content", content)
    app.router.add_post("/v1/batches", create)
    app.router.add_get("/v1/batches/{batch_id}", get)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)
