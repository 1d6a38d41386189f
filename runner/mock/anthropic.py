"""Anthropic Messages: POST /v1/messages, JSON and named SSE events (protocols.md §5).

Prompt caching: a `cache_control: {type: ephemeral}` mark on a system block or a message
block (or at the top level: the last message) is a breakpoint at the end of the message
holding it. The prefix up to each breakpoint is written to the server's prefix cache; a
later request reads the longest prefix it finds there, looking back up to LOOKBACK
messages from each of its breakpoints. Any length is cacheable (no minimum).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runner.mock import reply as rp
from runner.mock import wire
from runner.mock.faults import (
    MockError,
    anthropic_authorized,
    anthropic_error,
    anthropic_error_body,
    request_id,
)
from runner.mock.reply import Reply
from runner.mock.state import MockState, PrefixCache
from runner.mock.wire import Out, dumps

STOP_REASON = {rp.STOP: "end_turn", rp.LENGTH: "max_tokens", rp.BLOCKED: "refusal"}
FAIL_MESSAGE = "The model failed while answering (mock [[error]] marker)."
REFUSAL = "The mock refuses prompts holding the [[block]] marker."
MAX_BREAKPOINTS = 4
LOOKBACK = 20
TTLS = ("5m", "1h")


@dataclass(frozen=True, slots=True)
class Turn:
    """One message as the mock model sees it; ttl is its cache breakpoint's ("": none)."""

    role: str
    text: str
    ttl: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request answers: the reply cut at a stop sequence, and its usage."""

    reply: Reply
    text: str
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]


def cache_ttl(block: Any, where: str) -> str:
    """The ttl of a block's cache_control ("": none); a bad one is a 400."""
    mark = block.get("cache_control") if isinstance(block, dict) else None
    if mark is None:
        return ""
    if not isinstance(mark, dict) or mark.get("type") != "ephemeral":
        raise MockError(400, f"{where}: cache_control.type must be 'ephemeral'")
    ttl = mark.get("ttl", "5m")
    if ttl not in TTLS:
        raise MockError(400, f"{where}: cache_control.ttl must be '5m' or '1h'")
    return str(ttl)


def blocks_turn(role: str, content: Any, where: str) -> Turn:
    """A string or a list of content blocks as one Turn (text blocks joined)."""
    if isinstance(content, str):
        return Turn(role, content)
    if not isinstance(content, list):
        raise MockError(400, f"{where}.content: must be a string or a list of blocks")
    texts, ttl = [], ""
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise MockError(400, f"{where}.content.{i}: each block must have a 'type'")
        if block["type"] == "text":
            text = block.get("text")
            if not isinstance(text, str) or not text:
                raise MockError(400, f"{where}.content.{i}: text blocks must be non-empty")
            texts.append(text)
        elif block["type"] == "image":
            texts.append(rp.IMAGE)
        ttl = cache_ttl(block, f"{where}.content.{i}") or ttl
    return Turn(role, "".join(texts), ttl)


def parse_system(body: dict[str, Any]) -> list[Turn]:
    """The top-level `system` (a string or a list of text blocks) as a leading turn."""
    system = body.get("system")
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, list):
        return [blocks_turn("system", system, "system")]
    if not isinstance(system, str):
        raise MockError(400, "system: must be a string or a list of text blocks")
    return [Turn("system", system)]


def parse_turns(body: dict[str, Any]) -> list[Turn]:
    """System plus messages. Consecutive same-role messages are taken, not refused (the API
    combines them into one turn; the mock model sees each, as the other protocols' do)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MockError(400, "messages: at least one message is required")
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise MockError(400, f"messages.{i}.role: must be 'user' or 'assistant'")
        content = message.get("content")
        check_results(messages, i)
        results = _blocks(content, "tool_result")
        turns += [Turn("tool", result_text(b.get("content"))) for b in results]
        rest = [b for b in content if b not in results] if results else content
        if rest or not results:
            turns.append(blocks_turn(role, rest, f"messages.{i}"))
    if body.get("cache_control") is not None:  # automatic caching: the last message
        last = turns.pop()
        turns.append(Turn(last.role, last.text, cache_ttl(body, "request")))
    return parse_system(body) + turns


def _blocks(content: Any, kind: str) -> list[dict[str, Any]]:
    blocks = content if isinstance(content, list) else []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") == kind]


def check_results(messages: list[Any], i: int) -> None:
    """A message after one with tool_use blocks must be a user message that starts with a
    tool_result for each of them (the API's 400 otherwise)."""
    before = messages[i - 1].get("content") if i else None
    uses = [b.get("id") for b in _blocks(before, "tool_use")]
    if not uses:
        return
    content = messages[i].get("content")
    head: list[Any] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict) or block.get("type") != "tool_result":
            break
        head.append(block.get("tool_use_id"))
    if messages[i].get("role") != "user" or set(uses) - set(head):
        message = (
            f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(map(str, set(uses) - set(head)))}"
        )
        raise MockError(400, message)


