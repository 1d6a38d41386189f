"""Workloads at a provider's limit: the mock enforces a request, token or in-flight limit and
each client finds it (or is told it). Reported: wall time of the run over the ideal the limit
allows, and the share of requests wasted on 429s.

Wall time is the run's own (the runner's manifest `elapsed_s`; the SDK client's time around
its conversations), not the process's: the limit governs the run, not Python's start-up.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.measure import PY, Server, count_ok, fail, measure, mock_stats
from bench.workloads import write_inputs

N, C, LATENCY_MS = 500, 200, 50.0
SIDES = ("runner", "runner told", "openai SDK")
FLOOR = "floor c=20"  # the minimal aiohttp client at exactly the server's concurrency


@dataclass(frozen=True)
class Limited:
    """One limit: the mock's options, and what the models file says when the runner is told."""

    name: str
    mock: dict[str, Any]
    told: dict[str, Any]
    n: int = N
    c: int = C
    turns: int = 3
    runs: int = 3
    sides: tuple[str, ...] = ("runner",)

    def ideal_s(self, tokens: int) -> float:
        """The shortest run the limit allows: what the first burst (the window's worth) does
        not cover, at the limit's rate, plus one reply's latency; for in-flight, the waves of
        requests."""
        requests, latency = self.n * self.turns, LATENCY_MS / 1000
        if "limit_concurrency" in self.mock:
            return requests * latency / self.mock["limit_concurrency"]
        key, used = ("limit_tpm", tokens) if "limit_tpm" in self.mock else ("limit_rpm", requests)
        rate = self.mock[key] / 60
        return max(0.0, used - rate * self.mock.get("limit_window_s", 60.0)) / rate + latency


def matrix(name: str, per_minute: dict[str, float]) -> list[Limited]:
    """A limit enforced over windows of 1 s (also with the runner told it, and the SDK),
    0.1 s and 10 s, with OpenAI's headers and with none (429 + Retry-After only)."""
    rows = []
    for window in (1.0, 0.1, 10.0):
        for headers in ("openai", "none"):
            rate = per_minute[f"{window:g}"]
            key = "limit_rpm" if name == "req/s" else "limit_tpm"
            mock = {key: rate, "limit_window_s": window, "limit_headers": headers}
            first = window == 1.0 and headers == "openai"
            label = f"{name} {window:g}s" + ("" if headers == "openai" else " no hdr")
            told = {key[6:]: rate} if first else {}  # rpm / tpm
            rows.append(Limited(label, mock, told,
                                sides=SIDES if first else ("runner",)))  # fmt: skip
    return rows


def limited_workloads(runs: int | None) -> list[Limited]:
    chosen = [
        *matrix("req/s", {"1": 300 * 60, "0.1": 300 * 60, "10": 100 * 60}),
        Limited("req/s 0.1s window hdr",  # the server issue 16 met: remaining of the window
                {"limit_rpm": 300 * 60, "limit_window_s": 0.1, "limit_headers": "window"}, {}),
        *matrix("tokens/s", {"1": 30000 * 60, "0.1": 30000 * 60, "10": 8000 * 60}),
        Limited("in-flight", {"limit_concurrency": 20}, {"concurrency": 20},
                sides=(*SIDES, FLOOR)),
        Limited("in-flight hdr", {"limit_concurrency": 20, "limit_rpm": 10**7}, {}),
    ]  # fmt: skip
    return [replace(w, runs=runs) for w in chosen] if runs else chosen


def start_server(w: Limited) -> tuple[subprocess.Popen[str], Server]:
    """A fresh mock server with the workload's limit (each run starts with full buckets)."""
    cmd = [PY, "-m", "runner", "mock-server", "--port", "0", "--latency-ms", str(LATENCY_MS)]
    for key, value in w.mock.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"bench: the mock server did not start: {line!r}")
    return proc, Server(int(line.rsplit(":", 1)[1]), proc.pid)


def run_runner(w: Limited, server: Server, env: dict[str, str], work: Path, told: bool) -> dict:
    scenario, models = write_inputs(work, server.port, w.turns)
    target = json.loads(models.read_text())["targets"]["bench"]
    target.pop("concurrency")  # not told: the models file's defaults, as a user writes it
    target.update(w.told if told else {})
    models.write_text(json.dumps({"targets": {"bench": target}}))
    out, run_id = work / "out", f"limited-{time.monotonic_ns()}"
    cmd = [PY, "-m", "runner", "run", str(scenario), "-m", "bench", "--models", str(models),
           "-c", str(w.c), "--repeat", str(w.n), "--no-progress", "-o", str(out),
           "--run-id", run_id]  # fmt: skip
    sample, code, text = measure(cmd, env, server)
    run_dir = out / run_id
    if code not in (0, 3):  # 3: conversations lost, counted below
        fail(f"runner {w.name}", code, text)
    statuses = []
    with open(run_dir / "usage.jsonl", "rb") as fh:
        for line in fh:
            statuses.append(json.loads(line)["status"])
    tokens = int(mock_stats(server)["tokens_admitted"])  # what the limit charged
    manifest = json.loads((run_dir / "run.json").read_text())
    lines, ok = count_ok(run_dir / "transcripts.jsonl")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"wall_s": manifest["elapsed_s"], "process_s": sample.wall_s,
            "attempts": len(statuses), "rate_limited": statuses.count(429), "lost": lines - ok,
            "tokens": tokens}  # fmt: skip


