"""Batch mode: a transport that sends whole rounds of turns through a provider's Batch API.

A `Batcher` stands where the HTTP transport stands (`send(request) -> Reply`). The requests
of the conversations of its target wait together; once every conversation in flight with
the target waits (or none came for SETTLE_S), they go out as one batch per round (split at
the provider's limits), which is polled every `batch_poll_s` until it ends. Each waiting
request is then answered by its line: the reply as the provider reads a direct call's, or
the classified error (a missing line too), which the client's retry loop retries in the
next round. Which request a line answers is its key (conversation, turn, request of the
turn, attempt), set by the client in SENDING before it sends.

Every batch is written to the run folder's batch file (runner/results/store.BATCHES) before
the round waits on it: a resumed run, replaying its conversations, answers a request whose
key is there from that batch (polled if it still runs) instead of sending it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from runner.client.providers.base import Provider, Reply, Request
from runner.client.providers.batchwire import BatchOutcome, BatchStatus, BatchWire
from runner.client.providers.transport import checked
from runner.errors import ApiError, Kind
from runner.results.records import utc_now
from runner.results.store import BATCHES, USAGE, JsonlWriter, scan_jsonl

SENDING: contextvars.ContextVar[str] = contextvars.ContextVar("SENDING", default="")
SETTLE_S = 0.5  # a round goes out once no request came for this long, all in flight or not
TICK_S = 0.01  # how often a gathering round looks whether it may go
Ticket = tuple[str, str]  # (batch id, custom id)


def request_key(
    cid: str, turn: int | tuple[int, int], attempt: int, judge: bool, role: str | None = None
) -> str:
    """The key of one attempt of one request: conversation, turn, request of the turn,
    attempt, and whether it is a judge's or a role's (a simulated user's)."""
    turn, request = turn if isinstance(turn, tuple) else (turn, 0)
    return (
        f"{cid}|{turn}|{request}|{attempt}"
        + ("|judge" if judge else "")
        + (f"|{role}" if role else "")
    )


class BatchLog:
    """The run folder's batch file: each batch as it is created (id, target, round, the
    keys of its lines in order) and as it ends (state, counts); read again on resume."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str | None = None,
        on_change: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.on_change = on_change  # told the batches (run.json lists them) as they change
        self.tickets: dict[str, Ticket] = {}  # key -> the batch line that answers it
        self.open: dict[str, str] = {}  # batch id -> target, batches not seen ending
        self.rounds: dict[str, int] = {}  # target -> its last round
        self.recorded: set[str] = set()  # keys whose attempt is in usage.jsonl already
        self.batches: dict[str, dict[str, Any]] = {}  # batch id -> what run.json lists
        for _, entry in scan_jsonl(run_dir / BATCHES):
            self._read(entry)
        if self.tickets:
            self.recorded = {
                r["batch_key"] for _, r in scan_jsonl(run_dir / USAGE) if r.get("batch_key")
            }
        self.writer = JsonlWriter(run_dir / BATCHES, run_id)

    def _read(self, entry: dict[str, Any]) -> None:
        batch_id, target = entry.get("batch_id", ""), entry.get("target", "")
        if entry.get("event") == "created":
            for i, key in enumerate(entry.get("keys", ())):
                self.tickets[key] = (batch_id, f"r{i}")
            self.open[batch_id] = target
            self.rounds[target] = max(self.rounds.get(target, 0), entry.get("round", 0))
            self.batches[batch_id] = {
                **{k: entry.get(k) for k in ("batch_id", "target", "round", "lines")},
                "state": "created",
                "created_at": entry.get("created_at"),
                "ended_at": None,
            }
        elif entry.get("event") == "ended":
            self.open.pop(batch_id, None)
            self.batches.get(batch_id, {}).update(state=entry.get("state"),
                                                  ended_at=entry.get("ended_at"))  # fmt: skip
        elif entry.get("event") == "dropped":
            self.open.pop(batch_id, None)
            self.tickets = {k: t for k, t in self.tickets.items() if t[0] != batch_id}
            self.batches.get(batch_id, {}).update(state="cancelled", ended_at=entry.get("ended_at"))

    def write(self, entry: dict[str, Any]) -> None:
        """Append (and flush) one entry, and take it in."""
        self.writer.write(entry)
        self._read(entry)
        if self.on_change is not None:
            self.on_change(list(self.batches.values()))

    def close(self) -> None:
        self.writer.close()


@dataclass
class Waiting:
    key: str
    request: Request
    ticket: asyncio.Future[Ticket] = field(default_factory=asyncio.Future)


class Batcher:
    """The batching transport of one target (module docstring)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider: Provider,
        target: str,
        poll_s: float,
        log: BatchLog,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.session, self.provider, self.target, self.log = session, provider, target, log
        self.wire: BatchWire = provider.batch_wire()
        self.poll_s, self.settle_s = poll_s, settle_s
        self.holders = 0  # conversations in flight with this target
        self.pending: list[Waiting] = []
        self.arrived = asyncio.Event()
        self.last = 0.0
        self.round = log.rounds.get(target, 0)
        self.outcomes: dict[str, asyncio.Task[BatchOutcome]] = {}
        self.states: dict[str, BatchStatus] = {}  # the batches out, as last polled
        self.rounds: asyncio.Task[None] | None = None
        self.on_state: Callable[[], None] = lambda: None  # a batch was polled (progress)
        self.current: list[str] = []  # the batches of the round out
        self.round_began = time.monotonic()

    def hold(self, n: int) -> None:
        """A conversation of the target starts (1) or ends (-1)."""
        self.holders += n
        self.arrived.set()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A conversation of the target in flight: a round waits for all of them."""
        self.hold(1)
        try:
            yield
        finally:
            self.hold(-1)

    async def send(self, request: Request) -> Reply:
        key, began = SENDING.get(), time.perf_counter()
        ticket = self.log.tickets.get(key)
        if ticket is None:
            waiting = Waiting(key, request)
            self.pending.append(waiting)
            self.last = time.monotonic()
            self.arrived.set()
            if self.rounds is None:
                self.rounds = asyncio.create_task(self._rounds())
            ticket = await waiting.ticket
        outcome = await asyncio.shield(self._outcome(ticket[0]))
        answer = outcome.pop(ticket[1], None)  # taken once: a batch's answers are let go
        if answer is None:
            state = self.states[ticket[0]].state if ticket[0] in self.states else "?"
            raise retried(f"batch {ticket[0]} ({state}) has no result for this request")
        if isinstance(answer, ApiError):
            raise answer
        answer.latency_ms = answer.ttft_ms = (time.perf_counter() - began) * 1000  # its rounds
        return checked(answer)

    def batch_of(self, key: str) -> str | None:
        """The batch that answered this key, or None."""
        ticket = self.log.tickets.get(key)
        return ticket[0] if ticket else None

    async def close(self) -> None:
        if self.rounds is not None:
            self.rounds.cancel()

    def describe(self) -> str:
        """The round out: its batches' states and line counts, and the time it has waited."""
        if not self.current:
            return f"round {self.round}" if self.round else "gathering"
        states = [self.states[b] for b in self.current if b in self.states]
        shown = ", ".join(f"{s.state} {_counts(s.counts)}".strip() for s in states)
        waited = time.monotonic() - self.round_began
        return f"round {self.round}: {len(self.current)} batch(es) {shown} {waited:.0f}s"

    def _ready(self) -> bool:
        return len(self.pending) >= self.holders or time.monotonic() - self.last >= self.settle_s

    async def _rounds(self) -> None:
        """Round after round: gather, send as batches, wait until every batch ended."""
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            while self.pending and not self._ready():
                await asyncio.sleep(TICK_S)
            if not self.pending:
                continue
            lines, self.pending = self.pending, []
            self.round += 1
            self.round_began = time.monotonic()
            made = await asyncio.gather(*(self._create(c) for c in self._chunks(lines)))
            self.current = [b for b in made if b]
            await asyncio.gather(*(self._outcome(b) for b in made if b), return_exceptions=True)

    def _chunks(self, lines: list[Waiting]) -> list[list[Waiting]]:
        """The round's lines split at the provider's limits of lines and bytes."""
        chunks: list[list[Waiting]] = [[]]
        size = 0
        for w in lines:
            n = len(w.request.body) + 200
            if len(chunks[-1]) >= self.wire.max_lines or size + n > self.wire.max_bytes * 0.95:
                chunks.append([])
                size = 0
            chunks[-1].append(w)
            size += n
        return [c for c in chunks if c]

    async def _create(self, lines: list[Waiting]) -> str | None:
        """One batch of these lines; its id is written to the batch file before anyone
        waits on it. A batch that could not be made fails each of its lines."""
        tagged = [(f"r{i}", w.request) for i, w in enumerate(lines)]
        try:
            batch_id = await self.wire.create(self.session, tagged)
        except ApiError as err:
            for w in lines:
                if not w.ticket.done():
                    w.ticket.set_exception(err)
            return None
        self.log.write({
            "event": "created", "batch_id": batch_id, "target": self.target,
            "round": self.round, "lines": len(lines), "keys": [w.key for w in lines],
            "created_at": utc_now(),
        })  # fmt: skip
        for i, w in enumerate(lines):
            if not w.ticket.done():
                w.ticket.set_result((batch_id, f"r{i}"))
        return batch_id

    def _outcome(self, batch_id: str) -> asyncio.Task[BatchOutcome]:
        """The batch's answers, polled for once however many lines wait on it."""
        if batch_id not in self.outcomes:
            self.outcomes[batch_id] = asyncio.create_task(self._wait(batch_id))
        return self.outcomes[batch_id]

    async def _wait(self, batch_id: str) -> BatchOutcome:
        """Poll until the batch ended, then read its lines; the end is written down."""
        while True:
            try:
                status = await self.wire.poll(self.session, batch_id)
            except ApiError as err:
                if not err.retryable:
                    return {}
                await asyncio.sleep(self.poll_s)
                continue
            self.states[batch_id] = status
            if batch_id in self.log.batches:  # run.json shows it as last polled
                self.log.batches[batch_id]["state"] = status.state
            self.on_state()
            if status.ended:
                break
            await asyncio.sleep(self.poll_s)
        try:
            outcome = await self.wire.results(self.session, status)
        except ApiError:
            outcome = {}
        for answer in outcome.values():
            if isinstance(answer, ApiError) and answer.retryable:
                answer.retry_after = 0.0  # the next round is the wait
            elif isinstance(answer, Reply):
                answer.batch_id = batch_id
        self.log.write({"event": "ended", "batch_id": batch_id, "target": self.target,
                        "state": status.state, "counts": status.counts,
                        "ended_at": utc_now()})  # fmt: skip
        return outcome

    async def cancel_open(self) -> list[str]:
        """Cancel this target's batches still out (--cancel-batches): their lines are
        forgotten and sent again in new rounds."""
        ids = [b for b, t in self.log.open.items() if t == self.target]
        for batch_id in ids:
            try:
                await self.wire.cancel(self.session, batch_id)
            except ApiError as err:
                if err.status != 404:
                    raise
            self.log.write({"event": "dropped", "batch_id": batch_id, "target": self.target,
                            "ended_at": utc_now()})  # fmt: skip
        return ids


def _counts(counts: dict[str, Any]) -> str:
    """A batch's line counts as the provider names them, those not zero."""
    return " ".join(f"{k}={v}" for k, v in counts.items() if v not in (0, "0", None))


def retried(message: str) -> ApiError:
    """A line with no answer: retried in the next round (no wait before it)."""
    return ApiError(Kind.HTTP, message, retryable=True, retry_after=0.0)
