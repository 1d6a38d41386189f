"""One conversation: the history, the context mode, the turn loop, the transcript record."""

from __future__ import annotations

from typing import Any

from runner.checks import evaluate
from runner.client import TargetClient
from runner.plan import Conversation
from runner.providers import PROVIDERS, ApiError, Reply, Usage
from runner.records import VERSION, utc_now
from runner.scenarios import Scenario, Server, Window, fill
from runner.targets import mock_base_url


def sent_messages(
    scenario: Scenario, history: list[dict[str, str]], since_reply: int
) -> list[dict[str, str]]:
    """The messages a turn sends (system apart), following the scenario's context mode.

    history holds every message so far, ending with the new user message;
    since_reply is the index just after the last generated reply (server mode).
    """
    if isinstance(scenario.context, Window):
        return history[-scenario.context.n :]
    if isinstance(scenario.context, Server):
        return history[since_reply:]
    return history


async def run_conversation(conv: Conversation, client: TargetClient) -> dict[str, Any]:
    """Play every turn in order; the transcript record, ok or failed."""
    scenario, values = conv.scenario, conv.vars
    started = utc_now()
    system, base_params = _setup(conv)
    history: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    total = Usage()
    previous_id, since_reply, error = None, 0, None
    for turn in scenario.turns:
        history.append({"role": turn.role, "content": fill(turn.content, values)})
        if turn.role == "assistant":
            continue
        params = {**base_params, **turn.params} if turn.params else base_params
        sent = sent_messages(scenario, history, since_reply)
        n_sent = len(sent) + (system is not None)
        try:
            reply, attempts = await client.complete(
                system, sent, params, previous_id, conv.id, len(turns)
            )
            _check_reply(reply, scenario)
        except ApiError as err:
            error = {"kind": err.kind, "message": err.message, "status": err.status}
            break
        history.append({"role": "assistant", "content": reply.text})
        since_reply = len(history)
        previous_id = reply.response_id if isinstance(scenario.context, Server) else None
        total.add(reply.usage)
        record = _turn_record(len(turns), history[-2]["content"], reply, attempts, n_sent)
        if turn.expect:
            record["checks"] = evaluate(
                turn.expect, reply.text, reply.finish_reason, reply.latency_ms, values
            )
        turns.append(record)
    return _transcript(conv, system, history, turns, total, error, started)


def _setup(conv: Conversation) -> tuple[str | None, dict[str, Any]]:
    """The conversation's system prompt and params (target's, then the scenario's over them)."""
    scenario = conv.scenario
    system = fill(scenario.system, conv.vars) if scenario.system is not None else None
    params = {**conv.target.params, **scenario.params}
    if isinstance(scenario.context, Server):  # chaining needs every response stored
        params["store"] = True
    return system, params


def failed_record(conv: Conversation, kind: str, message: str) -> dict[str, Any]:
    """The record of a conversation that could not be played at all."""
    error = {"kind": kind, "message": message, "status": None}
    return _transcript(conv, None, [], [], Usage(), error, utc_now())


def _check_reply(reply: Reply, scenario: Scenario) -> None:
    """Never record an empty reply as if it were one; server context needs an id to chain."""
    if not reply.text:
        raise ApiError(
            "empty", f"the model returned no text (finish reason: {reply.finish_reason})"
        )
    if isinstance(scenario.context, Server) and not reply.response_id:
        raise ApiError(
            "protocol", "context: server needs a response id to chain; the reply had none"
        )


def _turn_record(index: int, user: str, reply: Reply, attempts: int, sent: int) -> dict[str, Any]:
    return {
        "index": index,
        "user": user,
        "assistant": reply.text,
        "finish_reason": reply.finish_reason,
        "usage": reply.usage.as_dict(),
        "raw_usage": reply.raw_usage,
        "latency_ms": round(reply.latency_ms, 2),
        "ttft_ms": round(reply.ttft_ms, 2) if reply.ttft_ms is not None else None,
        "attempts": attempts,
        "sent_messages": sent,
        "checks": [],
    }


def _transcript(
    conv: Conversation,
    system: str | None,
    history: list[dict[str, str]],
    turns: list[dict[str, Any]],
    usage: Usage,
    error: dict[str, Any] | None,
    started: str,
) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, *history] if system is not None else history
    passed = None if error else all(c["passed"] for t in turns for c in t["checks"])
    return {
        "version": VERSION,
        "conversation_id": conv.id,
        "scenario_id": conv.scenario.id,
        "scenario_file": conv.scenario.file,
        "target": conv.target.name,
        "provider": conv.target.provider,
        "model": conv.target.model,
        "sample": conv.sample,
        "vars": conv.vars,
        "status": "failed" if error else "ok",
        "error": error,
        "messages": messages,
        "turns": turns,
        "usage": usage.as_dict(),
        "passed": passed,
        "started_at": started,
        "ended_at": utc_now(),
    }


def first_request(conv: Conversation, stream: bool) -> str:
    """The first request of a conversation as it would be sent, secrets masked (--dry-run)."""
    scenario, values, target = conv.scenario, conv.vars, conv.target
    system, params = _setup(conv)
    history: list[dict[str, str]] = []
    for turn in scenario.turns:
        history.append({"role": turn.role, "content": fill(turn.content, values)})
        if turn.role == "user":
            params = {**params, **turn.params}
            break
    base_url = target.base_url or mock_base_url(target.provider, "http://127.0.0.1:<mock port>")
    provider = PROVIDERS[target.provider](base_url, target.model, target.key, target.auth)
    use_stream = target.stream if target.stream is not None else stream
    request = provider.build(system, sent_messages(scenario, history, 0), params, use_stream)
    return request.masked(target.key)
