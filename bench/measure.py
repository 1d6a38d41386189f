"""Each side runs as a child process, measured alone; the mock server runs in its own.

Wall time is measured around the child; CPU (user + sys) and peak RSS come from os.wait4
for that child only; the server's CPU from /proc over the same span.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bench.workloads import Workload, write_inputs

PY = sys.executable


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    rss_mb: float
    server_cpu_s: float
    ok: int = 0
    connections: int = 0  # TCP connections the mock server accepted during the run


class Server(NamedTuple):
    port: int
    pid: int


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mock_stats(server: Server) -> dict:
    """The mock server's GET /mock/stats: connections accepted (this one too), requests
    answered, tokens admitted against its limits."""
    url = f"http://127.0.0.1:{server.port}/mock/stats"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def accepted(server: Server) -> int:
    """Connections the mock server has accepted so far, this one too."""
    return int(mock_stats(server)["connections"])


def measure(cmd: list[str], env: dict[str, str], server: Server) -> tuple[Sample, int, str]:
    """Run a child: wall time, its CPU and peak RSS (wait4), the server's CPU and the
    connections it accepted, exit, output."""
    connections = accepted(server)
    with tempfile.TemporaryFile() as out:
        server_before = proc_cpu_s(server.pid)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        server_cpu = proc_cpu_s(server.pid) - server_before
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    cpu = usage.ru_utime + usage.ru_stime
    connections = accepted(server) - connections - 1  # the second look's own connection
    sample = Sample(wall, cpu, usage.ru_maxrss / 1024, server_cpu, connections=connections)
    return sample, code, text


def fail(what: str, code: int, output: str) -> None:
    raise SystemExit(f"bench: {what} failed (exit {code}):\n{output[-3000:]}")


def run_floor(w: Workload, server: Server, env: dict[str, str]) -> Sample:
    cmd = [PY, "-m", "bench", "floor", "--port", str(server.port), "--n", str(w.n)]
    cmd += ["-c", str(w.c), "--turns", str(w.turns)] + (["--stream"] if w.stream else [])
    sample, code, out = measure(cmd, env, server)
    if code != 0:
        fail(f"floor {w.name}", code, out)
    sample.ok = json.loads(out.strip().splitlines()[-1])["conversations"]
    return sample


def count_ok(transcripts: Path) -> tuple[int, int]:
    """(lines, lines with status ok) of a transcripts file."""
    lines = ok = 0
    if transcripts.exists():
        with open(transcripts, "rb") as fh:
            for line in fh:
                lines += 1
                ok += b'"status":"ok"' in line
    return lines, ok


def run_runner(
    w: Workload,
    server: Server,
    env: dict[str, str],
    work: Path,
    exports: list[Sample] | None = None,
) -> Sample:
    """One run of the workload; with EXPORTS, the run is then exported and measured too."""
    scenario, models = write_inputs(work, server.port, w.turns, w.n if w.table else 0)
    out, run_id = work / "out", f"{w.name}-{time.monotonic_ns()}"
    cmd = [PY, "-m", "runner", "run", str(scenario), "-m", "bench", "--models", str(models),
           "-c", str(w.c), "--repeat", str(1 if w.table else w.n), "--no-progress",
           "-o", str(out), "--run-id", run_id] + (["--stream"] if w.stream else [])  # fmt: skip
    sample, code, text = measure(cmd, env, server)
    run_dir = out / run_id
    lines, sample.ok = count_ok(run_dir / "transcripts.jsonl")
    if code == 0 and exports is not None:
        exports.append(run_export(w, run_dir, env, server))
    shutil.rmtree(run_dir, ignore_errors=True)
    if code != 0 or lines != w.n or sample.ok != w.n:
        fail(f"runner {w.name} ({sample.ok}/{lines} ok of {w.n})", code, text)
    return sample


def run_export(w: Workload, run_dir: Path, env: dict[str, str], server: Server) -> Sample:
    """`export --format openai` of a finished run, measured like a run (every line written)."""
    dataset = run_dir / "dataset.jsonl"
    cmd = [PY, "-m", "runner", "export", str(run_dir), "--format", "openai", "-o", str(dataset)]
    sample, code, text = measure(cmd, env, server)
    sample.ok = count_ok(dataset)[0]
    if code != 0 or sample.ok != w.n:
        fail(f"export {w.name} ({sample.ok} of {w.n} lines)", code, text)
    return sample


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
