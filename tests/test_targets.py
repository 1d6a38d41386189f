"""Targets end to end: the built-in mock targets, the models file's errors, and prices."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from conftest import CHAIN, ROOT, cli, play


def test_the_demo_plays_every_shipped_scenario_on_the_three_built_in_mocks(tmp_path):
    # `make demo`: run scenarios/ -m mock -m mock-responses -m mock-gemini
    builtins = ("mock", "mock-responses", "mock-gemini")
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
    shipped = cli("validate", ROOT / "scenarios").output.split()[0]  # "N scenarios OK"
    assert len({scenario for scenario, _, _ in plans["mock"]}) == int(shipped)
    assert {r["provider"] for r in records} == {"openai-chat", "openai-responses", "gemini"}
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
        (["provider: anthropic", "model: m"],
         [(3, "unknown provider 'anthropic'; use one of openai-chat, openai-responses, gemini")]),
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
