"""What a Ray worker of `run --executor ray` is sent and does (runner/engine/cluster.py is
the driver): its part of the plan, without keys (each target's key is read from the
worker's own environment), with its share of every limit and the vars files it may lack;
the actor that plays it with the same asyncio engine as a local run and streams each
finished record back, in batches.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.client.cache import Cache
from runner.encoding import to_json
from runner.engine import signals
from runner.engine.pool import RunPlan, event_loop_runner, execute
from runner.errors import InputError
from runner.spec.scenarios import Scenario
from runner.spec.targets import Target, with_key

BATCH = 1000  # records a worker sends at most in one item of its stream
QUEUED = 20_000  # records a worker holds unsent before its engine waits for the driver
TABLE_MB = 64  # a vars file up to this size travels with the work (a larger one by its path)
END, FAILED = "end", "failed"  # the last item of a worker's stream: its run ended, or broke


@dataclass
class Part:
    """What worker INDEX of PARTS is sent: the plan without keys, its share of the limits."""

    index: int
    parts: int
    scenarios: list[Scenario]
    targets: list[Target]
    repeat: int | None
    shard: tuple[int, int] | None
    judges: list[Target]
    default_judge: str | None
    simulators: list[Target]  # the targets that play the user (simulate.user)
    cache: tuple[str, bool] | None  # the reply cache's folder (absolute) and --cache-only
    stream: bool
    concurrency: int
    run_id: str | None
    tables: dict[str, tuple[Any, int]]  # vars file (absolute path) -> its bytes' ref, size

    def plan(self, here: Path | None = None) -> RunPlan:
        """The part's plan, each target's key read from this process's environment; a vars
        file this node lacks is written below HERE from the copy the part carries."""
        need = self.cache is None or not self.cache[1]
        scenarios = [self._table_here(s, here) for s in self.scenarios]
        plan = RunPlan(scenarios, [with_key(t, need) for t in self.targets], self.repeat,
                       self.shard)  # fmt: skip
        plan.part = (self.index, self.parts)
        plan.judges = ([with_key(t, need) for t in self.judges], self.default_judge)
        plan.simulators = [with_key(t, need) for t in self.simulators]
        plan.cache = Cache(Path(self.cache[0]), self.cache[1]) if self.cache else None
        return plan

    def _table_here(self, scenario: Scenario, here: Path | None) -> Scenario:
        """The scenario with its vars file as this node reads it: the same path when a file
        of the same size is there (a shared or copied folder), else the copy the part
        carries, written below HERE (a file larger than TABLE_MB travels not: InputError)."""
        table = scenario.vars_file
        if table is None or here is None:
            return scenario
        path = table.path
        ref, size = self.tables.get(path, (None, -1))
        if os.path.isfile(path) and (ref is None or os.path.getsize(path) == size):
            return scenario
        if ref is None:
            raise InputError(
                f"{scenario.file}: vars_file {path} is not on this Ray node and is larger than "
                f"{TABLE_MB} MB, too large to send with the work; put it at that path on "
                "every node"
            )
        import ray

        copy = here / f"{len(list(here.iterdir()))}-{Path(path).name}"
        copy.write_bytes(ray.get(ref))
        return replace(scenario, vars_file=replace(table, path=str(copy)))


def tables(ray: Any, scenarios: list[Scenario]) -> dict[str, tuple[Any, int]]:
    """The vars files a part carries (each up to TABLE_MB, by absolute path), put in Ray's
    object store once for every worker."""
    carried = {}
    for path in {os.path.abspath(s.vars_file.path) for s in scenarios if s.vars_file}:
        size = os.path.getsize(path)
        if size <= TABLE_MB * 2**20:
            with open(path, "rb") as fh:
                carried[path] = (ray.put(fh.read()), size)
    return carried


def _absolute(scenario: Scenario) -> Scenario:
    """The scenario with its vars file's path absolute (a worker's folder is not ours)."""
    table = scenario.vars_file
    if table is None:
        return scenario
    return replace(scenario, vars_file=replace(table, path=os.path.abspath(table.path)))


def share(total: int, index: int, parts: int) -> int:
    """Part INDEX's share of TOTAL (the shares add up to it)."""
    return total // parts + (1 if index - 1 < total % parts else 0)


