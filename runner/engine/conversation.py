"""One conversation: the history, the context mode, the turn loop, the transcript record."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

from runner.client.client import TargetClient
from runner.client.providers import Reply
from runner.engine.captures import take
from runner.engine.checks import evaluate
from runner.engine.judge import Judges, grade
from runner.engine.simulate import UserSide
from runner.errors import ApiError, Kind
from runner.messages import Message, as_records
from runner.results.records import transcript_record, turn_record, utc_now
from runner.spec.plan import Conversation
from runner.spec.scenarios import Expect, Scenario, Server, Turn, Window, fill
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
    """Play every turn in order (the scripted ones, then a simulated user's); the transcript
    record, ok or failed."""
    scenario, values = conv.scenario, dict(conv.vars)  # captured values join the vars
    started = utc_now()
    system, base_params = _setup(conv, client.params())
    history: list[Message] = []
    turns: list[dict[str, Any]] = []
    total = no_usage()
    users = UserSide(conv, values, _simulator(conv, judges))
    previous_id, since_reply, error = None, 0, None
    while True:
        try:
            step = await users.next(history, len(turns))
            if step is None:
                break
            turn, text = step
            history.append(Message.of_text(turn.role, text))
            if turn.role == "assistant":
                continue
            params = {**base_params, **turn.params} if turn.params else base_params
            sent = sent_messages(scenario, history, since_reply)
            n_sent = len(sent) + (system is not None)
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
        users.mark(turn, record)
        turns.append(record)
        if turn.expect is not None:
            await _checks(turn.expect, record, Asked(conv, system, history, values, judges))
        error = await _captured(turn, record, values)
        if error is not None:
            break
    if error is None and turns and scenario.expect_final is not None:  # the last reply's
        asked = Asked(conv, system, history[:since_reply], values, judges)
        await _checks(scenario.expect_final, turns[-1], asked, final=True)
    done = transcript_record(conv, as_records(system, history), turns, total, error, started)
    users.finish(done)
    return done


@dataclass(slots=True)
class Asked:
    """What a reply's checks are given beside it: the conversation up to the reply."""

    conv: Conversation
    system: str | None
    history: list[Message]  # ends with the reply
    values: dict[str, Any]  # vars and the values captured so far
    judges: Judges | None


async def _checks(
    expect: Expect, record: dict[str, Any], asked: Asked, final: bool = False
) -> None:
    """Run EXPECT's checks on the reply of RECORD (a turn record) and add their results to
    it; FINAL: they are expect_final's (each result says so)."""
    text, history = record["assistant"], asked.history
    about = None
    if expect.python:
        about = _about(asked.conv, record, as_records(asked.system, history))
    results = await evaluate(
        expect, text, record["finish_reason"], record["latency_ms"], asked.values, about
    )
    if expect.judge:
        conversation, where = (
            as_records(asked.system, history[:-1]),
            (asked.conv.id, record["index"]),
        )
        judges = asked.judges or Judges({})
        results.append(await grade(expect.judge, judges, conversation, text, asked.values, where))
    for result in results if final else ():
        result["final"] = True
    record["checks"].extend(results)


async def _captured(turn: Turn, record: dict[str, Any], values: dict[str, Any]) -> ApiError | None:
    """The turn's captures from its reply, kept in its record and added to VALUES for the
    turns after it; the error (kind capture) when one found nothing."""
    if not turn.capture:
        return None
    try:
        taken = await asyncio.to_thread(take, turn.capture, record["assistant"])
    except ApiError as err:
        return err
    record["captures"] = taken
    values.update(taken)
    return None


def _simulator(conv: Conversation, judges: Judges | None) -> TargetClient | None:
    """The client of the target that plays the user (None without one, or in a dry run)."""
    sim = conv.scenario.simulate
    if sim is None or judges is None:
        return None
    return judges.clients.get(sim.user)


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
