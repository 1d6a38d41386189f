"""The report: every figure recomputed here from the run's records, usage.jsonl for tokens."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import pytest
from conftest import CHAIN, play

PRICE = {
    "input_per_mtok": 3.0,
    "cached_input_per_mtok": 0.3,
    "output_per_mtok": 15.0,
    "reasoning_per_mtok": 20.0,
}
SCENARIOS = (
    CHAIN.replace("CONTEXT", "full")
    + """
---
id: checked
turns:
  - user: say teal
    expect: {contains: [teal]}
  - user: say teal again
    expect: {contains: [coffee], max_latency_ms: 600000}
vars: {n: [1, 2, 3]}
"""
)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


@pytest.fixture
def played(tmp_path, make_mock):
    flaky = make_mock(error_rate=0.3, seed=7, retry_after_ms=0)  # some attempts retried
    return play(
        tmp_path,
        SCENARIOS,
        server=flaky,
        targets=("chat", "responses"),
        models={"price": PRICE, "params": {"reasoning_effort": "low"}, "max_retries": 8},
    )


def test_report_figures_equal_sums_recomputed_from_the_records(played):
    assert played.result.exit_code == 1, played.result.output  # the coffee check fails
    rows = {row["target"]: row for row in json.loads(played.report("json").output)}
    assert list(rows) == ["chat", "responses"]
    usage, transcripts = played.usage, played.transcripts
    assert any(u["attempt"] > 1 for u in usage)  # the run did retry
    for target, row in rows.items():
        attempts = [u for u in usage if u["target"] == target]
        sums = Counter()
        for u in attempts:
            for key in ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens"):
                sums[key] += u[key]
        assert sums["reasoning_tokens"] > 0 and sums["cached_tokens"] > 0  # each price counts
        for key, total in sums.items():
            assert row[key] == total, key
        assert row["requests"] == len(attempts)
        assert row["retries"] == sum(u["attempt"] > 1 for u in attempts)
        fresh = sums["input_tokens"] - sums["cached_tokens"]
        plain_out = sums["output_tokens"] - sums["reasoning_tokens"]
        expected = fresh * 3.0 + sums["cached_tokens"] * 0.3 + plain_out * 15.0
        expected += sums["reasoning_tokens"] * 20.0
        assert row["cost_usd"] == pytest.approx(expected / 1e6)

        records = [r for r in transcripts if r["target"] == target]
        turns = [t for r in records for t in r["turns"]]
        checks = [c for t in turns for c in t["checks"]]
        assert row["conversations"] == len(records) == 4
        assert row["ok"] == sum(r["status"] == "ok" for r in records)
        assert row["checks_passed"] == sum(c["passed"] for c in checks)
        assert row["checks_total"] == len(checks) == 9
        assert row["passed"] == sum(r["passed"] is True for r in records) == 1
        assert row["pass_rate"] == pytest.approx(1 / 4)
        latencies = [t["latency_ms"] for t in turns]
        assert row["latency_p50_ms"] == nearest_rank(latencies, 0.5)
        assert row["latency_p95_ms"] == nearest_rank(latencies, 0.95)
        assert row["ttft_p50_ms"] is None  # not streamed: no first token before the last
    manifest = played.manifest
    assert manifest["cost_usd"] == round(sum(r["cost_usd"] for r in rows.values()), 6)
    tokens = defaultdict(int)
    for u in usage:
        tokens["total_tokens"] += u["total_tokens"]
    assert manifest["usage"]["total_tokens"] == tokens["total_tokens"]


def test_the_end_of_run_summary_is_the_report_table(played):
    table = played.report("table").output
    assert played.result.stdout.startswith(table.rstrip("\n"))
    header = table.splitlines()[0].split()
    for title in ("conv", "ok", "failed", "pass", "checks", "p50", "p95", "requests", "retries"):
        assert title in header
    markdown = played.report("markdown").output
    assert markdown.startswith("| target | conv | ok | failed | pass % | checks |")
    assert "| chat | 4 | 4 | 0 | 25.0 | 6/9 |" in markdown


def test_failed_conversations_are_counted_by_kind_under_the_table(tmp_path, mock_server):
    scenario = "id: boom\nturns: ['hello [[error]]']\nvars: {n: [1, 2]}\n"
    played = play(tmp_path, scenario, server=mock_server, models={"max_retries": 0})
    assert played.result.exit_code == 3
    report = played.report("table")
    assert "chat      2×  http 500: The model failed while answering" in report.output
    (row,) = json.loads(played.report("json").output)
    assert row["errors"] == {"http": 2} and row["failed"] == 2 and row["pass_rate"] == 0.0


def test_ttft_p50_of_streamed_turns(tmp_path, mock_server):
    played = play(tmp_path, SCENARIOS, "--stream", server=mock_server, targets=("gemini",))
    (row,) = json.loads(played.report("json").output)
    ttfts = [t["ttft_ms"] for r in played.transcripts for t in r["turns"]]
    assert len(ttfts) == 9 and row["ttft_p50_ms"] == nearest_rank(ttfts, 0.5)
    assert played.result.stdout.startswith(played.report().output.rstrip("\n"))


MANY = """
id: many
turns:
  - user: "hello | <b>there</b>"
    expect: {contains: [teal], equals: nope, regex: "^z|^<q>"}
  - user: fine
  - user: again
    expect: {contains: [x, y]}
