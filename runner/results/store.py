"""A run folder on disk: JSONL files appended one checked record at a time, the manifest,
and the lock that keeps a second process out of a run folder in use.

Records are encoded as strict JSON (runner/encoding.py) and each is written whole or not
at all: a failed or short write is cut away, so the file ends on its last whole record, and
raises WriteError. Every JSONL file is written and read through `jsonlines`; a line torn by
a kill is never read as a record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import jsonlines

from runner.encoding import from_json, strict, to_json
from runner.errors import InputError, WriteError
from runner.outfile import output_file
from runner.results.records import utc_now

TRANSCRIPTS = "transcripts.jsonl"
USAGE = "usage.jsonl"
MANIFEST = "run.json"
BATCHES = "batches.jsonl"  # batch mode: each batch as created and as it ended (client/batch.py)


LOCK = "run.lock"
LINK_CHECK_S = 0.05  # how often an appended file is checked to still be in its folder
# the files a run writes in its folder: none of them may be a symbolic link
RUN_FILES = (TRANSCRIPTS, USAGE, BATCHES, MANIFEST, MANIFEST + ".tmp", LOCK)
# a manifest that cannot be replaced for these reasons is rewritten in place, if it can be:
# a full disk (no room for a new file), a folder made read-only (no new file allowed in it)
IN_PLACE = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM}


class JsonlWriter:
    """Appends one record at a time, each straight to the OS as one checked write of its
    encoded line, so a killed run loses nothing finished; a write that fails or falls short
    raises WriteError and leaves the file ending on its last whole record. (jsonlines reads
    every file; writing through it cost a buffer, a flush and four calls per record.)"""

    def __init__(self, path: Path, run_id: str | None = None):
        self._file = _RecordFile(path)
        self.run_id = run_id  # stamped on every record: readers know the run's own records

    def write(self, record: dict[str, Any]) -> None:
        if self.run_id is not None:
            record["run_id"] = self.run_id
        self._file.append(to_json(record) + b"\n")

    def close(self) -> None:
        self._file.close()


class _RecordFile:
    """A record file opened for appending whole lines, each in one checked write."""

    def __init__(self, path: Path):
        self.path = path
        self.failed: WriteError | None = None
        try:
            repair_torn_tail(path)
            self._fd = open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._size = os.fstat(self._fd).st_size
            self._checked = -math.inf  # the first record looks
        except OSError as exc:
            raise write_error(path, exc) from None

    def append(self, data: bytes) -> None:
        if self.failed is not None:  # once a write failed, nothing more goes in (flapping space)
            raise self.failed
        try:
            self._check_linked()
            written = 0
            while written < len(data):
                n = os.write(self._fd, data[written:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "a write fell short")
                written += n
        except OSError as exc:
            self._cut_back()
            self.failed = write_error(self.path, exc)
            raise self.failed from None
        self._size += written

    def _check_linked(self) -> None:
        """A file deleted during the run would take appends to nowhere: it is looked at
        every LINK_CHECK_S (an fstat per record cost more than the write itself)."""
        now = time.monotonic()
        if now - self._checked < LINK_CHECK_S:
            return
        self._checked = now
        if os.fstat(self._fd).st_nlink == 0:
            raise FileNotFoundError(errno.ENOENT, "the file was deleted during the run")

    def _cut_back(self) -> None:
        """Cut away whatever part of a record got written (best effort: the disk may refuse)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)

    def close(self) -> None:
        os.close(self._fd)


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one-line message of a failed write: the file and the system's reason."""
    if exc.errno == errno.ELOOP:
        return WriteError(f"could not write {path}: {LINKED}")
    return WriteError(f"could not write {path}: {exc.strerror or exc}")


LINKED = "it is a symbolic link (files are never written through links, outside their folder)"


def open_own(path: Path, flags: int) -> int:
    """Open a file the runner writes without following a symbolic link in its place (a
    planted link would have it truncate or append to a file elsewhere): OSError ELOOP."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def fresh_file(path: Path) -> IO[bytes]:
    """A new, empty file at `path` for writing: whatever was there (a stale temporary file,
    a link) is removed first, and the file is created, never opened through a link."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return os.fdopen(open_own(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")


def refuse_links(run_dir: Path) -> None:
    """InputError when a file a run writes is a symbolic link in the run folder."""
    links = [name for name in RUN_FILES if (run_dir / name).is_symlink()]
    if links:
        raise InputError(
            f"{run_dir}: {', '.join(links)} "
            f"{'is a symbolic link' if len(links) == 1 else 'are symbolic links'}; a run "
            "writes only files of its own folder, never through links (remove them, then "
            "run again)"
        )


def repair_torn_tail(path: Path) -> None:
    """End the file on a whole record before appending: a last line cut by a kill is
    removed, and a whole record that only lacks its newline gets it back."""
    try:
        fh = os.fdopen(open_own(path, os.O_RDWR), "rb+")
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


def lines_of(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """(line number, byte offset, the object or None) of every line but blank ones."""
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        offset = 0
        for number, line in enumerate(fh, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                record = from_json(line)
            except ValueError:
                record = None
            yield number, start, record if isinstance(record, dict) else None


def scan_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, record) of every whole record, streamed; a torn line is skipped."""
    for _, offset, record in lines_of(path):
        if record is not None:
            yield offset, record


def read_at(path: Path, offsets: Iterable[int]) -> Iterator[dict[str, Any]]:
    """The records starting at these byte offsets (as scan_jsonl gave them), in that order."""
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            yield from_json(fh.readline())


def write_jsonl(path: Path | str, records: Iterable[dict[str, Any]]) -> int:
    """Write a whole JSONL file: a regular one replaced atomically, `-` or a special file
    (a FIFO, /dev/stdout) written in place (runner/outfile.py); returns the records written."""
    count = 0
    with output_file(path) as fh, jsonlines.Writer(fh, dumps=to_json) as writer:
        for record in records:
            writer.write(record)
            count += 1
    return count


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write run.json atomically (a kill never leaves half a manifest); WriteError if it
    cannot be written. On a full disk or in a read-only folder it is rewritten in place
    (when it fits in the space the old one holds), so a run still says how it ended."""
    text = json.dumps(strict(manifest), ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    data = text.encode("utf-8")
    path, tmp = run_dir / MANIFEST, run_dir / (MANIFEST + ".tmp")
    try:
        with fresh_file(tmp) as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exc.errno in IN_PLACE and _rewrite_in_place(path, data):
            return
        raise write_error(path, exc) from None


def _rewrite_in_place(path: Path, data: bytes) -> bool:
    """Overwrite a file within the blocks it already has (no new space needed)."""
    try:
        with os.fdopen(open_own(path, os.O_RDWR), "r+b") as fh:
            if len(data) > os.fstat(fh.fileno()).st_blocks * 512:
                return False
            fh.write(data)
            fh.truncate()
            fh.flush()
    except OSError:
        return False
    return True


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; a missing or unreadable one is an input error."""
    try:
        return json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_dir}: not a readable run folder ({MANIFEST}: {exc})") from None


class RunLock:
    """An exclusive lock on a run folder (flock on run.lock) held for the whole run, so two
    processes never play the same conversations; the file names its holder."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        refuse_links(self.path.parent)
        try:
            fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise InputError(
                f"{self.path.parent} is in use by {holder} ({LOCK}); "
                "wait for it to end or stop it, then --resume"
            ) from None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode() + b"\n", 0)
        except OSError:
            pass  # the lock holds without its note
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race)
            self._fd = None
