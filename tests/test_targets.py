"""Targets end to end: the built-in mocks, the models file's errors, prices, rpm and tpm pacing."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from conftest import CHAIN, ROOT, cli, play

import runner.client.client


def test_the_demo_plays_every_shipped_scenario_on_the_four_built_in_mocks(tmp_path):
    # `make demo`: run scenarios/ -m mock -m mock-responses -m mock-gemini -m mock-anthropic
    builtins = ("mock", "mock-responses", "mock-gemini", "mock-anthropic")
    played = play(tmp_path, ROOT / "scenarios", targets=builtins)
    assert played.result.exit_code == 0, played.result.output
    records = played.transcripts
    assert all(r["status"] == "ok" and r["passed"] is True for r in records)
    counts = played.manifest["counts"]
    assert counts["planned"] == counts["ok"] == len(records)
    assert (counts["failed"], counts["checks_failed"], counts["not_run"]) == (0, 0, 0)
    plans = defaultdict(set)
    for r in records:
        plans[r["target"]].add((r["scenario_id"], json.dumps(r["vars"]), r["sample"]))
    assert set(plans) == set(builtins)
    assert plans["mock"] == plans["mock-responses"] == plans["mock-gemini"]
    assert plans["mock"] == plans["mock-anthropic"]
    shipped = cli("validate", ROOT / "scenarios").output.split()[0]  # "N scenarios OK"
    assert len({scenario for scenario, _, _ in plans["mock"]}) == int(shipped)
    assert {r["provider"] for r in records} == {
        "openai-chat",
        "openai-responses",
        "gemini",
        "anthropic",
    }
    checks = [c for r in records for t in r["turns"] for c in t["checks"]]
    assert all(c["passed"] for c in checks)
    assert {c["kind"] for c in checks} >= {"contains", "contains_any", "not_contains", "regex"}


TARGET = "targets:\n  x:\n"  # the target's name is on line 2; its fields start on line 3


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        (
            ["provider: openai-chat", "modle: m"],
            [(4, "unknown key 'modle' in target 'x'; did you mean 'model'?"),
             (2, "target 'x' needs 'model'")],
        ),
        (["provider: openai-chat", "model: m", "concurrency: lots"],
         [(5, "'concurrency' of target 'x' must be int")]),
        (["provider: openai-chat", "model: m", "concurrency: true"],
         [(5, "'concurrency' of target 'x' must be int")]),
        (["provider: gemini", "model: m", "rpm: fast", "stream: 1"],
         [(5, "'rpm' of target 'x' must be int or float"),
          (6, "'stream' of target 'x' must be bool")]),
        (["provider: claude", "model: m"],
         [(3, "unknown provider 'claude'; use one of openai-chat, openai-responses, gemini, "
              "anthropic")]),
        (["provider: openai-chat", "model: m", "cache: true"],
         [(5, "target 'x': cache: true marks the prompt for providers with cache marks "
              "(anthropic); provider openai-chat has none")]),
        (["provider: anthropic", "model: m", "auth: query"],
         [(5, "target 'x': provider anthropic takes auth x-api-key or bearer, not 'query'")]),
        (["model: m"], [(2, "target 'x' needs 'provider'")]),
        (["provider: openai-chat"], [(2, "target 'x' needs 'model'")]),
    ],
)  # fmt: skip
def test_models_file_problems_name_file_and_line_and_exit_2(
    tmp_path, mock_server, fields, problems
):
    fields = [*fields, f"base_url: {mock_server.base_url}/v1"]  # last: the lines above hold
    text = TARGET + "".join(f"    {field}\n" for field in fields)
    played = play(tmp_path, "id: a\nturns: [hi]\n", models=text, targets=("x",))
    assert played.result.exit_code == 2
    for line, problem in problems:
        assert f"models.yaml:{line}: {problem}" in played.result.stderr
    assert "Traceback" not in played.result.output
    assert mock_server.requests == []


PRICE = {"input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25}


def test_cost_is_the_price_of_the_recorded_tokens(tmp_path, mock_server):
    played = play(
        tmp_path,
        CHAIN.replace("CONTEXT", "full"),
        server=mock_server,
        targets=("chat", "mock"),
        models={"price": PRICE},  # the built-in mock target has no price
    )
    assert played.result.exit_code == 0, played.result.output
    used = defaultdict(int)
    for u in played.usage:
        if u["target"] == "chat":
            for key in ("input_tokens", "cached_tokens", "output_tokens"):
                used[key] += u[key]
    assert 0 < used["cached_tokens"] < used["input_tokens"]  # each price counts
    fresh = used["input_tokens"] - used["cached_tokens"]
    expected = (fresh * 2.5 + used["cached_tokens"] * 1.25 + used["output_tokens"] * 10.0) / 1e6
    rows = {row["target"]: row for row in json.loads(played.report("json").output)}
    assert rows["chat"]["cost_usd"] == pytest.approx(expected)
    assert rows["mock"]["cost_usd"] is None
    assert played.manifest["cost_usd"] == round(expected, 6)


class FakeClock:
    """The pacing buckets' clock: time moves only when they wait. Each wait is noted with the
    number of requests the mock had received by then."""

    def __init__(self, server):
        self.server = server
        self.now = 0.0
        self.waits: list[tuple[int, float]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append((len(self.server.requests), seconds))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch, mock_server) -> FakeClock:
    """Every rpm/tpm bucket the client makes runs on a FakeClock (the buckets' own seam)."""
    fake = FakeClock(mock_server)
    bucket = runner.client.client.TokenBucket
    made = lambda per_minute: bucket(per_minute, clock=fake, sleep=fake.sleep)  # noqa: E731
    monkeypatch.setattr(runner.client.client, "TokenBucket", made)
    return fake


FIVE_TURNS = "id: p\nturns: [a, b, c, d, e]\n"  # one conversation: one request at a time


def test_rpm_paces_requests_through_the_client(tmp_path, mock_server, clock):
    played = play(tmp_path, FIVE_TURNS, server=mock_server, models={"rpm": 120})
    assert played.result.exit_code == 0, played.result.output
    assert len(mock_server.requests) == 5
    # 120 a minute is two a second, with one second of burst: the first two go at once, then
    # each request waits half a second before it is sent (the mock has not seen it yet)
    assert clock.waits == [(2, 0.5), (3, 0.5), (4, 0.5)]


def test_tpm_paces_requests_by_what_they_are_admitted_at(tmp_path, mock_server, clock):
    models = {"tpm": 60, "params": {"max_tokens": 500}}
    played = play(tmp_path, FIVE_TURNS, server=mock_server, models=models)
    assert played.result.exit_code == 0, played.result.output
    assert len(mock_server.requests) == 5
    # 60 tokens a minute is one a second. A request costs what OpenAI admits it at: the
    # larger of its max_tokens (500) and its characters / 4 (less, for these short turns), so
    # each waits out the 500 the previous one took, before it is sent
    assert clock.waits == [(i, 500.0) for i in range(1, 5)]
    assert clock.now == 4 * 500
