"""Ctrl-C and SIGTERM before the event loop takes them over (start-up: reading files,
writing the manifest, starting servers): remembered, so that the run then stops at once,
writes its manifest and exits 130, as a signal later in the run does."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from runner.errors import Exit

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Early:
    received = 0  # signals seen while only these handlers were installed


def _note(signum: int, frame: FrameType | None) -> None:
    """The first signal is remembered; a second one stops at once (as during the run)."""
    _Early.received += 1
    if _Early.received > 1:
        raise SystemExit(Exit.INTERRUPTED)


def pending() -> bool:
    """A signal arrived during start-up (the run should stop before it begins)."""
    return _Early.received > 0


@contextlib.contextmanager
def remembered() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM are noted instead of ending the process; the
    handlers before are restored after (only the main thread may set them)."""
    before: dict[signal.Signals, Any] = {}
    _Early.received = 0
    with contextlib.suppress(ValueError):  # not the main thread: nothing to take over
        for sig in SIGNALS:
            before[sig] = signal.signal(sig, _note)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def handlers() -> dict[signal.Signals, Any]:
    """The Python-level handlers now installed, to restore after the loop's own."""
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


def restore(saved: dict[signal.Signals, Any]) -> None:
    with contextlib.suppress(ValueError, TypeError):
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


class Stopper:
    """A stop asked from another thread (a Ray worker told by its driver to stop), taken by
    the pool as a first Ctrl-C; one asked before the pool armed it is taken when it does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        self.asked = False

    def arm(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
        with self._lock:
            self._armed = (loop, stop)
            asked = self.asked
        if asked:
            loop.call_soon(stop)

    def stop(self) -> None:
        with self._lock:
            self.asked = True
            armed = self._armed
        if armed is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                armed[0].call_soon_threadsafe(armed[1])


@contextlib.contextmanager
def counted() -> Iterator[Callable[[], int]]:
    """While inside, SIGINT and SIGTERM are only counted (one during start-up too): the
    caller polls the count (a Ray driver between batches of records)."""
    before: dict[signal.Signals, Any] = {}

    def count(signum: int, frame: FrameType | None) -> None:
        _Early.received += 1

    with contextlib.suppress(ValueError):  # not the main thread: nothing to take over
        for sig in SIGNALS:
            before[sig] = signal.signal(sig, count)
    try:
        yield lambda: _Early.received
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
