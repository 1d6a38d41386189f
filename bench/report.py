"""Medians of the samples, the issue's goals, the printed tables and the JSON results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster import print_ray
from bench.limited import print_limited
from bench.measure import Sample
from bench.workloads import Workload

SIDES = ("floor", "runner")
ORDER = ("S", "L", "Z", "L-stream")  # as the issue lists them
RSS_LIMIT_MB = 100.0  # the memory workload: 10^6 conversations from a table, and its export


def medians(w: Workload, samples: list[Sample]) -> dict[str, float]:
    wall = statistics.median(s.wall_s for s in samples)
    cpu = statistics.median(s.cpu_s for s in samples)
    return {
        "server_cpu_s": statistics.median(s.server_cpu_s for s in samples),
        "wall_s": wall,
        "cpu_s": cpu,
        "req_per_s": w.requests / wall,
        "cpu_us_per_req": cpu / w.requests * 1e6,
        "rss_mb": max(s.rss_mb for s in samples),
        "ideal_s": w.ideal_s,
        "runs": len(samples),
        "conn_per_req": statistics.median(s.connections for s in samples) / w.requests,
    }


INFLIGHT_RSS_GOAL_MB = 150.0  # issue 19; the bare aiohttp floor itself peaks above it


def goals(
    results: dict[str, dict[str, Any]], scale: dict[str, dict[str, Any]]
) -> list[tuple[str, float, float]]:
    """(goal, measured, limit) for each goal of the issues whose workload was run (CPU:
    issue 19's, 1.05 and 1.10 x the floor)."""
    wanted = [("L", "wall_s", 1.15, "wall"), ("L", "cpu_s", 1.05, "CPU"),
              ("Z", "cpu_s", 1.10, "CPU/request"), ("L-stream", "wall_s", 1.3, "wall")]  # fmt: skip
    checks = [
        (f"{name} runner/floor {what}", results[name]["ratio"][key], limit)
        for name, key, limit, what in wanted
        if name in results
    ]
    if "inflight-10k" in scale:
        rss = scale["inflight-10k"]["sample"]["rss_mb"]
        checks.append(("inflight-10k peak RSS MB", rss, INFLIGHT_RSS_GOAL_MB))
    return checks


def print_table(results: dict[str, dict[str, Any]]) -> None:
    head = ("workload", "side", "runs", "wall s", "CPU s", "req/s", "CPU µs/req", "RSS MB",
            "ideal s", "srv CPU", "wall ×", "CPU ×", "conn/req")  # fmt: skip
    print("{:<9} {:<7} {:>4} {:>7} {:>7} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}"
          .format(*head))  # fmt: skip
    for name in sorted(results, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        r = results[name]
        for side in SIDES:
            m = r["median"][side]
            ratios = ("", "")
            if side == "runner":
                ratios = (f"{r['ratio']['wall_s']:.2f}", f"{r['ratio']['cpu_s']:.2f}")
            print(f"{name:<9} {side:<7} {m['runs']:>4} {m['wall_s']:>7.2f} {m['cpu_s']:>7.2f} "
                  f"{m['req_per_s']:>8.0f} {m['cpu_us_per_req']:>10.0f} {m['rss_mb']:>7.1f} "
                  f"{m['ideal_s']:>7.2f} {m['server_cpu_s']:>7.2f} {ratios[0]:>7} "
                  f"{ratios[1]:>7} {m['conn_per_req']:>8.3f}")  # fmt: skip


def print_scale(scale: dict[str, dict[str, Any]]) -> None:
    for name, r in scale.items():
        w, s = r["workload"], r["sample"]
        verdict = "" if r["rss_ok"] is None else " (under" if r["rss_ok"] else " (OVER"
        verdict += f" {RSS_LIMIT_MB:g} MB)" if verdict else ""
        source = "vars_file rows" if w.get("table") else "samples"
        print(f"{name}: {s['ok']}/{w['n']} ok, {w['n']:,} × {w['turns']} turn ({source}), "
              f"-c {w['c']}, {w['latency_ms']:g} ms: wall {s['wall_s']:.2f} s (ideal "
              f"{r['ideal_s']:.2f}), CPU {s['cpu_s']:.2f} s, peak RSS {s['rss_mb']:.1f} MB"
              f"{verdict}")  # fmt: skip
        if "export" in r:
            e = r["export"]["sample"]
            verdict = f" ({'under' if r['export']['rss_ok'] else 'OVER'} {RSS_LIMIT_MB:g} MB)"
            print(f"{name} export --format openai: {e['ok']:,} lines, wall {e['wall_s']:.2f} s, "
                  f"CPU {e['cpu_s']:.2f} s, peak RSS {e['rss_mb']:.1f} MB{verdict}")  # fmt: skip


def report(
    results: dict[str, Any],
    scale: dict[str, Any],
    total_s: float,
    load: list[float],
    args: Any,
    limited: list[dict[str, Any]] | None = None,
    on_ray: list[dict[str, Any]] | None = None,
) -> None:
    if results:
        print_table(results)
    print_scale(scale)
    if on_ray:
        print_ray(on_ray)
    checks = goals(results, scale)
    if limited:
        checks += print_limited(limited)
    for goal, got, limit in checks:
        print(f"goal {goal} ≤ {limit:.2f}: {got:.2f} {'PASS' if got <= limit else 'FAIL'}")
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "aiohttp": aiohttp.__version__, "platform": platform.platform(),
                        "load_average_before_after": load},
            "options": vars(args), "workloads": results, "scale": scale, "total_s": total_s,
            "limited": limited or [], "ray": on_ray or [],
            "goals": [{"goal": g, "value": v, "limit": lim, "pass": v <= lim}
                      for g, v, lim in checks]}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"total {total_s:.1f} s (load average {load[0]:.2f} before, {load[1]:.2f} after); "
          f"results in {path}")  # fmt: skip
