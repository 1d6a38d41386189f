"""Targets end to end: the built-in mock targets."""

from __future__ import annotations

import json
from collections import defaultdict

from conftest import ROOT, cli, play


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
