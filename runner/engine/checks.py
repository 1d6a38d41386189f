"""Evaluate a turn's `expect` block against the reply: one result per check."""

from __future__ import annotations

import asyncio
import difflib
import json
from typing import Any

import regex

from runner.encoding import from_json
from runner.errors import ApiError, Kind
from runner.messages import ToolCall
from runner.spec import pycheck
from runner.spec.expects import Called, Schema, Similar
from runner.spec.scenarios import Expect, fill

REGEX_TIMEOUT_S = 1.0  # a regex check that takes longer is an error of kind check_timeout


async def evaluate(
    expect: Expect,
    text: str,
    finish_reason: str | None,
    latency_ms: float,
    values: dict[str, Any],
    about: tuple[dict[str, Any], dict[str, Any]] | None = None,
    calls: tuple[ToolCall, ...] = (),
) -> list[dict[str, Any]]:
    """Run every check of `expect`; each result has kind, passed and a reason. A regex is
    searched in a worker thread (the `regex` package lets go of the GIL), so that the event
    loop goes on (requests, their timers, signals) while it runs, for REGEX_TIMEOUT_S at most;
    python checks run in threads too (runner/spec/pycheck.py), given ABOUT: (turn, conversation).
    CALLS are the tool calls the model made in the turn (tool_called, no_tool_called)."""
    found_regex = None
    if expect.regex is not None:
        found_regex = await asyncio.to_thread(_regex, expect, text, values)
    results: list[dict[str, Any]] = []
    fold = str.casefold if expect.ignore_case else _same
    hay = fold(text)

    def add(kind: str, passed: bool, reason: str) -> None:
        results.append({"kind": kind, "passed": passed, "reason": reason})

    if expect.contains:
        missing = [s for s in _all(expect.contains, values) if fold(s) not in hay]
        add("contains", not missing, f"missing {missing}" if missing else "all found")
    if expect.contains_any:
        wanted = _all(expect.contains_any, values)
        found = [s for s in wanted if fold(s) in hay]
        add("contains_any", bool(found), f"found {found[0]!r}" if found else f"none of {wanted}")
    if expect.not_contains:
        present = [s for s in _all(expect.not_contains, values) if fold(s) in hay]
        add("not_contains", not present, f"found {present}" if present else "none found")
    if found_regex is not None:
        results.append(found_regex)
    if expect.equals is not None:
        want = fill(expect.equals, values)
        ok = fold(text.strip()) == fold(want.strip())
        add("equals", ok, "equal" if ok else f"expected {want!r}")
    if expect.json:
        add("json", *parsed_json(text)[:2])
    if expect.json_schema is not None:
        add("json_schema", *_validates(expect.json_schema, text))
    if expect.similar is not None:  # quadratic in the lengths: beside the event loop
        add("similar", *await asyncio.to_thread(_similar, expect.similar, text, values, fold))
    if expect.max_latency_ms is not None:
        ok = latency_ms <= expect.max_latency_ms
        add("max_latency_ms", ok, f"{latency_ms:.0f} ms (limit {expect.max_latency_ms:g})")
    if expect.finish_reason is not None:
        ok = finish_reason == expect.finish_reason.lower()  # both normalised: runner/finish.py
        add("finish_reason", ok, f"finish reason {finish_reason!r}")
    results += _tool_checks(expect, calls)
    for check in expect.python:
        results.append(await _python(check, text, about))
    return results


