"""The ranges of the numbers a user gives, in the models file and on the command line: each
is finite and within its bounds, checked at load time (exit 2), before anything is sent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DAY_S = 86_400.0  # no timeout or wait is longer: past it a timer overflows or never ends


@dataclass(frozen=True, slots=True)
class Range:
    """Numbers from low (excluded when low_open) to high, finite; whole ones when integer."""

    low: float
    high: float
    low_open: bool = False
    integer: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return math.isfinite(value) and above and value <= self.high

    def text(self) -> str:
        """'a number > 0 and <= 86400', as a message says what is wanted."""
        kind = "an integer" if self.integer else "a number"
        return f"{kind} {'>' if self.low_open else '>='} {self.low:g} and <= {self.high:g}"


SECONDS = Range(0, DAY_S, low_open=True)
SECONDS_OR_OFF = Range(0, DAY_S)  # 0 turns it off
RETRIES = Range(0, 100, integer=True)  # past about 1000 the backoff's 2**n overflows a float
IN_FLIGHT = Range(1, 100_000, integer=True)
RATE = Range(0, 1e12, low_open=True)
USD = Range(0, 1e9)
REPEAT = Range(1, 1_000_000, integer=True)
WORKERS = Range(1, 10_000, integer=True)  # --executor ray's workers

# the numeric fields of a models-file target
TARGET = {
    "concurrency": IN_FLIGHT,
    "rpm": RATE,
    "tpm": RATE,
    "timeout_s": SECONDS,
    "connect_timeout_s": SECONDS,
    "first_byte_timeout_s": SECONDS,
    "idle_timeout_s": SECONDS_OR_OFF,
    "max_response_mb": Range(0.001, 1e6),
    "max_retries": RETRIES,
    "max_wait_s": SECONDS_OR_OFF,
    "fail_fast_after": Range(0, 1_000_000, integer=True),
    "batch_poll_s": Range(0.001, DAY_S),
    "batch_price_factor": Range(0, 1),
}

# the mock server's numeric options (`mock-server`, and `mock:` of a models-file target)
FRACTION = Range(0, 1)
MILLISECONDS = Range(0, DAY_S * 1000)
RATE_OR_OFF = Range(0, 1e12)  # 0: no limit
MOCK = {
    "latency_ms": MILLISECONDS,
    "jitter_ms": MILLISECONDS,
    "seed": Range(-(2**63), 2**63 - 1, integer=True),
    "error_rate": FRACTION,
    "cut_rate": FRACTION,
    "malformed_rate": FRACTION,
    "slow_rate": FRACTION,
    "batch_delay_ms": MILLISECONDS,
    "batch_fail_rate": FRACTION,
    "batch_expire": Range(0, 1_000_000, integer=True),
    "slow_ms": MILLISECONDS,
    "retry_after_ms": Range(0, DAY_S * 1000, integer=True),
    "max_stored_responses": Range(1, 10_000_000, integer=True),
    "limit_rpm": RATE_OR_OFF,
    "limit_tpm": RATE_OR_OFF,
    "limit_window_s": Range(0.001, 3600),
    "limit_concurrency": Range(0, 100_000, integer=True),
}
