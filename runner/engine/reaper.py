"""A watchdog for the Ray instance a run starts for itself: when the driver is gone (ended
or killed with -9), every process the instance was seen to have is ended too.

Ray ends most of its processes when the driver that started them dies, but its agents
(ray::DashboardAgent, ray::RuntimeEnvAgent) see the raylet gone and then hang instead of
exiting. So the driver starts this watchdog in a session of its own, tells it the pids of
its descendants (read from /proc) once Ray is up, and the watchdog, on reading the end of
its stdin (the driver's end of the pipe closes however the driver ends), kills each of
them that still runs (the same process: its start time is checked, never a reused pid).
Linux only (/proc); elsewhere nothing is watched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (name) "
    return int(fields[1]), fields[19]


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ROOT."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


class Watchdog:
    """The driver's side: the watchdog process and the pipe it reads."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if PROC.is_dir():
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner.engine.reaper"],
                stdin=subprocess.PIPE,
                start_new_session=True,  # neither Ctrl-C nor the driver's death reach it
            )

    def watch(self) -> None:
        """Tell the watchdog the driver's descendants as they are now."""
        if self.proc is None or self.proc.stdin is None:
            return
        lines = "".join(f"{pid} {start}\n" for pid, start in descendants(os.getpid()))
        with contextlib.suppress(OSError):
            self.proc.stdin.write(lines.encode())
            self.proc.stdin.flush()

    def close(self) -> None:
        """The driver is done: the watchdog ends what is left and exits."""
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.wait()


@contextlib.contextmanager
def watched() -> Iterator[Watchdog]:
    dog = Watchdog()
    try:
        yield dog
    finally:
        dog.close()


def reap(lines: IO[bytes]) -> None:
    """Read 'pid start' lines until the end, then kill each still the same process."""
    seen: dict[int, str] = {}
    for line in lines:
        number, start = line.split()
        seen[int(number)] = start.decode()
    seen.pop(os.getpid(), None)
    for pid, began in seen.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == began:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reap(sys.stdin.buffer)
