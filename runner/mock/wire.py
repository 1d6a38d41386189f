"""Sending answers: JSON bodies and SSE streams, whole, cut off midway, or malformed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from aiohttp import web

from runner.mock.faults import MockError
from runner.mock.reply import IMAGE
from runner.mock.state import MockState

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
JSON_TYPE = "application/json"
MALFORMED_BODY = b'{"mock": "malformed body", "choices": [{"message": {"content": "trunc'
MALFORMED_FRAME = b'data: {"mock": "malformed event", "delta": {"content": "trunc\n\n'


@dataclass(slots=True)
class Out:
    """A rendered answer: a JSON body, or SSE frames (each a complete frame), plus headers."""

    body: bytes | None = None
    frames: list[bytes] | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Protocol:
    """One wire protocol: key check, error envelope, stream detection and rendering; the
    style of its rate-limit headers (runner.mock.limits)."""

    authorized: Callable[[web.Request, str], bool]
    error: Callable[[MockError, int], web.Response]
    is_stream: Callable[[web.Request, Any], bool]
    render: Callable[[web.Request, Any, MockState], Out]
    limit_style: str = "openai"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_str(text: str) -> str:
    """A JSON string literal (non-ASCII kept), without the encoder's per-call overhead."""
    return encode_basestring(text)


def dumps(obj: Any) -> str:
    """Compact JSON with non-ASCII kept as is (one shared encoder: no per-call set-up)."""
    return _ENCODER.encode(obj)


def drop(request: web.Request) -> None:
    """Close the connection (after flushing what was written): a cut-off answer."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def send(request: web.Request, out: Out, cut: bool) -> web.StreamResponse:
    """Send a rendered answer, whole or cut off midway."""
    if out.frames is not None:
        return await send_sse(request, out.frames, out.headers, cut)
    body = out.body or b""
    if not cut:
        return web.Response(body=body, content_type=JSON_TYPE, headers=out.headers)
    return await send_cut_json(request, body, out.headers)


async def send_sse(
    request: web.Request, frames: list[bytes], headers: dict[str, str] | None, cut: bool
) -> web.StreamResponse:
    """Stream SSE frames in one write; when cut, only the first half, then drop the connection."""
    resp = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    try:
        await resp.prepare(request)
        await resp.write(b"".join(frames[: len(frames) // 2] if cut else frames))
    except ConnectionError:
        return resp
    if cut:
        drop(request)
    return resp


async def send_cut_json(
    request: web.Request, body: bytes, headers: dict[str, str] | None
) -> web.StreamResponse:
    """Announce the full Content-Length, send half the body, drop the connection."""
    resp = web.StreamResponse(headers={"Content-Type": JSON_TYPE, **(headers or {})})
    resp.content_length = len(body)
    try:
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
    except ConnectionError:
        return resp
    drop(request)
    return resp


async def send_malformed(request: web.Request, stream: bool) -> web.StreamResponse:
    """HTTP 200 whose body (or stream event) is not valid JSON."""
    if not stream:
        return web.Response(body=MALFORMED_BODY, content_type=JSON_TYPE)
    return await send_sse(request, [MALFORMED_FRAME], None, cut=False)


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the joined `text` of a list of parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise MockError(400, "Message content must be a string or a list of parts.")
    texts = (
        IMAGE if p.get("type") in IMAGE_PARTS else p.get("text")
        for p in content
        if isinstance(p, dict)
    )
    return "".join(t for t in texts if isinstance(t, str))


IMAGE_PARTS = ("image_url", "input_image", "image")  # an image part of each protocol


def tool_names(tools: Any, *path: str) -> set[str]:
    """The names of the declared tools: each tool's `name` under PATH (Chat's `function`,
    Gemini's `functionDeclarations` list)."""
    names: set[str] = set()
    for tool in tools if isinstance(tools, list) else ():
        found: Any = [tool]
        for key in path:
            found = [f.get(key) for f in found if isinstance(f, dict)]
            found = [x for f in found for x in (f if isinstance(f, list) else [f])]
        names |= {
            f["name"] for f in found if isinstance(f, dict) and isinstance(f.get("name"), str)
        }
    return names


def int_or_none(value: Any, param: str) -> int | None:
    """An optional integer request field (booleans and other types are a 400)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MockError(400, f"Invalid type for '{param}': expected an integer.", param)
    return value


def require_model(body: Any) -> str:
    """The request's `model` (a JSON object body with a string model, else a 400)."""
    if not isinstance(body, dict):
        raise MockError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MockError(400, "You must provide a model parameter.", "model")
    return model
