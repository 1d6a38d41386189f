"""`make bench`: dialogue-runner against a minimal asyncio + aiohttp floor, same mock server.

    python -m runner.bench                  # everything (S, L, Z, L-stream, scale checks)
    python -m runner.bench --quick          # one run each, smaller Z and scale checks
    python -m runner.bench --only L,Z --runs 5
    python -m runner.bench floor --port P --n N -c C [--turns T] [--stream]   # the floor alone

Each side runs as a child process; wall time is measured around it, CPU (user + sys) and
peak RSS come from os.wait4 for that child only. The mock server runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from runner.engine import raise_fd_limit

PY = sys.executable
KEY_ENV, KEY = "BENCH_KEY", "bench-key"
TURNS = (
    "Hello! Please introduce yourself briefly.",
    "Remember this: my name is Ada and I like chess.",
    "Now summarise who I am in one sentence.",
)
SIDES = ("floor", "runner")
RSS_LIMIT_MB = 150.0


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
    done = asyncio.run(floor(url, args.n, args.c, args.turns, args.stream))
    print(json.dumps({"conversations": done}))
    return 0 if done == args.n else 1


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


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    rss_mb: float
    server_cpu_s: float
    ok: int = 0


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cmd: list[str], env: dict[str, str], server_pid: int) -> tuple[Sample, int, str]:
    """Run a child: wall time, its CPU and peak RSS (wait4), the server's CPU, exit, output."""
    with tempfile.TemporaryFile() as out:
        server_before = proc_cpu_s(server_pid)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        server = proc_cpu_s(server_pid) - server_before
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    cpu = usage.ru_utime + usage.ru_stime
    return Sample(wall, cpu, usage.ru_maxrss / 1024, server), code, text


def fail(what: str, code: int, output: str) -> None:
    raise SystemExit(f"bench: {what} failed (exit {code}):\n{output[-3000:]}")


def run_floor(w: Workload, server: Server, env: dict[str, str]) -> Sample:
    cmd = [PY, "-m", "runner.bench", "floor", "--port", str(server.port), "--n", str(w.n)]
    cmd += ["-c", str(w.c), "--turns", str(w.turns)] + (["--stream"] if w.stream else [])
    sample, code, out = measure(cmd, env, server.pid)
    if code != 0:
        fail(f"floor {w.name}", code, out)
    sample.ok = json.loads(out.strip().splitlines()[-1])["conversations"]
    return sample


def write_inputs(work: Path, port: int, turns: int) -> tuple[Path, Path]:
    """The scenario (turns user turns) and a models file pointing at the mock on `port`."""
    scenario = work / f"bench-{turns}.yaml"
    scenario.write_text(json.dumps({"id": "bench", "turns": list(TURNS[:turns])}))
    models = work / f"models-{port}.yaml"
    target = {"provider": "openai-chat", "base_url": f"http://127.0.0.1:{port}/v1",
              "model": "bench", "api_key_env": KEY_ENV, "concurrency": 100000}  # fmt: skip
    models.write_text(json.dumps({"targets": {"bench": target}}))
    return scenario, models


def count_ok(transcripts: Path) -> tuple[int, int]:
    """(lines, lines with status ok) of a transcripts file."""
    lines = ok = 0
    if transcripts.exists():
        with open(transcripts, "rb") as fh:
            for line in fh:
                lines += 1
                ok += b'"status":"ok"' in line
    return lines, ok


def run_runner(w: Workload, server: Server, env: dict[str, str], work: Path) -> Sample:
    scenario, models = write_inputs(work, server.port, w.turns)
    out, run_id = work / "out", f"{w.name}-{time.monotonic_ns()}"
    cmd = [PY, "-m", "runner", "run", str(scenario), "-m", "bench", "--models", str(models),
           "-c", str(w.c), "--repeat", str(w.n), "--no-progress", "-o", str(out),
           "--run-id", run_id] + (["--stream"] if w.stream else [])  # fmt: skip
    sample, code, text = measure(cmd, env, server.pid)
    run_dir = out / run_id
    lines, sample.ok = count_ok(run_dir / "transcripts.jsonl")
    shutil.rmtree(run_dir, ignore_errors=True)
    if code != 0 or lines != w.n or sample.ok != w.n:
        fail(f"runner {w.name} ({sample.ok}/{lines} ok of {w.n})", code, text)
    return sample


class Server(NamedTuple):
    port: int
    pid: int


