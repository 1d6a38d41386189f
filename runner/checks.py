"""Evaluate a turn's `expect` block against the reply: one result per check."""

from __future__ import annotations

import json
import re
from typing import Any

from runner.scenarios import Expect, fill


def evaluate(
    expect: Expect, text: str, finish_reason: str | None, latency_ms: float, values: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run every check of `expect`; each result has kind, passed and a reason."""
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
    if expect.regex is not None:
        flags = re.IGNORECASE if expect.ignore_case else 0
        pattern = fill(expect.regex, values)
        ok = re.search(pattern, text, flags) is not None
        add("regex", ok, f"{'matched' if ok else 'no match for'} /{pattern}/")
    if expect.equals is not None:
        want = fill(expect.equals, values)
        ok = fold(text.strip()) == fold(want.strip())
        add("equals", ok, "equal" if ok else f"expected {want!r}")
    if expect.json:
        add("json", *_parses(text))
    if expect.max_latency_ms is not None:
        ok = latency_ms <= expect.max_latency_ms
        add("max_latency_ms", ok, f"{latency_ms:.0f} ms (limit {expect.max_latency_ms:g})")
    if expect.finish_reason is not None:
        ok = finish_reason == expect.finish_reason.lower()  # both normalised: runner/finish.py
        add("finish_reason", ok, f"finish reason {finish_reason!r}")
    return results


def _same(s: str) -> str:
    return s


def _all(items: tuple[str, ...], values: dict[str, Any]) -> list[str]:
    return [fill(s, values) for s in items]


def _parses(text: str) -> tuple[bool, str]:
    body = text.strip()
    if body.startswith("```"):  # a fenced block is still JSON to a reader
        body = body.strip("`").removeprefix("json").strip()
    try:
        json.loads(body)
    except ValueError as exc:
        return False, f"not JSON: {exc}"
    return True, "valid JSON"
