"""The top of the compare page: scenarios × targets (or runs), for deciding.

Each cell is one scenario on one side: its pass state when it is one conversation, else its
pass rate (conversations that completed with every check passed / conversations: vars and
repeated samples each count), coloured, with what it cost (usage records priced as the
report prices them). Per scenario the best side is marked: the highest pass rate, then the
lowest cost per conversation, then the lowest mean latency per reply. Rows are sorted
failing first: by the lowest pass rate of any side, then the mean, then in file order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.results.compare_html import esc
from runner.results.records import outcome
from runner.results.report import money

if TYPE_CHECKING:
    from runner.results.compare_html import Side

INF = float("inf")
BEST = "highest pass rate, then lowest cost per conversation, then lowest latency per reply"


@dataclass
class Cell:
    """One scenario on one side: how its conversations ended and what they cost."""

    passed: int = 0
    total: int = 0
    errors: int = 0  # failed after retries
    kinds: list[str] = field(default_factory=list)  # their error kinds
    costs: list[float] = field(default_factory=list)  # of the conversations whose cost is known
    latencies: list[float] = field(default_factory=list)  # per reply

    def add(self, record: dict[str, Any], cost: float | None) -> None:
        state = outcome(record)
        self.total += 1
        self.passed += state == "pass"
        if state == "error":
            self.errors += 1
            self.kinds.append(str((record.get("error") or {}).get("kind", "unknown")))
        if cost is not None:
            self.costs.append(cost)
        self.latencies += [t["latency_ms"] for t in record["turns"]]

    @property
    def rate(self) -> float | None:
        return self.passed / self.total if self.total else None

    @property
    def cost(self) -> float | None:
        return sum(self.costs) if self.costs else None

    def rank(self) -> tuple[float, float, float]:
        """Sorts the best first: pass rate, cost per conversation, latency per reply."""
        per_conversation = sum(self.costs) / len(self.costs) if self.costs else INF
        latency = sum(self.latencies) / len(self.latencies) if self.latencies else INF
        return -(self.rate or 0.0), per_conversation, latency

    def state(self) -> str:
        """The cell's class: pass, some (passed in part), fail, error (all failed), none."""
        if not self.total:
            return "none"
        if self.passed == self.total:
            return "pass"
        if self.passed:
            return "some"
        return "error" if self.errors == self.total else "fail"


@dataclass
class Matrix:
    """The cells by scenario, one per side; the scenarios failing first; the best sides."""

    sides: list[str]
    rows: list[tuple[str, list[Cell], int | None]]  # scenario, its cells, its best side
    totals: list[Cell]


def build(sides: list[Side], scenarios: Iterable[str]) -> Matrix:
    """The matrix of every record of the sides (those the page leaves out included)."""
    cells = {s: [Cell() for _ in sides] for s in scenarios}
    totals = [Cell() for _ in sides]
    for i, side in enumerate(sides):
        for record in side.records.values():
            cost = side.costs.get(record["conversation_id"])
            cells.setdefault(record["scenario_id"], [Cell() for _ in sides])[i].add(record, cost)
            totals[i].add(record, cost)
    rows = [(s, row, _best(row)) for s, row in cells.items()]
    rows.sort(key=lambda r: _worst(r[1]))
    return Matrix([side.label for side in sides], rows, totals)  # a stable sort: file order


def _worst(row: list[Cell]) -> tuple[float, float]:
    """Sorts failing scenarios first: the lowest pass rate of any side, then the mean."""
    rates = [c.rate for c in row if c.rate is not None] or [1.0]
    return min(rates), sum(rates) / len(rates)


def _best(row: list[Cell]) -> int | None:
    """The best side of a scenario; none with fewer than two sides or when none passed."""
    present = [(cell.rank(), i) for i, cell in enumerate(row) if cell.total]
    if len(present) < 2:
        return None
    rank, best = min(present)
    return best if rank[0] < 0 else None


def render(matrix: Matrix, anchors: dict[str, str]) -> str:
    """The matrix as a table: a row per scenario (linked to its conversations when shown)."""
    head = "".join(f"<th>{esc(label)}</th>" for label in matrix.sides)
    body = []
    for scenario, row, best in matrix.rows:
        name = esc(scenario)
        if scenario in anchors:
            name = f'<a href="#{anchors[scenario]}">{name}</a>'
        shown = "".join(_cell(cell, i == best) for i, cell in enumerate(row))
        winner = esc(matrix.sides[best]) if best is not None else "-"
        body.append(
            f'<tr data-scenario="{esc(scenario)}"><th class="name">{name}</th>{shown}'
            f'<td class="winner">{winner}</td></tr>'
        )
    totals = "".join(_cell(cell, False) for cell in matrix.totals)
    body.append(f'<tr class="total"><th class="name">all scenarios</th>{totals}<td></td></tr>')
    return (
        f'<div class="table-wrap"><table class="matrix"><thead><tr><th>scenario</th>{head}'
        f'<th title="{BEST}">best</th></tr></thead><tbody>{"".join(body)}</tbody>'
        f'</table></div><p class="legend">Each cell: a scenario\'s conversations on one side '
        "(vars and samples each count), pass when completed with every check passed; "
        '<span class="cell pass">all passed</span> <span class="cell some">some passed</span> '
        '<span class="cell fail">none passed</span> <span class="cell error">all failed after '
        "retries</span>. Failing scenarios first. ★ best: "
        f"{BEST}. Cost: every attempt's tokens at the target's price, judges included.</p>"
    )


def _cell(cell: Cell, best: bool) -> str:
    state = cell.state()
    if state == "none":
        return '<td class="cell none">not run</td>'
    if cell.total == 1:
        shown = {"pass": "pass", "fail": "checks failed"}.get(state) or f"failed: {cell.kinds[0]}"
    else:
        shown = f"{cell.passed}/{cell.total}"
        if cell.errors:
            shown += f" · {cell.errors} failed"
    rate = f"{100 * (cell.rate or 0.0):.0f} % passed ({cell.passed} of {cell.total})"
    spent = ""
    if cell.cost is not None:
        spent = f"${money(cell.cost)}"
        if len(cell.costs) > 1:
            spent += f" · ${money(cell.cost / len(cell.costs))}/conv"
        spent = f'<div class="cost">{spent}</div>'
    star = '<span class="star">★ </span>' if best else ""
    return (
        f'<td class="cell {state}{" best" if best else ""}" title="{rate}">'
        f'<div class="state">{star}{esc(shown)}</div>{spent}</td>'
    )
