"""A mock server on its own event loop in a background thread (for synchronous clients)."""

from __future__ import annotations

import asyncio
import threading

from runner.mock.server import MockServer, start_mock
from runner.mock.state import MockOptions

START_TIMEOUT_S = 10.0


class MockThread:
    """Context manager: `with MockThread(opts) as server:` serves until the block ends."""

    def __init__(self, options: MockOptions | None = None, host: str = "127.0.0.1") -> None:
        self.options, self.host = options, host
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: MockServer | None = None

    def start(self) -> MockServer:
        """Start the loop thread and the server on it."""
        self._thread.start()
        coro = start_mock(self.options, self.host)
        self.server = asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_TIMEOUT_S)
        return self.server

    def stop(self) -> None:
        """Close the server, stop the loop and join the thread."""
        if self.server is not None:
            closing = asyncio.run_coroutine_threadsafe(self.server.close(), self.loop)
            closing.result(START_TIMEOUT_S)
            self.server = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self.loop.close()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
