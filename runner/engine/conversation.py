"""One conversation: the history, the context mode, the turn loop, the transcript record."""

from __future__ import annotations

import copy
from typing import Any

from runner.client.client import TargetClient
from runner.client.providers import Reply
from runner.engine.checks import evaluate
from runner.engine.judge import Judges, grade
from runner.errors import ApiError, Kind
from runner.messages import Message, as_records
from runner.results.records import transcript_record, turn_record, utc_now
from runner.spec.plan import Conversation
from runner.spec.scenarios import Scenario, Server, Window, fill
from runner.usage import add_usage, no_usage


def sent_messages(scenario: Scenario, history: list[Message], since_reply: int) -> list[Message]:
    """The messages a turn sends (system apart), following the scenario's context mode.

    history holds every message so far, ending with the new user message;
    since_reply is the index just after the last generated reply (server mode).
    """
    if isinstance(scenario.context, Window):
        return history[-scenario.context.n :]
    if isinstance(scenario.context, Server):
        return history[since_reply:]
    return history


async def run_conversation(
    conv: Conversation, client: TargetClient, judges: Judges | None = None
) -> dict[str, Any]:
    """Play every turn in order; the transcript record, ok or failed."""
    scenario, values = conv.scenario, conv.vars
    started = utc_now()
    system, base_params = _setup(conv, client.params())
    history: list[Message] = []
    turns: list[dict[str, Any]] = []
    total = no_usage()
    previous_id, since_reply, error = None, 0, None
    for turn in scenario.turns:
        history.append(Message.of_text(turn.role, fill(turn.content, values)))
        if turn.role == "assistant":
            continue
        params = {**base_params, **turn.params} if turn.params else base_params
        sent = sent_messages(scenario, history, since_reply)
        n_sent = len(sent) + (system is not None)
        try:
            reply, attempts = await client.complete(
                system,
                sent,
                params,
                previous_id,
                conv.id,
                len(turns),
                sample=conv.sample,
                cache_marks=scenario.cache,
            )
            _check_reply(reply, scenario)
        except ApiError as err:
            error = err
            break
        history.append(Message.of_text("assistant", reply.text))
        since_reply = len(history)
        previous_id = reply.response_id if isinstance(scenario.context, Server) else None
        add_usage(total, reply.usage)
        record = turn_record(len(turns), history[-2].text, reply, attempts, n_sent)
        if turn.expect:
            about = (
                _about(conv, record, as_records(system, history)) if turn.expect.python else None
            )
            record["checks"] = await evaluate(
                turn.expect, reply.text, reply.finish_reason, reply.latency_ms, values, about
            )
            if turn.expect.judge:
                asked, where = as_records(system, history[:-1]), (conv.id, len(turns))
                record["checks"].append(
                    await grade(
                        turn.expect.judge, judges or Judges({}), asked, reply.text, values, where
                    )
                )
        turns.append(record)
    return transcript_record(conv, as_records(system, history), turns, total, error, started)


def _about(
    conv: Conversation, turn: dict[str, Any], messages: list[dict[str, str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a python check is given beside the reply: copies of the turn record (checks
    not yet filled in) and of the conversation so far (its messages end with the reply)."""
    conversation = {
        "id": conv.id, "scenario_id": conv.scenario.id, "target": conv.target.name,
        "model": conv.target.model, "sample": conv.sample, "vars": conv.vars,
        "metadata": conv.scenario.metadata, "messages": messages,
    }  # fmt: skip
    return copy.deepcopy(turn), copy.deepcopy(conversation)


def _setup(conv: Conversation, given: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The conversation's system prompt and params: the scenario's over GIVEN (the target's,
    over its provider's defaults); a turn's own go over these, turn by turn."""
    scenario = conv.scenario
    system = fill(scenario.system, conv.vars) if scenario.system is not None else None
    params = {**given, **scenario.params}
    if conv.seed is not None:
        params["seed"] = conv.seed
    if isinstance(scenario.context, Server):  # chaining needs every response stored
        params["store"] = True
    return system, params


def failed_record(conv: Conversation, kind: Kind, message: str) -> dict[str, Any]:
    """The record of a conversation that could not be played at all."""
    return transcript_record(conv, [], [], no_usage(), ApiError(kind, message), utc_now())


def _check_reply(reply: Reply, scenario: Scenario) -> None:
    """Never record an empty reply as if it were one; server context needs an id to chain."""
    if not reply.text:
        raise ApiError(Kind.EMPTY, f"the model returned no text (finish reason: {_finish(reply)})")
    if isinstance(scenario.context, Server) and not reply.response_id:
        raise ApiError(
            Kind.PROTOCOL, "context: server needs a response id to chain; the reply had none"
        )


def _finish(reply: Reply) -> str:
    """The normalised finish reason, with the provider's own value when it differs."""
    norm, raw = reply.finish_reason, reply.finish_reason_raw
    return f"{norm} ({raw})" if raw is not None and raw != norm else str(norm)
