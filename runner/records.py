"""Record shapes and their files: append-only JSONL, flushed per record, and the manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.encoding import to_json
from runner.errors import InputError

VERSION = 1
TRANSCRIPTS = "transcripts.jsonl"
USAGE = "usage.jsonl"
MANIFEST = "run.json"


def utc_now() -> str:
    """A record timestamp: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def dumps(record: dict[str, Any]) -> bytes:
    """One JSONL line: UTF-8, non-ASCII kept as is, compact."""
    return to_json(record) + b"\n"


class JsonlWriter:
    """Appends one record at a time and flushes it, so a killed run loses nothing finished."""

    def __init__(self, path: Path):
        repair_torn_tail(path)
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the run

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(dumps(record))

    def close(self) -> None:
        self._fh.close()


def repair_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a kill, so appends start on a fresh line."""
    try:
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            end = _last_newline_end(fh, size)
            fh.truncate(end)
    except FileNotFoundError:
        return


def _last_newline_end(fh: Any, size: int) -> int:
    """Offset just after the last newline before `size` (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        block = fh.read(step)
        idx = block.rfind(b"\n")
        if idx >= 0:
            return pos + idx + 1
    return 0


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a JSONL file; a torn last line is skipped."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return  # torn by a kill: never half a record
            try:
                yield json.loads(line)
            except ValueError:
                continue


def latest_transcripts(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest transcript record per conversation id: what every reader works from."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(run_dir / TRANSCRIPTS):
        latest[record["conversation_id"]] = record
    return latest


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write run.json atomically (a kill never leaves half a manifest)."""
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / MANIFEST)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; a missing or unreadable one is an input error."""
    try:
        return json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_dir}: not a readable run folder ({MANIFEST}: {exc})") from None
