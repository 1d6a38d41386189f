"""OpenAI Chat Completions: POST /v1/chat/completions, JSON and SSE (protocols.md §1)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from runner.mock import reply as rp
from runner.mock import wire
from runner.mock.faults import MockError, openai_authorized, openai_error, openai_error_body
from runner.mock.reply import Message, Reply
from runner.mock.state import MockState
from runner.mock.wire import Out, dumps

ROLES = {"developer": "system", "function": "tool"}
FINISH = {rp.STOP: "stop", rp.LENGTH: "length", rp.BLOCKED: "content_filter", rp.FAILED: "stop"}
DONE = b"data: [DONE]\n\n"
FAIL_MESSAGE = "The model failed while answering (mock [[error]] marker)."


def parse_messages(body: dict[str, Any]) -> list[Message]:
    """The conversation as (role, text); developer counts as system."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MockError(400, "'messages' must be a non-empty array.", "messages")
    try:
        out = [(m["role"], wire.content_text(m.get("content"))) for m in messages]
    except (TypeError, KeyError, AttributeError):
        raise MockError(400, "Each message needs a 'role' and a 'content'.", "messages") from None
    if not all(isinstance(role, str) for role, _ in out):
        raise MockError(400, "Each message 'role' must be a string.", "messages")
    return [(ROLES.get(r, r), t) for r, t in out]


def make_chat_reply(body: dict[str, Any]) -> Reply:
    """The reply for a chat request: reasoning_effort and max_(completion_)tokens applied."""
    effort = body.get("reasoning_effort")
    reasoning = rp.effort_tokens(effort) if effort is not None else 0
    limit = wire.int_or_none(body.get("max_completion_tokens"), "max_completion_tokens")
    if limit is None:
        limit = wire.int_or_none(body.get("max_tokens"), "max_tokens")
    tools = wire.tool_names(body.get("tools"), "function")
    return rp.make_reply(parse_messages(body), reasoning, limit, body.get("seed"), tools)


def usage(reply: Reply) -> dict[str, Any]:
    """Chat usage with prompt/completion token details."""
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.total_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion(cid: str, created: int, model: str, reply: Reply) -> dict[str, Any]:
    """The non-streaming chat.completion object."""
    content = None if reply.finish == rp.BLOCKED or reply.calls else reply.text
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    if reply.calls:
        message["tool_calls"] = [
            {"id": f"call_{reply.call_id(k)}", "type": "function",
             "function": {"name": name, "arguments": args}}
            for k, (name, args) in enumerate(reply.calls)
        ]  # fmt: skip
    finish = "tool_calls" if reply.calls else FINISH[reply.finish]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    head = {"id": cid, "object": "chat.completion", "created": created, "model": model}
    return {**head, "choices": [choice], "usage": usage(reply), "service_tier": "default"}


def _choice(delta: str, finish: str | None = None) -> str:
    reason = "null" if finish is None else f'"{finish}"'
    return f'[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{reason}}}]'


def chunk_frames(
    cid: str, created: int, model: str, reply: Reply, include_usage: bool
) -> list[bytes]:
    """SSE frames: role, content pieces, finish, usage (if asked), [DONE]; or an error midway."""
    head = f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
    head += f'"model":{wire.json_str(model)},"service_tier":"default","choices":'
    tail = ',"usage":null}' if include_usage else "}"

    def frame(choices: str) -> bytes:
        return f"data: {head}{choices}{tail}\n\n".encode()

    frames = [frame(_choice('{"role":"assistant","content":""}'))]
    frames += [frame(_choice(f'{{"content":{wire.json_str(p)}}}')) for p in rp.stream_pieces(reply)]
    frames += [frame(_choice(dumps({"tool_calls": [d]}))) for d in call_deltas(reply)]
    if reply.finish == rp.FAILED:
        error = openai_error_body(MockError(500, FAIL_MESSAGE))
        return [*frames, f"data: {dumps(error)}\n\n".encode()]
    frames.append(frame(_choice("{}", "tool_calls" if reply.calls else FINISH[reply.finish])))
    if include_usage:
        frames.append(f'data: {head}[],"usage":{dumps(usage(reply))}}}\n\n'.encode())
    return [*frames, DONE]


def call_deltas(reply: Reply) -> list[dict[str, Any]]:
    """The tool-call deltas of a stream: per call, its id, type and name (arguments ""),
    then its arguments in pieces, each fragment carrying only the call's index."""
    deltas: list[dict[str, Any]] = []
    for k, (name, args) in enumerate(reply.calls):
        function = {"name": name, "arguments": ""}
        deltas.append({"index": k, "id": f"call_{reply.call_id(k)}", "type": "function",
                       "function": function})  # fmt: skip
        deltas += [{"index": k, "function": {"arguments": p}} for p in rp.pieces(args)]
    return deltas


def is_stream(request: web.Request, body: Any) -> bool:
    """True for `stream: true`."""
    return isinstance(body, dict) and body.get("stream") is True


def render(request: web.Request, body: Any, state: MockState) -> Out:
    """Answer a chat completion request."""
    model = wire.require_model(body)
    reply = make_chat_reply(body)
    stream = is_stream(request, body)
    if reply.finish == rp.FAILED and not stream:
        raise MockError(500, FAIL_MESSAGE)
    cid, created = f"chatcmpl-{state.next_number()}", int(time.time())
    headers = {"x-request-id": f"req_{state.next_id()}"}
    if not stream:
        body_bytes = dumps(completion(cid, created, model, reply)).encode()
        return Out(body=body_bytes, headers=headers)
    options = body.get("stream_options")
    include = isinstance(options, dict) and options.get("include_usage") is True
    frames = chunk_frames(cid, created, model, reply, include)
    return Out(frames=frames, headers=headers)


PROTOCOL = wire.Protocol(
    authorized=openai_authorized, error=openai_error, is_stream=is_stream, render=render
)
