"""The report: per-target rows (runner/stats.py) rendered as a table, markdown or JSON."""

from __future__ import annotations

import json
from typing import Any

COLUMNS = (
    ("target", "target"), ("conversations", "conv"), ("ok", "ok"), ("failed", "failed"),
    ("checks_passed", "checks ok"), ("checks_failed", "checks failed"),
    ("input_tokens", "in tok"), ("output_tokens", "out tok"), ("reasoning_tokens", "reason tok"),
    ("cached_tokens", "cached tok"), ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"),
    ("ttft_p50_ms", "ttft p50"), ("cost_usd", "cost $"),
)  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:.0f}"
    return str(value)


def cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The table's header and its body, every value shown as the report shows it."""
    return [title for _, title in COLUMNS], [
        [_cell(row[key]) for key, _ in COLUMNS] for row in rows
    ]


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as an aligned text table, a markdown table, or JSON."""
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2)
    header, body = cells(rows)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    )
