"""Taking a turn's captures from its reply (runner/spec/captures.py reads them): a regex's group
1 (or its whole match), or the value at a JSON path; nothing found fails the conversation with
kind `capture`."""

from __future__ import annotations

import json
from typing import Any

import regex

from runner.engine.checks import REGEX_TIMEOUT_S, parsed_json
from runner.errors import ApiError, Kind
from runner.spec.captures import Capture, Path

MISSING = object()


def take(captures: tuple[Capture, ...], text: str) -> dict[str, str]:
    """Name -> value (text: a JSON value that is not a string is written as JSON) of each
    capture; ApiError of kind capture for the first that finds nothing. Runs in a worker
    thread: a regex is bounded in time as the regex check is."""
    taken: dict[str, str] = {}
    for capture in captures:
        value = _regex(capture, text) if capture.regex is not None else _json(capture, text)
        taken[capture.name] = value
    return taken


def _regex(capture: Capture, text: str) -> str:
    try:
        found = regex.search(capture.regex or "", text, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        raise _failed(capture, f"took more than {REGEX_TIMEOUT_S:g} s on the reply") from None
    if found is None:
        raise _failed(capture, "found nothing in the reply")
    value = found.group(1) if found.re.groups else found.group(0)
    if value is None:
        raise _failed(capture, "matched, but its group 1 took part in no match")
    return str(value)


def _json(capture: Capture, text: str) -> str:
    ok, reason, value = parsed_json(text)
    if not ok:
        raise _failed(capture, f"cannot be read: the reply is {reason}")
    found = _at(value, capture.path)
    if found is MISSING or found is None:
        raise _failed(capture, "found nothing in the reply" if found is MISSING else "is null")
    return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)


def _at(value: Any, path: Path) -> Any:
    """The value at PATH, or MISSING."""
    for step in path:
        holds = (
            step < len(value) if isinstance(value, list) and isinstance(step, int)
            else isinstance(value, dict) and isinstance(step, str) and step in value
        )  # fmt: skip
        if not holds:
            return MISSING
        value = value[step]
    return value


def _failed(capture: Capture, what: str) -> ApiError:
    return ApiError(Kind.CAPTURE, f"capture '{capture.name}' ({capture.how()}) {what}")
