"""The floor: a minimal asyncio + aiohttp client doing the runner's work, nothing more."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.workloads import KEY, TURNS


async def _read_json(resp: aiohttp.ClientResponse) -> str:
    return json.loads(await resp.read())["choices"][0]["message"]["content"]


async def _read_sse(resp: aiohttp.ClientResponse) -> str:
    parts = []
    async for line in resp.content:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        for choice in json.loads(data)["choices"]:
            parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


async def floor(url: str, n: int, concurrency: int, turns: int, stream: bool) -> int:
    """N conversations of `turns` sequential turns, `concurrency` in flight; returns how many."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    read = _read_sse if stream else _read_json
    todo, done = iter(range(n)), 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for _ in todo:
            messages: list[dict[str, str]] = []
            for text in TURNS[:turns]:
                messages.append({"role": "user", "content": text})
                body = json.dumps({"model": "bench", "messages": messages, **extra}).encode()
                async with session.post(url, data=body, headers=headers) as resp:
                    resp.raise_for_status()
                    reply = await read(resp)
                if not reply:
                    raise RuntimeError("empty reply")
                messages.append({"role": "assistant", "content": reply})
            done += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return done


def floor_main(args: argparse.Namespace) -> int:
    # asyncio reads into a fresh 256 KiB buffer per recv; until glibc has freed a block that
    # big, it mmaps and munmaps each one (3 syscalls a response). The runner's startup frees
    # such a block by accident; do the same here so that neither side pays that churn.
    bytearray(1 << 20)  # allocated and freed at once
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    began = time.perf_counter()
    done = asyncio.run(floor(url, args.n, args.c, args.turns, args.stream))
    print(json.dumps({"conversations": done, "wall_s": time.perf_counter() - began}))
    return 0 if done == args.n else 1
