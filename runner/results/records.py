"""What each record holds: the transcript (one per conversation), its turns, the usage
record (one per HTTP attempt) and the run's manifest. Every record carries VERSION.

Record builders live here and nowhere else; runner/results/store.py writes and reads them.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import runner
from runner.cost import cost
from runner.usage import NEWER_KEYS, TOKEN_KEYS, Usage, no_usage

if TYPE_CHECKING:
    from runner.client.providers.base import Reply
    from runner.errors import ApiError
    from runner.spec.plan import Conversation

VERSION = 1
TOOLS_VERSION = 2  # a transcript whose messages hold tool calls, tool results or images


def utc_now() -> str:
    """A record timestamp: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def turn_record(index: int, user: str, reply: Reply, attempts: int, sent: int) -> dict[str, Any]:
    """One generated turn of a transcript: what was asked, what came back, what it cost."""
    return {
        "index": index,
        "user": user,
        "assistant": reply.text,
        "finish_reason": reply.finish_reason,  # normalised: runner/finish.py
        "finish_reason_raw": reply.finish_reason_raw,
        "usage": reply.usage,
        "raw_usage": reply.raw_usage,
        "latency_ms": round(reply.latency_ms, 2),
        "ttft_ms": round(reply.ttft_ms, 2) if reply.ttft_ms is not None else None,
        "attempts": attempts,
        "sent_messages": sent,  # messages in the request, system included
        "checks": [],
        **({"cached_reply": True} if attempts == 0 else {}),  # replayed: runner/client/cache.py
    }


def transcript_record(
    conv: Conversation,
    messages: list[dict[str, str]],
    turns: list[dict[str, Any]],
    usage: Usage,
    error: ApiError | None,
    started: str,
) -> dict[str, Any]:
    """One conversation, ok or failed: the full history (system first) and every turn."""
    passed = None if error else all(c["passed"] for t in turns for c in t["checks"])
    tools = [tool.record() for tool in conv.scenario.tools]
    plain = not tools and all(type(m["content"]) is str and len(m) == 2 for m in messages)
    return {
        "version": VERSION if plain else TOOLS_VERSION,
        "conversation_id": conv.id,
        "scenario_id": conv.scenario.id,
        "scenario_file": conv.scenario.file,
        "tags": list(conv.scenario.tags),
        "target": conv.target.name,
        "provider": conv.target.provider,
        "model": conv.target.model,
        "sample": conv.sample,
        "samples": conv.samples,  # of these vars, in the plan
        "vars": conv.vars,
        "seed": conv.seed,  # the seed param sent, when samples were seeded
        "metadata": conv.scenario.metadata,  # from the scenario, e.g. MT-Bench's references
        "min_pass_rate": conv.scenario.min_pass_rate,  # its verdict's bar (results/verdicts.py)
        "status": "failed" if error else "ok",
        "error": error.as_record() if error else None,
        "messages": messages,
        **({"tools": tools} if tools else {}),  # as OpenAI's chat shape declares them
        "turns": turns,
        "usage": usage,
        "cost_usd": cost(usage, conv.target.price),
        "passed": passed,
        "started_at": started,
        "ended_at": utc_now(),
    }


NO_TOKENS = no_usage()


def outcome(record: dict[str, Any]) -> str:
    """A transcript's outcome: "error" (failed after retries), "fail" (a check failed) or
    "pass" (ok, every check passed)."""
    if record["status"] != "ok":
        return "error"
    return "pass" if record.get("passed") is not False else "fail"


def why(record: dict[str, Any]) -> str:
    """Why a conversation is not a pass: its error, or its failed checks."""
    if record["status"] != "ok":
        error = record.get("error") or {}
        return f"{error.get('kind')}: {error.get('message')}"
    failed = [
        f"turn {t['index']}: {c['kind']}: {c['reason']}"
        for t in record["turns"]
        for c in t["checks"]
        if not c["passed"]
    ]
    return "; ".join(failed)


def attempt_record(
    conversation_id: str,
    turn: int | tuple[int, int],
    attempt: int,
    target: str,
    model: str,
    status: int | str,
    reply: Reply | None,
    latency_ms: float,
) -> dict[str, Any]:
    """One HTTP attempt (usage.jsonl): status is 200 or the error's status (else its kind).
    TURN with tools is (turn, request): which request of the turn's tool loop it was."""
    usage = reply.usage if reply else NO_TOKENS
    ttft = reply.ttft_ms if reply else None
    turn, request = turn if isinstance(turn, tuple) else (turn, None)
    return {
        "version": VERSION,
        "conversation_id": conversation_id,
        "turn": turn,
        **({"request": request} if request is not None else {}),
        "attempt": attempt,
        "target": target,
        "model": model,
        "status": status,
        **usage,
        "latency_ms": round(latency_ms, 2),
        "ttft_ms": round(ttft, 2) if ttft is not None else None,
        "ts": time.time(),
    }


