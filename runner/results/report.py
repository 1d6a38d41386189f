"""The report: per-target rows (runner/results/stats.py) rendered as a table, markdown or JSON."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.results.verdicts import Group

from runner.results.failures import MESSAGE_CHARS, SHOWN_CHECKS

Row = dict[str, Any]


def _checks(row: Row) -> str:
    return f"{row['checks_passed']}/{row['checks_total']}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}"  # milliseconds
    return str(value)


def money(value: float | None) -> str:
    """USD: cents for dollars, more places for the small sums of a few conversations."""
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _key(key: str) -> Callable[[Row], str]:
    return lambda row: _cell(row[key])


COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("target", _key("target")), ("conv", _key("conversations")), ("ok", _key("ok")),
    ("failed", _key("failed")), ("pass %", lambda row: _percent(row["pass_rate"])),
    ("checks", _checks), ("in tok", _key("input_tokens")), ("out tok", _key("output_tokens")),
    ("reason tok", _key("reasoning_tokens")), ("cached tok", _key("cached_tokens")),
    ("p50 ms", _key("latency_p50_ms")), ("p95 ms", _key("latency_p95_ms")),
    ("ttft p50", _key("ttft_p50_ms")), ("requests", _key("requests")),
    ("retries", _key("retries")), ("cost $", lambda row: money(row["cost_usd"])),
)  # fmt: skip


def cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The table's header and its body, every value shown as the report shows it."""
    return [title for title, _ in COLUMNS], [[cell(row) for _, cell in COLUMNS] for row in rows]


def table(rows: list[Row], markdown: bool = False) -> str:
    """The rows as an aligned text table or a markdown table (one line per target)."""
    return grid(*cells(rows), markdown=markdown)


def grid(header: list[str], body: list[list[str]], markdown: bool = False) -> str:
    """A header and rows of cells as an aligned text table (first column left, the rest
    right) or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    )


def render(rows: list[Row], fmt: str = "table") -> str:
    """The rows as an aligned text table, a markdown table, or JSON (failures by kind are
    in each JSON row's `errors`; render_notes shows the most common ones under a table)."""
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2)
    return table(rows, markdown=fmt == "markdown")


def render_notes(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """What goes under the table: the first failing checks, each target's most common failures
    and its warnings ("" when there are none; JSON rows carry them as `failed_checks`,
    `failures` and `warnings`)."""
    failures = [(row["target"], f) for row in rows for f in row.get("failures", ())]
    warnings = [(row["target"], w) for row in rows for w in row.get("warnings", ())]
    checks = failing_checks(rows, markdown=fmt == "markdown")
    if fmt == "json" or not (failures or warnings or checks):
        return ""
    if fmt == "markdown":
        return "\n\n".join(filter(None, [checks, _markdown_notes(failures, warnings)]))
    width = max((len(target) for target, _ in failures + warnings), default=0)
    lines = ["most common failures:"] if failures else []
    for target, f in failures:
        status = f" {f['status']}" if f["status"] is not None else ""
        lines.append(f"  {target:<{width}}  {f['count']:>5}×  {f['kind']}{status}: {f['message']}")
    lines += ["warnings:"] if warnings else []
    lines += [f"  {target:<{width}}  {w}" for target, w in warnings]
    return "\n".join(filter(None, [checks, *lines]))


def failing_checks(rows: list[Row], markdown: bool = False) -> str:
    """The first SHOWN_CHECKS failing checks of the run (scenario, conversation, turn, kind,
    reason), then how many more failed; "" when none did."""
    listed = [c for row in rows for c in row.get("failed_checks", ())][:SHOWN_CHECKS]
    if not listed:
        return ""
    more = sum(row["checks_failed"] for row in rows) - len(listed)
    header = ["scenario", "conversation", "turn", "kind", "reason"]
    body = [
        [c["scenario"], c["conversation_id"], str(c["turn"]), c["kind"], _line(c["reason"])]
        for c in listed
    ]
    rest = f"… and {more} more failing check{'s' if more != 1 else ''}" if more > 0 else ""
    if markdown:
        lines = ["**Failing checks**", "", "| " + " | ".join(header) + " |", "|---" * 5 + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in body]
        return "\n".join(lines + ([f"\n{rest}"] if rest else []))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = ["failing checks:"] + [
        "  " + "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]])
        for r in [header, *body]
    ]
    return "\n".join(lines + ([f"  {rest}"] if rest else []))


def _line(text: str) -> str:
    """One line of at most MESSAGE_CHARS characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MESSAGE_CHARS else flat[: MESSAGE_CHARS - 1] + "…"


def _md_cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


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


RATE_HEADER = ["scenario", "target", "passed", "pass %", "95 % interval", "min", "verdict", "flaky"]


def render_rates(groups: list[Group], fmt: str = "table") -> str:
    """Each scenario × target's pass rate over its samples, its 95 % Wilson interval, the
    min_pass_rate it must reach ("all": every sample) and its verdict, flaky ones marked
    ("" for JSON: its rows carry them as `pass_rates`)."""
    if fmt == "json" or not groups:
        return ""
    body = []
    for g in groups:
        low, high = g.interval
        bar = "all" if g.min_pass_rate is None else f"{g.min_pass_rate:g}"
        body.append([g.scenario_id, g.target, f"{g.passed}/{g.samples}", _percent(g.rate),
                     f"{_percent(low)}-{_percent(high)}", bar, "pass" if g.clears else "FAIL",
                     "flaky" if g.flaky else "-"])  # fmt: skip
    if fmt == "markdown":
        body = [[c.replace("|", "\\|") for c in row] for row in body]
        return "**Pass rates** (samples of each scenario × target)\n\n" + grid(
            RATE_HEADER, body, markdown=True
        )
    text = grid(RATE_HEADER, body)
    return "pass rates (samples of each scenario × target):\n" + "\n".join(
        "  " + line.rstrip() for line in text.splitlines()
    )
