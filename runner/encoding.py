"""Compact JSON for the hot path: request bodies and JSONL records."""

from __future__ import annotations

import json
from typing import Any

# one encoder, reused: json.dumps with options builds a new one per call, and our
# values are plain trees (no cycles), so the circular-reference check is skipped
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def to_json(value: Any) -> bytes:
    """UTF-8 JSON, non-ASCII kept as is, no spaces."""
    return _encode(value).encode()
