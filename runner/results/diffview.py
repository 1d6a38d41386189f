"""A diff (runner/results/diff.py) rendered: plain text for a terminal, markdown for a CI
comment, JSON.

Markdown stays well under a CI comment's size limit (GitHub's is 65,536 characters): each
list shows its first LIST_LIMIT entries, replies are cut to REPLY_CHARS, and the JSON has all.
"""

from __future__ import annotations

import html
import json
from typing import Any

from runner.results.diff import Change, Diff, TextChange, gate
from runner.results.report import money

LIST_LIMIT = 30
TEXT_LIMIT = 10
REPLY_CHARS = 300
FIGURES = (  # (key, title, how a value is shown)
    ("pass_rate", "pass %", lambda v: f"{100 * v:.1f}"),
    ("total_tokens", "tokens", lambda v: f"{v:,}"),
    ("latency_p50_ms", "p50 ms", lambda v: f"{v:.0f}"),
    ("latency_p95_ms", "p95 ms", lambda v: f"{v:.0f}"),
    ("cost_usd", "cost $", money),
)


def render_diff(diff: Diff, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(diff.as_json(), ensure_ascii=False, indent=2)
    if fmt == "markdown":
        return _markdown(diff)
    return _text(diff)


def headline(diff: Diff) -> str:
    parts = [
        _count(len(diff.regressions), "regression"),
        _count(len(diff.fixes), "fix", "fixes"),
        f"{len(diff.missing)} missing",
        f"{len(diff.added)} new ({len(diff.new_failing)} not passing)",
        _count(diff.replies_changed, "conversation") + " with changed replies",
    ]
    paired = " (paired by scenario, vars and sample)" if diff.match == "scenario" else ""
    return f"{diff.base} -> {diff.new}{paired}: " + ", ".join(parts)


def verdict(diff: Diff) -> str:
    """The gate's verdict in one line: passed, or failed and why."""
    reasons = gate(diff)
    return "gate: FAILED: " + "; ".join(reasons) if reasons else "gate: passed"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def figure(delta: dict[str, Any], show: Any) -> str:
    """'before -> after (+change)' of one figure; '-' for a side without a value."""
    old, new, change = delta["base"], delta["new"], delta["change"]
    text = f"{'-' if old is None else show(old)} -> {'-' if new is None else show(new)}"
    shown = show(abs(change)) if change else "0"
    if float(shown.replace(",", "")):  # a change too small to show is no change
        text += f" ({'+' if change > 0 else '-'}{shown})"
    return text


def _text(diff: Diff) -> str:
    lines = [headline(diff), verdict(diff)]
    for title, changes in _lists(diff):
        lines += ["", title] + [f"  {_change_line(c)}" for c in changes]
    for title, ids in (("MISSING (in the base run only)", diff.missing),
                       ("NEW (in the new run only)", diff.added)):  # fmt: skip
        if ids:
            lines += ["", title] + [f"  {cid}" for cid in ids]
    lines += _rate_lines(diff)
    if diff.simulated:
        lines += ["", f"SIMULATED: {simulated_note(diff)}"]
        lines += [
            f"  {t.conversation_id}  {t.before} -> {t.after} turns" for t in diff.turns_changed
        ]
    if diff.text_changes:
        lines += ["", "CHANGED REPLIES"]
        for t in diff.text_changes:
            lines += [
                f"  {t.conversation_id} turn {t.turn}",
                f"    - {t.before}",
                f"    + {t.after}",
            ]
    lines += ["", "PER TARGET (base -> new)"]
    header = ["target", *(title for _, title, _ in FIGURES)]
    rows = [[d["target"], *(figure(d[k], show) for k, _, show in FIGURES)] for d in diff.targets]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines += [
        ("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def _lists(diff: Diff) -> list[tuple[str, list[Change]]]:
    named = [("REGRESSIONS", diff.regressions), ("NEW AND NOT PASSING", diff.new_failing),
             ("FIXES", diff.fixes), ("OTHER CHANGES", diff.other_changes)]  # fmt: skip
    return [(title, changes) for title, changes in named if changes]


# scenarios with repeated samples, judged by pass rate (runner/results/verdicts.py): what is not a
# regression, listed apart (regressions are in REGRESSIONS)
RATE_LISTS = (
    ("flaky", "FLAKY (samples changed outcome; listed apart, not regressions)"),
    ("not significant", "DROPS NOT SIGNIFICANT (not regressions)"),
    ("better", "PASS RATES UP"),
)


def _rate_lines(diff: Diff) -> list[str]:
    lines = []
    for verdict, title in RATE_LISTS:
        judged = [c for c in diff.pass_rates if c.verdict == verdict]
        if judged:
            lines += ["", title]
        for c in judged:
            lines.append(f"  {c.scenario_id}@{c.target}  {c.base_passed}/{c.base_samples} -> "
                         f"{c.new_passed}/{c.new_samples} passed  {c.reason}")  # fmt: skip
            lines += [f"    {flip}" for flip in c.flips[:TEXT_LIMIT]]
            lines += [f"    ... and {len(c.flips) - TEXT_LIMIT} more"] * (len(c.flips) > TEXT_LIMIT)
    return lines


def simulated_note(diff: Diff) -> str:
    """What the diff says of conversations with a simulated user."""
    return (
        f"{_count(diff.simulated, 'conversation')} with a simulated user compared by outcome and "
        "number of turns, not by text (a simulated user's text is not expected to repeat); "
        f"{len(diff.turns_changed)} changed their number of turns"
    )


def _rate_markdown(diff: Diff) -> list[str]:
    lines = []
    for verdict, title in RATE_LISTS:
        judged = [c for c in diff.pass_rates if c.verdict == verdict]
        items = [
            f"- `{_md(c.scenario_id)}@{_md(c.target)}` {c.base_passed}/{c.base_samples} → "
            f"{c.new_passed}/{c.new_samples} passed: {_md(c.reason.replace('->', '→'))}"
            + "".join(f"<br>`{_md(flip.replace('->', '→'))}`" for flip in c.flips[:TEXT_LIMIT])
            for c in judged
        ]
        lines += _details(f"{title.split(' (')[0].capitalize()} ({len(judged)})", items)
    return lines


def _change_line(c: Change) -> str:
    return f"{c.conversation_id}  {c.before} -> {c.after}" + (f"  {c.reason}" if c.reason else "")


def _markdown(diff: Diff) -> str:
    mark = "❌" if gate(diff) else "✅"
    lines = [f"### {mark} dialogue-runner diff", "", headline(diff).replace("->", "→"), ""]
    lines += [f"**{_md(verdict(diff))}**", ""]
    header = ["target", *(title for _, title, _ in FIGURES)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in diff.targets:
        cells = [d["target"], *(figure(d[k], show) for k, _, show in FIGURES)]
        lines.append("| " + " | ".join(_md(c.replace("->", "→")) for c in cells) + " |")
    for title, changes in _lists(diff):
        items = [
            f"- `{_md(c.conversation_id)}` {c.before} → {c.after}: {_md(c.reason)}" for c in changes
        ]
        opened = title in ("REGRESSIONS", "NEW AND NOT PASSING")
        lines += _details(f"{title.capitalize()} ({len(changes)})", items, open_=opened)
    for title, ids in (("Missing", diff.missing), ("New", diff.added)):
        items = [f"- `{_md(cid)}`" for cid in ids]
        lines += _details(f"{title} ({len(ids)})", items, open_=title == "Missing")
    lines += _rate_markdown(diff)
    if diff.simulated:
        lines += ["", _md(simulated_note(diff))]
        lines += _details(
            f"Number of turns changed ({len(diff.turns_changed)})",
            [
                f"- `{_md(t.conversation_id)}` {t.before} → {t.after} turns"
                for t in diff.turns_changed
            ],
        )
    lines += _details(
        f"Changed replies ({len(diff.text_changes)})",
        [_md_text_change(t) for t in diff.text_changes],
        limit=TEXT_LIMIT,
    )
    return "\n".join(lines) + "\n"


def _details(
    title: str, items: list[str], open_: bool = False, limit: int = LIST_LIMIT
) -> list[str]:
    if not items:
        return []
    shown = items[:limit]
    if len(items) > limit:
        shown.append(f"- … and {len(items) - limit} more (`--format json` lists all)")
    return [
        "",
        f"<details{' open' if open_ else ''}><summary>{title}</summary>",
        "",
        *shown,
        "",
        "</details>",
    ]


def _md_text_change(t: TextChange) -> str:
    return (
        f"- `{_md(t.conversation_id)}` turn {t.turn}<br>"
        f"before: {_md(_cut(t.before))}<br>after: {_md(_cut(t.after))}"
    )


def _cut(text: str) -> str:
    return text if len(text) <= REPLY_CHARS else text[:REPLY_CHARS] + "…"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell or list item: one line, no HTML, no pipes."""
    flat = " ".join(text.split())
    return html.escape(flat, quote=False).replace("|", "\\|").replace("`", "'")
