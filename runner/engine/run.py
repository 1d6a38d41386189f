"""A run: its folder and manifest, its plan loaded, and what it ends with (its exit code);
a resume of it: runner/engine/resume.py."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shlex
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.client.cache import reply_cache
from runner.client.providers import PROVIDERS
from runner.cost import target_price, total
from runner.engine.judge import judge_names
from runner.engine.pool import Budget, Outcome, RunPlan, event_loop_runner, execute
from runner.engine.progress import mode_for
from runner.errors import Exit, InputError, WriteError
from runner.results.reader import Skipped
from runner.results.records import manifest_record, utc_now
from runner.results.stats import Summary, unstreamed
from runner.results.store import (
    MANIFEST,
    TRANSCRIPTS,
    USAGE,
    RunLock,
    write_manifest,
)
from runner.results.verdicts import Group, shown
from runner.spec.plan import Plan, parse_shard, select
from runner.spec.scenarios import Scenario, load_paths
from runner.spec.simulation import simulator_names
from runner.spec.targets import BUILTIN, Target, load_models_file, resolve


@dataclass
class Invocation:
    """What a run was asked to do: stored in the manifest so that --resume can redo it."""

    paths: list[str]
    targets: list[str]
    models_file: str | None = None
    base_url: str | None = None
    repeat: int | None = None
    filters: list[str] | None = None
    shard: str | None = None
    stream: bool = False
    concurrency: int = 16
    timeout_s: float | None = None
    max_retries: int | None = None
    max_wait_s: float | None = None
    judge: str | None = None  # the default judge target of judge checks
    max_cost: float | None = None  # USD: no conversation starts once the estimate passes it
    idle_timeout_s: float | None = None
    cache: str | None = None  # the reply cache's folder; None: the models file's; "": none
    cache_only: bool = False  # a reply not cached fails (cache_miss); keys are not needed
    batch: bool = False  # --batch: every target whose provider has a Batch API in batch mode
    cancel_batches: bool = False  # --cancel-batches (resume): batches out are cancelled, resent
    executor: str = "local"  # or "ray": the plan split over Ray workers (engine/cluster.py)
    workers: int | None = None  # Ray workers (None: one per CPU of the cluster)
    ray_address: str | None = None  # the Ray cluster to join (None: one started for the run)


def load(inv: Invocation, need_keys: bool = True) -> tuple[list[Scenario], list[Target], RunPlan]:
    """Scenarios, targets (keys from the environment) and plan; InputError on any problem
    (an unset key too, when need_keys)."""
    scenarios = select(load_paths(inv.paths), tuple(inv.filters or ()))
    if not scenarios:
        raise InputError(f"no scenario matches the filter {inv.filters}")
    models, cache = load_models_file(inv.models_file) if inv.models_file else ({}, None)
    named = [n for n in inv.targets if n in models or n in BUILTIN]
    if inv.base_url and named:
        raise InputError(
            f"--base-url applies to PROVIDER:MODEL targets only; {', '.join(named)} "
            "is a built-in or models-file target (set its base_url in the models file)"
        )
    need_keys = need_keys and not inv.cache_only  # nothing is sent: keys are not needed
    resolved = resolve(inv.targets, models, inv.base_url, need_keys)
    targets = [_override(t, inv) for t in resolved]
    if inv.max_cost is not None:
        unpriced = [t.name for t in targets if not t.price]
        if unpriced:
            raise InputError(
                f"--max-cost needs a price for every target; {', '.join(unpriced)} has none "
                "(give it `price: {input_per_mtok: ..., output_per_mtok: ...}` in the models file)"
            )
    plan = RunPlan(scenarios, targets, inv.repeat, parse_shard(inv.shard))
    judges = _helpers(judge_names(scenarios, inv.judge), targets, models, inv, need_keys)
    plan.judges = (judges, inv.judge)
    plan.simulators = _helpers(simulator_names(scenarios), targets, models, inv, need_keys)
    plan.cache = reply_cache(inv.cache, inv.cache_only, cache)
    if inv.executor == "ray":
        _no_batch_on_ray([*targets, *judges, *plan.simulators])
    return scenarios, targets, plan


def _no_batch_on_ray(targets: list[Target]) -> None:
    """InputError for a target in batch mode under --executor ray: a batch round gathers the
    turns of every conversation of its target, and Ray splits them over workers."""
    batched = sorted({t.name for t in targets if t.batch})
    if batched:
        raise InputError(
            f"--executor ray cannot run batch mode (--batch, or `batch: true` of target "
            f"{', '.join(batched)}): a batch round gathers the turns of all of a target's "
            "conversations in one process, and Ray splits them over workers; run it without "
            "--executor ray, or without batch mode"
        )


def _helpers(
    wanted: dict[str, str],
    targets: list[Target],
    models: dict[str, Target],
    inv: Invocation,
    need_keys: bool,
) -> list[Target]:
    """The judge targets, or those that play the user: a planned target by its name, else
    resolved like -m (keys too); a name none is refused with where it is named."""
    named, problems = {t.name: t for t in targets}, []
    for name, where in wanted.items():
        if name not in named:
            try:
                judge = resolve([name], models, inv.base_url, need_keys)[0]
                named[name] = _override(judge, inv)
            except InputError as exc:
                problems += [f"{where}: {p}" for p in exc.problems]
    if problems:
        raise InputError(problems)
    return [named[n] for n in wanted]


def simulator_problems(scenarios: list[Scenario], models: dict[str, Target]) -> list[str]:
    """`validate`: each simulate.user must name a target of the models file, a built-in or
    PROVIDER:MODEL (its key is not needed); file:line problems."""
    problems = []
    for name, where in simulator_names(scenarios).items():
        try:
            resolve([name], models, None, need_keys=False)
        except InputError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
    return problems


def _override(target: Target, inv: Invocation) -> Target:
    """Command-line limits win over the models file."""
    changes: dict[str, Any] = {
        "timeout_s": inv.timeout_s,
        "max_retries": inv.max_retries,
        "max_wait_s": inv.max_wait_s,
        "idle_timeout_s": inv.idle_timeout_s,
    }
    if inv.batch and PROVIDERS[target.provider].capabilities.batch:
        changes["batch"] = True
    return replace(target, **{k: v for k, v in changes.items() if v is not None})


def file_hashes(scenarios: list[Scenario], models_file: str | None) -> dict[str, str]:
    """sha256 of every input file: scenarios, their vars files, the image and python files
    they read, the models file."""
    files = {s.file for s in scenarios} | ({models_file} if models_file else set())
    files |= {s.vars_file.path for s in scenarios if s.vars_file is not None}
    files |= {path for s in scenarios for path in s.read_files()}
    return {f: _sha256(f) for f in sorted(files)}


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:  # streamed: a vars file may be large
        return hashlib.file_digest(fh, "sha256").hexdigest()


def new_run_dir(output_dir: str, run_id: str | None) -> Path:
    run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    run_dir = Path(output_dir) / run_id
    _unused(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the run folder {run_dir}: {exc}") from None
    return run_dir


def _unused(run_dir: Path) -> None:
    """InputError unless run_dir can hold a new run: no manifest, and no records either (a
    folder whose run.json was removed: a new run would be counted with the old records)."""
    if (run_dir / MANIFEST).exists():
        raise InputError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
    held = [name for name in (TRANSCRIPTS, USAGE) if os.path.lexists(run_dir / name)]
    if held:
        raise InputError(
            f"{run_dir} holds records ({', '.join(held)}) but no {MANIFEST}: a new run there "
            "would be counted together with them; choose another --run-id or folder"
        )


@dataclass
class Finished:
    """What a run ends with: its folder, manifest (counts, usage, cost) and per-target rows."""

    run_dir: Path
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    plan: Plan | None = None
    skipped: Skipped = dataclasses.field(default_factory=Skipped)  # lines not the run's
    groups: list[Group] = dataclasses.field(default_factory=list)  # verdicts.shown's

    @property
    def exit_code(self) -> Exit:
        counts = self.manifest["counts"]
        if self.manifest["status"] == "interrupted":
            return Exit.INTERRUPTED
        if counts["failed"] or self.manifest["status"] == "over_budget":
            return Exit.FAILED
        cleared = bool(self.groups) and all(g.clears for g in self.groups)  # min_pass_rate
        return Exit.CHECKS if counts["checks_failed"] and not cleared else Exit.OK

    def line(self) -> str:
        c = self.manifest["counts"]
        text = (
            f"{c['ok']}/{c['planned']} conversations ok, {c['failed']} failed, "
            f"{c['checks_failed']} with failing checks, {c['not_run']} not run -> {self.run_dir}"
        )
        if self.manifest["status"] == "over_budget":
            cap = self.manifest["invocation"]["max_cost"]
            text += (
                f"\n{c['not_run']} conversations were not run: the estimated cost "
                f"${self.manifest['cost_usd']:.4f} passed --max-cost ${cap:g}; run them with "
                f"--resume {self.run_dir} --max-cost <higher>"
            )
        if self.manifest["status"] == "interrupted" and c["not_run"]:
            text += (
                f"\ninterrupted: {c['not_run']} conversations were not run; run them with: "
                f"dialogue-runner run --resume {shlex.quote(str(self.run_dir))}"
            )
        out = [b for b in self.manifest.get("batches", ()) if not b.get("ended_at")]
        if self.manifest["status"] == "interrupted" and out:
            where = shlex.quote(str(self.run_dir))
            text += (
                f"\n{len(out)} batch(es) left running (their answers are kept for you): collect "
                f"them with: dialogue-runner run --resume {where}  (add --cancel-batches to "
                "cancel them and send their requests again)"
            )
        if self.groups:
            passing = sum(g.clears for g in self.groups)
            flaky = sum(g.flaky for g in self.groups)
            text += (
                f"\n{passing}/{len(self.groups)} scenario × target pass their verdict "
                f"(pass rate over samples), {flaky} flaky"
            )
        if executor := self.manifest.get("executor"):
            text += f"\nexecutor: ray, {executor['workers']} workers"
        if self.skipped.count:
            text += f"\n{self.skipped.note()}"
        return text


def start(inv: Invocation, run_dir: Path, progress: bool) -> Finished:
    """A new run from scratch."""
    scenarios, targets, plan = load(inv)
    files = file_hashes(scenarios, inv.models_file)
    manifest = manifest_record(run_dir.name, asdict(inv), files, [t.public() for t in targets])
    manifest["judges"] = [t.public() for t in plan.judges[0]]
    manifest["simulators"] = [t.public() for t in plan.simulators]
    with RunLock(run_dir):
        _unused(run_dir)  # another process may have started it meanwhile
        return play(plan, run_dir, manifest, inv, progress, set(), Summary())


def play(
    plan: RunPlan,
    run_dir: Path,
    manifest: dict[str, Any],
    inv: Invocation,
    progress: bool,
    skip: set[str],
    summary: Summary,
) -> Finished:
    manifest["status"] = "running"
    write_manifest(run_dir, manifest)
    began = time.monotonic()
    prices = {t.name: target_price(t.public()) for t in plan.targets}
    budget = Budget(inv.max_cost, prices) if inv.max_cost is not None else None
    try:
        outcome = _execute(plan, run_dir, inv, mode_for(not progress), skip, summary, budget,
                           manifest)  # fmt: skip
    except WriteError as exc:  # the record files could not even be opened
        outcome = Outcome(summary, skipped=len(skip), write_error=exc)
    unstreamed_targets = unstreamed([(t.name, t.stream) for t in plan.targets], inv.stream)
    rows = outcome.summary.rows(prices, unstreamed_targets)
    _finish(manifest, plan, outcome, rows, time.monotonic() - began)
    if outcome.write_error is not None:
        raise _stopped(run_dir, manifest, outcome.write_error)
    write_manifest(run_dir, manifest)
    groups = _verdicts(plan, outcome.summary)
    return Finished(run_dir, manifest, rows, plan, groups=groups)


def _listed(run_dir: Path, manifest: dict[str, Any], batches: list[dict[str, Any]]) -> None:
    """run.json lists every batch as soon as it exists, and as it ends."""
    manifest["batches"] = batches
    write_manifest(run_dir, manifest)


def _execute(
    plan: RunPlan,
    run_dir: Path,
    inv: Invocation,
    progress_mode: str,
    skip: set[str],
    summary: Summary,
    budget: Budget | None,
    manifest: dict[str, Any],
) -> Outcome:
    """The plan played here (one asyncio loop), or by Ray workers (--executor ray; batch
    mode is refused there by `load`)."""
    run_id = manifest["run_id"]
    if inv.executor == "ray":
        from runner.engine.cluster import Cluster, execute_on_ray  # Ray is an optional extra

        return execute_on_ray(
            plan, run_dir, Cluster(inv.ray_address, inv.workers), concurrency=inv.concurrency,
            stream=inv.stream, progress_mode=progress_mode, skip=skip, summary=summary,
            budget=budget, run_id=run_id,
        )  # fmt: skip
    return event_loop_runner()(
        execute(plan, run_dir, concurrency=inv.concurrency, stream=inv.stream,
                progress_mode=progress_mode, skip=skip, summary=summary, judges=plan.judges,
                budget=budget, run_id=run_id, cancel_batches=inv.cancel_batches,
                on_batches=lambda batches: _listed(run_dir, manifest, batches))
    )  # fmt: skip


def _verdicts(plan: Plan, summary: Summary) -> list[Group]:
    """The run's scenario × target groups when a scenario has samples or a min_pass_rate
    (counted as the records were written; a resumed run's earlier records were counted
    when it started), else none."""
    if not any(plan.samples(s) > 1 or s.min_pass_rate is not None for s in plan.scenarios):
        return []
    return shown(summary.groups.values())


def _stopped(run_dir: Path, manifest: dict[str, Any], error: WriteError) -> WriteError:
    """A run stopped by a failed write: what can be written of the manifest is, and the one
    line to print says what happened and how to go on."""
    try:
        write_manifest(run_dir, manifest)
        kept = f"{manifest['counts']['ok'] + manifest['counts']['failed']} conversations recorded"
    except WriteError:
        kept = f"{MANIFEST} could not be updated either"
    return WriteError(
        f"{error}; the run stopped ({kept}); free space or fix the folder, then --resume {run_dir}"
    )


def _status(outcome: Outcome) -> str:
    """How a run ended, as its manifest says it."""
    if outcome.write_error is not None:
        return "write_failed"
    if outcome.interrupted:
        return "interrupted"
    return "over_budget" if outcome.over_budget else "finished"


def _finish(
    manifest: dict[str, Any],
    plan: Plan,
    outcome: Outcome,
    rows: list[dict[str, Any]],
    seconds: float,
) -> None:
    summary = outcome.summary
    manifest["ended_at"] = utc_now()
    manifest["status"] = _status(outcome)
    manifest["elapsed_s"] = round(seconds, 3)
    manifest["counts"] = summary.counts(len(plan), outcome.skipped)
    manifest["usage"] = summary.tokens()
    manifest["cost_usd"] = total([r["cost_usd"] for r in rows])
    manifest["cost_by_target"] = {r["target"]: r["cost_usd"] for r in rows}
    if outcome.batches is not None:
        manifest["batches"] = list(outcome.batches.batches.values())
    if outcome.executor:
        manifest["executor"] = outcome.executor


def default_models_file(given: str | None) -> str | None:
    if given:
        return given
    return "models.yaml" if os.path.exists("models.yaml") else None
