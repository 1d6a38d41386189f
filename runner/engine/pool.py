"""The asyncio pool: lazy scheduling, one client per target, records, progress, interrupts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from runner.client.batch import BatchLog
from runner.client.cache import Cache
from runner.client.client import TargetClient
from runner.encoding import strict
from runner.engine import signals
from runner.engine.conversation import failed_record, run_conversation
from runner.engine.judge import Judges
from runner.engine.progress import Progress
from runner.errors import Kind, WriteError, internal
from runner.results.stats import Summary
from runner.results.store import TRANSCRIPTS, USAGE, JsonlWriter
from runner.spec.plan import Conversation, Plan
from runner.spec.targets import Target, mock_base_url

GRACE_S = 5.0  # after Ctrl-C, conversations in flight get this long to finish


class Writer(Protocol):
    """Where records go: a run file (JsonlWriter), or a Ray worker's stream to its driver."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class RunPlan(Plan):
    """A plan as the engine runs it: with the reply cache its clients share."""

    cache: Cache | None = None  # replies replayed and stored (runner/client/cache.py); None: off


@dataclass
class Outcome:
    summary: Summary
    interrupted: bool = False
    skipped: int = 0
    over_budget: bool = False  # --max-cost: the estimate passed the cap, the rest not started
    write_error: WriteError | None = None  # the first failed write: the run stopped there
    batches: BatchLog | None = None  # batch mode: the run's batches (run.json lists them)
    executor: dict[str, Any] | None = None  # --executor ray: workers, start-up s, driver RSS


@dataclass
class Budget:
    """--max-cost: no conversation starts once the run's estimated cost has passed `max_usd`."""

    max_usd: float
    prices: dict[str, dict[str, float] | None]

    def passed(self, summary: Summary) -> bool:
        return summary.spent(self.prices) > self.max_usd


def raise_fd_limit(wanted: int) -> None:
    """Allow a socket per conversation in flight (plus slack), up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        print(
            f"warning: the open-file limit is {hard}, fewer than the {wanted} this concurrency "
            "may need; lower -c or raise the hard limit (ulimit -Hn)",
            file=sys.stderr,
        )


def event_loop_runner() -> Any:
    """uvloop.run when the optional uvloop is installed (less CPU per request), else asyncio.run."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


async def execute(
    plan: RunPlan,
    run_dir: Path,
    *,
    concurrency: int,
    stream: bool,
    progress_mode: str,
    skip: set[str] | None = None,
    summary: Summary | None = None,
    judges: tuple[list[Target], str | None] = ([], None),
    budget: Budget | None = None,
    run_id: str | None = None,
    cancel_batches: bool = False,
    on_batches: Callable[[list[dict[str, Any]]], None] | None = None,
    writers: tuple[Writer, Writer] | None = None,
    stopper: signals.Stopper | None = None,
) -> Outcome:
    """Run every planned conversation not in `skip`; records go to run_dir as they finish.

    judges: the graders of judge checks (beside the planned targets) and the default; run_id:
    stamped on every record; writers: where transcripts and usage go instead of run_dir's
    files (a Ray worker's stream); stopper: a stop from another thread, as a first Ctrl-C."""
    skip = skip or set()
    outcome = Outcome(summary or Summary(), skipped=len(skip))
    in_process_mock = any(t.mock is not None for t in plan.targets)  # its sockets count too
    raise_fd_limit(concurrency * (2 if in_process_mock else 1) + 256)
    transcripts, usage = writers or _files(run_dir, run_id)
    todo = (c for c in plan if c.id not in skip)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(transcripts.close)
        stack.callback(usage.close)
        targets = [await _reachable(t, stack) for t in _all_targets(plan, judges[0])]
        sink = _sink(usage, outcome.summary)
        if plan.cache is not None:
            stack.callback(plan.cache.close)
        batches = _batch_log(targets, run_dir, run_id, stack, outcome, on_batches)
        clients = {t.name: TargetClient(t, stream, sink, plan.cache, batches=batches)
                   for t in targets}  # fmt: skip
        await _start(clients, stack, cancel_batches)
        began, tokens = time.monotonic(), outcome.summary.tokens
        before = tokens()["total_tokens"]  # a resume's earlier runs: not this run's rate
        progress = Progress(
            len(plan) - len(skip),
            progress_mode,
            lambda: _stats(clients, tokens()["total_tokens"] - before, began),
        )
        stack.callback(progress.close)
        _show_batches(clients, progress)
        with _quiet_gc():
            outcome.interrupted = await _pool(
                todo if budget is None else _within(todo, budget, outcome),
                Judges(clients, judges[1]),
                concurrency,
                transcripts,
                outcome,
                progress,
                stopper,
            )
    return outcome