class Servers:
    """One mock server process per latency, started on first use, all stopped by close()."""

    def __init__(self, jitter_ms: float) -> None:
        self.jitter_ms = jitter_ms
        self.procs: dict[float, tuple[subprocess.Popen[str], Server]] = {}

    def get(self, latency_ms: float) -> Server:
        if latency_ms in self.procs:
            return self.procs[latency_ms][1]
        jitter = self.jitter_ms if latency_ms else 0
        cmd = [PY, "-m", "runner", "mock-server", "--port", "0"]
        cmd += ["--latency-ms", str(latency_ms), "--jitter-ms", str(jitter)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            proc.kill()
            raise SystemExit(f"bench: the mock server did not start: {line!r}")
        self.procs[latency_ms] = proc, Server(int(line.rsplit(":", 1)[1]), proc.pid)
        return self.procs[latency_ms][1]

    def close(self) -> None:
        for proc, _ in self.procs.values():
            proc.terminate()
        for proc, _ in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


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


ORDER = ("S", "L", "Z", "L-stream")  # as the issue lists them


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
    }


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
    """One runner run (every conversation must end ok); memory checks also judge peak RSS."""
    sample = run_runner(w, server, env, work)
    rss_ok = sample.rss_mb < RSS_LIMIT_MB if w.name.startswith("memory") else None
    return {"workload": asdict(w), "sample": asdict(sample), "ideal_s": w.ideal_s,
            "rss_ok": rss_ok}  # fmt: skip


def goals(results: dict[str, dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(goal, measured, limit) for each goal of the issue whose workload was run."""
    wanted = [("L", "wall_s", 1.15, "wall"), ("L", "cpu_s", 1.4, "CPU"),
              ("Z", "cpu_s", 1.5, "CPU/request"), ("L-stream", "wall_s", 1.3, "wall")]  # fmt: skip
    return [
        (f"{name} runner/floor {what}", results[name]["ratio"][key], limit)
        for name, key, limit, what in wanted
        if name in results
    ]


def print_table(results: dict[str, dict[str, Any]]) -> None:
    head = ("workload", "side", "runs", "wall s", "CPU s", "req/s", "CPU µs/req", "RSS MB",
            "ideal s", "srv CPU", "wall ×", "CPU ×")  # fmt: skip
    print("{:<9} {:<7} {:>4} {:>7} {:>7} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7}".format(*head))
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
                  f"{ratios[1]:>7}")  # fmt: skip


def print_scale(scale: dict[str, dict[str, Any]]) -> None:
    for name, r in scale.items():
        w, s = r["workload"], r["sample"]
        verdict = "" if r["rss_ok"] is None else " (under" if r["rss_ok"] else " (OVER"
        verdict += f" {RSS_LIMIT_MB:g} MB)" if verdict else ""
        print(f"{name}: {s['ok']}/{w['n']} ok, {w['n']:,} × {w['turns']} turn, -c {w['c']}, "
              f"{w['latency_ms']:g} ms: wall {s['wall_s']:.2f} s (ideal {r['ideal_s']:.2f}), "
              f"CPU {s['cpu_s']:.2f} s, peak RSS {s['rss_mb']:.1f} MB{verdict}")  # fmt: skip


def bench_main(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    only = set(args.only.split(",")) if args.only else None
    chosen = [w for w in workloads(args.quick, args.runs) if only is None or w.name in only]
    checks = [w for w in scale_checks(args.quick) if only is None or {w.name, "scale"} & only]
    raise_fd_limit(max((w.c for w in checks), default=0) + 512)  # children inherit it
    env = {**os.environ, KEY_ENV: KEY}
    servers, work = Servers(args.jitter_ms), Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, dict[str, Any]] = {}
    scale: dict[str, dict[str, Any]] = {}
    load = [os.getloadavg()[0]]  # other work on the machine skews wall times
    try:
        for w in [w for w in chosen if w.name != "Z"]:
            results[w.name] = bench_workload(w, servers.get(w.latency_ms), env, work, 0.0)
        for w in checks:
            scale[w.name] = bench_scale(w, servers.get(w.latency_ms), env, work)
        for w in [w for w in chosen if w.name == "Z"]:
            deadline = began + args.budget_s
            results[w.name] = bench_workload(w, servers.get(w.latency_ms), env, work, deadline)
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg()[0])
    report(results, scale, time.perf_counter() - began, load, args)
    return 0


def report(
    results: dict[str, Any], scale: dict[str, Any], total_s: float, load: list[float], args: Any
) -> None:
    print_table(results)
    print_scale(scale)
    checks = goals(results)
    for goal, got, limit in checks:
        print(f"goal {goal} ≤ {limit:.2f}: {got:.2f} {'PASS' if got <= limit else 'FAIL'}")
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "aiohttp": aiohttp.__version__, "platform": platform.platform(),
                        "load_average_before_after": load},
            "options": vars(args), "workloads": results, "scale": scale, "total_s": total_s,
            "goals": [{"goal": g, "value": v, "limit": lim, "pass": v <= lim}
                      for g, v, lim in checks]}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"total {total_s:.1f} s (load average {load[0]:.2f} before, {load[1]:.2f} after); "
          f"results in {path}")  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one run each, smaller")
    parser.add_argument("--only", help="comma list of S,L,Z,L-stream,scale,inflight-10k,...")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return floor_main(args) if args.command == "floor" else bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
