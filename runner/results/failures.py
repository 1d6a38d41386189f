"""Why a target's conversations failed, and what its replies lacked: the most common
failures (kind, status, masked and shortened message) and per-target warnings."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

TOP = 5  # failures shown per target
MESSAGE_CHARS = 120
# what looks like a credential or a per-request id (a UUID, a long run of letters and
# digits such as new-api's "request id: 20261122062713183948583SWBHH7vd"; model names like
# gpt-4o-mini-2024-07-18 are left alone): hidden, so that alike failures group as one
SECRETISH = re.compile(
    r"\b(?:sk-|AIza)[\w-]{6,}|\bBearer\s+\S+"
    r"|\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"
    r"|\b(?=[A-Za-z]*\d)[A-Za-z0-9]{16,}\b"
)

FailureKey = tuple[str, int | None, str]


def shorten(message: str) -> str:
    """One line, secrets and ids masked, at most MESSAGE_CHARS characters."""
    text = SECRETISH.sub("***", " ".join(message.split()))
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def failure_key(error: dict[str, Any] | None) -> FailureKey:
    """What failures are grouped by: the kind, the HTTP status, the shortened message."""
    error = error or {}
    return str(error.get("kind", "unknown")), error.get("status"), shorten(error.get("message", ""))


def top_failures(counts: Counter[FailureKey], n: int = TOP) -> list[dict[str, Any]]:
    """The n most common failures, most common first."""
    return [
        {"count": count, "kind": kind, "status": status, "message": message}
        for (kind, status, message), count in counts.most_common(n)
    ]


def usage_warnings(replies: int, replies_with_usage: int) -> list[str]:
    """A warning when replies came back and none of them reported any token usage."""
    if not replies or replies_with_usage:
        return []
    return [
        f"none of {replies} replies reported token usage, so tokens and cost show 0 "
        "(some gateways drop usage, mostly on streams)"
    ]


SHOWN_CHECKS = 10  # failing checks listed under the report table (and kept per target)


class FailedChecks:
    """The first SHOWN_CHECKS failing checks of a target, in the order met; the rest are only
    counted (the row's `checks_failed`), so memory stays flat in the run's size."""

    def __init__(self) -> None:
        self.first: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any], turn: int, check: dict[str, Any]) -> None:
        if len(self.first) < SHOWN_CHECKS:
            self.first.append({
                "scenario": record["scenario_id"], "conversation_id": record["conversation_id"],
                "target": record["target"], "turn": turn, "kind": check["kind"],
                "reason": check.get("reason") or "",
            })  # fmt: skip
