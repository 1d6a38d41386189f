"""The peer: the official `openai` SDK (AsyncOpenAI, max_retries=10) playing the same
conversations, as a user without dialogue-runner would write it. A bench-only dependency."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.workloads import KEY, TURNS


async def sdk_run(
    base_url: str, n: int, concurrency: int, turns: int, retries: int = 10
) -> dict[str, float]:
    """N conversations, `concurrency` at once; attempts and 429s counted on the wire."""
    import openai

    try:  # the openai SDK's HTTP client: httpx2 in its newer releases, httpx before
        import httpx2 as httpx  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        import httpx  # type: ignore[no-redef, import-not-found, unused-ignore]

    statuses: list[int] = []

    async def count(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    http = httpx.AsyncClient(event_hooks={"response": [count]}, timeout=120)
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=KEY, max_retries=retries, http_client=http
    )
    todo, lost = iter(range(n)), 0

    async def worker() -> None:
        nonlocal lost
        for _ in todo:
            messages: list[dict[str, str]] = []
            try:
                for text in TURNS[:turns]:
                    messages.append({"role": "user", "content": text})
                    reply = await client.chat.completions.create(model="bench", messages=messages)  # type: ignore[arg-type]
                    messages.append(
                        {"role": "assistant", "content": reply.choices[0].message.content or ""}
                    )
            except openai.APIError:
                lost += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    await client.close()
    return {"wall_s": wall, "attempts": len(statuses), "rate_limited": statuses.count(429),
            "lost": lost, "tokens": 0}  # fmt: skip


def sdk_main(args: argparse.Namespace) -> int:
    url = f"http://127.0.0.1:{args.port}/v1"
    print(json.dumps(asyncio.run(sdk_run(url, args.n, args.c, args.turns))))
    return 0
