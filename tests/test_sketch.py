"""Percentiles in bounded memory (runner/results/sketch.py): exact for small runs, within
0.5 % after."""

from __future__ import annotations

import math
import random

import pytest

from runner.results.sketch import ERROR, EXACT, Quantiles


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


def test_up_to_exact_values_the_percentiles_are_exact():
    rng = random.Random(3)
    values = [rng.uniform(0, 500) for _ in range(EXACT)]
    sketch = Quantiles()
    for v in values:
        sketch.add(v)
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert sketch.quantile(q) == nearest_rank(values, q)
    assert Quantiles().quantile(0.5) is None


@pytest.mark.parametrize("seed", [1, 2])
def test_past_that_each_percentile_is_within_half_a_percent_and_memory_is_bounded(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(5, 1.5) for _ in range(200_000)] + [0.0] * 100
    sketch = Quantiles()
    for v in values:
        sketch.add(v)
    assert sketch.values is None and len(sketch) == len(values)
    for q in (0.0001, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999):
        exact = nearest_rank(values, q)
        got = sketch.quantile(q)
        assert got == exact == 0.0 or abs(got - exact) <= ERROR * exact, (q, got, exact)
    # the buckets span the values' range on a log scale: a few thousand, whatever the count
    assert len(sketch.buckets) < 2000