def _tool_checks(expect: Expect, calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """tool_called and no_tool_called on the calls of the turn."""
    out = [
        dict(zip(("kind", "passed", "reason"), ("tool_called", *_called(c, calls)), strict=True))
        for c in expect.tool_called
    ]
    if expect.no_tool_called is not None:
        names = expect.no_tool_called
        made = [c.name for c in calls if not names or c.name in names]
        reason = f"called {made}" if made else "no such call"
        out.append({"kind": "no_tool_called", "passed": not made, "reason": reason})
    return out


def _called(called: Called, calls: tuple[ToolCall, ...]) -> tuple[bool, str]:
    """Whether the turn called the tool (with those arguments among its own), as often as
    asked (at least once when not said)."""
    named = [c for c in calls if c.name == called.name]
    given = called.args or {}
    matching = [c for c in named if all(_args(c).get(k) == v for k, v in given.items())]
    n = len(matching)
    ok = n > 0 if called.times is None else n == called.times
    with_args = f" with {given}" if given else ""
    said = f"{called.name}{with_args} called {n} time{'s' if n != 1 else ''}"
    if not ok and len(named) > n:
        said += f" (other calls of it: {[c.arguments for c in named if c not in matching][:3]})"
    return ok, said


def _args(call: ToolCall) -> dict[str, Any]:
    try:
        value = from_json(call.arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _python(
    check: pycheck.PythonCheck, text: str, about: tuple[dict[str, Any], dict[str, Any]] | None
) -> dict[str, Any]:
    """A python check's result; its exception, a value that is no verdict, or a call that
    does not end is an error of the check, never a pass."""
    turn, conversation = about or ({}, {})
    try:
        passed, reason = await pycheck.run(check, text, turn, conversation)
    except ApiError as err:
        return _error("python", err, name=check.name)
    return {"kind": "python", "name": check.name, "passed": passed, "reason": reason}


def _regex(expect: Expect, text: str, values: dict[str, Any]) -> dict[str, Any]:
    """The regex check, bounded in time: a pattern that backtracks without end on this reply
    is an error of kind check_timeout after REGEX_TIMEOUT_S (the thread ends then), never a
    pass; the reply is kept either way."""
    pattern = fill(expect.regex or "", values)
    flags = regex.IGNORECASE if expect.ignore_case else 0
    try:
        found = regex.search(pattern, text, flags, concurrent=True, timeout=REGEX_TIMEOUT_S)
        ok = found is not None
    except TimeoutError:
        message = f"/{pattern}/ took more than {REGEX_TIMEOUT_S:g} s on this reply"
        return _error("regex", ApiError(Kind.CHECK_TIMEOUT, message))
    except regex.error as exc:  # checked with every var combination at load time
        return _error("regex", ApiError(Kind.INTERNAL, f"bad regex /{pattern}/: {exc}"))
    return {
        "kind": "regex",
        "passed": ok,
        "reason": f"{'matched' if ok else 'no match for'} /{pattern}/",
    }


def _error(kind: str, err: ApiError, **extra: Any) -> dict[str, Any]:
    """A check that could not be made: failed, with the error (as a judge's is)."""
    reason = f"{kind} error ({err.kind}): {err.message}"
    return {"kind": kind, **extra, "passed": False, "reason": reason, "error": err.as_record()}


def _same(s: str) -> str:
    return s


def _all(items: tuple[str, ...], values: dict[str, Any]) -> list[str]:
    return [fill(s, values) for s in items]


def parsed_json(text: str) -> tuple[bool, str, Any]:
    """(whether the reply is JSON, the reason, the parsed value)."""
    body = text.strip()
    if body.startswith("```"):  # a fenced block is still JSON to a reader
        body = body.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return False, f"not JSON: {exc}", None
    return True, "valid JSON", value


def _validates(schema: Schema, text: str) -> tuple[bool, str]:
    """The reply parses as JSON (a fenced block too) and is valid against the schema; the
    reason names the most relevant error (jsonschema's best_match) and how many there are."""
    ok, reason, value = parsed_json(text)
    if not ok:
        return False, reason
    errors = list(schema.validator.iter_errors(value))
    if not errors:
        return True, f"valid against the schema ({schema.source})"
    from jsonschema.exceptions import best_match  # installed: the schema was loaded with it

    first = best_match(errors)
    where = "/".join(str(p) for p in first.absolute_path) or "the top"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return False, f"at {where}: {first.message[:200]}{more}"


def _similar(similar: Similar, text: str, values: dict[str, Any], fold: Any) -> tuple[bool, str]:
    """difflib's ratio of the reply to the text, character by character: lexical, not
    semantic ("yes" and "indeed" are far apart, "colour" and "color" close)."""
    want = fill(similar.to, values)
    matcher = difflib.SequenceMatcher(None, fold(text.strip()), fold(want.strip()), False)
    bound = matcher.quick_ratio()  # an upper bound, in linear time: often enough to fail
    exact = bound >= similar.min
    ratio = matcher.ratio() if exact else bound
    said = f"{'' if exact else 'at most '}{ratio:.2f}"
    shown = want if len(want) <= 60 else want[:57] + "..."
    return ratio >= similar.min, f"similarity {said} to {shown!r} (min {similar.min:g})"
