"""What each record holds: the transcript (one per conversation), its turns, the usage
record (one per HTTP attempt) and the run's manifest. Every record carries VERSION.

Record builders live here and nowhere else; runner/store.py writes and reads them.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import runner

if TYPE_CHECKING:
    from runner.errors import ApiError
    from runner.plan import Conversation
    from runner.providers.base import Reply

VERSION = 1


@dataclass(slots=True)
class Usage:
    """Token counts normalised across protocols (reasoning and cached are parts of output/input)."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: Usage) -> None:
        for key in TOKEN_KEYS:
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def as_dict(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in TOKEN_KEYS}


TOKEN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Usage))  # the five token counts


def utc_now() -> str:
    """A record timestamp: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _ms(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def turn_record(index: int, user: str, reply: Reply, attempts: int, sent: int) -> dict[str, Any]:
    """One generated turn of a transcript: what was asked, what came back, what it cost."""
    return {
        "index": index,
        "user": user,
        "assistant": reply.text,
        "finish_reason": reply.finish_reason,
        "usage": reply.usage.as_dict(),
        "raw_usage": reply.raw_usage,
        "latency_ms": round(reply.latency_ms, 2),
        "ttft_ms": _ms(reply.ttft_ms),
        "attempts": attempts,
        "sent_messages": sent,  # messages in the request, system included
        "checks": [],
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
        "error": error.as_record() if error else None,
        "messages": messages,
        "turns": turns,
        "usage": usage.as_dict(),
        "passed": passed,
        "started_at": started,
        "ended_at": utc_now(),
    }


def attempt_record(
    conversation_id: str,
    turn: int,
    attempt: int,
    target: str,
    model: str,
    status: int | str,
    reply: Reply | None,
    latency_ms: float,
) -> dict[str, Any]:
    """One HTTP attempt (usage.jsonl): status is 200 or the error's status (else its kind)."""
    usage = reply.usage.as_dict() if reply else dict.fromkeys(TOKEN_KEYS, 0)
    return {
        "version": VERSION,
        "conversation_id": conversation_id,
        "turn": turn,
        "attempt": attempt,
        "target": target,
        "model": model,
        "status": status,
        **usage,
        "latency_ms": round(latency_ms, 2),
        "ttft_ms": _ms(reply.ttft_ms) if reply else None,
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
