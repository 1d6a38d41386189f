"""What can go wrong, in one place: the two exceptions, the failure kinds, the exit codes."""

from __future__ import annotations

import traceback
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any


class Exit(IntEnum):
    """The process's exit codes (README, "Exit codes")."""

    OK = 0  # every conversation completed and every check passed
    CHECKS = 1  # a check failed
    INPUT = 2  # bad input or configuration: nothing was sent
    FAILED = 3  # some conversations failed after retries
    WRITE = 4  # results could not be written (disk full, folder gone or read-only)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM: what finished is kept, --resume continues
    CLOSED_PIPE = 141  # what was written to stdout was not all read (`| head`), as 128 + SIGPIPE


class Kind(StrEnum):
    """Why an attempt or a conversation failed: exactly the kinds that are raised."""

    HTTP = "http"  # an error status, or an error object where a reply should be
    AUTH = "auth"  # 401/403, or not sent because the target refused the key
    RATE_LIMIT = "rate_limit"  # 429 that asks to slow down (retried)
    QUOTA = "quota"  # 429 for an exhausted quota (final)
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    STREAM = "stream"  # a stream cut off before its terminal event
    MALFORMED = "malformed"  # a body that is not what the protocol defines
    EMPTY = "empty"  # a reply with no text
    PROTOCOL = "protocol"  # a reply the scenario cannot use (server context without an id)
    INTERNAL = "internal"  # a bug in the runner (a parser's too): one conversation, never retried
    CHECK_TIMEOUT = (
        "check_timeout"  # a regex or python check ran past its time bound (an error, not a pass)
    )
    CHECK_ERROR = "check_error"  # a python check raised, or returned no verdict (an error)
    CAPTURE = "capture"  # a turn's capture found nothing in its reply: later turns not sent
    TOOL_UNSCRIPTED = (
        "tool_unscripted"  # the model called a tool the scenario scripts no result for
    )
    TOOL_LOOP = "tool_loop"  # the model still called tools after max_tool_rounds in one turn
    CACHE_MISS = "cache_miss"  # --cache-only: no reply cached for this request, none was sent


class InputError(Exception):
    """Bad input or configuration, found before anything is sent (exit code 2).

    Holds one or more problems, each already phrased as "file:line: what is wrong".
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class WriteError(Exception):
    """A record or the manifest could not be written: the run stops (exit code 4).

    Nothing is sent after it; what was written before it stays whole on disk."""


class ApiError(Exception):
    """A failed attempt, classified so that the retry loop can decide."""

    def __init__(
        self,
        kind: Kind,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        unreachable: bool = False,
    ):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.unreachable = unreachable  # nothing there to connect to: refused, DNS, TLS
        self.headers: Any = None  # the error answer's headers, when there was one

    @property
    def label(self) -> int | str:
        """What a usage record shows as the attempt's status: the HTTP status, else the kind."""
        return self.status if self.status is not None else str(self.kind)

    def as_record(self) -> dict[str, object]:
        """The `error` of a transcript record."""
        return {"kind": str(self.kind), "message": self.message, "status": self.status}


ROOT = Path(__file__).resolve().parent.parent  # frames in the runner are shown from here


def internal(exc: BaseException) -> ApiError:
    """An exception nothing classified: a bug of ours, not the server's fault. Final (never
    retried), and it says where it was raised: the traceback's last frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        path = Path(frames[-1].filename)
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(*path.parts[-2:])
        where = f" (at {shown}:{frames[-1].lineno} in {frames[-1].name})"
    return ApiError(Kind.INTERNAL, f"{type(exc).__name__}: {exc}{where}")


def at(file: str, line: int | None, message: str) -> str:
    """Phrase a problem as "file:line: message" (line is 1-based)."""
    return f"{file}:{line}: {message}" if line else f"{file}: {message}"