def result_text(content: Any) -> str:
    """A tool_result's content (a string or text blocks) as text."""
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return content if isinstance(content, str) else ""


def prefix_keys(model: str, turns: list[Turn]) -> list[bytes]:
    """The cache key of each prefix: a running hash of the model and the messages."""
    digest = hashlib.sha256(model.encode())
    keys = []
    for turn in turns:
        digest.update(f"\0{turn.role}\0{turn.text}".encode())
        keys.append(digest.copy().digest())
    return keys


def cache_usage(model: str, turns: list[Turn], cache: PrefixCache) -> dict[str, Any]:
    """Input usage split into uncached, written and read tokens; the prefixes up to each
    breakpoint are written (and those read refreshed)."""
    costs = [rp.tokens(t.text) + 3 for t in turns]
    ends = [sum(costs[: i + 1]) for i in range(len(costs))]
    marks = [i for i, t in enumerate(turns) if t.ttl]
    if len(marks) > MAX_BREAKPOINTS:
        message = f"A maximum of 4 blocks with cache_control may be provided. Found {len(marks)}."
        raise MockError(400, message)
    keys = prefix_keys(model, turns) if marks else []
    hit = -1
    for mark in marks:
        for j in range(mark, max(-1, mark - LOOKBACK), -1):
            if keys[j] in cache:
                hit = max(hit, j)
                break
    read = ends[hit] if hit >= 0 else 0
    written = ends[marks[-1]] - read if marks and marks[-1] > hit else 0
    for j in ([hit] if hit >= 0 else []) + marks:
        cache.add(keys[j])
    long_ttl = bool(marks) and turns[marks[-1]].ttl == "1h"
    return {
        "input_tokens": ends[-1] - read - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0 if long_ttl else written,
            "ephemeral_1h_input_tokens": written if long_ttl else 0,
        },
    }


def thinking_tokens(body: dict[str, Any]) -> int:
    """Thinking tokens: enabled → min(budget_tokens, 64), adaptive → 32, else none."""
    cfg = body.get("thinking")
    if not isinstance(cfg, dict):
        return 0
    if cfg.get("type") == "enabled":
        return rp.budget_tokens(cfg.get("budget_tokens"))
    return 32 if cfg.get("type") == "adaptive" else 0


def stop_at(text: str, body: dict[str, Any]) -> tuple[str, str | None]:
    """The text cut before the first of `stop_sequences` it holds, and that sequence."""
    stops = body.get("stop_sequences")
    if stops is None:
        return text, None
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise MockError(400, "stop_sequences: must be a list of non-empty strings")
    found = [(text.find(s), s) for s in stops if s in text]
    if not found:
        return text, None
    at, seq = min(found)
    return text[:at], seq


def make_answer(body: dict[str, Any], model: str, state: MockState) -> Answer:
    """Answer a Messages request: reply, stop reason, usage (cache included)."""
    limit = wire.int_or_none(body.get("max_tokens"), "max_tokens")
    if limit is None or limit < 0:
        raise MockError(400, "max_tokens: Field required (an integer ≥ 0)")
    turns = parse_turns(body)
    tools = wire.tool_names(body.get("tools"))
    reply = rp.make_reply(
        [(t.role, t.text) for t in turns], thinking_tokens(body), limit, None, tools
    )
    text, seq = reply.text, None
    if reply.finish == rp.STOP:
        text, seq = stop_at(text, body)
    out = reply.output_tokens if seq is None else rp.tokens(text) + reply.reasoning_tokens
    usage = cache_usage(model, turns, state.prefixes)
    usage = {**usage, "output_tokens": out, "service_tier": "standard"}
    if reply.reasoning_tokens:  # thinking is part of output_tokens
        usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
    reason = "stop_sequence" if seq is not None else STOP_REASON.get(reply.finish, "end_turn")
    reason = "tool_use" if reply.calls else reason
    return Answer(reply, text, reason, seq, usage)


def thought(reply: Reply) -> str:
    """The thinking block's text (only when thinking is on)."""
    return f"mock thought: reading {reply.messages} messages."


