"""Two runs compared for CI: conversations matched by id, what regressed, what was fixed,
what went missing or is new, which replies changed, and each target's figures before and after.

A conversation's outcome is `pass` (ok, every check passed), `fail` (ok, a check failed) or
`error` (failed after retries). A regression is a worse outcome than before: pass -> fail,
pass -> error, fail -> error (ok -> failed). A fix is anything -> pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.reader import latest_transcripts
from runner.records import outcome
from runner.stats import report_rows
from runner.store import read_manifest
from runner.verdicts import RateChange, compare

RANK = {"error": 0, "fail": 1, "pass": 2}
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
    pass_rates: list[RateChange] = field(default_factory=list)  # repeated scenarios' rates

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["new_conversations"] = data.pop("added")
        return data


def why(record: dict[str, Any]) -> str:
    """Why a conversation is not a pass: its error, or its failed checks."""
    if record["status"] != "ok":
        error = record.get("error") or {}
        return f"{error.get('kind')}: {error.get('message')}"
    failed = [
        f"turn {t['index']}: {c['kind']}: {c['reason']}"
        for t in record["turns"]
        for c in t["checks"]
        if not c["passed"]
    ]
    return "; ".join(failed)


def diff_runs(base_dir: Path, new_dir: Path, text: bool = False) -> Diff:
    """Compare two run folders (records read through runner/store.py)."""
    base, new = latest_transcripts(base_dir), latest_transcripts(new_dir)
    result = Diff(read_manifest(base_dir)["run_id"], read_manifest(new_dir)["run_id"])
    for cid, before in base.items():
        after = new.get(cid)
        if after is None:
            result.missing.append(cid)
            continue
        _classify(result, before, after)
        changes = _text_changes(cid, before, after)
        result.replies_changed += bool(changes)
        if text:
            result.text_changes.extend(changes)
    result.added = [cid for cid in new if cid not in base]
    result.targets = target_deltas(report_rows(base_dir), report_rows(new_dir))
    _by_rate(result, base, new)
    return result


def _by_rate(result: Diff, base: dict[str, Any], new: dict[str, Any]) -> None:
    """Scenarios with repeated samples are judged by their pass rates (runner/verdicts.py),
    not sample by sample: a regression only when the drop is significant or below
    min_pass_rate; their samples' changes are in `pass_rates`, not in the lists."""
    result.pass_rates = compare(base.values(), new.values())
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
    reason = why(before if now == "pass" else after)
    change = Change(
        after["conversation_id"], after["scenario_id"], after["target"], was, now, reason
    )
    if worse:
        result.regressions.append(change)
    elif now == "pass":
        result.fixes.append(change)
    else:
        result.other_changes.append(change)


def _text_changes(cid: str, before: dict[str, Any], after: dict[str, Any]) -> list[TextChange]:
    old = {t["index"]: t["assistant"] for t in before["turns"]}
    changes = []
    for turn in after["turns"]:
        reply = old.pop(turn["index"], None)
        if reply != turn["assistant"]:
            changes.append(TextChange(cid, turn["index"], reply or "", turn["assistant"]))
    changes += [TextChange(cid, i, reply, "") for i, reply in old.items()]  # turns now missing
    return changes


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