def run_sdk(w: Limited, server: Server, env: dict[str, str]) -> dict:
    cmd = [PY, "-m", "bench", "sdk", "--port", str(server.port), "--n", str(w.n), "-c", str(w.c),
           "--turns", str(w.turns)]  # fmt: skip
    _, code, text = measure(cmd, env, server)
    if code != 0:
        fail(f"openai SDK {w.name}", code, text)
    return dict(json.loads(text.strip().splitlines()[-1]))


def run_floor_at(w: Limited, server: Server, env: dict[str, str]) -> dict:
    """The floor client with exactly the server's concurrency: the best any client does."""
    cmd = [PY, "-m", "bench", "floor", "--port", str(server.port), "--n", str(w.n),
           "-c", str(w.mock["limit_concurrency"]), "--turns", str(w.turns)]  # fmt: skip
    _, code, text = measure(cmd, env, server)
    if code != 0:
        fail(f"floor {w.name}", code, text)
    wall = json.loads(text.strip().splitlines()[-1])["wall_s"]
    return {"wall_s": wall, "attempts": w.n * w.turns, "rate_limited": 0, "lost": 0, "tokens": 0}


def run_side(side: str, w: Limited, server: Server, env: dict[str, str], work: Path) -> dict:
    if side == "openai SDK":
        return run_sdk(w, server, env)
    if side == FLOOR:
        return run_floor_at(w, server, env)
    return run_runner(w, server, env, work, side == "runner told")


def bench_limited(w: Limited, env: dict[str, str], work: Path) -> dict[str, Any]:
    """Interleaved runs of each side, each against a fresh server; medians per side."""
    samples: dict[str, list[dict]] = {side: [] for side in w.sides}
    for _ in range(w.runs):
        for side in w.sides:
            proc, server = start_server(w)
            try:
                samples[side].append(run_side(side, w, server, env, work))
            finally:
                proc.terminate()
                proc.wait(10)
    tokens = max(s["tokens"] for s in samples.get("runner", samples[w.sides[0]]))
    ideal = w.ideal_s(tokens)
    rows = {side: row(runs, ideal) for side, runs in samples.items()}
    return {"workload": w.name, "mock": w.mock, "told": w.told, "ideal_s": ideal,
            "rows": rows, "samples": samples}  # fmt: skip


def row(runs: list[dict], ideal: float) -> dict[str, float]:
    """Medians of the runs: wall, wall / ideal, % of attempts answered 429, lost conversations."""
    wall = statistics.median(r["wall_s"] for r in runs)
    waste = statistics.median(100 * r["rate_limited"] / max(1, r["attempts"]) for r in runs)
    lost = statistics.median(r["lost"] for r in runs)
    return {"runs": len(runs), "wall_s": wall, "x_ideal": wall / ideal, "wasted_pct": waste,
            "lost": lost}  # fmt: skip


RATE_GOAL, INFLIGHT_GOAL = (1.05, 3.0), (1.10, 3.0)  # × ideal, % of requests refused


def print_limited(results: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """The table; returns (goal, measured, limit) for each goal: no conversation lost, at
    most 3 % of requests refused, wall at most 1.05 × ideal (1.10 × in flight)."""
    print(f"{'limit':<20} {'client':<11} {'runs':>4} {'wall s':>7} {'ideal s':>7} "
          f"{'× ideal':>7} {'429 %':>6} {'lost':>5}")  # fmt: skip
    checks = []
    for r in results:
        for side, m in r["rows"].items():
            print(f"{r['workload']:<20} {side:<11} {m['runs']:>4} {m['wall_s']:>7.2f} "
                  f"{r['ideal_s']:>7.2f} {m['x_ideal']:>7.2f} {m['wasted_pct']:>6.1f} "
                  f"{m['lost']:>5.0f}")  # fmt: skip
            goal = INFLIGHT_GOAL if "in-flight" in r["workload"] else RATE_GOAL
            if side.startswith("runner"):
                name = f"{r['workload']} {side}"
                checks += [(f"{name} wall/ideal", m["x_ideal"], goal[0]),
                           (f"{name} % wasted on 429", m["wasted_pct"], goal[1]),
                           (f"{name} conversations lost", m["lost"], 0.0)]  # fmt: skip
    return checks