def message(mid: str, model: str, ans: Answer) -> dict[str, Any]:
    """The non-streaming Message object."""
    content: list[dict[str, Any]] = []
    if ans.reply.reasoning_tokens:
        content.append({"type": "thinking", "thinking": thought(ans.reply), "signature": "mock"})
    if ans.text:
        content.append({"type": "text", "text": ans.text})
    content += [{**use_block(ans.reply, k), "input": json.loads(args)}
                for k, (_, args) in enumerate(ans.reply.calls)]  # fmt: skip
    refused = ans.stop_reason == "refusal"
    details = {"type": "refusal", "category": None, "explanation": REFUSAL} if refused else None
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": ans.stop_reason,
        "stop_sequence": ans.stop_sequence,
        "stop_details": details,
        "usage": ans.usage,
    }


def use_block(reply: Reply, k: int) -> dict[str, Any]:
    """Call K as a tool_use block, its input empty (as a stream starts it)."""
    return {"type": "tool_use", "id": f"toolu_{reply.call_id(k)}", "name": reply.calls[k][0],
            "input": {}}  # fmt: skip


def frame(event: dict[str, Any]) -> bytes:
    """One named SSE event: the `event:` line equals the data's type."""
    return f"event: {event['type']}\ndata: {dumps(event)}\n\n".encode()


def block_frames(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    """content_block_start, its deltas, content_block_stop."""
    frames = [frame({"type": "content_block_start", "index": index, "content_block": start})]
    for delta in deltas:
        frames.append(frame({"type": "content_block_delta", "index": index, "delta": delta}))
    return [*frames, frame({"type": "content_block_stop", "index": index})]


def stream_frames(mid: str, model: str, ans: Answer, rid: str) -> list[bytes]:
    """message_start, ping, blocks, message_delta (cumulative usage), message_stop; or an
    `error` event midway when the reply FAILED."""
    head = {**message(mid, model, ans), "content": [], "stop_reason": None}
    start_usage = {k: v for k, v in ans.usage.items() if k != "output_tokens"}
    head.update(stop_sequence=None, stop_details=None, usage={**start_usage, "output_tokens": 1})
    frames = [frame({"type": "message_start", "message": head}), frame({"type": "ping"})]
    index = 0
    if ans.reply.reasoning_tokens:
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": thought(ans.reply)}]
        deltas.append({"type": "signature_delta", "signature": "mock"})
        frames += block_frames(index, start, deltas)
        index += 1
    pieces = rp.pieces(ans.text)
    failed = ans.reply.finish == rp.FAILED
    if ans.text:
        text_deltas = [{"type": "text_delta", "text": p} for p in pieces]
        blocks = block_frames(index, {"type": "text", "text": ""}, text_deltas)
        frames += blocks[: 1 + len(pieces) // 2] if failed else blocks
    if failed:
        error = anthropic_error_body(MockError(500, FAIL_MESSAGE), rid)
        return [*frames, frame(error)]
    for k, (_, args) in enumerate(ans.reply.calls):  # input in pieces: input_json_delta
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in rp.pieces(args)]
        frames += block_frames(index + bool(ans.text) + k, use_block(ans.reply, k), deltas)
    delta = {"stop_reason": ans.stop_reason, "stop_sequence": ans.stop_sequence}
    usage = {k: v for k, v in ans.usage.items() if k not in ("cache_creation", "service_tier")}
    frames.append(frame({"type": "message_delta", "delta": delta, "usage": usage}))
    return [*frames, frame({"type": "ping"}), frame({"type": "message_stop"})]


def is_stream(request: web.Request, body: Any) -> bool:
    """True for `stream: true`."""
    return isinstance(body, dict) and body.get("stream") is True


def render(request: web.Request, body: Any, state: MockState) -> Out:
    """Answer a Messages request: a Message object, or its events as SSE."""
    model = wire.require_model(body)
    ans = make_answer(body, model, state)
    stream = is_stream(request, body)
    if ans.reply.finish == rp.FAILED and not stream:
        raise MockError(500, FAIL_MESSAGE)
    mid, rid = f"msg_{state.next_id()}", request_id()
    headers = {"request-id": rid}
    if not stream:
        return Out(body=dumps(message(mid, model, ans)).encode(), headers=headers)
    return Out(frames=stream_frames(mid, model, ans, rid), headers=headers)


PROTOCOL = wire.Protocol(
    authorized=anthropic_authorized,
    error=anthropic_error,
    is_stream=is_stream,
    render=render,
    limit_style="anthropic",
)
