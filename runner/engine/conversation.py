"""One conversation: the history, the context mode, the turn loop, the transcript record."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from runner.client.client import TargetClient
from runner.client.providers import Reply
from runner.engine.captures import take
from runner.engine.checks import evaluate
from runner.engine.judge import Judges, grade
from runner.engine.simulate import UserSide
from runner.engine.tooluse import calls_record, named, result_of
from runner.errors import ApiError, Kind
from runner.messages import Message, Text, ToolCall, as_records
from runner.results.records import transcript_record, turn_record, utc_now
from runner.spec.plan import Conversation
from runner.spec.scenarios import Expect, Scenario, Server, Turn, Window, fill
from runner.usage import Usage, add_usage, no_usage


def sent_messages(scenario: Scenario, history: list[Message], since_reply: int) -> list[Message]:
    """The messages a turn sends (system apart), following the scenario's context mode.

    history holds every message so far, ending with the new user message;
    since_reply is the index just after the last generated reply (server mode). A window
    never starts between a tool call and its results: it grows back to the call.
    """
    if isinstance(scenario.context, Window):
        start = max(0, len(history) - scenario.context.n)
        while start > 0 and history[start].role == "tool":
            start -= 1
        return history[start:]
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
    made = tuple[ToolCall, ...]()  # every call the model made
    total: Usage | None = None  # made at the first reply: nothing while it is in flight
    users = UserSide(conv, values, _simulator(conv, judges))
    chain, error = Chain(), None
    while True:
        try:
            step = await users.next(history, len(turns))
            if step is None:
                break
            turn, message = step
            history.append(message)
            if turn.role != "user":
                continue
            params = {**base_params, **turn.params} if turn.params else base_params
            played = await _exchange(conv, client, system, history, params, chain, len(turns))
        except ApiError as err:
            error = err
            break
        total = add_usage(total or no_usage(), played.reply.usage)
        record = _turn_record(len(turns), message.text, played, history)
        users.mark(turn, record)
        turns.append(record)
        made += played.calls
        if turn.expect is not None:
            asked = Asked(conv, system, history, values, judges, played.calls)
            await _checks(turn.expect, record, asked)
        error = await _captured(turn, record, values)  # from the reply after the tool loop
        if error is not None:
            break
    if error is None and turns and scenario.expect_final is not None:  # the last reply's
        asked = Asked(conv, system, history[: chain.since_reply], values, judges, made)
        await _checks(scenario.expect_final, turns[-1], asked, final=True)
    done = transcript_record(
        conv, as_records(system, history), turns, total or no_usage(), error, started
    )
    users.finish(done)
    return done


def _turn_record(index: int, user: str, played: Played, history: list[Message]) -> dict[str, Any]:
    """The record of a user turn played: its final reply, and the calls of its tool loop."""
    record = turn_record(index, user, played.reply, played.attempts, played.sent)
    if played.calls:
        record["tool_calls"] = calls_record(played.calls, history)
        record["request_attempts"] = played.request_attempts
    return record


@dataclass(slots=True)
class Asked:
    """What a reply's checks are given beside it: the conversation up to the reply."""

    conv: Conversation
    system: str | None
    history: list[Message]  # ends with the reply
    values: dict[str, Any]  # vars and the values captured so far
    judges: Judges | None
    calls: tuple[ToolCall, ...] = ()  # the calls the model made that its checks count


async def _checks(
    expect: Expect, record: dict[str, Any], asked: Asked, final: bool = False
) -> None:
    """Run EXPECT's checks on the reply of RECORD (a turn record) and add their results to
    it; FINAL: they are expect_final's (each result says so)."""
    text, history = record["assistant"], asked.history
    about = None
    if expect.python:
        about = _about(asked.conv, record, as_records(asked.system, history), asked.values)
    results = await evaluate(
        expect, text, record["finish_reason"], record["latency_ms"], asked.values, about,
        asked.calls,
    )  # fmt: skip
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


