"""Faults, the auth breaker, secrets, kills and resume: through real sockets and processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import read_jsonl, run_cli, write_models, write_scenario

ROOT = Path(__file__).resolve().parent.parent
THREE_TURNS = "id: t\nturns: [one, two, three]\nrepeat: {n}\n"


def models_with_retries(tmp_path, server, **extra):
    return write_models(tmp_path / "models.yaml", server.base_url, max_retries=12, **extra)


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_thirty_percent_faults_every_conversation_still_ok(tmp_path, make_mock, stream):
    server = make_mock(error_rate=0.15, cut_rate=0.15, seed=7, retry_after_ms=5)
    scen = write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=300))
    models = models_with_retries(tmp_path, server)
    result = run_cli("run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path),
                     "--run-id", "f", "-c", "50", "--no-progress", stream)  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "f" / "transcripts.jsonl")
    assert len(records) == 300 and all(r["status"] == "ok" for r in records)
    assert len({r["conversation_id"] for r in records}) == 300
    usage = read_jsonl(tmp_path / "f" / "usage.jsonl")
    assert len(usage) == len(server.requests)  # every attempt, retries included, is a record
    failed = [u for u in usage if u["status"] != 200]
    assert len(failed) > 100
    assert {u["status"] for u in failed} >= {429, 500, 503}
    if stream == "--stream":
        assert "stream" in {u["status"] for u in failed}  # cut streams were retried
    attempts = Counter((u["conversation_id"], u["turn"]) for u in usage)
    per_turn = {
        (r["conversation_id"], t["index"]): t["attempts"] for r in records for t in r["turns"]
    }
    assert attempts == per_turn
    assert all(len(r["turns"][-1]["assistant"]) > 0 for r in records)


def test_malformed_bodies_are_retried(tmp_path, make_mock):
    server = make_mock(malformed_rate=0.3, seed=3)
    scen = write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=20))
    models = models_with_retries(tmp_path, server)
    result = run_cli("run", str(scen), "-m", "gemini", "--models", str(models), "-o", str(tmp_path),
                     "--run-id", "m", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    usage = read_jsonl(tmp_path / "m" / "usage.jsonl")
    assert "malformed" in {u["status"] for u in usage}


def test_wrong_key_opens_the_breaker(tmp_path, make_mock):
    server = make_mock(require_key="right-key", latency_ms=20)
    scen = write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=200))
    models = write_models(tmp_path / "models.yaml", server.base_url, concurrency=8)
    result = run_cli("run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path),
                     "--run-id", "a", "-c", "50", "--no-progress")  # fmt: skip
    assert result.exit_code == 3
    assert len(server.requests) <= 8  # only those already in flight when the first 401 came
    records = read_jsonl(tmp_path / "a" / "transcripts.jsonl")
    assert len(records) == 200
    assert all(r["status"] == "failed" and r["error"]["kind"] == "auth" for r in records)
    assert len(read_jsonl(tmp_path / "a" / "usage.jsonl")) == len(server.requests)


MARKER = "sk-MARKER-7f3a9c2e51d04b8b"


@pytest.mark.parametrize("target", ["chat", "responses", "gemini"])
def test_the_key_never_appears_anywhere(tmp_path, make_mock, target):
    server = make_mock(require_key="another-key")  # every request fails: errors are printed too
    scen = write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=3))
    auth = {"auth": "query"} if target == "gemini" else {}  # the key in the URL: the hardest case
    models = write_models(tmp_path / "models.yaml", server.base_url, **auth)
    env = {"TEST_API_KEY": MARKER}
    outputs = []
    for extra in (["--dry-run"], ["--run-id", "k"], ["--resume", str(tmp_path / "k")]):
        args = ["run", str(scen), "-m", target, "--models", str(models), "-o", str(tmp_path)]
        result = run_cli(*(["run", *extra] if extra[0] == "--resume" else args + extra), env=env)
        outputs.append(result.output + result.stderr)
    assert all(MARKER not in out for out in outputs)
    assert MARKER in str(server.requests)  # it was sent, so the check above means something
    for path in (tmp_path / "k").iterdir():
        assert MARKER not in path.read_text(encoding="utf-8"), path.name


def runner_process(tmp_path: Path, run_id: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TEST_API_KEY": "test-key-123", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "runner", "run", str(tmp_path / "s.yaml"), "-m", "chat",
            "--models", str(tmp_path / "models.yaml"), "-o", str(tmp_path), "--run-id", run_id,
            "-c", "20", "--no-progress", *extra]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_records(path: Path, at_least: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {at_least} records")


def test_killed_runs_resume_to_exactly_the_plan(tmp_path, make_mock):
    server = make_mock(latency_ms=10, jitter_ms=10, error_rate=0.1, seed=1, retry_after_ms=5)
    write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=150))
    models_with_retries(tmp_path, server)
    rng = random.Random(42)
    for kill in range(4):
        run_id = f"kill{kill}"
        proc = runner_process(tmp_path, run_id)
        wait_for_records(tmp_path / run_id / "transcripts.jsonl", rng.randrange(1, 120))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        result = run_cli("run", "--resume", str(tmp_path / run_id), "--no-progress")
        assert result.exit_code == 0, result.output + result.stderr
        records = read_jsonl(tmp_path / run_id / "transcripts.jsonl")
        ids = [r["conversation_id"] for r in records]
        assert len(ids) == len(set(ids)) == 150
        assert all(r["status"] == "ok" for r in records)
        assert set(ids) == {"t@chat"} | {f"t@chat#{i}" for i in range(1, 150)}  # stable ids
        again = run_cli("run", "--resume", str(tmp_path / run_id), "--no-progress")
        assert again.exit_code == 0
        assert read_jsonl(tmp_path / run_id / "transcripts.jsonl") == records  # nothing changes


def test_sigint_stops_cleanly_exits_130_and_resumes(tmp_path, make_mock):
    server = make_mock(latency_ms=30)
    write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=200))
    models_with_retries(tmp_path, server)
    proc = runner_process(tmp_path, "int")
    wait_for_records(tmp_path / "int" / "transcripts.jsonl", 10)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 130
    first = read_jsonl(tmp_path / "int" / "transcripts.jsonl")
    assert 10 <= len(first) < 200
    assert all(r["status"] == "ok" for r in first)  # those in flight finished or were dropped
    manifest = (tmp_path / "int" / "run.json").read_text()
    assert '"status": "interrupted"' in manifest
    result = run_cli("run", "--resume", str(tmp_path / "int"), "--no-progress")
    assert result.exit_code == 0
    ids = [r["conversation_id"] for r in read_jsonl(tmp_path / "int" / "transcripts.jsonl")]
    assert len(ids) == len(set(ids)) == 200


def test_torn_last_line_is_repaired_on_resume(tmp_path, mock_server):
    write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=5))
    models_with_retries(tmp_path, mock_server)
    args = ["run", str(tmp_path / "s.yaml"), "-m", "chat", "--models",
            str(tmp_path / "models.yaml"), "-o", str(tmp_path), "--run-id", "torn",
            "--no-progress"]  # fmt: skip
    assert run_cli(*args).exit_code == 0
    path = tmp_path / "torn" / "transcripts.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][:40])  # a kill in the middle of a write
    result = run_cli("run", "--resume", str(tmp_path / "torn"), "--no-progress")
    assert result.exit_code == 0
    records = read_jsonl(path)
    assert len(records) == 5 and len({r["conversation_id"] for r in records}) == 5


def test_resume_refuses_changed_scenarios_unless_forced(tmp_path, mock_server):
    scen = write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=2))
    models_with_retries(tmp_path, mock_server)
    args = ["run", str(scen), "-m", "chat", "--models", str(tmp_path / "models.yaml"),
            "-o", str(tmp_path), "--run-id", "ch", "--no-progress"]  # fmt: skip
    assert run_cli(*args).exit_code == 0
    write_scenario(scen, THREE_TURNS.format(n=3))
    refused = run_cli("run", "--resume", str(tmp_path / "ch"))
    assert refused.exit_code == 2 and "s.yaml" in refused.stderr and "--force" in refused.stderr
    forced = run_cli("run", "--resume", str(tmp_path / "ch"), "--force", "--no-progress")
    assert forced.exit_code == 0
    assert len(read_jsonl(tmp_path / "ch" / "transcripts.jsonl")) == 3


def test_retry_failed_runs_failures_again_and_the_newest_record_wins(tmp_path, make_mock):
    bad = make_mock(error_rate=1.0)
    scen = write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=2))
    write_models(tmp_path / "models.yaml", bad.base_url, max_retries=0)
    args = ["run", str(scen), "-m", "chat", "--models", str(tmp_path / "models.yaml"),
            "-o", str(tmp_path), "--run-id", "rf", "--no-progress"]  # fmt: skip
    assert run_cli(*args).exit_code == 3
    assert run_cli("run", "--resume", str(tmp_path / "rf"), "--no-progress").exit_code == 3
    assert len(read_jsonl(tmp_path / "rf" / "transcripts.jsonl")) == 2  # failures not rerun
    good = make_mock()
    write_models(tmp_path / "models.yaml", good.base_url, max_retries=0)
    result = run_cli("run", "--resume", str(tmp_path / "rf"), "--retry-failed", "--force",
                     "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "rf" / "transcripts.jsonl")
    assert [r["status"] for r in records] == ["failed", "failed", "ok", "ok"]
    report = run_cli("report", str(tmp_path / "rf"), "--format", "json")
    assert '"ok": 2' in report.output and '"failed": 0' in report.output