vars: {n: [1, 2, 3, 4]}
---
id: clean
turns:
  - user: say teal
    expect: {contains: [teal]}
"""


def test_run_and_report_list_the_first_10_failing_checks_then_count_the_rest(tmp_path, mock_server):
    played = play(tmp_path, MANY, server=mock_server, targets=("chat", "gemini"))
    assert played.result.exit_code == 1
    failing = [  # recomputed from the records, in the order they were written
        (r["scenario_id"], r["conversation_id"], t["index"], c["kind"], c["reason"])
        for r in played.transcripts
        for t in r["turns"]
        for c in t["checks"]
        if not c["passed"]
    ]
    assert len(failing) == 2 * 4 * 4
    chat = [f for f in failing if f[1].endswith("@chat")]  # the report lists targets in order
    table = played.report().output
    assert played.result.stdout.startswith(table.rstrip("\n"))  # the end of the run, the same
    listed = table.split("failing checks:\n")[1].splitlines()
    assert listed[0].split() == ["scenario", "conversation", "turn", "kind", "reason"]
    for line, (scenario, cid, turn, kind, reason) in zip(listed[1:11], chat[:10], strict=True):
        assert line.split(None, 4) == [scenario, cid, str(turn), kind, reason]
    assert listed[11] == "  … and 22 more failing checks"
    assert "clean" not in table.split("failing checks:")[1]

    rows = json.loads(played.report("json").output)
    for row in rows:
        mine = [f for f in failing if f[1].endswith("@" + row["target"])]
        assert row["checks_failed"] == 16 and len(row["failed_checks"]) == 10
        assert [
            (c["scenario"], c["conversation_id"], c["turn"], c["kind"], c["reason"])
            for c in row["failed_checks"]
        ] == mine[:10]
    markdown = played.report("markdown").output
    assert "**Failing checks**\n\n| scenario | conversation | turn | kind | reason |" in markdown
    assert f"| many | {chat[0][1]} | 0 | contains | missing ['teal'] |" in markdown
    assert "| regex | no match for /^z\\|^&lt;q&gt;/ |" in markdown  # one cell, no HTML
    assert markdown.rstrip().endswith("… and 22 more failing checks")


def test_no_failing_checks_no_list(tmp_path, mock_server):
    played = play(tmp_path, MANY.split("---")[1], server=mock_server)
    assert played.result.exit_code == 0
    assert "failing checks:" not in played.result.output + played.report().output
    (row,) = json.loads(played.report("json").output)
    assert row["failed_checks"] == []
