"""The compare page: one self-contained HTML file for one or more runs.

On top the matrix of scenarios × targets (or runs; runner/results/compare_matrix.py), then the
report table (runner/results/report.py's rows and columns), per target the latency and
tokens-per-conversation charts, then scenario by scenario each target's (or each run's)
conversation side by side, turn by turn, with checks, tokens, latency and cost, the
replies' differences marked word by word (runner/results/compare_diff.py), and a turn that failed
after retries with its attempts. Records are read only through runner/results/reader.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.outfile import output_file
from runner.results import compare_matrix
from runner.results.compare_diff import marked
from runner.results.compare_html import (
    CSP,
    SCRIPT,
    STYLE,
    Key,
    Side,
    attempts_block,
    calls_block,
    check_item,
    esc,
    histogram,
    number,
    text_block,
    thumbnails,
)
from runner.results.compare_usage import failed_turn, spent
from runner.results.diff import held_rows
from runner.results.reader import latest_transcripts
from runner.results.records import message_text, outcome
from runner.results.report import cells, money
from runner.results.store import read_manifest


@dataclass
class Runs:
    """What the page shows: the runs' report rows, the sides, the conversations' keys."""

    runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]  # (label, manifest, rows)
    sides: list[Side]
    keys: list[Key]  # in the order first seen
    scenario_files: dict[str, str]
    tags: dict[str, list[str]]
    omitted: int = 0  # conversations (rows of sides) left out to keep the page light
    scenarios: list[str] = field(default_factory=list)  # every one, in file order


MAX_ROWS = 1000  # rows of conversations a page shows by default (the charts count them all)


def key_of(record: dict[str, Any]) -> Key:
    values = json.dumps(record.get("vars") or {}, sort_keys=True, ensure_ascii=False)
    return record["scenario_id"], values, record.get("sample", 0)


def load(run_dirs: list[Path]) -> Runs:
    """Read every run (newest record per conversation); the sides in run, then target order."""
    loaded = Runs([], [], [], {}, {})
    seen: dict[Key, None] = {}
    for i, run_dir in enumerate(run_dirs):
        manifest = read_manifest(run_dir)
        label = str(manifest.get("run_id") or run_dir.name)
        if any(label == r[0] for r in loaded.runs):
            label += f" ({i + 1})"
        sides = {}
        for name in (t["name"] for t in manifest.get("targets", [])):
            sides[name] = Side(f"{label} · {name}" if len(run_dirs) > 1 else name, label, name)
        held = latest_transcripts(run_dir)
        for record in held.values():
            target = record["target"]
            side = sides.setdefault(target, Side(f"{label} · {target}", label, target))
            side.records[key_of(record)] = record
            seen.setdefault(key_of(record))
            loaded.scenario_files.setdefault(record["scenario_id"], record.get("scenario_file", ""))
            loaded.tags.setdefault(record["scenario_id"], list(record.get("tags") or []))
        spent(run_dir, manifest, list(sides.values()))
        rows = held_rows(run_dir, manifest, held.values())  # the report's own table
        loaded.runs.append((label, manifest, rows))
        loaded.sides += sides.values()
    files = loaded.scenario_files  # a stable order: file, scenario, vars, sample
    loaded.keys = sorted(seen, key=lambda k: (files.get(k[0], ""), *k))
    loaded.scenarios = list(dict.fromkeys(k[0] for k in loaded.keys))
    return loaded


def keep(runs: Runs, limit: int) -> None:
    """Show at most LIMIT rows: every failing one first, then the first others in order."""
    if len(runs.keys) <= limit:
        return
    failed = [k for k in runs.keys if any(failing(s.records.get(k)) for s in runs.sides)]
    chosen = dict.fromkeys(failed[:limit])
    for key in runs.keys:
        if len(chosen) >= limit:
            break
        chosen.setdefault(key)
    runs.omitted = len(runs.keys) - len(chosen)
    runs.keys = [k for k in runs.keys if k in chosen]


def write_page(run_dirs: list[Path], out: Path, limit: int = MAX_ROWS) -> Path:
    """Write the page for RUN_DIRS to OUT, at most LIMIT rows of conversations; returns OUT."""
    runs = load(run_dirs)
    keep(runs, limit)
    text = page(runs)
    with output_file(out) as fh:
        fh.write(text.encode("utf-8"))
    return out


def page(runs: Runs) -> str:
    title = "dialogue-runner · " + ", ".join(label for label, _, _ in runs.runs)
    tags = sorted({t for ts in runs.tags.values() for t in ts})
    options = "".join(f'<option value="{esc(t)}">{esc(t)}</option>' for t in tags)
    body = [
        f'<header><h1>{esc(title)}</h1><p class="runs">{_run_lines(runs)}</p></header>',
        _matrix(runs),
        f'<section id="report"><h2>Report</h2>{_report(runs)}</section>',
        f'<section id="charts"><h2>Latency and tokens</h2><div class="cards">'
        f"{''.join(_charts(side) for side in runs.sides)}</div></section>",
        '<nav id="filters"><label><input type="checkbox" id="f-failed"> failed only</label>'
        f'<label>tag <select id="f-tag"><option value="">all</option>{options}</select></label>'
        '<label><input type="checkbox" id="f-diff" checked> mark differences</label>'
        '<span id="f-count"></span></nav>',
        f"<main>{_omitted(runs)}{_scenarios(runs)}</main>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def anchors(runs: Runs) -> dict[str, str]:
    """The id of each scenario's section on the page (of those it shows)."""
    shown = {k[0] for k in runs.keys}
    return {s: f"s{i}" for i, s in enumerate(runs.scenarios) if s in shown}