@dataclass(slots=True)
class Chain:
    """Where the server's history stands (context: server): the response to chain to, and
    the index just after the last generated reply."""

    previous_id: str | None = None
    since_reply: int = 0


@dataclass(slots=True)
class Played:
    """One user turn played: its final reply (usage and latency of every request of the
    turn summed), attempts in all and per request, the calls the model made."""

    reply: Reply
    attempts: int
    sent: int
    calls: tuple[ToolCall, ...] = ()
    request_attempts: list[int] = dataclasses.field(default_factory=list)


async def _exchange(
    conv: Conversation,
    client: TargetClient,
    system: str | None,
    history: list[Message],
    params: dict[str, Any],
    chain: Chain,
    index: int,
) -> Played:
    """Send the turn; while the reply calls tools, answer each call with its scripted
    result (in order) and send again; the reply without calls ends the turn."""
    scenario = conv.scenario
    usage: Usage | None = None  # made at the first reply: nothing while it is in flight
    latency, calls = 0.0, tuple[ToolCall, ...]()
    tries: list[int] = []  # attempts of each request
    ttft: float | None = None  # of the turn's first request
    for request in range(scenario.max_tool_rounds + 1):
        sent = sent_messages(scenario, history, chain.since_reply)
        n_sent = len(sent) + (system is not None)
        reply, attempts = await client.complete(
            system, sent, params, chain.previous_id, conv.id, index, sample=conv.sample,
            cache_marks=scenario.cache, tools=scenario.tools, request=request,
        )  # fmt: skip
        _check_reply(reply, scenario)
        made = named(reply.tool_calls, index, request)
        text = (Text(reply.text),) if reply.text or not made else ()
        history.append(Message("assistant", text + made))
        chain.since_reply = len(history)
        chain.previous_id = reply.response_id if isinstance(scenario.context, Server) else None
        if not made and not tries:  # the turn's one request: its reply is the turn's
            return Played(reply, attempts, n_sent)
        usage = add_usage(usage or no_usage(), reply.usage)
        latency += reply.latency_ms
        ttft = reply.ttft_ms if not tries else ttft
        tries.append(attempts)
        calls += made
        if not made:
            total = dataclasses.replace(reply, usage=usage, latency_ms=latency, ttft_ms=ttft)
            return Played(total, sum(tries), n_sent, calls, tries)
        if request == scenario.max_tool_rounds:
            break
        for call in made:
            history.append(Message("tool", (await result_of(call, scenario, conv.vars),)))
    raise ApiError(
        Kind.TOOL_LOOP,
        f"the model still called tools after {scenario.max_tool_rounds} rounds in this turn "
        f"(max_tool_rounds); last: {', '.join(c.name for c in calls[-3:])}",
    )


def _about(
    conv: Conversation,
    turn: dict[str, Any],
    messages: list[dict[str, str]],
    values: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a python check is given beside the reply: copies of the turn record (checks
    not yet filled in) and of the conversation so far (its messages end with the reply;
    its vars hold the values captured so far, as templates see them)."""
    conversation = {
        "id": conv.id, "scenario_id": conv.scenario.id, "target": conv.target.name,
        "model": conv.target.model, "sample": conv.sample, "vars": values,
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
    if not reply.text and not reply.tool_calls:
        raise ApiError(Kind.EMPTY, f"the model returned no text (finish reason: {_finish(reply)})")
    if isinstance(scenario.context, Server) and not reply.response_id:
        raise ApiError(
            Kind.PROTOCOL, "context: server needs a response id to chain; the reply had none"
        )


def _finish(reply: Reply) -> str:
    """The normalised finish reason, with the provider's own value when it differs."""
    norm, raw = reply.finish_reason, reply.finish_reason_raw
    return f"{norm} ({raw})" if raw is not None and raw != norm else str(norm)
