"""Server-sent events: one incremental parser shared by every provider."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator

from runner.errors import ApiError, Kind


class SSEParser:
    """Turns bytes, cut anywhere, into (event, data) pairs, in time linear in the input.

    Handles LF, CRLF and CR line ends, multi-line data, comments, a UTF-8 character split
    across reads (invalid UTF-8 becomes U+FFFD) and a byte order mark before the stream. A
    line longer than max_line characters is a malformed reply (no server sends one; a
    hostile one would fill memory).
    """

    __slots__ = ("_pending", "_pending_len", "_cr", "_decoder", "_event", "_data", "max_line")

    def __init__(self, max_line: int | None = None) -> None:
        self._pending: list[str] = []  # the pieces of a line not yet ended
        self._pending_len = 0
        self._cr = False  # the last read ended on a CR: maybe the first half of a CRLF
        # utf-8-sig: a byte order mark before the stream is dropped, as the SSE spec says
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")
        self._event = ""
        self._data: list[str] = []
        self.max_line = max_line

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Parse one read; return the events it completed."""
        text = self._decoder.decode(chunk)
        if self._cr:
            text, self._cr = "\r" + text, False
        if "\r" in text:
            if text.endswith("\r"):
                text, self._cr = text[:-1], True
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._hold(text)
            return []
        lines = text.split("\n")
        if self._pending:
            lines[0] = "".join(self._pending) + lines[0]
            self._pending, self._pending_len = [], 0
        self._hold(lines.pop())
        return self._lines(lines)

    def _hold(self, piece: str) -> None:
        """Keep the start of a line until its end arrives (no copy of what is held)."""
        if not piece:
            return
        self._pending.append(piece)
        self._pending_len += len(piece)
        if self.max_line is not None and self._pending_len > self.max_line:
            raise ApiError(
                Kind.MALFORMED,
                f"an SSE line is longer than the {self.max_line / 2**20:.3g} MB cap "
                "(max_response_mb)",
                retryable=True,
            )

    def close(self) -> list[tuple[str, str]]:
        """Flush at end of stream: a final event without its blank line still counts."""
        rest = "".join(self._pending) + self._decoder.decode(b"", final=True)
        self._pending, self._pending_len, self._cr = [], 0, False
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


async def iter_sse(
    chunks: AsyncIterable[bytes], max_line: int | None = None
) -> AsyncIterator[tuple[str, str]]:
    """Yield (event, data) pairs from a response body's chunks as they arrive."""
    parser = SSEParser(max_line)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
