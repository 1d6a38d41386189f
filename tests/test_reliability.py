"""Faults, the auth breaker, secrets, kills, signals and resume: through real sockets and processes.

A test that signals or kills a run makes the mock hold a request (its seeded slow decisions,
an hour long) so that the run provably cannot finish first; nothing waits on the clock.
"""

from __future__ import annotations

import random
import signal
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiohttp import web
from conftest import (
    HOUR_MS,
    held_requests,
    holding_one,
    play,
    read_jsonl,
    seed_holding,
    spawn,
    wait_until,
    write_models,
    write_scenario,
)

from runner.mock import MockOptions, make_app

THREE_TURNS = "id: t\nturns: [one, two, three]\nrepeat: {n}\n"
RETRIES = {"max_retries": 12}


def numbered(count: int) -> str:
    """Three turns; `count` conversations told apart on the wire by their first message."""
    return "id: t\nturns: ['{{n}}: one', two, three]\nvars:\n  n: " + str(list(range(count)))


def first_message(request: dict) -> str:
    return request["json"]["messages"][0]["content"]


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_thirty_percent_faults_every_conversation_still_ok(tmp_path, make_mock, stream):
    server = make_mock(error_rate=0.15, cut_rate=0.15, seed=7, retry_after_ms=5)
    played = play(
        tmp_path, THREE_TURNS.format(n=300), "-c", "50", stream, server=server, models=RETRIES
    )
    assert played.result.exit_code == 0, played.result.output
    records = played.transcripts
    assert len(records) == 300 and all(r["status"] == "ok" for r in records)
    assert len({r["conversation_id"] for r in records}) == 300
    usage = played.usage
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
    played = play(
        tmp_path, THREE_TURNS.format(n=20), server=server, targets=("gemini",), models=RETRIES
    )
    assert played.result.exit_code == 0, played.result.output
    assert "malformed" in {u["status"] for u in played.usage}


def attempts_per_turn(played) -> dict[tuple[str, int], list[tuple[int, int | str]]]:
    """(attempt, status) of every attempt, by conversation and turn, in the order made."""
    made = defaultdict(list)
    for u in played.usage:
        made[u["conversation_id"], u["turn"]].append((u["attempt"], u["status"]))
    return made


def test_timed_out_attempts_are_retried_until_answered(tmp_path, make_mock):
    hold = {"slow_rate": 0.2, "slow_ms": HOUR_MS}  # a held request can only time out
    seed = seed_holding(lambda held: len(held) >= 2, 12, **hold)
    server = make_mock(seed=seed, **hold)
    played = play(tmp_path, numbered(4), "--timeout", "0.5", server=server, models=RETRIES)
    assert played.result.exit_code == 0, played.result.output
    assert all(r["status"] == "ok" for r in played.transcripts)
    made = attempts_per_turn(played)
    for (cid, turn), tries in made.items():
        n = len(tries)
        assert tries == [(i + 1, "timeout") for i in range(n - 1)] + [(n, 200)], (cid, turn)
    held = held_requests(len(server.requests), seed=seed, **hold)
    # every held request timed out; on a loaded machine an answered one may too (0.5 s is
    # no promise), and is retried the same way: at least, not exactly, the held ones
    assert sum(status == "timeout" for tries in made.values() for _, status in tries) >= len(held)
    assert len(held) >= 2
    per_turn = {(r["conversation_id"], t["index"]): t["attempts"] for r in played.transcripts
                for t in r["turns"]}  # fmt: skip
    assert per_turn == {key: len(tries) for key, tries in made.items()}


def test_dropped_connections_are_retried_until_answered(tmp_path, serve_app):
    app = make_app(MockOptions())
    seen: set[bytes] = set()

    @web.middleware
    async def drop_each_first_attempt(request: web.Request, handler):
        body = await request.read()  # an attempt is sent again byte for byte
        if body in seen:
            return await handler(request)
        seen.add(body)
        request.transport.close()  # no answer at all: the connection just ends
        return web.Response()

    app.middlewares.append(drop_each_first_attempt)
    played = play(tmp_path, numbered(3), server=serve_app(app), models={"max_retries": 1})
    assert played.result.exit_code == 0, played.result.output
    made = attempts_per_turn(played)
    assert len(made) == 9
    assert all(tries == [(1, "connection"), (2, 200)] for tries in made.values())
    assert all(t["attempts"] == 2 for r in played.transcripts for t in r["turns"])


