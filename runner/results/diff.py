"""Two runs compared for CI: conversations matched by id (or by scenario, vars and sample),
what regressed, what was fixed, what went missing or is new, which replies changed, each
target's figures before and after, and the gate's verdict.

A conversation's outcome is `pass` (ok, every check passed), `fail` (ok, a check failed) or
`error` (failed after retries). A regression is a worse outcome than before: pass -> fail,
pass -> error, fail -> error (ok -> failed). A fix is anything -> pass.

The gate fails on a regression, a conversation missing from the new run, a new conversation
that does not pass, and a new run that did not complete (see `gate`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import InputError
from runner.results.reader import RunRecords, latest_transcripts
from runner.results.records import outcome, why
from runner.results.stats import Summary, add_attempts, rows_of
from runner.results.store import read_manifest
from runner.results.verdicts import RateChange, compare

RANK = {"error": 0, "fail": 1, "pass": 2}
MATCH = ("id", "scenario")  # how conversations of the two runs are paired (diff --match)
# the per-target figures whose change the diff shows
DELTA_KEYS = (
    "pass_rate", "input_tokens", "output_tokens", "total_tokens",
    "latency_p50_ms", "latency_p95_ms", "cost_usd",
)  # fmt: skip


@dataclass
class Change:
    """One conversation whose outcome changed."""

    conversation_id: str
    scenario_id: str
    target: str
    before: str
    after: str
    reason: str  # why it is not a pass now (or was not before, for a fix)


@dataclass
class TextChange:
    """A reply that differs between the runs (same conversation, same turn)."""

    conversation_id: str
    turn: int
    before: str
    after: str


@dataclass
class TurnsChange:
    """A conversation with a simulated user whose number of turns changed between the runs."""

    conversation_id: str
    before: int
    after: int


@dataclass
class Diff:
    base: str
    new: str
    regressions: list[Change] = field(default_factory=list)
    fixes: list[Change] = field(default_factory=list)
    other_changes: list[Change] = field(default_factory=list)  # error -> fail
    missing: list[str] = field(default_factory=list)  # in the base run only
    added: list[str] = field(default_factory=list)  # in the new run only
    replies_changed: int = 0  # conversations with at least one different reply
    text_changes: list[TextChange] = field(default_factory=list)  # with text=True
    targets: list[dict[str, Any]] = field(default_factory=list)
    new_failing: list[Change] = field(default_factory=list)  # new, and not a pass
    incomplete: str | None = None  # why the new run did not complete
    match: str = "id"
    pass_rates: list[RateChange] = field(default_factory=list)  # repeated scenarios' rates
    # with a simulated user (in either run): compared by outcome and number of turns, not text
    simulated: int = 0
    turns_changed: list[TurnsChange] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["new_conversations"] = data.pop("added")
        reasons = gate(self)
        data["gate"] = {"passed": not reasons, "reasons": reasons}
        return data


def gate(diff: Diff) -> list[str]:
    """Why the gate fails, one reason per case; empty when it passes."""
    reasons = []
    if diff.regressions:
        reasons.append(_count(len(diff.regressions), "regression"))
    if diff.missing:
        reasons.append(_count(len(diff.missing), "conversation") + " missing from the new run")
    if diff.new_failing:
        reasons.append(_count(len(diff.new_failing), "new conversation") + " not passing")
    if diff.incomplete:
        reasons.append(f"the new run did not complete: {diff.incomplete}")
    return reasons


def _count(n: int, one: str) -> str:
    return f"{n} {one}{'' if n == 1 else 's'}"


def diff_runs(base_dir: Path, new_dir: Path, text: bool = False, match: str = "id") -> Diff:
    """Compare two run folders (records read through runner/results/store.py), conversations paired
    by `match` (MATCH)."""
    base_manifest, new_manifest = read_manifest(base_dir), read_manifest(new_dir)
    check_match(base_dir, base_manifest, new_dir, new_manifest, match)
    base_records, new_records = latest_transcripts(base_dir), latest_transcripts(new_dir)
    base, new = keyed(base_records, match), keyed(new_records, match)
    result = Diff(base_manifest["run_id"], new_manifest["run_id"], match=match)
    for key, before in base.items():
        after = new.get(key)
        if after is None:
            result.missing.append(before["conversation_id"])
            continue
        _classify(result, before, after)
        if "simulation" in before or "simulation" in after:  # its text is not expected to repeat
            _simulated(result, before, after)
            continue
        changes = _text_changes(after["conversation_id"], before, after)
        result.replies_changed += bool(changes)
        if text:
            result.text_changes.extend(changes)
    added = [record for key, record in new.items() if key not in base]
    result.added = [record["conversation_id"] for record in added]
    result.new_failing = [
        _change(r, "new", outcome(r), why(r)) for r in added if outcome(r) != "pass"
    ]
    result.incomplete = incomplete(new_manifest)
    base_rows = held_rows(base_dir, base_manifest, base_records.values())
    new_rows = held_rows(new_dir, new_manifest, new_records.values())
    result.targets = target_deltas(*_paired_rows(base_rows, new_rows, match))
    _by_rate(result, base, new)
    return result


def held_rows(
    run_dir: Path, manifest: dict[str, Any], records: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A run's report rows (report_rows) from its newest records already read, in file
    order: only its attempts are read (usage.jsonl), not the transcripts again."""
    summary = Summary()
    for record in records:
        summary.add(record)
    add_attempts(summary, RunRecords(run_dir, manifest))
    return rows_of(summary, manifest)


def _paired_rows(base: list[Any], new: list[Any], match: str) -> tuple[list[Any], list[Any]]:
    """Both runs' report rows; paired by scenario, the one target of each is one row."""
    if match == "scenario" and len(base) == len(new) == 1 and base[0]["target"] != new[0]["target"]:
        base[0]["target"] = new[0]["target"] = f"{base[0]['target']} -> {new[0]['target']}"
    return base, new


