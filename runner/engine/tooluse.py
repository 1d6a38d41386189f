"""Tool calls in a conversation: the messages of scripted turns (a user turn's images, an
assistant turn's calls, a tool turn's result), the ids of calls a protocol gave none, and the
scripted result of each call the model makes."""

from __future__ import annotations

import copy
from typing import Any

from runner.encoding import from_json, to_json
from runner.errors import ApiError, Kind
from runner.messages import Image, Message, Part, Text, ToolCall, ToolResult
from runner.spec import pycheck
from runner.spec.scenarios import Scenario, Turn, fill
from runner.spec.tools import result_text


def turn_message(turn: Turn, index: int, values: dict[str, Any], history: list[Message]) -> Message:
    """The message a scripted turn puts in the history (INDEX: the turn's place in the
    scenario, which names the ids of its scripted calls)."""
    if turn.role == "tool":
        return Message("tool", (_scripted_result(turn, values, history),))
    if turn.calls:
        text = fill(turn.content, values)
        calls = tuple(
            ToolCall(f"call_{index}_{k}", c.name, to_json(c.args).decode(), wire_id=False)
            for k, c in enumerate(turn.calls)
        )
        return Message(turn.role, ((Text(text),) if text else ()) + calls)
    if turn.parts:
        parts: tuple[Part, ...] = tuple(
            p if isinstance(p, Image) else Text(fill(p, values)) for p in turn.parts
        )
        return Message(turn.role, parts)
    return Message.of_text(turn.role, fill(turn.content, values))


def _scripted_result(turn: Turn, values: dict[str, Any], history: list[Message]) -> ToolResult:
    """The result of the earliest call of the tool that is not answered yet (load time made
    sure there is one)."""
    answered = {p.call_id for m in history for p in m.parts if isinstance(p, ToolResult)}
    call = next(c for m in history for c in m.calls if c.name == turn.tool and c.id not in answered)
    result = turn.result
    content = fill(result, values) if isinstance(result, str) else to_json(result).decode()
    return ToolResult(call.id, call.name, content, call.wire_id)


def named(calls: tuple[ToolCall, ...], turn: int, request: int) -> tuple[ToolCall, ...]:
    """The calls, each with an id: one the protocol gave none (Gemini may not) gets ours,
    unique in the conversation, and is marked not to be sent back."""
    if not calls:
        return calls
    return tuple(
        c
        if c.id
        else ToolCall(f"call_{turn}_{request}_{k}", c.name, c.arguments, False, c.signature)
        for k, c in enumerate(calls)
    )


async def result_of(call: ToolCall, scenario: Scenario, values: dict[str, Any]) -> ToolResult:
    """The scripted result of a call the model made; a tool with none is a failed turn of
    kind tool_unscripted."""
    scripted = scenario.tool_results.get(call.name)
    if scripted is None:
        known = ", ".join(sorted(scenario.tool_results)) or "none"
        raise ApiError(
            Kind.TOOL_UNSCRIPTED,
            f"the model called '{call.name}', which has no scripted result (tool_results: {known})",
        )
    args = from_json(call.arguments) if call.arguments.strip() else {}
    if scripted.function is None:
        content = result_text(scripted.value, args, values)
    else:
        value = await pycheck.call(scripted.function, copy.deepcopy(args), copy.deepcopy(values))
        content = value if isinstance(value, str) else _json(value, scripted.function.name)
    return ToolResult(call.id, call.name, content, call.wire_id)


def _json(value: Any, name: str) -> str:
    try:
        return to_json(value).decode()
    except (TypeError, ValueError):
        message = f"{name} returned {type(value).__name__}, not a value JSON can hold"
        raise ApiError(Kind.CHECK_ERROR, message) from None


def calls_record(calls: tuple[ToolCall, ...], history: list[Message]) -> list[dict[str, Any]]:
    """A turn's calls as its record keeps them: id, name, arguments and the result sent."""
    results = {p.call_id: p.content for m in history for p in m.parts if isinstance(p, ToolResult)}
    return [
        {"id": c.id, "name": c.name, "arguments": c.arguments, "result": results.get(c.id)}
        for c in calls
    ]