def test_wrong_key_opens_the_breaker(tmp_path, make_mock):
    server = make_mock(require_key="right-key", latency_ms=20)
    played = play(
        tmp_path, THREE_TURNS.format(n=200), "-c", "50", server=server, models={"concurrency": 8}
    )
    assert played.result.exit_code == 3
    assert len(server.requests) <= 8  # only those already in flight when the first 401 came
    records = played.transcripts
    assert len(records) == 200
    assert all(r["status"] == "failed" and r["error"]["kind"] == "auth" for r in records)
    assert len(played.usage) == len(server.requests)


MARKER = "sk-MARKER-7f3a9c2e51d04b8b"


@pytest.mark.parametrize("target", ["chat", "responses", "gemini", "anthropic"])
def test_the_key_never_appears_anywhere(tmp_path, make_mock, target):
    server = make_mock(require_key="another-key")  # every request fails: errors are printed too
    auth = {"auth": "query"} if target == "gemini" else {}  # the key in the URL: the hardest case
    env = {"TEST_API_KEY": MARKER}
    same = {"server": server, "targets": (target,), "models": auth, "env": env}
    dry = play(tmp_path, THREE_TURNS.format(n=3), "--dry-run", **same)
    run = play(tmp_path, THREE_TURNS.format(n=3), **same)
    resumed = run.resume()
    outputs = [p.result.output + p.result.stderr for p in (dry, run, resumed)]
    assert all(MARKER not in out for out in outputs)
    assert MARKER in str(server.requests)  # it was sent, so the check above means something
    for path in run.run_dir.iterdir():
        assert MARKER not in path.read_text(encoding="utf-8"), path.name


def test_killed_runs_resume_to_exactly_the_plan(tmp_path, make_mock):
    faults = {"latency_ms": 10, "jitter_ms": 10, "error_rate": 0.1, "retry_after_ms": 5}
    # the mock holds one of its first three requests for an hour, and none of the later ones:
    # a run cannot finish before its kill (one record means three requests), resumes never wait
    hold = holding_one(within=3, among=2000, **faults)
    rng = random.Random(42)
    for _ in range(4):
        server = make_mock(**hold)
        running = spawn(
            tmp_path, THREE_TURNS.format(n=150), "-c", "20", server=server, models=RETRIES
        )
        at_least = rng.randrange(1, 120)
        running.wait_for_records(at_least)
        running.proc.send_signal(signal.SIGKILL)
        killed = running.finish()
        assert killed.result.exit_code == -signal.SIGKILL
        assert at_least <= running.written() < 150  # killed in the middle of the run
        result = killed.resume().result
        assert result.exit_code == 0, result.output + result.stderr
        records = killed.transcripts
        ids = [r["conversation_id"] for r in records]
        assert len(ids) == len(set(ids)) == 150
        assert all(r["status"] == "ok" for r in records)
        assert set(ids) == {"t@chat"} | {f"t@chat#{i}" for i in range(1, 150)}  # stable ids
        again = killed.resume()
        assert again.result.exit_code == 0
        assert killed.transcripts == records  # nothing changes


def test_sigint_stops_cleanly_exits_130_and_resumes(tmp_path, make_mock):
    # one of the first 30 requests is held for an hour, and no later one: ten records mean
    # thirty requests sent, so the signal comes while that conversation is provably in flight
    server = make_mock(**holding_one(within=30, among=2000, latency_ms=30))
    running = spawn(tmp_path, numbered(200), "-c", "20", server=server, models=RETRIES)
    running.wait_for_records(10)
    running.proc.send_signal(signal.SIGINT)
    played = running.finish()
    assert played.result.exit_code == 130
    first = played.transcripts
    assert 10 <= len(first) < 200
    assert all(r["status"] == "ok" for r in first)  # those in flight finished or were dropped
    seen = {first_message(r) for r in server.requests}
    finished = {f"{r['vars']['n']}: one" for r in first}
    assert finished < seen and len(seen - finished) == 1  # all finished but the one held
    assert played.manifest["status"] == "interrupted"
    result = played.resume().result
    assert result.exit_code == 0
    ids = [r["conversation_id"] for r in played.transcripts]
    assert len(ids) == len(set(ids)) == 200


