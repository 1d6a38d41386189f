"""How a server states its rate limits, as its provider declares them: the header names
and how a reset reads (runner/client/pacing.py paces to what they say)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

GO_PART = re.compile(r"(\d+(?:\.\d*)?)(h|ms|us|µs|ns|m|s)")
GO_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
MAX_RESET_S = 3600.0  # a reset further away than this is nonsense (an epoch, 1e300): unsaid


def go_duration(text: str) -> float | None:
    """Seconds of a Go duration ("1s", "6m0s", "20ms", "2m59.56s") or of plain seconds
    ("0.5"); None when it is neither."""
    try:
        return float(text)
    except ValueError:
        parts = GO_PART.findall(text)
        if not parts or sum(len(n) + len(u) for n, u in parts) != len(text.strip()):
            return None
        return sum(float(n) * GO_UNIT[u] for n, u in parts)


Reset = Callable[[str], float | None]  # a reset header's text -> seconds until the reset


def reset_seconds(text: str, parse: Reset = go_duration) -> float | None:
    """A reset time read by `parse` (by default as OpenAI writes it, a Go duration); None
    when it does not parse, or is not a finite time within an hour."""
    value = parse(text)
    if value is None or not 0 <= value <= MAX_RESET_S:
        return None
    return value


@dataclass(slots=True, frozen=True)
class RateHeaders:
    """How a server states its budgets, as its provider declares it: the header names (a
    pattern of {field}, one of limit, remaining and reset, and {budget}, requests or tokens)
    and how a reset reads."""

    pattern: str = "x-ratelimit-{field}-{budget}"  # OpenAI's, and many compatible servers'
    reset: Reset = go_duration

    def names(self, budget: str) -> tuple[str, str, str]:
        """The limit, remaining and reset headers of one budget."""
        limit, left, reset = (
            self.pattern.format(field=f, budget=budget) for f in ("limit", "remaining", "reset")
        )
        return limit, left, reset


X_RATELIMIT = RateHeaders()
