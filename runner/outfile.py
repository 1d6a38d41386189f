"""A file a command writes at a path the user named (-o, --junit, --html), safely.

- `-` is standard output;
- a path that exists and is not a regular file (a FIFO, a terminal, /dev/null, /dev/stdout,
  or a symlink to one) is opened and written in place, never replaced: replacing
  /dev/stdout as root would put a regular file where the device was;
- a folder is refused;
- anything else is written to a new temporary file beside the real file (symlinks
  followed, so a link stays a link) and renamed over it once complete: a failed or
  interrupted write leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from runner.errors import InputError

STDOUT = "-"
SPECIAL_TREES = ("/dev/", "/proc/")  # a path through these names a device or a process's fd


def is_stdout(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path) == STDOUT


@contextlib.contextmanager
def output_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write the output to (see the module's doc); InputError naming the
    path and the system's reason when it cannot be written."""
    name = os.fspath(path)
    try:
        if name == STDOUT:
            sys.stdout.flush()
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        elif _in_place(name):
            with open(name, "ab") as fh:  # appending: a shell's `>` already emptied it
                yield fh
        else:
            with _replacing(Path(os.path.realpath(name))) as fh:
                yield fh
    except BrokenPipeError:  # the reader went away (`| head`): not the path's fault
        raise
    except OSError as exc:
        raise InputError(f"cannot write {name}: {exc.strerror or exc}") from None


def _in_place(name: str) -> bool:
    """Whether the path is to be written in place: it exists and is not a regular file, or
    it leads (by itself or through a symlink) into /dev or /proc; a folder is refused."""
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        raise InputError(f"cannot write {name}: it is a folder")
    return not stat.S_ISREG(mode) or any(p.startswith(SPECIAL_TREES) for p in _hops(name))


def _hops(name: str) -> Iterator[str]:
    """The path and each symlink it leads through, as absolute paths (at most 40 links)."""
    current = os.path.abspath(name)
    for _ in range(40):
        yield current
        if not os.path.islink(current):
            return
        current = os.path.join(os.path.dirname(current), os.readlink(current))
        current = os.path.abspath(current)


@contextlib.contextmanager
def _replacing(real: Path) -> Iterator[BinaryIO]:
    """A new file beside REAL (with REAL's permissions, when it exists), renamed over it when
    the block ends without an error."""
    real.parent.mkdir(parents=True, exist_ok=True)
    tmp = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            if real.exists():  # a file kept private stays so
                os.fchmod(fh.fileno(), stat.S_IMODE(os.stat(real).st_mode))
            yield fh
        os.replace(tmp, real)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
