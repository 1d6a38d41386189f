"""The pieces of the compare page: style, filter script, inline SVG charts, escaped text,
a failed turn's attempts, a turn's tool calls.

Everything that comes from a record goes through `esc` (text and attribute values alike);
the page fetches nothing (its CSP forbids it) and needs no network to render.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.results.stats import percentile

Key = tuple[str, str, int]  # scenario id, vars as JSON, sample: the same conversation anywhere


@dataclass
class Side:
    """One column of the page: a target of a run, and its conversations by key."""

    label: str
    run: str
    target: str
    records: dict[Key, dict[str, Any]] = field(default_factory=dict)
    costs: dict[str, float | None] = field(default_factory=dict)  # by conversation id
    tries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # of a failed turn


CSP = (  # data: images only (thumbnails inlined), nothing fetched
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)
THUMB_BYTES = 512 * 1024  # an image file larger than this is named, not inlined
LONG_CHARS = 600  # replies longer than this (or of more lines) start collapsed
LONG_LINES = 12
PREVIEW_CHARS = 240

STYLE = """
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--line:#d0d7de;--soft:#f6f8fa;--ink:#1f2328}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink);margin:0}
header,main,#matrix,#report,#charts{padding:0 24px}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:22px 0 8px}
h3{font-size:14px;margin:0 0 8px;font-weight:600;color:#57606a}
.runs{color:#57606a;margin:0 0 8px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:13px}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:right;white-space:nowrap}
th{background:var(--soft)}td:first-child,th:first-child,td.run{text-align:left}
.table-wrap{overflow-x:auto}
#charts .cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 10px;background:#fff}
.card h3{margin-bottom:4px}.card figure{margin:0 0 4px}
.card figcaption{font-size:12px;color:#57606a}
svg text{font-size:10px;fill:#57606a}svg .bar{fill:#54aeff}svg .mark{stroke:var(--bad)}
#filters{position:sticky;top:0;z-index:2;background:#fffffff0;border-bottom:1px solid var(--line);
 padding:8px 24px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
.scenario{border-top:2px solid var(--line);margin-top:18px}
.scenario>p{margin:0 0 8px;color:#57606a}
.tag{display:inline-block;background:#ddf4ff;border-radius:10px;padding:0 8px;margin-right:4px;
 font-size:12px}
.conv{margin:10px 0 18px}
.grid{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:6px}
.full{grid-column:1/-1}
.thumb{max-width:160px;max-height:160px;margin:4px 4px 0 0;border:1px solid #ccc}
.side,.reply{border:1px solid var(--line);border-radius:6px;padding:6px 8px;min-width:0}
.side{background:var(--soft);font-weight:600}
.side .sub{font-weight:400;font-size:12px;color:#57606a}
.user,.script,.system{background:#fff8c5;border-radius:6px;padding:6px 8px}
.script{background:#eaeef2}.system{background:#f0f0ff}
.role{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;margin-right:6px}
.text{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}
details>summary{cursor:pointer;color:#0969da}
.meta{font-size:12px;color:#57606a;margin-top:4px}
ul.checks{list-style:none;margin:4px 0 0;padding:0;font-size:12px}
ul.checks li{padding:1px 0;overflow-wrap:anywhere}
.pass{color:var(--ok)}.fail{color:var(--bad)}.error{color:var(--warn)}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff;
 background:var(--ok)}.badge.fail{background:var(--bad);color:#fff}
.badge.error{background:var(--warn);color:#fff}.badge.none{background:#8c959f}
.missing{color:#8c959f;font-style:italic}
.omitted{background:#fff8c5;border-radius:6px;padding:6px 8px}
[hidden]{display:none!important}
table.matrix th.name{text-align:left;font-weight:600;background:#fff}
table.matrix th.name a{color:var(--ink)}
.cell{text-align:center}.cell .cost{font-size:11px;color:#57606a}
.cell.pass{background:#dafbe1}.cell.some{background:#fff1b8}
.cell.fail,.cell.error{background:#ffd8d3}.cell.error{font-style:italic}
.cell.none{background:var(--soft);color:#8c959f}
.cell.best{outline:2px solid var(--ok);outline-offset:-3px;font-weight:600}
.star{color:var(--ok)}td.winner,table.matrix th:last-child{text-align:left}
.legend{font-size:12px;color:#57606a}.legend .cell{padding:0 6px;border-radius:4px}
mark.diff{background:#fff1b8;border-radius:2px;color:inherit}
body.plain mark.diff{background:none}
.reply.failed{border-color:var(--bad);background:#fff5f5}
ol.attempts{margin:4px 0 0;padding-left:20px;font-size:12px;color:#57606a}
"""

SCRIPT = """
(function () {
  var failed = document.getElementById("f-failed"), tag = document.getElementById("f-tag");
  var count = document.getElementById("f-count");
  function apply() {
    var shown = 0, total = 0;
    document.querySelectorAll("article.conv").forEach(function (a) {
      var ok = (!failed.checked || a.dataset.failed === "1") &&
        (!tag.value || JSON.parse(a.dataset.tags).indexOf(tag.value) >= 0);
      var n = JSON.parse(a.dataset.ids).length;
      a.hidden = !ok; total += n; if (ok) shown += n;
    });
    document.querySelectorAll("section.scenario").forEach(function (s) {
      s.hidden = !s.querySelector("article.conv:not([hidden])");
    });
    count.textContent = shown + " of " + total + " conversations shown";
    var h = [];
    if (failed.checked) h.push("failed");
    if (tag.value) h.push("tag=" + encodeURIComponent(tag.value));
    try { history.replaceState(null, "", h.length ? "#" + h.join("&") : " "); } catch (e) {}
  }
  location.hash.slice(1).split("&").forEach(function (p) {
    if (p === "failed") failed.checked = true;
    else if (p.indexOf("tag=") === 0) tag.value = decodeURIComponent(p.slice(4));
  });
  failed.addEventListener("change", apply); tag.addEventListener("change", apply);
  var diff = document.getElementById("f-diff");
  diff.addEventListener("change", function () {
    document.body.classList.toggle("plain", !diff.checked);
  });
  apply();
})();
"""


def esc(value: Any) -> str:
    """Any value as HTML text, safe in element content and in quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def thumbnails(parts: list[dict[str, Any]], scenario_file: Any) -> str:
    """The image parts of a user message as thumbnails: a file beside the scenario, still as
    the run read it (its sha256) and at most THUMB_BYTES, inlined as a data URL; any other
    (a URL, a data URL the record does not hold, a changed or large file) is named only."""
    out = []
    for part in parts:
        image = part.get("image_url") if part.get("type") == "image_url" else None
        if not isinstance(image, dict):
            continue
        ref, data = str(image.get("url")), None
        if isinstance(scenario_file, str) and "://" not in ref and not ref.startswith("data:"):
            path = Path(scenario_file).parent / ref
            with contextlib.suppress(OSError):
                if path.stat().st_size <= THUMB_BYTES:
                    data = path.read_bytes()
        media = image.get("media_type")
        if data is not None and media in IMAGE_TYPES and _digest(data) == image.get("sha256"):
            src = f"data:{media};base64,{base64.b64encode(data).decode()}"
            out.append(f'<img class="thumb" alt="{esc(ref)}" src="{esc(src)}">')
    return f'<div class="thumbs">{"".join(out)}</div>' if out else ""


IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_block(text: str, shown: str | None = None) -> str:
    """A reply or message: wrapped, and collapsed behind a preview when long. `shown` is
    the text as HTML already escaped (with its differences marked), when given."""
    whole = esc(text) if shown is None else shown
    if len(text) <= LONG_CHARS and text.count("\n") < LONG_LINES:
        return f'<div class="text">{whole}</div>'
    preview = text[:PREVIEW_CHARS].replace("\n", " ")
    return (
        f'<details><summary><span class="text">{esc(preview)}…</span> '
        f"({len(text):,} characters)</summary>"
        f'<div class="text">{whole}</div></details>'
    )


def attempts_block(error: dict[str, Any], tries: list[dict[str, Any]]) -> str:
    """The turn a conversation failed at: its error and every attempt sent for it (status,
    latency, tokens) from the usage records."""
    status = f" {error['status']}" if error.get("status") is not None else ""
    sent = f" after {len(tries)} attempt{'s' if len(tries) != 1 else ''}" if tries else ", not sent"
    items = "".join(
        f"<li>attempt {esc(t.get('attempt'))}: {esc(_status(t.get('status')))} · "
        f"{number(t.get('latency_ms'), ' ms')}"
        + (f" · {number(t['output_tokens'])} out tok" if t.get("output_tokens") else "")
        + "</li>"
        for t in tries
    )
    return (
        f'<div class="reply failed"><span class="badge error">failed{sent}</span> '
        f"<b>{esc(error.get('kind', 'unknown'))}{esc(status)}</b>"
        f'<div class="text">{esc(error.get("message", ""))}</div>'
        + (f'<ol class="attempts">{items}</ol>' if items else "")
        + "</div>"
    )


def calls_block(turn: dict[str, Any]) -> str:
    """A turn's tool calls and the results sent, folded."""
    calls = turn.get("tool_calls") or []
    if not calls:
        return ""
    lines = [f"-> {c.get('name')}({c.get('arguments')})\n<- {c.get('result')}" for c in calls]
    return (
        f'<details class="calls"><summary>{len(calls)} tool call{"s" * (len(calls) > 1)}'
        f'</summary><div class="text">{esc(chr(10).join(lines))}</div></details>'
    )


def _status(status: Any) -> str:
    """An attempt's status as the usage record holds it: an HTTP status, else a failure kind."""
    if isinstance(status, int) and not isinstance(status, bool):
        return f"HTTP {status}"
    return str(status or "no status")


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    shown = f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.2f}"
    return shown + unit


def histogram(values: list[float], unit: str, label: str, bins: int = 16) -> str:
    """A small inline SVG histogram of VALUES, with p50 and p95 marked."""
    w, h, pad = 280, 90, 16
    if not values:
        return f'<svg width="{w}" height="{h}" role="img" aria-label="{esc(label)}: no data">' \
               f'<text x="8" y="{h // 2}">no data</text></svg>'  # fmt: skip
    ordered = sorted(values)
    lo, hi = ordered[0], ordered[-1]
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in ordered:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    top, bar_w = max(counts), (w - 2 * pad) / bins
    bars = []
    for i, c in enumerate(counts):
        bh = (h - 2 * pad) * c / top
        x, y = pad + i * bar_w, h - pad - bh
        start, end = lo + span * i / bins, lo + span * (i + 1) / bins
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{bh:.1f}">'
            f"<title>{number(start)}–{number(end)}{esc(unit)}: {c}</title></rect>"
        )
    marks = []
    for q in (0.5, 0.95):
        v = percentile(ordered, q) or 0.0
        x = pad + (v - lo) / span * (w - 2 * pad)
        marks.append(
            f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{pad - 4}" y2="{h - pad}">'
            f"<title>p{int(q * 100)} {number(v)}{esc(unit)}</title></line>"
            f'<text x="{x + (2 if q < 0.9 else -2):.1f}" y="{pad - 6}" '
            f'text-anchor="{"start" if q < 0.9 else "end"}">p{int(q * 100)}</text>'
        )
    return (
        f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{esc(label)}">{"".join(bars)}{"".join(marks)}'
        f'<text x="{pad}" y="{h - 3}">{number(lo)}{esc(unit)}</text>'
        f'<text x="{w - pad}" y="{h - 3}" text-anchor="end">{number(hi)}{esc(unit)}</text></svg>'
    )


def check_item(check: dict[str, Any]) -> str:
    """One check: pass / fail / error mark, its kind (and judge), its reason."""
    if check.get("error"):
        cls, mark = "error", "⚠"
    else:
        cls, mark = ("pass", "✓") if check.get("passed") else ("fail", "✗")
    kind = esc(check.get("kind", "check"))
    if check.get("judge"):
        kind += f" ({esc(check['judge'])})"
    reason = esc(check.get("reason", ""))
    rubric = f' title="{esc(check["rubric"])}"' if check.get("rubric") else ""
    return f'<li class="{cls}"{rubric}>{mark} <b>{kind}</b> {reason}</li>'