def match_key(record: dict[str, Any], match: str) -> str:
    """What pairs a conversation with its counterpart in the other run: its id (which ends in
    @target), or its scenario, vars and sample (any target)."""
    if match == "id":
        return str(record["conversation_id"])
    what = [record["scenario_id"], record.get("vars") or {}, record.get("sample") or 0]
    return json.dumps(what, sort_keys=True, ensure_ascii=False)


def keyed(records: dict[str, dict[str, Any]], match: str) -> dict[str, dict[str, Any]]:
    return {match_key(record, match): record for record in records.values()}


def check_match(
    base_dir: Path, base: dict[str, Any], new_dir: Path, new: dict[str, Any], match: str
) -> None:
    """Refuse (exit 2) a pairing that cannot work: by id between runs with no target in
    common (every id ends in @target: all would be missing and new), by scenario in a run of
    several targets (a scenario's conversations would collide)."""
    runs = [
        (d, [t["name"] for t in m.get("targets", [])])
        for d, m in ((base_dir, base), (new_dir, new))
    ]
    (_, base_names), (_, new_names) = runs
    if match == "scenario":
        several = [f"{d} has {', '.join(names)}" for d, names in runs if len(names) > 1]
        if several:
            raise InputError(
                f"--match scenario pairs runs of one target each; {'; '.join(several)}"
            )
    elif not set(base_names) & set(new_names):
        raise InputError(
            f"the runs have no target in common ({base_dir}: {', '.join(base_names)}; "
            f"{new_dir}: {', '.join(new_names)}): conversation ids end in @target, so "
            "none would match; pass --match scenario to pair them by scenario, vars and sample"
        )


def incomplete(manifest: dict[str, Any]) -> str | None:
    """Why a run did not complete (it stopped early, or left conversations not run), or None."""
    status = manifest.get("status")
    not_run = (manifest.get("counts") or {}).get("not_run") or 0
    parts = [f"status {status}"] if status != "finished" else []
    parts += [_count(not_run, "conversation") + " not run"] if not_run else []
    return ", ".join(parts) or None


def _by_rate(result: Diff, base: dict[str, Any], new: dict[str, Any]) -> None:
    """Scenarios with repeated samples are judged by their pass rates (runner/results/verdicts.py),
    not sample by sample: a regression only when the drop is significant or below
    min_pass_rate; their samples' changes are in `pass_rates`, not in the lists. Paired by
    scenario, the base run's groups stand for the new run's target."""
    paired = result.match == "scenario" and new
    target = next(iter(new.values()))["target"] if paired else None
    result.pass_rates = compare(base, new, target)
    judged = {(c.scenario_id, c.target) for c in result.pass_rates}
    for name in ("regressions", "fixes", "other_changes"):
        kept = [c for c in getattr(result, name) if (c.scenario_id, c.target) not in judged]
        setattr(result, name, kept)
    result.regressions += [
        Change(f"{c.scenario_id}@{c.target}", c.scenario_id, c.target,
               f"{c.base_passed}/{c.base_samples} passed", f"{c.new_passed}/{c.new_samples} passed",
               c.reason)
        for c in result.pass_rates if c.verdict == "regression"
    ]  # fmt: skip


def _classify(result: Diff, before: dict[str, Any], after: dict[str, Any]) -> None:
    was, now = outcome(before), outcome(after)
    if was == now:
        return
    worse = RANK[now] < RANK[was]
    change = _change(after, was, now, why(before if now == "pass" else after))
    if worse:
        result.regressions.append(change)
    elif now == "pass":
        result.fixes.append(change)
    else:
        result.other_changes.append(change)


def _change(record: dict[str, Any], before: str, after: str, reason: str) -> Change:
    return Change(record["conversation_id"], record["scenario_id"], record["target"], before,
                  after, reason)  # fmt: skip


def _simulated(result: Diff, before: dict[str, Any], after: dict[str, Any]) -> None:
    result.simulated += 1
    was, now = len(before["turns"]), len(after["turns"])
    if was != now:
        result.turns_changed.append(TurnsChange(after["conversation_id"], was, now))


def _text_changes(cid: str, before: dict[str, Any], after: dict[str, Any]) -> list[TextChange]:
    old = {t["index"]: _reply(t) for t in before["turns"]}
    changes = []
    for turn in after["turns"]:
        reply, now = old.pop(turn["index"], None), _reply(turn)
        if reply != now:
            changes.append(TextChange(cid, turn["index"], reply or "", now))
    changes += [TextChange(cid, i, reply, "") for i, reply in old.items()]  # turns now missing
    return changes


def _reply(turn: dict[str, Any]) -> str:
    """A turn's reply as diff compares it: the tool calls it made (name and arguments,
    in order; ids differ from run to run), then its text."""
    calls = [f"-> {c.get('name')}({c.get('arguments')})\n" for c in turn.get("tool_calls") or ()]
    return "".join(calls) + str(turn["assistant"])


def target_deltas(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target (of either run): each DELTA_KEYS figure before, after and the change."""
    before = {r["target"]: r for r in base}
    after = {r["target"]: r for r in new}
    names = [*before, *(n for n in after if n not in before)]
    return [
        {
            "target": name,
            **{key: _delta(before.get(name), after.get(name), key) for key in DELTA_KEYS},
        }
        for name in names
    ]


def _delta(before: dict[str, Any] | None, after: dict[str, Any] | None, key: str) -> dict[str, Any]:
    old = before.get(key) if before else None
    now = after.get(key) if after else None
    change = now - old if old is not None and now is not None else None
    return {"base": old, "new": now, "change": change}