def _matrix(runs: Runs) -> str:
    several_targets = len({side.target for side in runs.sides}) > 1
    what = "targets" if len(runs.runs) == 1 else "runs · targets" if several_targets else "runs"
    table = compare_matrix.build(runs.sides, runs.scenarios)
    return (
        f'<section id="matrix"><h2>Scenarios × {what}</h2>'
        f"{compare_matrix.render(table, anchors(runs))}</section>"
    )


def _omitted(runs: Runs) -> str:
    if not runs.omitted:
        return ""
    return (
        f'<p class="omitted">{runs.omitted:,} more rows of conversations are not shown: this '
        f"page shows {len(runs.keys):,}, failing ones first, then the others in order "
        "(compare --max-rows N shows more; the report and the charts count them all).</p>"
    )


def _run_lines(runs: Runs) -> str:
    lines = []
    for label, manifest, _ in runs.runs:
        counts = manifest.get("counts") or {}
        lines.append(
            f"<b>{esc(label)}</b> started {esc(manifest.get('started_at'))}, "
            f"{esc(manifest.get('status'))}, {esc(counts.get('planned', '?'))} planned"
        )
    return "<br>".join(lines)


def _report(runs: Runs) -> str:
    """The report table: the rows report.py renders, one table for every run."""
    several = len(runs.runs) > 1
    head: list[str] = []
    rows: list[str] = []
    for label, _, run_rows in runs.runs:
        head, body = cells(run_rows)
        for cells_of_row in body:
            run_cell = f'<td class="run">{esc(label)}</td>' if several else ""
            rows.append(
                "<tr>" + run_cell + "".join(f"<td>{esc(c)}</td>" for c in cells_of_row) + "</tr>"
            )
    header = ("<th>run</th>" if several else "") + "".join(f"<th>{esc(h)}</th>" for h in head)
    return (
        f'<div class="table-wrap"><table><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _charts(side: Side) -> str:
    records = list(side.records.values())
    latencies = [t["latency_ms"] for r in records for t in r["turns"]]
    tokens = [float(r["usage"].get("total_tokens", 0)) for r in records]
    return (
        f'<div class="card"><h3>{esc(side.label)}</h3>'
        f"<figure>{histogram(latencies, ' ms', side.label + ' latency per reply')}"
        f"<figcaption>latency per reply ({len(latencies)} replies)</figcaption></figure>"
        f"<figure>{histogram(tokens, ' tok', side.label + ' tokens per conversation')}"
        f"<figcaption>tokens per conversation ({len(tokens)} conversations)</figcaption>"
        "</figure></div>"
    )


def _scenarios(runs: Runs) -> str:
    by_scenario: dict[str, list[Key]] = {}
    for key in runs.keys:
        by_scenario.setdefault(key[0], []).append(key)
    out, ids = [], anchors(runs)
    for scenario_id, keys in by_scenario.items():
        tags = runs.tags.get(scenario_id, [])
        shown_tags = "".join(f'<span class="tag">{esc(t)}</span>' for t in tags)
        convs = "".join(_conversation(runs.sides, key, tags) for key in keys)
        out.append(
            f'<section class="scenario" id="{ids[scenario_id]}" '
            f'data-tags="{esc(json.dumps(tags))}">'
            f"<h2>{esc(scenario_id)}</h2>"
            f"<p>{esc(runs.scenario_files.get(scenario_id, ''))} {shown_tags}</p>{convs}</section>"
        )
    return "".join(out)


def failing(record: dict[str, Any] | None) -> bool:
    """A conversation that failed, or whose checks did not all pass."""
    return record is not None and outcome(record) != "pass"


def _conversation(sides: list[Side], key: Key, tags: list[str]) -> str:
    records = [side.records.get(key) for side in sides]
    values = json.loads(key[1])
    heading = " · ".join(f"{k} = {_shown(v)}" for k, v in values.items()) or "no vars"
    heading += f" · sample {key[2]}" if key[2] else ""
    ids = [r["conversation_id"] for r in records if r]
    cells = [_side_head(side, r) for side, r in zip(sides, records, strict=True)]
    rows = _rows(records)
    for row in rows:
        cells.append(row if isinstance(row, str) else _turn_cells(sides, records, row))
    failed = any(failing(r) for r in records)
    return (
        f'<article class="conv" data-failed="{int(failed)}" data-tags="{esc(json.dumps(tags))}" '
        f'data-ids="{esc(json.dumps(ids, ensure_ascii=False))}"><h3>{esc(heading)}</h3>'
        f'<div class="grid" style="--n:{len(sides)}">{"".join(cells)}</div></article>'
    )


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _side_head(side: Side, record: dict[str, Any] | None) -> str:
    if record is None:
        return f'<div class="side">{esc(side.label)} <span class="badge none">not run</span></div>'
    if record["status"] != "ok":
        error = record.get("error") or {}
        badge = f'<span class="badge error">failed: {esc(error.get("kind"))}</span>'
        note = f'<div class="sub text">{esc(error.get("message"))}</div>'
    else:
        ok = outcome(record) == "pass"
        badge = (
            f'<span class="badge{"" if ok else " fail"}">{"pass" if ok else "checks failed"}</span>'
        )
        note = ""
    usage = record.get("usage") or {}
    latency = sum(t["latency_ms"] for t in record["turns"])
    sub = (
        f"{number(usage.get('input_tokens'))} in · {number(usage.get('output_tokens'))} out tok"
        f" · {number(latency, ' ms')}"
    )
    spent_usd = side.costs.get(record["conversation_id"])
    if spent_usd is not None:
        sub += f' · <span class="cost">${money(spent_usd)}</span>'
    return f'<div class="side">{esc(side.label)} {badge}<div class="sub">{sub}</div>{note}</div>'


Row = tuple[int, str, str] | str  # a generated turn (index, user text, its images' HTML), or
# a full-width row's HTML


def _rows(records: list[dict[str, Any] | None]) -> list[Row]:
    """The conversation's rows, from the record that got furthest: the system prompt,
    scripted assistant turns (full width) and the generated turns (one cell per side)."""
    longest = max((r for r in records if r), key=lambda r: len(r["messages"]), default=None)
    if longest is None:
        return []
    rows: list[Row] = []
    turns, k, skip = longest["turns"], 0, 0
    for message in longest["messages"]:
        role, content = message["role"], message_text(message)
        if skip:  # a generated message: shown in the turn's cells
            skip -= 1
        elif role == "system":
            rows.append(_full("system", content))
        elif role == "user":
            said = message_text(
                {"content": [p for p in _parts(message) if p.get("type") == "text"]}
            )
            if k < len(turns) and turns[k]["user"] == said or k == failed_turn(longest):
                shown = thumbnails(_parts(message), longest.get("scenario_file"))
                rows.append((k, content, shown))  # answered, or the turn it failed at
                skip = _generated(turns[k]) if k < len(turns) else 0
                k += 1
            else:
                rows.append(_full("user", content))  # one no turn answered (scenarios differ)
        else:
            rows.append(_full("script", content, f"{role} (scripted)"))
    return rows


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content or []


def _generated(turn: dict[str, Any]) -> int:
    """How many messages a turn's replies put in the history: one per request of its tool
    loop, and one per result sent."""
    return len(turn.get("request_attempts") or [1]) + len(turn.get("tool_calls") or ())


def _full(cls: str, text: str, role: str = "") -> str:
    role_label = f'<span class="role">{esc(role or cls)}</span>'
    return f'<div class="full {cls}">{role_label}{text_block(text)}</div>'


def _turn_cells(
    sides: list[Side], records: list[dict[str, Any] | None], row: tuple[int, str, str]
) -> str:
    index, user, images = row
    turns = [
        next((t for t in record["turns"] if t["index"] == index), None) if record else None
        for record in records
    ]
    role = "user (simulated)" if any(t and t.get("simulated") for t in turns) else "user"
    said = f'<span class="role">{role}</span>{text_block(user)}{images}'
    cells = [f'<div class="full user">{said}</div>']
    shown = marked([turn["assistant"] if turn else None for turn in turns])
    for side, record, turn, text in zip(sides, records, turns, shown, strict=True):
        if turn is None and record is not None and failed_turn(record) == index:
            tries = side.tries.get(record["conversation_id"], [])
            cells.append(attempts_block(record.get("error") or {}, tries))
        elif turn is not None and turn["user"] != user:  # a simulated user wrote it another way
            cells.append(_reply_cell(turn, text, asked=(role, turn["user"])))
        else:
            cells.append(_reply_cell(turn, text))
    return "".join(cells)


def _reply_cell(
    turn: dict[str, Any] | None, text: str | None = None, asked: tuple[str, str] | None = None
) -> str:
    """A reply with its figures and checks; ASKED: (role, text) of the user message this
    side was sent, when it differs from the one shown across the page."""
    if turn is None:
        return '<div class="reply missing">not reached</div>'
    usage = turn.get("usage") or {}
    meta = [
        f"{number(usage.get('input_tokens'))} in",
        f"{number(usage.get('output_tokens'))} out tok",
        number(turn.get("latency_ms"), " ms"),
    ]
    for key, label in (("reasoning_tokens", "reasoning"), ("cached_tokens", "cached")):
        if usage.get(key):
            meta.insert(2, f"{number(usage[key])} {label}")
    if turn.get("ttft_ms") is not None:
        meta.append("ttft " + number(turn["ttft_ms"], " ms"))
    requests = len(turn.get("request_attempts") or [1])
    if requests > 1:
        meta.append(f"{requests} requests")
    if (turn.get("attempts") or 1) > requests:
        meta.append(f"{turn['attempts']} attempts")
    if turn.get("finish_reason"):
        meta.append(esc(turn["finish_reason"]))
    checks = "".join(check_item(c) for c in turn.get("checks") or [])
    own = ""
    if asked is not None:
        role, said = asked
        own = f'<div class="user"><span class="role">{esc(role)}</span>{text_block(said)}</div>'
    return (
        f'<div class="reply">{own}{calls_block(turn)}'
        f"{text_block(turn.get('assistant') or '', text)}"
        f'<div class="meta">{" · ".join(meta)}</div>'
        + (f'<ul class="checks">{checks}</ul>' if checks else "")
        + "</div>"
    )
