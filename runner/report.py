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


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as an aligned text table, a markdown table, or JSON."""
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2)
    header = [title for _, title in COLUMNS]
    body = [[_cell(row[key]) for key, _ in COLUMNS] for row in rows]
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


def render_notes(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """What goes under the table: each target's most common failures and its warnings
    ("" when there are none; JSON rows carry them as `failures` and `warnings`)."""
    failures = [(row["target"], f) for row in rows for f in row.get("failures", ())]
    warnings = [(row["target"], w) for row in rows for w in row.get("warnings", ())]
    if fmt == "json" or not (failures or warnings):
        return ""
    if fmt == "markdown":
        return _markdown_notes(failures, warnings)
    width = max(len(target) for target, _ in failures + warnings)
    lines = ["most common failures:"] if failures else []
    for target, f in failures:
        status = f" {f['status']}" if f["status"] is not None else ""
        lines.append(f"  {target:<{width}}  {f['count']:>5}×  {f['kind']}{status}: {f['message']}")
    lines += ["warnings:"] if warnings else []
    lines += [f"  {target:<{width}}  {w}" for target, w in warnings]
    return "\n".join(lines)


def _markdown_notes(failures: list[tuple[str, Any]], warnings: list[tuple[str, str]]) -> str:
    parts = []
    if failures:
        lines = ["**Most common failures**", "", "| target | count | kind | status | message |"]
        lines.append("|---|---|---|---|---|")
        for target, f in failures:
            message = f["message"].replace("|", "\\|")
            lines.append(f"| {target} | {f['count']} | {f['kind']} | {_cell(f['status'])} | "
                         f"{message} |")  # fmt: skip
        parts.append("\n".join(lines))
    if warnings:
        parts.append("\n".join(["**Warnings**", "", *(f"- {t}: {w}" for t, w in warnings)]))
    return "\n\n".join(parts)
