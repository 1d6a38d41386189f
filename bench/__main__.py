"""`make bench`: dialogue-runner against a minimal asyncio + aiohttp floor, same mock server.

    python -m bench                  # everything (S, L, Z, L-stream, scale checks)
    python -m bench --quick          # one run each, smaller Z and scale checks
    python -m bench --only L,Z --runs 5
    python -m bench --only limits    # at a provider's limit: req/s, tokens/s, in-flight
    python -m bench --only ray       # --executor ray: CPU-bound local vs 2 workers, driver RSS
    python -m bench floor --port P --n N -c C [--turns T] [--stream]   # the floor alone

Each side runs as a child process; wall time is measured around it, CPU (user + sys) and
peak RSS come from os.wait4 for that child only. The mock server runs in its own process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.cluster import ray_runs, run_ray
from bench.floor import floor_main
from bench.limited import bench_limited, limited_workloads
from bench.measure import Sample, Server, Servers, run_floor, run_runner
from bench.report import RSS_LIMIT_MB, SIDES, medians, report
from bench.sdk import sdk_main
from bench.workloads import KEY, KEY_ENV, Workload, scale_checks, workloads
from runner.engine.pool import raise_fd_limit


def bench_workload(
    w: Workload, server: Server, env: dict[str, str], work: Path, deadline: float
) -> dict[str, Any]:
    """Interleaved runs (floor, runner, floor, runner, ...); medians and runner/floor ratios."""
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    pair_s = 0.0
    for i in range(w.runs):
        if i >= w.min_runs and time.perf_counter() + pair_s > deadline:
            break
        began = time.perf_counter()
        samples["floor"].append(run_floor(w, server, env))
        samples["runner"].append(run_runner(w, server, env, work))
        pair_s = time.perf_counter() - began
    med = {side: medians(w, samples[side]) for side in SIDES}
    ratio = {k: med["runner"][k] / med["floor"][k] for k in ("wall_s", "cpu_s", "rss_mb")}
    return {"workload": asdict(w), "samples": {k: [asdict(s) for s in v]
            for k, v in samples.items()}, "median": med, "ratio": ratio}  # fmt: skip


def bench_scale(w: Workload, server: Server, env: dict[str, str], work: Path) -> dict[str, Any]:
    """One runner run (every conversation must end ok); memory checks also judge peak RSS,
    and a table workload's run is exported (its peak RSS judged too)."""
    exports: list[Sample] = []
    sample = run_runner(w, server, env, work, exports if w.table else None)
    memory = w.name.startswith("memory")
    result = {"workload": asdict(w), "sample": asdict(sample), "ideal_s": w.ideal_s,
              "rss_ok": sample.rss_mb < RSS_LIMIT_MB if memory else None}  # fmt: skip
    if exports:
        result["export"] = {
            "sample": asdict(exports[0]),
            "rss_ok": exports[0].rss_mb < RSS_LIMIT_MB,
        }
    return result


def bench_main(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    only = set(args.only.split(",")) if args.only else None
    chosen = [w for w in workloads(args.quick, args.runs) if only is None or w.name in only]
    checks = [w for w in scale_checks(args.quick) if only is None or {w.name, "scale"} & only]
    at_limits = [
        w for w in limited_workloads(args.runs) if only is None or {w.name, "limits"} & only
    ]
    raise_fd_limit(max((w.c for w in checks), default=0) + 512)  # children inherit it
    env = {**os.environ, KEY_ENV: KEY}
    servers, work = Servers(args.jitter_ms), Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, dict[str, Any]] = {}
    scale: dict[str, dict[str, Any]] = {}
    load = [os.getloadavg()[0]]  # other work on the machine skews wall times
    limited: list[dict[str, Any]] = []
    spread = [r for r in ray_runs(args.quick) if only is None or {r.name, "ray"} & only]
    on_ray: list[dict[str, Any]] = []
    try:
        for w in [w for w in chosen if w.name != "Z"]:
            results[w.name] = bench_workload(w, servers.get(w.latency_ms), env, work, 0.0)
        for w in checks:
            scale[w.name] = bench_scale(w, servers.get(w.latency_ms), env, work)
        for w in [w for w in chosen if w.name == "Z"]:
            deadline = began + args.budget_s
            results[w.name] = bench_workload(w, servers.get(w.latency_ms), env, work, deadline)
        limited += [bench_limited(w, env, work) for w in at_limits]
        on_ray += [run_ray(r, servers.get(0), env, work) for r in spread]
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg()[0])
    report(results, scale, time.perf_counter() - began, load, args, limited, on_ray)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one run each, smaller")
    parser.add_argument(
        "--only", help="comma list of S,L,Z,L-stream,scale,inflight-10k,limits,req/s,ray,..."
    )
    parser.add_argument("--runs", type=int, help="runs per side per workload (default 3)")
    parser.add_argument("--budget-s", type=float, default=285.0, help="seconds; Z's third run "
                        "only if the bench still ends within them")  # fmt: skip
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="mock latency jitter")
    sub = parser.add_subparsers(dest="command")
    fl = sub.add_parser("floor", help="run the floor client alone")
    fl.add_argument("--port", type=int, required=True)
    fl.add_argument("--n", type=int, required=True)
    fl.add_argument("-c", type=int, required=True)
    fl.add_argument("--turns", type=int, default=3)
    fl.add_argument("--stream", action="store_true")
    sdk = sub.add_parser("sdk", help="run the openai SDK peer alone")
    sdk.add_argument("--port", type=int, required=True)
    sdk.add_argument("--n", type=int, required=True)
    sdk.add_argument("-c", type=int, required=True)
    sdk.add_argument("--turns", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "sdk":
        return sdk_main(args)
    return floor_main(args) if args.command == "floor" else bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
