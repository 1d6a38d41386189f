"""Token usage normalised across protocols: the shape the providers fill and records hold."""

from __future__ import annotations

from typing import TypedDict, cast


class Usage(TypedDict):
    """Token counts normalised across protocols (reasoning is part of output; cached, read
    from the server's prompt cache, and cache_write, written to it, are parts of input). A
    plain dict, so records hold it as it is."""

    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    total_tokens: int


TOKEN_KEYS: tuple[str, ...] = tuple(Usage.__annotations__)  # the six token counts
NEWER_KEYS = ("cache_write_tokens",)  # counts that records written before them lack (read: 0)


def no_usage() -> Usage:
    """Zero of every count: a reply without usage, or the start of a sum."""
    return cast(Usage, dict.fromkeys(TOKEN_KEYS, 0))


def add_usage(total: Usage, more: Usage) -> Usage:
    """Add `more` into `total`, count by count; returns `total`."""
    for key in TOKEN_KEYS:
        total[key] += more.get(key, 0)  # type: ignore[literal-required]  # older records: 0
    return total
