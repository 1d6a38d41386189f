"""Estimated cost: a target's `price` (USD per million tokens) applied to token counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# price keys of a target; cached input (read from the prompt cache) defaults to the input
# price, input written to the cache to 1.25 times it, reasoning to the output price
PRICE_KEYS = (
    "input_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "output_per_mtok",
    "reasoning_per_mtok",
)
CACHE_WRITE_FACTOR = 1.25  # Anthropic's 5-minute cache writes

Price = Mapping[str, float]


def cost(tokens: Mapping[str, Any], price: Price | None) -> float | None:
    """Estimated USD of these tokens; None when the target has no price.

    Cached and cache-write tokens are parts of the input and reasoning tokens part of the
    output (usage.Usage), so each part is charged at its own price and the rest at the
    plain one."""
    if not price:
        return None
    input_price = price.get("input_per_mtok", 0.0)
    output_price = price.get("output_per_mtok", 0.0)
    cached = tokens.get("cached_tokens", 0)
    written = tokens.get("cache_write_tokens", 0)
    reasoning = tokens.get("reasoning_tokens", 0)
    return (
        (tokens.get("input_tokens", 0) - cached - written) * input_price
        + cached * price.get("cached_input_per_mtok", input_price)
        + written * price.get("cache_write_per_mtok", CACHE_WRITE_FACTOR * input_price)
        + (tokens.get("output_tokens", 0) - reasoning) * output_price
        + reasoning * price.get("reasoning_per_mtok", output_price)
    ) / 1e6


def target_price(target: Mapping[str, Any]) -> dict[str, float] | None:
    """A target's price as its run pays it (a target as run.json lists it): in batch mode,
    each figure times its `batch_price_factor`."""
    price = target.get("price")
    if not price or not target.get("batch"):
        return dict(price) if price else None
    factor = target.get("batch_price_factor", 0.5)
    return {k: v * factor for k, v in price.items()}


def price_problem(price: Mapping[str, object]) -> str | None:
    """What is wrong with a `price` mapping of a models file, or None."""
    unknown = sorted(set(price) - set(PRICE_KEYS))
    if unknown:
        return f"unknown price key {', '.join(unknown)}; use {', '.join(PRICE_KEYS)}"
    for key, value in price.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return f"price '{key}' must be a number >= 0 (USD per million tokens), got {value!r}"
    return None


def total(costs: list[float | None]) -> float | None:
    """The sum of the known costs, rounded to a millionth of a dollar; None when none is known."""
    known = [c for c in costs if c is not None]
    return round(sum(known), 6) if known else None
