"""Percentiles of a stream of latencies in bounded memory.

Up to EXACT values are kept as they are, and their percentiles are exact (nearest rank).
Past that, values go into buckets of relative width 2 × ERROR on a log scale (DDSketch's
scheme): a bucket's count is all that is kept, and a percentile is its bucket's midpoint,
within ERROR (0.5 %) of the exact nearest-rank value. A run of 10^6 replies keeps a few
thousand buckets at most instead of 10^6 floats.
"""

from __future__ import annotations

import math

EXACT = 4096
ERROR = 0.005
GAMMA = (1 + ERROR) / (1 - ERROR)
LOG_GAMMA = math.log(GAMMA)


class Quantiles:
    """Add values; ask for a percentile."""

    __slots__ = ("values", "buckets", "zeros", "count")

    def __init__(self) -> None:
        self.values: list[float] | None = []  # None once past EXACT
        self.buckets: dict[int, int] = {}
        self.zeros = 0  # values of 0 or less (a bucket of their own)
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if self.values is not None:
            self.values.append(value)
            if len(self.values) > EXACT:
                values, self.values = self.values, None
                for v in values:
                    self._bucket(v)
            return
        self._bucket(value)

    def _bucket(self, value: float) -> None:
        if value <= 0:
            self.zeros += 1
            return
        index = math.ceil(math.log(value) / LOG_GAMMA)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def __len__(self) -> int:
        return self.count

    def quantile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (exact up to EXACT values, else within ERROR)."""
        if not self.count:
            return None
        rank = min(self.count - 1, int(q * self.count))
        if self.values is not None:
            return sorted(self.values)[rank]
        seen = self.zeros
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if rank < seen:
                return 2 * GAMMA**index / (GAMMA + 1)  # the bucket's midpoint
        return None  # not reached: the counts add up to count
