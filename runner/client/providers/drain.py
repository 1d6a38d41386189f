"""Connection reuse after a stream: read what is left of the body once the reply is complete.

A stream's reader stops at its terminal event ([DONE], response.completed), but the body
usually has a little more to come (the chunked encoding's last chunk, a trailing blank
line). aiohttp closes a connection whose body was not read to the end, so without this
every streamed call would pay a new TCP (over HTTPS, TLS) handshake.
"""

from __future__ import annotations

import asyncio

import aiohttp

DRAIN_S = 1.0  # a server that keeps the body open after its terminal event costs this much
DRAIN_BYTES = 64 * 1024  # past this, closing the connection is cheaper than reading on


async def drain(content: aiohttp.StreamReader) -> None:
    """Read the rest of a finished body, within DRAIN_S and DRAIN_BYTES; on any trouble give
    up quietly (the connection is then closed, as it would have been without draining)."""
    read = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            while read <= DRAIN_BYTES and not content.at_eof():
                read += len(await content.readany())
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
