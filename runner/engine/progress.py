"""Progress on stderr: a tqdm bar on a terminal, plain periodic lines otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Stats = Callable[[], str]


class Progress:
    """Counts finished conversations; shows them at most a few times a second."""

    def __init__(self, total: int, mode: str, stats: Stats, every_s: float = 10.0):
        self.total, self.mode, self.stats = total, mode, stats
        self.done = self.ok = self.failed = 0
        self.every_s = every_s
        self._next = time.monotonic() + (0.25 if mode == "bar" else every_s)
        self._start = time.monotonic()
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm  # only a terminal needs it

            self._bar = tqdm(total=total, file=sys.stderr, unit="conv", smoothing=0.1)

    def finished(self, ok: bool) -> None:
        self.done += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.tick()

    def tick(self) -> None:
        """Show the state now if it is due (batch mode: a batch's state changed)."""
        if self.mode != "none" and time.monotonic() >= self._next:
            self._show()

    def _show(self) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.set_postfix_str(
                f"ok={self.ok} failed={self.failed} {self.stats()}", refresh=False
            )
            self._bar.refresh()
            self._next = now + 0.25
        else:
            print(f"[{now - self._start:6.1f}s] {self.done}/{self.total} ok={self.ok} "
                  f"failed={self.failed} {self.stats()}", file=sys.stderr, flush=True)  # fmt: skip
            self._next = now + self.every_s

    def close(self) -> None:
        if self.mode != "none":
            self._show()
        if self._bar is not None:
            self._bar.close()


def mode_for(no_progress: bool) -> str:
    if no_progress:
        return "none"
    return "bar" if sys.stderr.isatty() else "lines"
