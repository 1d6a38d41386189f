"""Aggregates per target: counts, checks and latency percentiles from the transcript records,
tokens, requests, retries and cost from the usage records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.cost import cost, target_price
from runner.results.failures import (
    FailedChecks,
    FailureKey,
    failure_key,
    top_failures,
    usage_warnings,
)
from runner.results.reader import RunRecords, Skipped
from runner.results.sketch import Quantiles
from runner.results.store import read_manifest
from runner.results.verdicts import Group, Key, add_to
from runner.usage import TOKEN_KEYS, add_usage


@dataclass
class TargetStats:
    conversations: int = 0
    ok: int = 0
    failed: int = 0
    checks_passed: int = 0
    checks_failed: int = 0
    conversations_failing_checks: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KEYS, 0))
    latencies: Quantiles = field(default_factory=Quantiles)  # runner/results/sketch.py
    ttfts: Quantiles = field(default_factory=Quantiles)
    errors: dict[str, int] = field(default_factory=dict)
    passed: int = 0  # conversations ok with every check passed
    requests: int = 0  # HTTP attempts (usage records), retries included
    retries: int = 0  # attempts after the first of a turn
    judge_tokens: int = 0  # tokens the judges of this target's replies spent
    judge_cost: float | None = None  # their cost, each at its judge's price
    simulator_tokens: int = 0  # tokens the simulated users of its conversations spent
    simulator_cost: float | None = None  # their cost, each at its simulated user's price
    failures: Counter[FailureKey] = field(default_factory=Counter)  # runner/results/failures.py
    replies: int = 0
    replies_with_usage: int = 0
    failed_checks: FailedChecks = field(default_factory=FailedChecks)  # the first few


class Summary:
    """Per-target counts and latencies, fed one transcript record at a time (add), and tokens,
    requests and retries, fed one usage record at a time (add_attempt): every token spent,
    failed attempts and conversations run again by --retry-failed included."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetStats] = {}
        self.groups: dict[Key, Group] = {}  # scenario × target samples (runner/results/verdicts.py)

    def add(self, record: dict[str, Any]) -> None:
        add_to(self.groups, record)
        stats = self.targets.setdefault(record["target"], TargetStats())
        stats.conversations += 1
        if record["status"] == "ok":
            stats.ok += 1
        else:
            stats.failed += 1
            kind = (record.get("error") or {}).get("kind", "unknown")
            stats.errors[kind] = stats.errors.get(kind, 0) + 1
            stats.failures[failure_key(record.get("error"))] += 1
        failing = False
        for turn in record["turns"]:
            stats.replies += 1
            stats.replies_with_usage += any(turn["usage"].values())
            stats.latencies.add(turn["latency_ms"])
            if turn["ttft_ms"] is not None:
                stats.ttfts.add(turn["ttft_ms"])
            for check in turn["checks"]:
                if "usage" in check and not check.get("cached_reply"):  # a judge's spend
                    _add_judge(stats, check)
                if check["passed"]:
                    stats.checks_passed += 1
                else:
                    stats.checks_failed += 1
                    stats.failed_checks.add(record, turn["index"], check)
                    failing = True
        stats.conversations_failing_checks += failing
        if record.get("simulation"):
            _add_simulator(stats, record["simulation"])
        stats.passed += record["status"] == "ok" and not failing

    def add_attempt(self, record: dict[str, Any]) -> None:
        """One usage record (one HTTP attempt). A judge's attempts are counted with the
        replies they judged (their checks carry tokens and cost), not as the judge's own; a
        simulated user's with its conversation (its record's `simulation`)."""
        if record.get("judge") or record.get("role") == "simulated_user":
            return
        stats = self.targets.get(record["target"]) or self.targets.setdefault(
            record["target"], TargetStats()
        )
        stats.requests += not record.get("cached_reply")  # a replayed reply sent nothing
        stats.retries += record["attempt"] > 1
        add_usage(stats.tokens, record)  # type: ignore[arg-type]  # a record's counts

    def spent(self, prices: dict[str, dict[str, float] | None]) -> float:
        """The running estimate of the run's cost (targets without a price count nothing)."""
        return sum(_cost(s, prices.get(name)) or 0.0 for name, s in self.targets.items())

    def counts(self, planned: int, resumed: int) -> dict[str, int]:
        """The manifest's counts of a run of `planned` conversations."""
        return {
            "planned": planned,
            "ok": self.total("ok"),
            "failed": self.total("failed"),
            "checks_failed": self.total("conversations_failing_checks"),
            "resumed": resumed,
            "not_run": max(0, planned - self.total("conversations")),
        }

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.targets.values())

    def tokens(self) -> dict[str, int]:
        return {k: sum(s.tokens[k] for s in self.targets.values()) for k in TOKEN_KEYS}

    def rows(
        self, prices: dict[str, dict[str, float] | None], unstreamed: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """One row per target, as the report formats show it: the targets of `prices` first,
        in their order, then any other target that was sent requests. TTFT is shown only for
        streamed targets (a whole reply's first token comes with its last)."""
        names = [n for n in prices if n in self.targets]
        names += [n for n in self.targets if n not in prices]
        rows = [_row(name, self.targets[name], prices.get(name)) for name in names]
        for row in rows:
            if row["target"] in unstreamed:
                row["ttft_p50_ms"] = None
        return rows


def _add_judge(stats: TargetStats, check: dict[str, Any]) -> None:
    stats.judge_tokens += check["usage"].get("total_tokens", 0)
    if check.get("cost_usd") is not None:
        stats.judge_cost = (stats.judge_cost or 0.0) + check["cost_usd"]


def _add_simulator(stats: TargetStats, simulation: dict[str, Any]) -> None:
    usage = simulation.get("usage")
    stats.simulator_tokens += usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
    spent = simulation.get("cost_usd")
    if isinstance(spent, int | float):
        stats.simulator_cost = (stats.simulator_cost or 0.0) + spent


def _cost(s: TargetStats, price: dict[str, float] | None) -> float | None:
    """A target's cost: its own tokens at its price, plus what its judges and simulated
    users cost."""
    parts = [cost(s.tokens, price), s.judge_cost, s.simulator_cost]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(name: str, s: TargetStats, price: dict[str, float] | None) -> dict[str, Any]:
    return {
        "target": name,
        "conversations": s.conversations,
        "ok": s.ok,
        "failed": s.failed,
        "checks_passed": s.checks_passed,
        "checks_failed": s.checks_failed,
        "checks_total": s.checks_passed + s.checks_failed,
        "passed": s.passed,
        "pass_rate": s.passed / s.conversations if s.conversations else None,
        "requests": s.requests,
        "retries": s.retries,
        **{k: s.tokens[k] for k in TOKEN_KEYS},
        "latency_p50_ms": s.latencies.quantile(0.5),
        "latency_p95_ms": s.latencies.quantile(0.95),
        "ttft_p50_ms": s.ttfts.quantile(0.5),
        "cost_usd": _cost(s, price),
        "judge_tokens": s.judge_tokens,
        "simulator_tokens": s.simulator_tokens,
        "errors": s.errors,
        "failures": top_failures(s.failures),
        "failed_checks": s.failed_checks.first,  # the first few; checks_failed counts them all
        "warnings": usage_warnings(s.replies, s.replies_with_usage),
    }


def summarize_run(run_dir: Path, skipped: Skipped | None = None) -> tuple[Summary, dict[str, Any]]:
    """The summary of a run folder (newest record per conversation, every attempt) and its
    manifest; lines that are not the run's records go to `skipped`."""
    manifest = read_manifest(run_dir)
    summary = Summary()
    records = RunRecords(run_dir, manifest)
    for _, record in records.newest():  # streamed: memory flat in the run's size
        summary.add(record)
    add_attempts(summary, records)
    if skipped is not None:
        skipped.take(records.skipped)
    return summary, manifest


def add_attempts(summary: Summary, records: RunRecords) -> None:
    """Every usage record of a run folder into the summary."""
    for record in records.attempts():
        summary.add_attempt(record)


def target_prices(manifest: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    """Each target's price as the manifest recorded it, in the run's order."""
    return {t["name"]: target_price(t) for t in manifest.get("targets", [])}


def unstreamed(targets: Iterable[tuple[str, bool | None]], default: bool) -> set[str]:
    """Names of the targets not streamed: (name, the target's own stream setting) pairs and
    the run's --stream/--no-stream for those without one."""
    return {name for name, stream in targets if not (default if stream is None else stream)}


def report_rows(run_dir: Path, skipped: Skipped | None = None) -> list[dict[str, Any]]:
    """The report's rows of a run folder (what `report`, `diff` and `compare` show); lines
    that are not the run's records go to `skipped`."""
    return rows_of(*summarize_run(run_dir, skipped))


def rows_of(summary: Summary, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows of a run's summary, priced and streamed as its manifest says."""
    targets = [(t["name"], t.get("stream")) for t in manifest.get("targets", [])]
    default = bool((manifest.get("invocation") or {}).get("stream"))
    return summary.rows(target_prices(manifest), unstreamed(targets, default))
