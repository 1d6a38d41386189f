"""Server-sent events: one incremental parser shared by every provider."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

from aiohttp import StreamReader


class SSEParser:
    """Turns bytes, cut anywhere, into (event, data) pairs.

    Handles LF, CRLF and CR line ends, multi-line data, comments and a UTF-8
    character split across reads.
    """

    __slots__ = ("_buf", "_decoder", "_event", "_data")

    def __init__(self) -> None:
        self._buf = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Parse one read; return the events it completed."""
        buf = self._buf + self._decoder.decode(chunk)
        if "\r" in buf:
            # a CR at the very end may be the first half of a CRLF: keep it for later
            tail = "\r" if buf.endswith("\r") else ""
            buf = buf[: len(buf) - len(tail)].replace("\r\n", "\n").replace("\r", "\n") + tail
        lines = buf.split("\n")
        self._buf = lines.pop()
        return self._lines(lines)

    def close(self) -> list[tuple[str, str]]:
        """Flush at end of stream: a final event without its blank line still counts."""
        rest = self._buf.rstrip("\r")
        self._buf = ""
        return self._lines([rest, ""] if rest else [""])

    def _lines(self, lines: list[str]) -> list[tuple[str, str]]:
        events = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event, "\n".join(self._data)))
                self._event, self._data = "", []
            elif line.startswith("data:"):
                self._data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line.startswith("event:"):
                self._event = line[6:].lstrip(" ")
            # comments (":...") and other fields (id:, retry:) are ignored
        return events


async def iter_sse(content: StreamReader) -> AsyncIterator[tuple[str, str]]:
    """Yield (event, data) pairs from an aiohttp response body as they arrive."""
    parser = SSEParser()
    async for chunk in content.iter_any():
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
