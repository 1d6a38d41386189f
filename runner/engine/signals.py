"""Ctrl-C and SIGTERM before the event loop takes them over (start-up: reading files,
writing the manifest, starting servers): remembered, so that the run then stops at once,
writes its manifest and exits 130, as a signal later in the run does."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
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
