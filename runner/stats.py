"""Aggregates of transcript records per target: counts, tokens, latency percentiles, cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.records import TOKEN_KEYS
from runner.store import newest_transcripts, read_manifest


@dataclass
class TargetStats:
    conversations: int = 0
    ok: int = 0
    failed: int = 0
    checks_passed: int = 0
    checks_failed: int = 0
    conversations_failing_checks: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KEYS, 0))
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


class Summary:
    """Per-target counts, tokens and latencies; fed one transcript record at a time."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetStats] = {}

    def add(self, record: dict[str, Any]) -> None:
        stats = self.targets.setdefault(record["target"], TargetStats())
        stats.conversations += 1
        if record["status"] == "ok":
            stats.ok += 1
        else:
            stats.failed += 1
            kind = (record.get("error") or {}).get("kind", "unknown")
            stats.errors[kind] = stats.errors.get(kind, 0) + 1
        for key in TOKEN_KEYS:
            stats.tokens[key] += record["usage"].get(key, 0)
        failing = False
        for turn in record["turns"]:
            stats.latencies.append(turn["latency_ms"])
            if turn["ttft_ms"] is not None:
                stats.ttfts.append(turn["ttft_ms"])
            for check in turn["checks"]:
                if check["passed"]:
                    stats.checks_passed += 1
                else:
                    stats.checks_failed += 1
                    failing = True
        stats.conversations_failing_checks += failing

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.targets.values())

    def tokens(self) -> dict[str, int]:
        return {k: sum(s.tokens[k] for s in self.targets.values()) for k in TOKEN_KEYS}

    def rows(self, prices: dict[str, dict[str, float] | None]) -> list[dict[str, Any]]:
        """One row per target, as the report formats show it."""
        return [_row(name, stats, prices.get(name)) for name, stats in self.targets.items()]


def cost(tokens: dict[str, int], price: dict[str, float] | None) -> float | None:
    """Estimated USD: cached input at its own price when given, else at the input price."""
    if not price:
        return None
    cached = tokens["cached_tokens"]
    cached_price = price.get("cached_input_per_mtok", price.get("input_per_mtok", 0.0))
    fresh_input = tokens["input_tokens"] - cached
    return (
        fresh_input * price.get("input_per_mtok", 0.0)
        + cached * cached_price
        + tokens["output_tokens"] * price.get("output_per_mtok", 0.0)
    ) / 1e6


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
        **{k: s.tokens[k] for k in TOKEN_KEYS},
        "latency_p50_ms": percentile(s.latencies, 0.5),
        "latency_p95_ms": percentile(s.latencies, 0.95),
        "ttft_p50_ms": percentile(s.ttfts, 0.5),
        "cost_usd": cost(s.tokens, price),
        "errors": s.errors,
    }


def summarize_run(run_dir: Path) -> tuple[Summary, dict[str, Any]]:
    """The summary of a finished run folder (newest record per conversation) and its manifest."""
    summary = Summary()
    for _, record in newest_transcripts(run_dir):  # streamed: memory flat in the run's size
        summary.add(record)
    return summary, read_manifest(run_dir)