def _files(run_dir: Path, run_id: str | None) -> tuple[Writer, Writer]:
    """The run folder's record files: transcripts, usage."""
    return JsonlWriter(run_dir / TRANSCRIPTS, run_id), JsonlWriter(run_dir / USAGE, run_id)


def _all_targets(plan: Plan, judges: list[Target]) -> list[Target]:
    """The planned targets, then the helpers beside them: judges, simulated users."""
    planned = {t.name for t in plan.targets}
    helpers = {t.name: t for t in [*judges, *plan.simulators] if t.name not in planned}
    return [*plan.targets, *helpers.values()]


def _show_batches(clients: dict[str, TargetClient], progress: Progress) -> None:
    """A polled batch may show a new state: the progress line says it."""
    for client in clients.values():
        if client.batcher is not None:
            client.batcher.on_state = progress.tick


async def _start(
    clients: dict[str, TargetClient], stack: contextlib.AsyncExitStack, cancel_batches: bool
) -> None:
    """Start every client (closed when the run ends); --cancel-batches cancels the batches
    a batch target left out."""
    for client in clients.values():
        await client.start()
        stack.push_async_callback(client.close)
        if client.batcher is not None and cancel_batches:
            await client.batcher.cancel_open()


def _batch_log(
    targets: list[Target],
    run_dir: Path,
    run_id: str | None,
    stack: contextlib.AsyncExitStack,
    outcome: Outcome,
    on_batches: Callable[[list[dict[str, Any]]], None] | None,
) -> BatchLog | None:
    """The run's batch file, read again and appended to, when a target is in batch mode;
    ON_BATCHES is told the run's batches whenever one is created or ends."""
    if not any(t.batch for t in targets):
        return None
    outcome.batches = BatchLog(run_dir, run_id, on_batches)
    stack.callback(outcome.batches.close)
    return outcome.batches


def _sink(usage: Writer, summary: Summary) -> Callable[[dict[str, Any]], None]:
    """Each usage record is written, then counted (tokens, requests, the running cost)."""

    def write(record: dict[str, Any]) -> None:
        usage.write(record)
        summary.add_attempt(record)

    return write


def _within(
    todo: Iterator[Conversation], budget: Budget, outcome: Outcome
) -> Iterator[Conversation]:
    """The conversations to start, until the budget is passed (checked before each one)."""
    for conv in todo:
        if budget.passed(outcome.summary):
            outcome.over_budget = True
            return
        yield conv


