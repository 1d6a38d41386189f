"""`run --executor ray`: the plan split into parts by conversation id (runner/spec/plan.py,
part_of), each part played by a Ray actor with the same asyncio engine as a local run
(runner/engine/pool.py), its finished records streamed back to the driver (a Ray generator
method consumed with ray.wait), which alone writes the run folder, one checked append at a
time. Ray is an optional extra (`pip install 'dialogue-runner[ray]'`).

Limits are split honestly, not shared: worker P of M gets its share of each target's
`concurrency`, `rpm` and `tpm` (and of `-c`), and its own adaptive in-flight limit and
pacing, which each learn from the same server's refusals and headers. Keys never travel:
a part names each target's key variable, and the worker reads the key from its own
environment (on a cluster: the environment the node's `ray start` ran in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.engine import signals
from runner.engine.cluster_part import FAILED, Part, PartWorker, parts_of, tables
from runner.engine.pool import GRACE_S, Budget, Outcome, RunPlan
from runner.engine.progress import Progress
from runner.engine.reaper import watched
from runner.errors import InputError, WriteError
from runner.results.stats import Summary
from runner.results.store import TRANSCRIPTS, USAGE, JsonlWriter
from runner.spec.plan import part_of

OBJECT_STORE_MB = 128  # a locally started instance's object store: records pass through it
BACKLOG = 8  # items of a worker's stream not yet read by the driver before the worker waits
CONNECT_S = 10.0  # how long --ray-address may take to answer at all
POLL_S = 0.1  # how often the driver looks at signals while waiting for records
NEEDS_RAY = "--executor ray needs Ray: pip install 'dialogue-runner[ray]'"


@dataclass
class Cluster:
    """Where the workers run: ADDRESS (None: a Ray instance started for this run and shut
    down after it) and how many (None: one per CPU of the cluster)."""

    address: str | None
    workers: int | None


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(NEEDS_RAY) from None
    return ray


@contextlib.contextmanager
def connected(cluster: Cluster) -> Iterator[tuple[Any, Callable[[], None]]]:
    """Ray, connected: to the cluster at its address (left running), to the instance this
    process is already connected to, or to one started for the run and shut down after it
    (its processes watched: runner/engine/reaper.py); and what to call once the workers
    run (the watchdog learns of them)."""
    ray = _ray()
    if ray.is_initialized():
        yield ray, lambda: None
        return
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    if cluster.address:
        _reachable(cluster.address)
        try:
            ray.init(address=cluster.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--ray-address {cluster.address}: {exc}") from None
        try:
            yield ray, lambda: None
        finally:
            ray.shutdown()
        return
    with watched() as dog:
        try:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, cluster.workers or 1),
                object_store_memory=OBJECT_STORE_MB * 2**20,
                include_dashboard=False,
                **quiet,
            )
            dog.watch()
            yield ray, dog.watch
        finally:
            ray.shutdown()


def _reachable(address: str) -> None:
    """InputError unless HOST:PORT (or ray://HOST:PORT) takes a connection within
    CONNECT_S (Ray itself retries an address nobody answers for minutes); `auto` is Ray's."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        raise InputError(
            f"--ray-address {address}: cannot connect ({exc.strerror or exc}); is a Ray "
            "head (`ray start --head`) running there?"
        ) from None


def workers_of(ray: Any, cluster: Cluster) -> int:
    """The number of workers: as asked (at most one per CPU of the cluster), else one per CPU."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if cluster.workers is not None and cluster.workers > cpus:
        raise InputError(f"--workers {cluster.workers}: the Ray cluster has {cpus} CPUs")
    return cluster.workers or cpus


@dataclass
class _Driver:
    """The driver's side: the run files, the counts, progress, and the signals seen."""

    transcripts: JsonlWriter
    usage: JsonlWriter
    outcome: Outcome
    progress: Progress
    budget: Budget | None
    lost: list[str] = dataclasses.field(default_factory=list)

    def take(self, batch: list[tuple[str, Any]], worker: int) -> None:
        summary = self.outcome.summary
        for kind, record in batch:
            if kind == "u":
                self.usage.write(record)
                summary.add_attempt(record)
            elif kind == "t":
                self.transcripts.write(record)
                summary.add(record)
                self.progress.finished(record["status"] == "ok")
            elif kind == FAILED:  # a bug: what the worker did not finish is for --resume
                self.lost.append(f"worker {worker} stopped: {record}")
                self.outcome.interrupted = True

    def over_budget(self) -> bool:
        if self.budget is None or self.outcome.over_budget:
            return False
        self.outcome.over_budget = self.budget.passed(self.outcome.summary)
        return self.outcome.over_budget