def _target_share(target: Target, index: int, parts: int) -> Target:
    """The target as worker INDEX of PARTS runs it: its share of the limits, no key."""
    return replace(
        target,
        key=None,
        concurrency=share(target.concurrency, index, parts),
        rpm=target.rpm / parts if target.rpm else None,
        tpm=target.tpm / parts if target.tpm else None,
    )


def parts_of(plan: RunPlan, parts: int, stream: bool, concurrency: int, run_id: str | None,
             carried: dict[str, tuple[Any, int]]) -> list[Part]:  # fmt: skip
    """The plan split for PARTS workers; InputError for a limit too small to split."""
    small = [
        f"target '{t.name}' has concurrency {t.concurrency}, fewer than the {parts} workers"
        for t in {t.name: t for t in [*plan.targets, *plan.judges[0], *plan.simulators]}.values()
        if t.concurrency < parts
    ]
    if concurrency < parts:
        small.append(f"-c {concurrency} is fewer than the {parts} workers")
    if small:
        raise InputError([*small, "(each worker gets its share of every limit: use fewer "
                                  "--workers or raise the limit)"])  # fmt: skip
    cache = (str(plan.cache.folder.resolve()), plan.cache.only) if plan.cache else None
    return [
        Part(
            index=i,
            parts=parts,
            scenarios=[_absolute(s) for s in plan.scenarios],
            targets=[_target_share(t, i, parts) for t in plan.targets],
            repeat=plan.repeat,
            shard=plan.shard,
            judges=[_target_share(t, i, parts) for t in plan.judges[0]],
            default_judge=plan.judges[1],
            simulators=[_target_share(t, i, parts) for t in plan.simulators],
            cache=cache,
            stream=stream,
            concurrency=share(concurrency, i, parts),
            run_id=run_id,
            tables=carried,
        )
        for i in range(1, parts + 1)
    ]


class _Sent:
    """A worker's record writer: each record (checked to encode, as the run file would)
    is queued for the driver, tagged with KIND."""

    def __init__(self, records: queue.Queue[tuple[str, Any]], kind: str, run_id: str | None):
        self.records, self.kind, self.run_id = records, kind, run_id

    def write(self, record: dict[str, Any]) -> None:
        if self.run_id is not None:
            record["run_id"] = self.run_id
        to_json(record)  # a record that cannot be written fails here, as in a local run
        self.records.put((self.kind, record))

    def close(self) -> None:
        pass


class PartWorker:
    """A Ray actor that plays one part (made remote by `_started`); `stop` comes in on a
    second thread of the actor while `run` streams."""

    def __init__(self) -> None:
        self.stopper = signals.Stopper()

    def check(self, part: Part) -> None:
        """Returns once every key and vars file of the part is found here (else InputError)."""
        with tempfile.TemporaryDirectory(prefix="dialogue-runner-") as here:
            part.plan(Path(here))

    def stop(self) -> None:
        self.stopper.stop()

    def run(self, part: Part, skip: set[str]) -> Iterator[list[tuple[str, Any]]]:
        """Play the part (but SKIP); yield the records as they finish, in batches."""
        records: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=QUEUED)
        here = Path(tempfile.mkdtemp(prefix="dialogue-runner-"))
        plan = part.plan(here)

        def play() -> None:
            try:
                outcome = event_loop_runner()(execute(
                    plan, Path("."), concurrency=part.concurrency, stream=part.stream,
                    progress_mode="none", skip=skip, judges=plan.judges,
                    writers=(_Sent(records, "t", part.run_id), _Sent(records, "u", part.run_id)),
                    stopper=self.stopper,
                ))  # fmt: skip
                records.put((END, outcome.interrupted))
            except BaseException as exc:  # noqa: BLE001 - the driver reports it
                records.put((FAILED, f"{type(exc).__name__}: {exc}"))

        threading.Thread(target=play, daemon=True).start()
        while True:
            batch = [records.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < BATCH and batch[-1][0] not in (END, FAILED):
                    batch.append(records.get_nowait())
            if batch[-1][0] in (END, FAILED):  # the engine is done with the vars files
                shutil.rmtree(here, ignore_errors=True)
                yield batch
                return
            yield batch
