"""The benchmark's floor client does the same work as the runner (no timing asserts)."""

from __future__ import annotations

import asyncio

import pytest

from bench.floor import floor
from bench.limited import limited_workloads
from bench.sdk import sdk_run
from bench.workloads import TURNS, Workload


@pytest.mark.parametrize("stream", [False, True])
def test_floor_plays_every_turn_with_the_growing_history(mock_server, stream):
    url = mock_server.base_url + "/v1/chat/completions"
    done = asyncio.run(floor(url, n=4, concurrency=2, turns=3, stream=stream))
    assert done == 4
    sent = [r["json"]["messages"] for r in mock_server.requests]
    assert len(sent) == 12
    assert sorted(len(m) for m in sent) == [1] * 4 + [3] * 4 + [5] * 4
    last = max(sent, key=len)
    assert [m["content"] for m in last if m["role"] == "user"] == list(TURNS)
    assert all(m["content"].startswith("mock:") for m in last if m["role"] == "assistant")
    assert all(r["json"].get("stream", False) is stream for r in mock_server.requests)


def test_ideal_time_is_turns_times_latency_times_waves():
    assert Workload("L", 2000, 200, 50).ideal_s == pytest.approx(1.5)
    assert Workload("Z", 20000, 200, 0).ideal_s == 0


def test_the_bench_reads_the_connections_the_mock_accepted(mock_server):
    import os

    from bench.measure import Server, accepted

    server = Server(mock_server.port, os.getpid())
    first = accepted(server)
    assert first >= 1 and accepted(server) == first + 1  # each look opens one connection


def test_a_table_workload_is_one_conversation_per_row_of_a_vars_file(tmp_path):
    from bench.workloads import write_inputs
    from runner.spec.scenarios import load_file

    scenario, _ = write_inputs(tmp_path, 1234, 1, rows=5)
    [loaded] = load_file(str(scenario))
    assert loaded.var_count() == 5
    first = next(loaded.var_combinations())
    assert first == {"name": "person 0", "city": "City 0, Country"}


def test_ideal_times_at_the_limits():
    named = {w.name: w for w in limited_workloads(None)}
    # the requests beyond the window's burst, at the limit's rate, plus one latency
    assert named["req/s 1s"].ideal_s(0) == pytest.approx((1500 - 300) / 300 + 0.05)
    assert named["req/s 0.1s no hdr"].ideal_s(0) == pytest.approx((1500 - 30) / 300 + 0.05)
    assert named["req/s 10s"].ideal_s(0) == pytest.approx((1500 - 1000) / 100 + 0.05)
    tokens = named["tokens/s 1s"]
    assert tokens.ideal_s(140_000) == pytest.approx((140_000 - 30_000) / 30_000 + 0.05)
    assert named["in-flight"].ideal_s(0) == pytest.approx(1500 * 0.05 / 20)  # waves of 20
    # every limit is enforced on windows of 0.1, 1 and 10 s, with OpenAI's headers and without
    windows = {(w.mock.get("limit_window_s"), w.mock.get("limit_headers")) for w in named.values()}
    assert {(x, h) for x in (0.1, 1.0, 10.0) for h in ("openai", "none")} <= windows


def test_the_sdk_peer_counts_its_429s(make_mock):
    server = make_mock(limit_rpm=4 / 60, limit_window_s=3600, retry_after_ms=1)  # 4, then 1/min
    done = asyncio.run(sdk_run(server.base_url + "/v1", n=3, concurrency=1, turns=2, retries=1))
    # two conversations answered, then a 429 asking for an hour: the SDK gives up at once
    assert (done["attempts"], done["rate_limited"], done["lost"]) == (5, 1, 1)
