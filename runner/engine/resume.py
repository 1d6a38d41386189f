"""`run --resume`: the run continued under its lock, and what it may change (the options
given with it, checked against the run).

A resume runs the conversations of the run as it was started. Options that only say how
to run them (`-c`, `--timeout`, `--max-retries`, `--max-wait`, `--idle-timeout`,
`--max-cost`, `--stream`) replace the recorded ones, and the manifest records them; options
that say what the run is (scenarios, targets, models file, base URL, `--repeat`, `-k`,
`--shard`, `--judge`) are refused unless they equal the run's, and `-o` / `--run-id`
(a new run's folder) are refused outright.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.engine.dryrun import dry_run
from runner.engine.pool import RunPlan
from runner.engine.run import Finished, Invocation, file_hashes, load, play
from runner.errors import InputError
from runner.hashset import HashSet, hash64
from runner.results.reader import RunRecords
from runner.results.stats import Summary, add_attempts
from runner.results.store import RunLock, read_manifest
from runner.spec.plan import Plan, parse_shard, select
from runner.spec.scenarios import load_paths
from runner.spec.targets import Target

# option name (as click names it) -> the Invocation field it sets, for options that may change
MAY_CHANGE = {
    "concurrency": "concurrency",
    "stream": "stream",
    "timeout": "timeout_s",
    "max_retries": "max_retries",
    "max_wait": "max_wait_s",
    "idle_timeout": "idle_timeout_s",
    "max_cost": "max_cost",
    "cache": "cache",
    "cache_only": "cache_only",
    "cancel_batches": "cancel_batches",
    "executor": "executor",
    "workers": "workers",
    "ray_address": "ray_address",
}
NEW_RUN = ("output_dir", "run_id")  # they name a new run's folder


def _paths(value: Any) -> list[str]:
    return sorted(os.path.realpath(p) for p in value or ())


def _names(value: Any) -> list[str]:
    return sorted(value or ())


def _file(value: Any) -> str | None:
    return os.path.realpath(value) if value else None


def _same(value: Any) -> Any:
    return value


# options that decide what the run is -> how two values are compared
FIXED: dict[str, Callable[[Any], Any]] = {
    "paths": _paths,
    "targets": _names,
    "models_file": _file,
    "base_url": _same,
    "repeat": _same,
    "filters": _names,
    "shard": parse_shard,
    "judge": _same,
    "batch": _same,
}


@dataclass
class Given:
    """An option of `run` given on the command line: how it is typed, and its value."""

    flag: str  # e.g. "-c", "--timeout", "SCENARIOS"
    value: Any


def changes(recorded: Any, given: dict[str, Given]) -> dict[str, Any]:
    """The Invocation fields a resume changes (those given and different from RECORDED,
    the run's Invocation with its paths as seen from here); InputError naming every option
    given that would change what the run is."""
    refused = [f"{g.flag} (a new run's folder)" for name, g in given.items() if name in NEW_RUN]
    for name, key in FIXED.items():
        if name in given and key(given[name].value) != key(getattr(recorded, name)):
            refused.append(
                f"{given[name].flag} {_shown(given[name].value)} "
                f"(the run has {_shown(getattr(recorded, name))})"
            )
    if refused:
        raise InputError(
            [
                "--resume continues a run as it was started; these options would change "
                "what it runs (leave them out, or start a new run):",
                *refused,
                "(a resume may change -c, --stream, --timeout, --max-retries, --max-wait, "
                "--idle-timeout, --max-cost, the --cache options, --cancel-batches, --executor, "
                "--workers and --ray-address)",
            ]
        )
    wanted = {MAY_CHANGE[n]: g.value for n, g in given.items() if n in MAY_CHANGE}
    return {k: v for k, v in wanted.items() if getattr(recorded, k) != v}


def _shown(value: Any) -> str:
    if value is None or value == [] or value == ():
        return "none"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def recorded_ids(
    records: RunRecords, retry_failed: bool, summary: Summary | None = None
) -> set[str]:
    """The conversations a resume skips: every one recorded (only the ok ones with
    RETRY_FAILED), each added to SUMMARY when given; streamed, only the ids are kept."""
    skip = set()
    for _, record in records.newest():
        if record["status"] == "ok" or not retry_failed:
            skip.add(record["conversation_id"])
            if summary is not None:
                summary.add(record)
    return skip


def resume(
    run_dir: Path,
    retry_failed: bool,
    force: bool,
    progress: bool,
    given: dict[str, Given] | None = None,
) -> Finished:
    """Continue a run, holding its lock: what is recorded is read once no other process
    can add to it. GIVEN: the options of `run` typed with --resume (runner/engine/resume.py says
    which may change; a new max_cost replaces the run's cap, which counts what the run spent
    before)."""
    run_dir = run_dir.resolve()
    read_manifest(run_dir)  # a run folder at all, before a lock file is made in it
    with RunLock(run_dir):
        manifest = read_manifest(run_dir)
        inv, plan, hashes = _prepared(run_dir, manifest, force, given or {}, need_keys=True)
        records, summary = _records(run_dir, manifest, plan), Summary()
        skip = recorded_ids(records, retry_failed, summary)
        add_attempts(summary, records)
        manifest["files"] = hashes
        manifest["resumed"] = manifest.get("resumed", 0) + 1
        finished = play(plan, run_dir, manifest, inv, progress, skip, summary)
        finished.skipped = records.skipped
        return finished


def resume_dry_run(
    run_dir: Path, retry_failed: bool, force: bool, given: dict[str, Given]
) -> Iterator[str]:
    """The first request of every conversation a resume would run; nothing is sent and
    nothing in the run folder is touched."""
    manifest = read_manifest(run_dir)
    inv, plan, _ = _prepared(run_dir, manifest, force, given, need_keys=False)
    skip = recorded_ids(_records(run_dir, dict(manifest), plan), retry_failed)
    yield f"# resume of {run_dir}: {len(plan) - len(skip)} of {len(plan)} conversations to run\n"
    yield from dry_run(plan, inv.stream, skip)


def _prepared(
    run_dir: Path, manifest: dict[str, Any], force: bool, given: dict[str, Given], need_keys: bool
) -> tuple[Invocation, RunPlan, dict[str, str]]:
    """The run's invocation with the options a resume may change applied (and recorded in
    the manifest), its plan, and its files' hashes; InputError for an option that would
    change what the run is, or for changed files without FORCE.

    Paths in the manifest are relative to the folder the run started in (its `cwd`)."""
    if not manifest.get("invocation"):
        raise InputError(f"{run_dir}: merged from runs started differently; it cannot be resumed")
    inv, base = _recorded(manifest)
    changed = changes(inv, given)
    manifest["invocation"].update(changed)
    manifest["invocation"].pop("cancel_batches", None)  # this resume's alone
    inv = replace(inv, **changed)
    scenarios, _, plan = load(inv, need_keys)
    hashes = file_hashes(scenarios, inv.models_file)
    recorded = {base(f): h for f, h in manifest["files"].items()}
    stale = [f for f, h in hashes.items() if recorded.get(f) != h]
    stale += [f for f in recorded if not Path(f).exists()]
    if stale and not force:
        raise InputError(
            f"{run_dir}: these files changed since the run started: {', '.join(stale)}; "
            "resuming would mix two versions (use --force to resume anyway)"
        )
    return inv, plan, hashes


def _records(run_dir: Path, manifest: dict[str, Any], plan: Plan) -> RunRecords:
    """The run's records as a resume of PLAN reads them; the manifest is told which
    recorded conversations the plan no longer holds."""
    manifest["unplanned"] = _unplanned(RunRecords(run_dir, {**manifest, "unplanned": ()}), plan)
    return RunRecords(run_dir, manifest)


def _unplanned(records: RunRecords, plan: Plan) -> list[str]:
    """Conversations recorded that the plan no longer holds (it changed: --force): they
    are not counted, and the manifest lists them so that every reader leaves them out.
    What is held is a 64-bit hash per recorded id; the plan is read only until every one
    was found in it, and the records are read again for the ids only when some was not."""
    recorded, found = HashSet(), HashSet()
    for _, record in records.lines():
        recorded.add(hash64(record["conversation_id"]))
    for conv in plan if recorded.count else ():
        key = hash64(conv.id)
        if key in recorded:
            found.add(key)
            if found.count == recorded.count:
                return []
    ids = (record["conversation_id"] for _, record in records.lines(count=False))
    return sorted({cid for cid in ids if hash64(cid) not in found})


def _recorded(manifest: dict[str, Any]) -> tuple[Invocation, _Rebase]:
    """The run's invocation, its paths as seen from here."""
    inv = Invocation(**manifest["invocation"])
    base = _Rebase(manifest.get("cwd"))
    inv.paths = [base(p) for p in inv.paths]
    inv.models_file = base(inv.models_file) if inv.models_file else None
    inv.cache = base(inv.cache) if inv.cache else None
    return inv, base


def recorded_plan(run_dir: Path) -> Plan:
    """The plan of an existing run, rebuilt from its manifest (scenario files must still be
    readable); targets come from the manifest, so no key is needed."""
    manifest = read_manifest(run_dir)
    inv, _ = _recorded(manifest)
    scenarios = select(load_paths(inv.paths), tuple(inv.filters or ()))
    fields = {f.name for f in dataclasses.fields(Target)}
    targets = [Target(**{k: v for k, v in t.items() if k in fields}) for t in manifest["targets"]]
    return Plan(scenarios, targets, inv.repeat, parse_shard(inv.shard))


class _Rebase:
    """A path of the manifest as seen from here: relative ones are joined to the run's cwd
    (left as they are when the run started here, so records keep the same paths)."""

    def __init__(self, cwd: str | None):
        here = os.getcwd()
        self.base = cwd if cwd and os.path.isdir(cwd) and cwd != here else None

    def __call__(self, path: str) -> str:
        if self.base is None or os.path.isabs(path):
            return path
        return os.path.join(self.base, path)