def signal_pending(pid: int, sig: int) -> bool:
    """Whether a signal sent to the process has not been delivered to it yet (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if "Pnd:" in line]
    return any(mask & (1 << (sig - 1)) for mask in masks)


AN_HOUR_OF_GRACE = """
import runner.engine.pool as engine
assert hasattr(engine, "GRACE_S")
engine.GRACE_S = 3600
"""


def test_a_second_sigint_stops_at_once_and_keeps_what_finished(tmp_path, make_mock):
    # one conversation at a time: the first request the mock holds, h, is conversation h // 3's
    # second turn, so h // 3 conversations have finished and the next one never can
    hold = {"slow_rate": 0.1, "slow_ms": HOUR_MS}
    seed = seed_holding(lambda held: bool(held) and held[0] >= 6 and held[0] % 3 == 1, 60, **hold)
    h = held_requests(60, seed=seed, **hold)[0]
    server = make_mock(seed=seed, **hold)
    # with an hour of grace after the first signal, only the second one can end the run
    running = spawn(tmp_path, numbered(20), "-c", "1", server=server, preamble=AN_HOUR_OF_GRACE)
    wait_until(lambda: len(server.requests) == h + 1, running.proc)
    finished = read_jsonl(running.run_dir / "transcripts.jsonl")
    assert len(finished) == h // 3
    running.proc.send_signal(signal.SIGINT)
    wait_until(lambda: not signal_pending(running.proc.pid, signal.SIGINT), running.proc)
    running.proc.send_signal(signal.SIGINT)
    played = running.finish()
    assert played.result.exit_code == 130
    assert played.transcripts == finished  # nothing finished is lost, the held one not recorded
    manifest = played.manifest
    assert manifest["status"] == "interrupted" and manifest["ended_at"]
    counts = manifest["counts"]
    assert (counts["ok"], counts["failed"], counts["not_run"]) == (h // 3, 0, 20 - h // 3)
    assert len(server.requests) == h + 1  # and nothing was sent after the signals


def test_torn_last_line_is_repaired_on_resume(tmp_path, mock_server):
    played = play(tmp_path, THREE_TURNS.format(n=5), server=mock_server, models=RETRIES)
    assert played.result.exit_code == 0
    path = played.run_dir / "transcripts.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][:40])  # a kill in the middle of a write
    result = played.resume().result
    assert result.exit_code == 0
    records = played.transcripts
    assert len(records) == 5 and len({r["conversation_id"] for r in records}) == 5


def test_resume_refuses_changed_scenarios_unless_forced(tmp_path, mock_server):
    played = play(tmp_path, THREE_TURNS.format(n=2), server=mock_server, models=RETRIES)
    assert played.result.exit_code == 0
    write_scenario(tmp_path / "s.yaml", THREE_TURNS.format(n=3))
    refused = played.resume().result
    assert refused.exit_code == 2 and "s.yaml" in refused.stderr and "--force" in refused.stderr
    forced = played.resume("--force").result
    assert forced.exit_code == 0
    assert len(played.transcripts) == 3


def test_retry_failed_runs_failures_again_and_the_newest_record_wins(tmp_path, make_mock):
    bad = make_mock(error_rate=1.0)
    played = play(tmp_path, THREE_TURNS.format(n=2), server=bad, models={"max_retries": 0})
    assert played.result.exit_code == 3
    assert played.resume().result.exit_code == 3
    assert len(played.transcripts) == 2  # failures not rerun
    good = make_mock()
    write_models(tmp_path / "models.yaml", good.base_url, max_retries=0)
    result = played.resume("--retry-failed", "--force").result
    assert result.exit_code == 0, result.output
    records = played.transcripts
    assert [r["status"] for r in records] == ["failed", "failed", "ok", "ok"]
    report = played.report("json")
    assert '"ok": 2' in report.output and '"failed": 0' in report.output
