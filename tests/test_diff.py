"""diff BASE_RUN NEW_RUN: regressions found (exit 1), fixes, missing and new conversations,
changed replies, per-target deltas; markdown that fits a CI comment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, play

from runner.results import store
from runner.results.diff import Change, Diff
from runner.results.diffview import render_diff

SLOW_MS = 1600  # the slowed mock's latency: past the check's limit whatever the machine
LATENCY = f"""
id: quick
turns:
  - user: answer quickly
    expect: {{max_latency_ms: {SLOW_MS - 100}}}
"""

BASE = """
scenarios:
  - id: fixed
    turns:
      - user: say teal
        expect: {contains: [coffee]}
  - id: steady
    turns: [hello there]
  - id: breaks
    turns: [all good]
  - id: dropped
    turns: [bye]
"""
# the same suite, changed: fixed now passes, steady's reply changes, breaks errors,
# dropped is gone and added is new
NEW = (
    BASE.replace("[coffee]", "[teal]")
    .replace("hello there", "hello again")
    .replace("[all good]", '["all good [[error]]"]')
    .replace("id: dropped\n    turns: [bye]", "id: added\n    turns: [hi]")
)


def test_a_slower_server_failing_max_latency_ms_is_a_regression_exit_1(
    tmp_path, mock_server, make_mock
):
    base = play(tmp_path, LATENCY, server=mock_server)
    assert base.result.exit_code == 0, base.result.output
    new = play(tmp_path, LATENCY, server=make_mock(latency_ms=SLOW_MS))
    assert new.result.exit_code == 1

    result = cli("diff", base.run_dir, new.run_dir)
    assert result.exit_code == 1
    assert "1 regression" in result.output and "quick@chat  pass -> fail" in result.output
    assert "max_latency_ms" in result.output
    data = json.loads(cli("diff", base.run_dir, new.run_dir, "--format", "json").output)
    (regression,) = data["regressions"]
    assert regression["conversation_id"] == "quick@chat"
    assert regression["reason"].startswith("turn 0: max_latency_ms: ")
    (target,) = data["targets"]
    assert target["latency_p50_ms"]["new"] >= SLOW_MS
    assert target["latency_p50_ms"]["change"] > 0
    markdown = cli("diff", base.run_dir, new.run_dir, "--format", "markdown").output
    assert markdown.startswith("### ❌ dialogue-runner diff")
    assert "<details open><summary>Regressions (1)</summary>" in markdown
    assert "| chat | 100.0 → 0.0 (-100.0) |" in markdown

    back = cli("diff", new.run_dir, base.run_dir)  # the other way round it is a fix
    assert back.exit_code == 0 and "1 fix," in back.output


def test_fixes_missing_new_and_changed_replies_matched_by_id(tmp_path, mock_server):
    base = play(tmp_path, BASE, server=mock_server, models={"max_retries": 0})
    new = play(tmp_path, NEW, server=mock_server, models={"max_retries": 0})
    result = cli("diff", base.run_dir, new.run_dir, "--format", "json", "--text")
    assert result.exit_code == 1  # breaks: ok -> failed
    data = json.loads(result.output)
    assert [(c["conversation_id"], c["before"], c["after"]) for c in data["regressions"]] == [
        ("breaks@chat", "pass", "error")
    ]
    assert data["regressions"][0]["reason"].startswith("http: ")
    assert [(c["conversation_id"], c["before"], c["after"]) for c in data["fixes"]] == [
        ("fixed@chat", "fail", "pass")
    ]
    assert "missing ['coffee']" in data["fixes"][0]["reason"]  # why it failed before
    assert data["missing"] == ["dropped@chat"]
    assert data["new_conversations"] == ["added@chat"]
    changed = {(t["conversation_id"], t["turn"]) for t in data["text_changes"]}
    assert changed == {("steady@chat", 0), ("breaks@chat", 0)}  # fixed: same text, new check
    steady = next(t for t in data["text_changes"] if t["conversation_id"] == "steady@chat")
    assert "hello there" in steady["before"] and "hello again" in steady["after"]
    assert data["replies_changed"] == 2
    (target,) = data["targets"]
    assert target["pass_rate"] == {"base": 0.75, "new": 0.75, "change": 0.0}  # 3 of 4 each

    text = cli("diff", base.run_dir, new.run_dir, "--text").output
    assert "CHANGED REPLIES" in text and "steady@chat turn 0" in text
    assert "MISSING (in the base run only)\n  dropped@chat" in text
    assert "NEW (in the new run only)\n  added@chat" in text
    without = json.loads(cli("diff", base.run_dir, new.run_dir, "--format", "json").output)
    assert without["text_changes"] == [] and without["replies_changed"] == 2


def test_markdown_fits_a_ci_comment_however_many_regressions():
    diff = Diff("base", "new")
    diff.regressions = [
        Change(f"s{i}@t", f"s{i}", "t", "pass", "fail", "turn 0: contains: " + "x" * 500)
        for i in range(5000)
    ]
    markdown = render_diff(diff, "markdown")
    assert len(markdown) < 65_536
    assert "5000 regressions" in markdown and "… and 4970 more" in markdown


def test_markdown_escapes_what_the_replies_hold():
    diff = Diff("base", "new")
    diff.regressions = [Change("a@t", "a", "t", "pass", "fail", "<script>x</script> | pipe")]
    markdown = render_diff(diff, "markdown")
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown and "\\| pipe" in markdown


def test_diff_of_a_folder_that_is_not_a_run_is_exit_2(tmp_path, mock_server):
    base = play(tmp_path, "id: a\nturns: [hi]\n", server=mock_server)
    (tmp_path / "empty").mkdir()
    result = cli("diff", base.run_dir, tmp_path / "empty")
    assert result.exit_code == 2 and "not a readable run folder" in result.stderr


# ---------------------------------------------------------------- the gate

PAIR = "scenarios:\n  - id: kept\n    turns: [hello]\n  - id: other\n    turns: [bye]\n"
FAILING = (
    "  - id: {id}\n    turns:\n      - user: say teal\n        expect: {{contains: [coffee]}}\n"
)
DOLLAR_A_TOKEN = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}


def gate_of(base, new, *args: str) -> tuple[int, dict]:
    result = cli("diff", base.run_dir, new.run_dir, "--format", "json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_a_conversation_missing_from_the_new_run_fails_the_gate(tmp_path, mock_server):
    base = play(tmp_path, PAIR, server=mock_server)
    new = play(tmp_path, PAIR.replace("  - id: other\n    turns: [bye]\n", ""), server=mock_server)
    assert new.result.exit_code == 0  # the run itself is clean
    code, data = gate_of(base, new)
    assert code == 1 and data["regressions"] == [] and data["missing"] == ["other@chat"]
    assert data["gate"] == {
        "passed": False, "reasons": ["1 conversation missing from the new run"],
    }  # fmt: skip
    text = cli("diff", base.run_dir, new.run_dir).output
    assert "gate: FAILED: 1 conversation missing from the new run" in text
    markdown = cli("diff", base.run_dir, new.run_dir, "--format", "markdown").output
    assert markdown.startswith("### ❌ dialogue-runner diff")
    assert "<details open><summary>Missing (1)</summary>" in markdown


def test_a_new_conversation_that_fails_its_checks_fails_the_gate_a_passing_one_does_not(
    tmp_path, mock_server
):
    base = play(tmp_path, PAIR, server=mock_server)
    passing = play(tmp_path, PAIR + "  - id: extra\n    turns: [more]\n", server=mock_server)
    code, data = gate_of(base, passing)
    assert code == 0 and data["new_conversations"] == ["extra@chat"]
    assert data["gate"] == {"passed": True, "reasons": []} and data["new_failing"] == []

    failing = play(tmp_path, PAIR + FAILING.format(id="extra"), server=mock_server)
    assert failing.result.exit_code == 1
    code, data = gate_of(base, failing)
    assert code == 1 and data["regressions"] == []
    (new,) = data["new_failing"]
    assert (new["conversation_id"], new["before"], new["after"]) == ("extra@chat", "new", "fail")
    assert new["reason"] == "turn 0: contains: missing ['coffee']"
    assert data["gate"]["reasons"] == ["1 new conversation not passing"]
    text = cli("diff", base.run_dir, failing.run_dir).output
    assert "NEW AND NOT PASSING\n  extra@chat  new -> fail  turn 0: contains:" in text


def test_a_new_run_that_did_not_complete_fails_the_gate(tmp_path, mock_server):
    four = "id: s\nturns: [hi]\nvars: {n: [1, 2, 3, 4]}\n"
    models = {"price": DOLLAR_A_TOKEN}
    base = play(tmp_path, four, server=mock_server, models=models)
    stopped = play(
        tmp_path, four, "--max-cost", "0.5", "-c", "1", server=mock_server, models=models
    )
    assert stopped.result.exit_code == 3 and stopped.manifest["status"] == "over_budget"
    code, data = gate_of(base, stopped)
    assert code == 1
    assert (
        "the new run did not complete: status over_budget, 3 conversations not run"
        in (data["gate"]["reasons"])
    )
    # every conversation there, but the run stopped (Ctrl-C after the last record was written)
    manifest = base.manifest | {"status": "interrupted"}
    (base.run_dir / "run.json").write_text(json.dumps(manifest), encoding="utf-8")
    code, data = gate_of(play(tmp_path, four, server=mock_server, models=models), base)
    assert code == 1 and data["missing"] == [] and data["regressions"] == []
    assert data["gate"]["reasons"] == ["the new run did not complete: status interrupted"]


def test_runs_of_different_targets_need_match_scenario(tmp_path, mock_server):
    base = play(tmp_path, PAIR + FAILING.format(id="red"), server=mock_server)
    new = play(tmp_path, PAIR + FAILING.format(id="red"), server=mock_server, targets=["gemini"])
    refused = cli("diff", base.run_dir, new.run_dir)
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "no target in common" in refused.stderr and "--match scenario" in refused.stderr

    code, data = gate_of(base, new, "--match", "scenario")
    assert code == 0 and data["match"] == "scenario"  # red failed before too: no regression
    assert data["missing"] == data["new_conversations"] == data["regressions"] == []
    assert [t["target"] for t in data["targets"]] == ["chat -> gemini"]  # one row, paired
    # the new model fails a check the old one passed: a regression, paired by scenario
    other = PAIR.replace("  - id: other\n    turns: [bye]\n", FAILING.format(id="other"))
    worse = play(tmp_path, other, server=mock_server, targets=["gemini"])
    code, data = gate_of(base, worse, "--match", "scenario")
    assert code == 1
    assert [(c["conversation_id"], c["before"], c["after"]) for c in data["regressions"]] == [
        ("other@gemini", "pass", "fail")
    ]
    assert data["missing"] == ["red@chat"]
    text = cli("diff", base.run_dir, worse.run_dir, "--match", "scenario").output
    assert "(paired by scenario, vars and sample)" in text.splitlines()[0]


def test_match_scenario_pairs_vars_and_samples_and_refuses_a_run_of_several_targets(
    tmp_path, mock_server
):
    two = "id: v\nturns: ['{{n}}']\nvars: {n: [1, 2]}\nrepeat: 2\n"
    base = play(tmp_path, two, server=mock_server)
    new = play(tmp_path, two.replace("n: [1, 2]", "n: [2, 3]"), server=mock_server,
               targets=["responses"])  # fmt: skip
    code, data = gate_of(base, new, "--match", "scenario")
    assert code == 1 and len(data["missing"]) == len(data["new_conversations"]) == 2  # n=1, n=3
    assert all(cid.startswith("v[") for cid in data["missing"])
    assert data["gate"]["reasons"] == ["2 conversations missing from the new run"]

    both = play(tmp_path, two, server=mock_server, targets=["chat", "responses"])
    refused = cli("diff", base.run_dir, both.run_dir, "--match", "scenario")
    assert refused.exit_code == 2 and "pairs runs of one target each" in refused.stderr
    assert "has chat, responses" in refused.stderr


@pytest.mark.parametrize(
    "command", [("diff",), ("diff", "--format", "json"), ("compare", "--html", "-")]
)
def test_diff_and_compare_read_each_runs_transcripts_once(
    tmp_path, mock_server, monkeypatch, command
):
    """Each run's newest records are read once (RunRecords.newest: two passes over the
    file), and its report rows made from them, not from a second read."""
    scenario = "id: s\nvars: {n: [1, 2, 3]}\nturns: ['hi {{n}}']\n"
    base = play(tmp_path, scenario, server=mock_server, run_id="base")
    new = play(tmp_path, scenario, server=mock_server, run_id="new")
    assert base.result.exit_code == new.result.exit_code == 0
    opened: list[str] = []

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file).name)
        return open(file, *args, **kwargs)

    monkeypatch.setattr(store, "open", counting_open, raising=False)
    name, *options = command
    result = cli(name, base.run_dir, new.run_dir, *options)
    assert result.exit_code == 0, result.output
    assert opened.count(store.TRANSCRIPTS) == 2 * 2
    assert "chat" in result.output
