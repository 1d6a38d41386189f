"""What a protocol's Batch API offers batch mode (runner/client/batch.py): the shapes its
answers are read into. Each protocol's wire lives in its own provider file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.client.providers.base import Reply, Request
from runner.errors import ApiError


@dataclass(slots=True)
class BatchStatus:
    """A batch as its provider's poll answered: its own state word, whether it has ended,
    and its counts of lines (the provider's names)."""

    state: str
    ended: bool
    counts: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the poll's body, for reading results


BatchOutcome = dict[str, Reply | ApiError]  # custom id -> its reply, or why it has none


class BatchWire(Protocol):
    """One protocol's Batch API: create a batch of (custom id, request) lines, poll it,
    read each line's answer, cancel it. Every call raises the ApiError a direct call would."""

    max_lines: int  # a batch holds at most this many lines
    max_bytes: int  # and this many bytes

    async def create(self, session: Any, lines: list[tuple[str, Request]]) -> str: ...

    async def poll(self, session: Any, batch_id: str) -> BatchStatus: ...

    async def results(self, session: Any, status: BatchStatus) -> BatchOutcome: ...

    async def cancel(self, session: Any, batch_id: str) -> None: ...