def execute_on_ray(
    plan: RunPlan,
    run_dir: Path,
    cluster: Cluster,
    *,
    concurrency: int,
    stream: bool,
    progress_mode: str,
    skip: set[str],
    summary: Summary,
    budget: Budget | None,
    run_id: str | None,
) -> Outcome:
    """As pool.execute, with the parts played by Ray workers and their records written here."""
    outcome, connecting = Outcome(summary, skipped=len(skip)), time.monotonic()
    with connected(cluster) as (ray, watch):
        n = workers_of(ray, cluster)
        parts = parts_of(plan, n, stream, concurrency, run_id, tables(ray, plan.scenarios))
        files = JsonlWriter(run_dir / TRANSCRIPTS), JsonlWriter(run_dir / USAGE)
        with contextlib.ExitStack() as stack:
            for file in files:
                stack.callback(file.close)
            actors = _started(ray, PartWorker, parts)
            watch()
            outcome.executor = {"name": "ray", "workers": n,
                                "startup_s": round(time.monotonic() - connecting, 3)}  # fmt: skip
            progress = Progress(len(plan) - len(skip), progress_mode, _stats(summary, n))
            stack.callback(progress.close)
            driver = _Driver(*files, outcome, progress, budget)
            skips = [ray.put(s) for s in _split(skip, n)]
            streams = {
                a.run.options(_generator_backpressure_num_objects=BACKLOG).remote(p, s): p.index
                for a, p, s in zip(actors, parts, skips, strict=True)
            }
            _collect(ray, streams, actors, driver)
    used = resource.getrusage(resource.RUSAGE_SELF)
    outcome.executor["driver_peak_rss_mb"] = round(used.ru_maxrss / 1024, 1)
    outcome.executor["driver_cpu_s"] = round(used.ru_utime + used.ru_stime, 2)
    for line in driver.lost:
        print(f"warning: {line}; --resume runs what it did not finish", file=sys.stderr)
    return outcome


def _split(skip: set[str], parts: int) -> list[set[str]]:
    """The recorded ids each part skips: only its own travel to its worker."""
    split: list[set[str]] = [set() for _ in range(parts)]
    for cid in skip:
        split[part_of(cid, parts) - 1].add(cid)
    return split


def _started(ray: Any, worker: type, parts: list[Part]) -> list[Any]:
    """An actor per part, each once it found the part's keys in its environment (else
    InputError: nothing was sent)."""
    remote = ray.remote(num_cpus=1, max_concurrency=2)(worker)
    actors = [remote.options(scheduling_strategy="SPREAD").remote() for _ in parts]
    try:
        ray.get([a.check.remote(p) for a, p in zip(actors, parts, strict=True)])
    except ray.exceptions.RayTaskError as exc:
        for actor in actors:
            ray.kill(actor)
        cause = exc.as_instanceof_cause()
        raise InputError(getattr(cause, "problems", None) or str(cause)) from None
    return actors


def _stats(summary: Summary, workers: int) -> Callable[[], str]:
    """The progress line's tail: the workers, and tokens a second since now."""
    began, before = time.monotonic(), summary.tokens()["total_tokens"]

    def stats() -> str:
        rate = (summary.tokens()["total_tokens"] - before) / max(1e-3, time.monotonic() - began)
        return f"ray workers={workers} tok/s={rate:.0f}"

    return stats


def _collect(ray: Any, streams: dict[Any, int], actors: list[Any], driver: _Driver) -> None:
    """Write each worker's records as they come; the first Ctrl-C (or the budget passed)
    stops the workers (those in flight get GRACE_S), a second kills them, as does a
    failed write."""
    stop_at, killed = None, False
    with signals.counted() as received:
        while streams:
            if stop_at is None and (received() or driver.over_budget()):
                driver.outcome.interrupted = not driver.outcome.over_budget
                for actor in actors:
                    actor.stop.remote()
                stop_at = time.monotonic() + GRACE_S + 1.0
            late = stop_at is not None and (received() > 1 or time.monotonic() > stop_at)
            if not killed and (late or driver.outcome.write_error is not None):
                for actor in actors:
                    ray.kill(actor)
                killed = True
            ready, _ = ray.wait(list(streams), num_returns=1, timeout=POLL_S)
            for stream in ready:
                _read(ray, stream, streams, driver, killed)


def _read(ray: Any, stream: Any, streams: dict[Any, int], driver: _Driver, killed: bool
          ) -> None:  # fmt: skip
    """The next batch of one worker's stream, written; the stream is dropped at its end."""
    worker = streams[stream]
    try:
        batch = ray.get(next(stream))
    except StopIteration:
        del streams[stream]
        return
    except ray.exceptions.RayError as exc:
        del streams[stream]
        if not killed:
            driver.lost.append(f"worker {worker} was lost: {type(exc).__name__}")
        driver.outcome.interrupted = True
        return
    try:
        driver.take(batch, worker)
    except WriteError as exc:
        driver.outcome.write_error = driver.outcome.write_error or exc
