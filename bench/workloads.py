"""The workloads the bench runs, and the scenario and models file it writes for the runner."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

KEY_ENV, KEY = "BENCH_KEY", "bench-key"
TURNS = (
    "Hello! Please introduce yourself briefly.",
    "Remember this: my name is Ada and I like chess.",
    "Now summarise who I am in one sentence.",
)


@dataclass(frozen=True)
class Workload:
    """N conversations of `turns` turns, `c` in flight, against a mock with this latency."""

    name: str
    n: int
    c: int
    latency_ms: float
    turns: int = 3
    stream: bool = False
    runs: int = 3
    min_runs: int = 3  # runs beyond this one only while the time budget allows

    @property
    def requests(self) -> int:
        return self.n * self.turns

    @property
    def ideal_s(self) -> float:
        return self.turns * self.latency_ms / 1000 * math.ceil(self.n / self.c)


def workloads(quick: bool, runs: int | None) -> list[Workload]:
    """In the order they run: Z last, as its third run depends on the time left."""
    full = [
        Workload("S", 200, 50, 50),
        Workload("L", 2000, 200, 50),
        Workload("L-stream", 2000, 200, 50, stream=True),
        Workload("Z", 20000, 200, 0, min_runs=2),
    ]
    if quick:
        full = [replace(w, n=2000 if w.name == "Z" else w.n) for w in full]
        runs = runs or 1
    return [replace(w, runs=runs, min_runs=runs) for w in full] if runs else full


def scale_checks(quick: bool) -> list[Workload]:
    return [
        Workload("inflight-10k", 2000 if quick else 10000, 2000 if quick else 10000, 200,
                 turns=1, runs=1),
        Workload("memory-100k", 10000 if quick else 100000, 200, 0, turns=1, runs=1),
    ]  # fmt: skip


def write_inputs(work: Path, port: int, turns: int) -> tuple[Path, Path]:
    """The scenario (turns user turns) and a models file pointing at the mock on `port`."""
    scenario = work / f"bench-{turns}.yaml"
    scenario.write_text(json.dumps({"id": "bench", "turns": list(TURNS[:turns])}))
    models = work / f"models-{port}.yaml"
    target = {"provider": "openai-chat", "base_url": f"http://127.0.0.1:{port}/v1",
              "model": "bench", "api_key_env": KEY_ENV, "concurrency": 100000}  # fmt: skip
    models.write_text(json.dumps({"targets": {"bench": target}}))
    return scenario, models
