"""What `--executor ray` costs and gives on this machine (`python -m bench --only ray`).

- cpu: a CPU-bound workload (no latency, many short conversations) run locally and with
  `--executor ray --workers 2`, each starting its own Ray instance: the whole wall, Ray's
  start-up (the manifest's executor.startup_s) apart, and conversations per second without
  it.
- ray-rss: 10^4 and 10^5 one-turn conversations through Ray: the driver's peak RSS (the
  manifest's executor.driver_peak_rss_mb), flat if records are not held.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import PY, Server, fail, measure
from bench.workloads import write_inputs


@dataclass(frozen=True)
class RayRun:
    """N conversations of TURNS turns, C in flight, by EXECUTOR (with WORKERS for ray)."""

    name: str
    n: int
    turns: int
    c: int
    executor: str
    workers: int = 2


def ray_runs(quick: bool) -> list[RayRun]:
    cpu = 2000 if quick else 10_000
    big = 20_000 if quick else 100_000
    return [
        RayRun("cpu", cpu, 3, 200, "local"),
        RayRun("cpu", cpu, 3, 200, "ray"),
        RayRun("ray-rss", big // 10, 1, 200, "ray"),
        RayRun("ray-rss", big, 1, 200, "ray"),
    ]


def run_ray(r: RayRun, server: Server, env: dict[str, str], work: Path) -> dict[str, Any]:
    """One run, measured as the bench measures the runner; its manifest's figures."""
    scenario, models = write_inputs(work, server.port, r.turns)
    out, run_id = work / "out", f"{r.name}-{r.executor}-{time.monotonic_ns()}"
    cmd = [PY, "-m", "runner", "run", str(scenario), "-m", "bench", "--models", str(models),
           "-c", str(r.c), "--repeat", str(r.n), "--no-progress", "-o", str(out),
           "--run-id", run_id, "--executor", r.executor]  # fmt: skip
    cmd += ["--workers", str(r.workers)] if r.executor == "ray" else []
    sample, code, text = measure(cmd, env, server)
    manifest = json.loads((out / run_id / "run.json").read_text()) if code == 0 else {}
    shutil.rmtree(out / run_id, ignore_errors=True)
    if code != 0 or manifest["counts"]["ok"] != r.n:
        fail(f"runner {r.name} --executor {r.executor}", code, text)
    executor = manifest.get("executor") or {}
    startup = executor.get("startup_s", 0.0)
    played = manifest["elapsed_s"] - startup
    return {"run": r.__dict__, "wall_s": sample.wall_s, "elapsed_s": manifest["elapsed_s"],
            "startup_s": startup, "conv_per_s": r.n / played, "cpu_s": sample.cpu_s,
            "driver_rss_mb": executor.get("driver_peak_rss_mb", sample.rss_mb),
            "driver_cpu_s": executor.get("driver_cpu_s", sample.cpu_s)}  # fmt: skip


def print_ray(results: list[dict[str, Any]]) -> None:
    print("workload  executor     conv  wall s  Ray start s  played s  conv/s  driver RSS MB"
          "  driver CPU µs/conv")  # fmt: skip
    for x in results:
        r = x["run"]
        who = r["executor"] + (f" ×{r['workers']}" if r["executor"] == "ray" else "")
        print(f"{r['name']:<9} {who:<9} {r['n']:>7} {x['wall_s']:>7.2f} {x['startup_s']:>12.2f} "
              f"{x['elapsed_s'] - x['startup_s']:>9.2f} {x['conv_per_s']:>7.0f} "
              f"{x['driver_rss_mb']:>14.1f} {x['driver_cpu_s'] / r['n'] * 1e6:>19.0f}")  # fmt: skip
