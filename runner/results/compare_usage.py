"""What the compare page takes from a run's usage records (one per HTTP attempt): each
conversation's cost, and the attempts of the turn a failed conversation stopped at."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner.cost import cost, total
from runner.results.reader import RunRecords
from runner.results.stats import target_prices
from runner.usage import Usage, add_usage, no_usage

if TYPE_CHECKING:
    from runner.results.compare_html import Side


def spent(run_dir: Path, manifest: dict[str, Any], sides: list[Side]) -> None:
    """From the run's usage records: each conversation's cost (every attempt's tokens at its
    target's price, as the report counts them, plus its judges' cost from its checks and
    its simulated user's from its record), and
    the attempts of the turn a failed conversation stopped at (those of its newest play)."""
    prices = target_prices(manifest)
    by_id = {r["conversation_id"]: (side, r) for side in sides for r in side.records.values()}
    tokens: dict[str, Usage] = {}
    for attempt in RunRecords(run_dir, manifest).attempts():
        found = by_id.get(attempt["conversation_id"])
        if found is None or attempt.get("judge") or attempt.get("role") == "simulated_user":
            continue
        side, record = found
        add_usage(tokens.setdefault(record["conversation_id"], no_usage()), cast(Usage, attempt))
        if attempt["turn"] == failed_turn(record) and _since(record, attempt):
            side.tries.setdefault(record["conversation_id"], []).append(attempt)
    for cid, (side, record) in by_id.items():
        judges = [c.get("cost_usd") for t in record["turns"] for c in t["checks"]]
        simulated = (record.get("simulation") or {}).get("cost_usd")
        own = cost(tokens.get(cid, no_usage()), prices.get(side.target))
        side.costs[cid] = total([own, *judges, simulated])


def failed_turn(record: dict[str, Any]) -> int | None:
    """The index of the turn a failed conversation stopped at (None when it completed)."""
    return len(record["turns"]) if record["status"] != "ok" else None


def _since(record: dict[str, Any], attempt: dict[str, Any]) -> bool:
    """Whether the attempt was sent in the conversation's newest play (not before a retry)."""
    try:
        started = datetime.fromisoformat(record["started_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return True
    sent = attempt.get("ts")
    return not isinstance(sent, int | float) or sent >= started
