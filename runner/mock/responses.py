"""OpenAI Responses: POST /v1/responses (JSON and SSE) and GET /v1/responses/{id} (§2)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runner.mock import reply as rp
from runner.mock import wire
from runner.mock.faults import MockError, openai_authorized, openai_error
from runner.mock.reply import Message, Reply
from runner.mock.state import STATE_KEY, MockState, Stored
from runner.mock.wire import Out, dumps

ROLES = {"developer": "system"}
FAIL_MESSAGE = "The model failed while answering (mock [[error]] marker)."


@dataclass(frozen=True, slots=True)
class Ctx:
    """Ids and echoed request fields of one response."""

    rid: str
    msg_id: str
    rs_id: str | None
    created: int
    echo: dict[str, Any]


def parse_input(value: Any) -> list[Message]:
    """`input` as messages: a string is one user turn; non-message items are skipped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [("user", value)]
    if not isinstance(value, list):
        raise MockError(400, "'input' must be a string or an array of items.", "input")
    out: list[Message] = []
    for item in value:
        if not isinstance(item, dict):
            raise MockError(400, "Each input item must be an object.", "input")
        kind = item.get("type", "message")
        if kind == "message" and isinstance(item.get("role"), str):
            role: str = item["role"]
            out.append((ROLES.get(role, role), wire.content_text(item.get("content"))))
        elif kind == "function_call":
            out.append(("assistant", ""))
        elif kind == "function_call_output":
            out.append(("tool", wire.content_text(item.get("output"))))
    return out


def stored_history(body: dict[str, Any], state: MockState) -> tuple[Message, ...]:
    """The conversation of `previous_response_id` (400 when unknown or evicted)."""
    prev = body.get("previous_response_id")
    if prev is None:
        return ()
    stored = state.store.get(prev) if isinstance(prev, str) else None
    if stored is None:
        message = f"Previous response with id '{prev}' not found."
        raise MockError(400, message, "previous_response_id", "previous_response_not_found")
    return stored.history


def reasoning_tokens(body: dict[str, Any]) -> int:
    """Reasoning tokens for `reasoning: {effort}` (0 without a reasoning object)."""
    cfg = body.get("reasoning")
    return rp.effort_tokens(cfg.get("effort")) if isinstance(cfg, dict) else 0


