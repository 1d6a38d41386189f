"""A run folder on disk: JSONL files appended and flushed one record at a time, the manifest.

Every JSONL file is written and read through `jsonlines`, with orjson as its encoder when
installed (runner/encoding.py). A line torn by a kill is never read as a record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import jsonlines

from runner.encoding import from_json, to_json
from runner.errors import InputError

TRANSCRIPTS = "transcripts.jsonl"
USAGE = "usage.jsonl"
MANIFEST = "run.json"


class JsonlWriter:
    """Appends one record at a time and flushes it, so a killed run loses nothing finished."""

    def __init__(self, path: Path):
        repair_torn_tail(path)
        self._fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - lives as long as the run
        self._writer = jsonlines.Writer(self._fh, dumps=to_json, flush=True)

    def write(self, record: dict[str, Any]) -> None:
        self._writer.write(record)

    def close(self) -> None:
        self._writer.close()
        self._fh.close()


def repair_torn_tail(path: Path) -> None:
    """End the file on a whole record before appending: a last line cut by a kill is
    removed, and a whole record that only lacks its newline gets it back."""
    try:
        fh = open(path, "rb+")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        end = _last_newline_end(fh, size)
        fh.seek(end)
        if _parses(fh.read()):
            fh.write(b"\n")
        else:
            fh.truncate(end)


def _parses(line: bytes) -> bool:
    try:
        return isinstance(from_json(line), dict)
    except ValueError:
        return False


def _last_newline_end(fh: IO[bytes], size: int) -> int:
    """Offset just after the last newline before `size` (0 when there is none)."""
    pos = size
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        idx = fh.read(step).rfind(b"\n")
        if idx >= 0:
            return pos + idx + 1
    return 0


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole record of a JSONL file, streamed; a line torn by a kill is skipped."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh, jsonlines.Reader(fh, loads=from_json) as reader:
        yield from reader.iter(type=dict, skip_invalid=True, skip_empty=True)


def latest_transcripts(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest transcript record per conversation id: what every reader works from."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(run_dir / TRANSCRIPTS):
        latest[record["conversation_id"]] = record
    return latest


def scan_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, record) of every whole record, streamed; a torn line is skipped."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        offset = 0
        for line in fh:
            start, offset = offset, offset + len(line)
            try:
                record = from_json(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(record, dict):
                yield start, record


def newest_offsets(path: Path) -> dict[str, int]:
    """conversation id -> byte offset of its newest (last) record in a transcripts file."""
    return {record["conversation_id"]: offset for offset, record in scan_jsonl(path)}


def newest_transcripts(run_dir: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) of the newest record per conversation, in file order, streamed.

    Two passes over the file; all that is held is each id's offset (not its record).
    Records appended between the passes (a run still going) are left for the next read."""
    path = run_dir / TRANSCRIPTS
    newest = newest_offsets(path)
    for offset, record in scan_jsonl(path):
        if newest.get(record["conversation_id"]) == offset:
            yield offset, record


def read_at(path: Path, offsets: Iterable[int]) -> Iterator[dict[str, Any]]:
    """The records starting at these byte offsets (as scan_jsonl gave them), in that order."""
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            yield from_json(fh.readline())


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write a whole JSONL file (replacing any), atomically; returns the records written."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "wb") as fh, jsonlines.Writer(fh, dumps=to_json) as writer:
            for record in records:
                writer.write(record)
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return count


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