async def _reachable(target: Target, stack: contextlib.AsyncExitStack) -> Target:
    """The target as the client sees it: a built-in mock's server is started first."""
    if target.mock is None:
        return target
    from runner.mock import MockOptions, start_mock  # only mock targets need it

    server = await start_mock(MockOptions(**target.mock))
    stack.push_async_callback(server.close)
    return replace(target, base_url=mock_base_url(target.provider, server.base_url))


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """During the pool: the objects made so far live for the whole run, so the collector
    leaves them alone, and young objects are collected less often (the hot path makes many
    short-lived dicts, few cycles). Both are undone afterwards."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


async def _pool(
    todo: Iterator[Conversation],
    judges: Judges,
    concurrency: int,
    transcripts: Writer,
    outcome: Outcome,
    progress: Progress,
    stopper: signals.Stopper | None = None,
) -> bool:
    """Workers pull conversations from the shared lazy iterator; returns True if interrupted."""
    stopping = asyncio.Event()

    def stop(exc: WriteError) -> None:  # nothing more can be kept: spend no more requests
        outcome.write_error = outcome.write_error or exc
        stopping.set()
        _cancel(workers)

    async def worker() -> None:
        for conv in todo:  # next() never awaits, so workers never share a conversation
            if stopping.is_set():
                return
            client = judges.clients[conv.target.name]
            try:  # played in this frame, not a coroutine of its own: less memory in flight
                with client.holding():
                    record = await run_conversation(conv, client, judges)
            except WriteError as exc:
                stop(exc)
                return
            except Exception as exc:  # a bug fails this conversation, not the run
                record = failed_record(conv, Kind.INTERNAL, internal(exc).message)
            try:
                _write(transcripts, conv, record)
            except WriteError as exc:
                stop(exc)
                return
            outcome.summary.add(record)
            progress.finished(record["status"] == "ok")

    workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    with _interrupts(stopping, workers, stopper):
        await asyncio.gather(*workers, return_exceptions=True)
    for task in workers:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return stopping.is_set() and outcome.write_error is None


def _write(transcripts: Writer, conv: Conversation, record: dict[str, Any]) -> None:
    """Write a transcript record; one that cannot be encoded (a bug) is replaced by a
    failed record saying so, made strict JSON (what it carries of the scenario could be
    the cause), so that no single record can stop the run."""
    try:
        transcripts.write(record)
    except WriteError:
        raise
    except Exception as exc:
        message = f"the record could not be written: {type(exc).__name__}: {exc}"
        record.clear()
        record.update(strict(failed_record(conv, Kind.INTERNAL, message)))
        transcripts.write(record)


def _cancel(workers: list[asyncio.Task[None]]) -> None:
    """Cancel every worker but the caller (it returns by itself)."""
    current = asyncio.current_task()
    for task in workers:
        if task is not current:
            task.cancel()


@contextlib.contextmanager
def _interrupts(
    stopping: asyncio.Event, workers: list[asyncio.Task[None]], stopper: signals.Stopper | None
) -> Iterator[None]:
    """First SIGINT/SIGTERM (or STOPPER's stop): start no more, give those in flight
    GRACE_S; a second: cancel now."""
    loop = asyncio.get_running_loop()

    def cancel_all() -> None:
        _cancel(workers)

    def on_signal() -> None:
        if stopping.is_set():
            cancel_all()
            return
        stopping.set()
        loop.call_later(GRACE_S, cancel_all)

    if signals.pending():  # a signal during start-up: stop before anything is sent
        on_signal()
    if stopper is not None:
        stopper.arm(loop, on_signal)
    saved = signals.handlers()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        signals.restore(saved)  # the start-up handlers again, while the run is written up


def _stats(clients: dict[str, TargetClient], tokens: int, began: float) -> str:
    """retries, tokens/s (TOKENS: those spent since BEGAN), and any target whose in-flight
    limit shrank after 429s."""
    retries = sum(c.retries for c in clients.values())
    rate = tokens / max(1e-3, time.monotonic() - began)
    limits = " ".join(
        f"{name}:{int(c.limit.limit)}"
        for name, c in clients.items()
        if c.limit.limit < c.limit.maximum
    )
    batches = " ".join(
        f"{name} {c.batcher.describe()}" for name, c in clients.items() if c.batcher is not None
    )
    shown = f"retries={retries} tok/s={rate:.0f}" + (f" limit {limits}" if limits else "")
    return shown + (f" | {batches}" if batches else "")