def echo_fields(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Request settings echoed in the response object."""
    cfg = body.get("reasoning")
    effort = cfg.get("effort") if isinstance(cfg, dict) else None
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": effort, "summary": None},
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }


def usage(reply: Reply) -> dict[str, Any]:
    """Responses usage with input/output token details."""
    return {
        "input_tokens": reply.input_tokens,
        "input_tokens_details": {"cached_tokens": reply.cached_tokens},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": reply.total_tokens,
    }


def response_object(ctx: Ctx, status: str, **fields: Any) -> dict[str, Any]:
    """A response object; fields override output/usage/incomplete_details/error."""
    head = {"id": ctx.rid, "object": "response", "created_at": ctx.created, "status": status}
    rest: dict[str, Any] = {"error": None, "incomplete_details": None, "output": [], "usage": None}
    return {**head, **ctx.echo, **rest, **fields}


def text_part(text: str) -> dict[str, Any]:
    """An output_text content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(ctx: Ctx, status: str, text: str | None) -> dict[str, Any]:
    """The assistant message output item (content empty while in progress)."""
    content = [] if text is None else [text_part(text)]
    head = {"id": ctx.msg_id, "type": "message", "status": status, "role": "assistant"}
    return {**head, "content": content}


def message_status(reply: Reply) -> str:
    """The message item's final status."""
    return "completed" if reply.finish == rp.STOP else "incomplete"


def output_items(ctx: Ctx, reply: Reply) -> list[dict[str, Any]]:
    """Final output: a reasoning item first (when reasoning), then the message (if any
    text), then a function_call item per call."""
    items = [{"id": ctx.rs_id, "type": "reasoning", "summary": []}] if ctx.rs_id else []
    if reply.text:
        items.append(message_item(ctx, message_status(reply), reply.text))
    return items + [call_item(reply, k, "completed") for k in range(len(reply.calls))]


def call_item(reply: Reply, k: int, status: str) -> dict[str, Any]:
    """Call K as a function_call output item (arguments empty while in progress)."""
    name, args = reply.calls[k]
    return {"id": f"fc_{reply.call_id(k)}", "type": "function_call", "status": status,
            "call_id": f"call_{reply.call_id(k)}", "name": name,
            "arguments": args if status == "completed" else ""}  # fmt: skip


def _call_events(ev: Events, reply: Reply, first: int) -> None:
    """Each call: output_item.added, its arguments' deltas, .done, output_item.done."""
    for k in range(len(reply.calls)):
        index, item = first + k, call_item(reply, k, "completed")
        added = {"output_index": index, "item": call_item(reply, k, "in_progress")}
        ev.obj("response.output_item.added", added)
        at = {"item_id": item["id"], "output_index": index}
        for piece in rp.pieces(item["arguments"]):
            ev.obj("response.function_call_arguments.delta", {**at, "delta": piece})
        ev.obj("response.function_call_arguments.done", {**at, "arguments": item["arguments"]})
        ev.obj("response.output_item.done", {"output_index": index, "item": item})


def final_object(ctx: Ctx, reply: Reply) -> dict[str, Any]:
    """The finished response: completed, or incomplete (max_output_tokens / content_filter)."""
    output, use = output_items(ctx, reply), usage(reply)
    if reply.finish in (rp.STOP, rp.FAILED):
        return response_object(ctx, "completed", completed_at=ctx.created, output=output, usage=use)
    reason = "content_filter" if reply.finish == rp.BLOCKED else "max_output_tokens"
    details = {"reason": reason}
    return response_object(ctx, "incomplete", incomplete_details=details, output=output, usage=use)


class Events:
    """Builds `event:`/`data:` frames with sequence numbers from 0."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._seq = itertools.count()

    def add(self, kind: str, fields: str) -> None:
        """Append one event; fields is a JSON object's inside (`"a":1,"b":2`)."""
        data = f'{{"type":"{kind}","sequence_number":{next(self._seq)},{fields}}}'
        self.frames.append(f"event: {kind}\ndata: {data}\n\n".encode())

    def obj(self, kind: str, payload: dict[str, Any]) -> None:
        """Append one event from a dict payload."""
        self.add(kind, dumps(payload)[1:-1])


def _message_events(ev: Events, ctx: Ctx, reply: Reply, index: int) -> None:
    at = {"item_id": ctx.msg_id, "output_index": index, "content_index": 0}
    added = {"output_index": index, "item": message_item(ctx, "in_progress", None)}
    ev.obj("response.output_item.added", added)
    ev.obj("response.content_part.added", {**at, "part": text_part("")})
    where = dumps(at)[1:-1]
    for piece in rp.stream_pieces(reply):
        ev.add(
            "response.output_text.delta", f'{where},"delta":{wire.json_str(piece)},"logprobs":[]'
        )
    if reply.finish == rp.FAILED:
        return
    ev.obj("response.output_text.done", {**at, "text": reply.text, "logprobs": []})
    ev.obj("response.content_part.done", {**at, "part": text_part(reply.text)})
    item = message_item(ctx, message_status(reply), reply.text)
    ev.obj("response.output_item.done", {"output_index": index, "item": item})


def stream_frames(ctx: Ctx, reply: Reply, final: dict[str, Any]) -> list[bytes]:
    """The 9-step event order (reasoning item first), ending in the terminal event."""
    ev = Events()
    start = f'"response":{dumps(response_object(ctx, "in_progress"))}'
    ev.add("response.created", start)
    ev.add("response.in_progress", start)
    if ctx.rs_id:
        item = {"id": ctx.rs_id, "type": "reasoning", "summary": []}
        ev.obj("response.output_item.added", {"output_index": 0, "item": item})
        ev.obj("response.output_item.done", {"output_index": 0, "item": item})
    if reply.text:
        _message_events(ev, ctx, reply, 1 if ctx.rs_id else 0)
    _call_events(ev, reply, bool(ctx.rs_id) + bool(reply.text))
    if reply.finish == rp.FAILED:
        error = {"code": "server_error", "message": FAIL_MESSAGE}
        ev.obj("response.failed", {"response": response_object(ctx, "failed", error=error)})
    else:
        ev.obj(f"response.{final['status']}", {"response": final})
    return ev.frames


def is_stream(request: web.Request, body: Any) -> bool:
    """True for `stream: true`."""
    return isinstance(body, dict) and body.get("stream") is True


def remember(
    state: MockState, body: dict, seen: tuple[Message, ...], reply: Reply, final: dict[str, Any]
) -> None:
    """Store the conversation plus this reply under the response id (unless store is false)."""
    if body.get("store") is False or reply.finish == rp.FAILED:
        return
    history = seen + ((("assistant", reply.text),) if reply.text or reply.calls else ())
    state.store.put(final["id"], Stored(history, final))


def conversation(body: dict[str, Any], state: MockState) -> tuple[Message, ...]:
    """What the model sees, minus instructions: stored history plus the new input."""
    return stored_history(body, state) + tuple(parse_input(body.get("input")))


def system_prompt(body: dict[str, Any]) -> tuple[Message, ...]:
    """`instructions` as a leading system message (never carried over)."""
    text = body.get("instructions")
    return (("system", text),) if isinstance(text, str) and text else ()


def new_ctx(body: dict[str, Any], state: MockState, model: str, reasoning: int) -> Ctx:
    """Fresh ids (a reasoning item id only when reasoning) and the echoed fields."""
    rs_id = f"rs_{state.next_id()}" if reasoning else None
    rid, msg_id = f"resp_{state.next_id()}", f"msg_{state.next_id()}"
    return Ctx(rid, msg_id, rs_id, int(time.time()), echo_fields(body, model))


def render(request: web.Request, body: Any, state: MockState) -> Out:
    """Answer a Responses request (previous_response_id, reasoning, max_output_tokens)."""
    model = wire.require_model(body)
    carried = conversation(body, state)
    limit = wire.int_or_none(body.get("max_output_tokens"), "max_output_tokens")
    effort = reasoning_tokens(body)
    tools = wire.tool_names(body.get("tools"))
    reply = rp.make_reply(system_prompt(body) + carried, effort, limit, tools=tools)
    stream = is_stream(request, body)
    if reply.finish == rp.FAILED and not stream:
        raise MockError(500, FAIL_MESSAGE)
    ctx = new_ctx(body, state, model, effort)
    final = final_object(ctx, reply)
    remember(state, body, carried, reply, final)
    headers = {"x-request-id": f"req_{state.next_id()}"}
    if not stream:
        return Out(body=dumps(final).encode(), headers=headers)
    frames = stream_frames(ctx, reply, final)
    return Out(frames=frames, headers=headers)


async def get_response(request: web.Request) -> web.Response:
    """GET /v1/responses/{id}: a stored response, or 404."""
    state = request.app[STATE_KEY]
    key = state.options.require_key
    if key is not None and not openai_authorized(request, key):
        return openai_error(MockError(401), state.options.retry_after_ms)
    rid = request.match_info["response_id"]
    stored = state.store.get(rid)
    if stored is None:
        err = MockError(404, f"Response with id '{rid}' not found.", "response_id")
        return openai_error(err, state.options.retry_after_ms)
    return web.Response(text=dumps(stored.body), content_type="application/json")


PROTOCOL = wire.Protocol(
    authorized=openai_authorized, error=openai_error, is_stream=is_stream, render=render
)