def manifest_record(
    run_id: str,
    invocation: dict[str, Any],
    files: dict[str, str],
    targets: list[dict[str, Any]],
) -> dict[str, Any]:
    """run.json when a run starts; the run fills in status, counts and usage as it ends."""
    return {
        "version": VERSION,
        "run_id": run_id,
        "tool_version": runner.__version__,
        "command": sys.argv,
        "cwd": os.getcwd(),
        "started_at": utc_now(),
        "ended_at": None,
        "status": "running",
        "invocation": invocation,
        "files": files,  # path -> sha256, to refuse a resume over changed files
        "targets": targets,  # as Target.public(): never a key
        "resumed": 0,
    }


# ---------------------------------------------------------------- what readers accept

ROLES = ("system", "user", "assistant", "tool")
Fields = dict[str, tuple[tuple[type, ...], bool]]  # key -> (its types, whether null is allowed)
NUMBER = (int, float)


def _shape(**fields: Any) -> Fields:
    """Field types as given: a type, or a tuple of them where None means "or null"."""
    shape: Fields = {}
    for key, given in fields.items():
        kinds: tuple[Any, ...] = given if isinstance(given, tuple) else (given,)
        shape[key] = (tuple(k for k in kinds if k is not None), None in kinds)
    return shape


TRANSCRIPT_FIELDS = _shape(
    conversation_id=str, scenario_id=str, target=str, status=str, sample=int, vars=dict,
    messages=list, turns=list, error=(dict, None), passed=(bool, None), metadata=(dict, None),
    ended_at=str, started_at=(str, None), min_pass_rate=(*NUMBER, None),
)  # fmt: skip
TURN_FIELDS = _shape(
    index=int, user=str, assistant=str, usage=dict, latency_ms=NUMBER,
    ttft_ms=(*NUMBER, None), checks=list,
)  # fmt: skip
CHECK_FIELDS = _shape(kind=str, passed=bool, reason=str)
MESSAGE_FIELDS = _shape(role=str, content=(str, list, None))
ATTEMPT_FIELDS = _shape(
    conversation_id=str,
    target=str,
    turn=int,
    attempt=int,
    **{k: int for k in TOKEN_KEYS if k not in NEWER_KEYS},
)


def transcript_problem(record: dict[str, Any]) -> str | None:
    """Why a line of transcripts.jsonl is not a transcript record (None when it is one):
    the first field that is missing or of another type than the runner writes."""
    problem = _fields(record, TRANSCRIPT_FIELDS, "")
    if problem is None and record["status"] not in ("ok", "failed"):
        problem = f"status is {record['status']!r}, not ok or failed"
    problem = problem or _when(record, "ended_at") or _when(record, "started_at")
    for message in record["messages"] if problem is None else ():
        problem = _fields(message, MESSAGE_FIELDS, "a message's ")
        if problem is None and message["role"] not in ROLES:
            problem = f"a message's role is {message['role'][:20]!r}"
        if problem:
            return problem
    for turn in record["turns"] if problem is None else ():
        problem = _fields(turn, TURN_FIELDS, "a turn's ")
        for check in turn["checks"] if problem is None else ():
            problem = problem or _fields(check, CHECK_FIELDS, "a check's ")
        if problem:
            return problem
    return problem


def message_text(message: dict[str, Any]) -> str:
    """A message of a transcript as text for people: its text; an image as `[image: REF]`;
    each tool call as `-> name(arguments)`; a tool result as `<- name: result`."""
    content = message.get("content")
    if message.get("role") == "tool":
        return f"<- {message.get('name') or message.get('tool_call_id')}: {content}"
    if isinstance(content, list):
        content = "".join(
            str(p.get("text", "")) if p.get("type") == "text"
            else f" [image: {(p.get('image_url') or {}).get('url')}]"
            for p in content if isinstance(p, dict)
        ).strip()  # fmt: skip
    calls = [
        f"-> {c['function']['name']}({c['function']['arguments']})"
        for c in message.get("tool_calls") or ()
        if isinstance(c, dict) and isinstance(c.get("function"), dict)
    ]
    return "\n".join([content, *calls] if content else calls) if calls else str(content or "")


def attempt_problem(record: dict[str, Any]) -> str | None:
    """Why a line of usage.jsonl is not a usage record (None when it is one)."""
    return _fields(record, ATTEMPT_FIELDS, "")


def _fields(value: Any, fields: Fields, what: str) -> str | None:
    """The first field of `value` (a dict) that is missing or of another type, said."""
    if type(value) is not dict:
        return f"{what.removesuffix(chr(39) + 's ') or 'the line'} is not an object"
    for key, (kinds, nullable) in fields.items():
        field = value.get(key)
        if type(field) in kinds or (field is None and nullable):  # parsed JSON: exact types
            continue
        if field is None and key not in value:
            return f"{what}{key} is missing"
        names = [k.__name__ for k in kinds] + (["null"] if nullable else [])
        return f"{what}{key} is {type(field).__name__}, not {' or '.join(names)}"
    return None


def _when(record: dict[str, Any], key: str) -> str | None:
    """A timestamp field that is absent, null, or ISO 8601 (None when so)."""
    value = record.get(key)
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"{key} is not an ISO 8601 time"
    return None
