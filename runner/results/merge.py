"""`merge RUN_DIR... -o RUN_DIR`: shard runs (or any runs) joined into one run folder.

Transcripts: the newest record of each conversation (later in one file, else the later
`ended_at` across runs), streamed in two passes that hold, per conversation, its id,
end time and place. Usage: every attempt of every run (superseded ones were sent and
counted too). The manifest combines the runs' files, targets, counts and totals.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.cost import total
from runner.errors import InputError
from runner.outfile import is_stdout
from runner.results.reader import RunRecords
from runner.results.records import manifest_record
from runner.results.stats import Summary
from runner.results.store import (
    MANIFEST,
    TRANSCRIPTS,
    USAGE,
    read_manifest,
    scan_jsonl,
    write_jsonl,
    write_manifest,
)

Place = tuple[str, int, int]  # (ended_at, index of the run, byte offset) of a record
# what decides a run's plan (the rest of an invocation, e.g. -c or --timeout, does not)
PLAN_KEYS = ("paths", "targets", "models_file", "base_url", "repeat", "filters")


def merge(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    """Write the merged run into OUT (which must not hold a run); its manifest."""
    manifests = [read_manifest(d) for d in run_dirs]
    _check_out(run_dirs, out)
    runs = [RunRecords(d, m) for d, m in zip(run_dirs, manifests, strict=True)]
    newest = _newest(runs)
    summary = Summary()
    write_jsonl(out / TRANSCRIPTS, _chosen(runs, newest, summary))
    write_jsonl(out / USAGE, _attempts(runs, summary))  # tokens and cost: every attempt
    manifest = _manifest(out, run_dirs, manifests, summary)
    write_manifest(out, manifest)
    return manifest


def _check_out(run_dirs: list[Path], out: Path) -> None:
    if is_stdout(out):
        raise InputError("-o -: merge writes a run folder, not one stream; name a new folder")
    if (out / MANIFEST).exists():
        raise InputError(f"-o {out} already holds a run; merge into a new folder")
    if any(d.resolve() == out.resolve() for d in run_dirs):
        raise InputError(f"-o {out} is one of the runs being merged")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the run folder {out}: {exc}") from None


def _newest(runs: list[RunRecords]) -> dict[str, Place]:
    """Conversation id -> where its newest record is: later in its file wins, and across
    runs the later end time (ISO 8601 UTC strings compare in time order)."""
    newest: dict[str, Place] = {}
    for index, run in enumerate(runs):
        for offset, record in run.lines():
            cid, ended = record["conversation_id"], record.get("ended_at") or ""
            held = newest.get(cid)
            if held is None or held[1] == index or ended >= held[0]:
                newest[cid] = (ended, index, offset)
    return newest


def _chosen(
    runs: list[RunRecords], newest: dict[str, Place], summary: Summary
) -> Iterator[dict[str, Any]]:
    for index, run in enumerate(runs):  # every line read again, none checked again: only
        for offset, record in scan_jsonl(run.run_dir / TRANSCRIPTS):  # a checked one is newest
            place = newest.get(record.get("conversation_id"))  # type: ignore[arg-type]
            if place is not None and place[1:] == (index, offset):
                summary.add(record)
                yield record


def _attempts(runs: list[RunRecords], summary: Summary) -> Iterator[dict[str, Any]]:
    for run in runs:
        for record in run.attempts():
            summary.add_attempt(record)
            yield record


def _manifest(
    out: Path,
    run_dirs: list[Path],
    manifests: list[dict[str, Any]],
    summary: Summary,
) -> dict[str, Any]:
    files: dict[str, str] = {}
    targets: dict[str, dict[str, Any]] = {}
    for m in sorted(manifests, key=lambda m: m.get("started_at") or ""):
        files.update(m.get("files", {}))  # a file in several versions: the latest run's
        for target in m.get("targets", []):
            targets.setdefault(target["name"], target)
    manifest = manifest_record(out.name, {}, files, list(targets.values()))
    planned = _planned(manifests)
    prices = {name: t.get("price") for name, t in targets.items()}
    rows = summary.rows(prices)
    manifest.update(
        invocation=_invocation(manifests),
        cwd=manifests[0].get("cwd", manifest["cwd"]),  # the runs' relative paths start there
        started_at=min(m.get("started_at") or "" for m in manifests),
        ended_at=max(m.get("ended_at") or "" for m in manifests) or None,
        status="finished" if all(m.get("status") == "finished" for m in manifests) else
        "interrupted",
        counts=summary.counts(planned, resumed=0),
        usage=summary.tokens(),
        cost_usd=total([r["cost_usd"] for r in rows]),
        cost_by_target={r["target"]: r["cost_usd"] for r in rows},
        merged_from=[_source(d, m) for d, m in zip(run_dirs, manifests, strict=True)],
    )  # fmt: skip
    return manifest


def _plan(manifest: dict[str, Any], shard: bool = True) -> str:
    """What decides the run's plan, as a key; a run without an invocation is its own."""
    inv = manifest.get("invocation")
    if not inv:
        return f"run {manifest.get('run_id')}"
    keys = PLAN_KEYS + (("shard",) if shard else ())
    return json.dumps({k: inv.get(k) for k in keys}, sort_keys=True)


def _invocation(manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first run's invocation without its shard, when all runs have the same plan but
    for the shard (the merged run can then be resumed); else None."""
    if len({_plan(m, shard=False) for m in manifests}) > 1 or not manifests[0].get("invocation"):
        return None
    return {**manifests[0]["invocation"], "shard": None}


def _planned(manifests: list[dict[str, Any]]) -> int:
    """Planned conversations: summed over the runs, a run of the same plan (and shard) as
    an earlier one counted once."""
    seen: dict[str, int] = {}
    for m in manifests:
        key = _plan(m)
        seen[key] = max(seen.get(key, 0), (m.get("counts") or {}).get("planned", 0))
    return sum(seen.values())


def _source(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir.resolve()),
        "run_id": manifest.get("run_id"),
        "shard": (manifest.get("invocation") or {}).get("shard"),
        "status": manifest.get("status"),
        "counts": manifest.get("counts"),
    }
