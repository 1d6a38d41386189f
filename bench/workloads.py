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
    table: bool = False  # n rows of a vars_file (then the run is exported too), not --repeat n

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
        Workload("memory-1m", 100000 if quick else 1000000, 200, 0, turns=1, runs=1, table=True),
    ]  # fmt: skip


def write_inputs(work: Path, port: int, turns: int, rows: int = 0) -> tuple[Path, Path]:
    """The scenario (turns user turns) and a models file pointing at the mock on `port`.

    With ROWS, the scenario's first turn names a person from a vars_file of that many rows:
    a dataset of one conversation per row."""
    scenario = work / f"bench-{turns}-{rows}.yaml"
    spec: dict[str, object] = {"id": "bench", "turns": list(TURNS[:turns])}
    if rows:
        table = work / f"people-{rows}.csv"
        with open(table, "w", encoding="utf-8") as fh:
            fh.write("name,city\n")
            fh.writelines(f'person {i},"City {i % 1000}, Country"\n' for i in range(rows))
        spec["turns"] = ["Hello! I am {{name}} from {{city}}.", *TURNS[1:turns]]
        spec["vars_file"] = table.name
    scenario.write_text(json.dumps(spec))
    models = work / f"models-{port}.yaml"
    target = {"provider": "openai-chat", "base_url": f"http://127.0.0.1:{port}/v1",
              "model": "bench", "api_key_env": KEY_ENV, "concurrency": 100000}  # fmt: skip
    models.write_text(json.dumps({"targets": {"bench": target}}))
    return scenario, models
