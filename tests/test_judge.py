"""Judge checks: a model grades a reply; the built-in mock grades deterministically
(pass when every "quoted" phrase of the rubric is in the reply)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.engine.judge import parse_verdict
from runner.errors import ApiError
from runner.mock.judge import verdict_text
from tests.conftest import cli, play, write_scenario

JUDGED = """
id: judged
turns:
  - user: tell me about apples
    expect:
      judge: {rubric: 'the reply mentions "apples"'}
  - user: and pears?
    expect:
      contains: mock
      judge: {rubric: 'the reply talks about "bananas"', target: mock-gemini}
"""


def judge_checks(played) -> list[dict]:
    return [c for r in played.transcripts for t in r["turns"] for c in t["checks"]
            if c["kind"] == "judge"]  # fmt: skip


def test_judge_checks_pass_and_fail_through_the_mock(tmp_path: Path) -> None:
    played = play(tmp_path, JUDGED, "--judge", "mock", targets=("mock",))
    assert played.result.exit_code == 1, played.result.output  # a check failed
    first, second = judge_checks(played)
    assert first["passed"] is True and first["judge"] == "mock"
    assert first["verdict"] == {"pass": True, "reason": 'the reply has "apples"'}
    assert second["passed"] is False and second["judge"] == "mock-gemini"
    assert second["reason"] == 'the reply lacks "bananas"'
    assert played.transcripts[0]["passed"] is False
    # the judges' requests are usage records marked as such, under the judge's target
    judged = [u for u in played.usage if u.get("judge")]
    assert [(u["target"], u["turn"]) for u in judged] == [("mock", 0), ("mock-gemini", 1)]
    assert [u["total_tokens"] for u in judged] == [c["usage"]["total_tokens"]
                                                  for c in (first, second)]  # fmt: skip
    assert all(u["conversation_id"] == "judged@mock" for u in played.usage)
    assert len([u for u in played.usage if not u.get("judge")]) == 2
    assert {t["name"] for t in played.manifest["judges"]} == {"mock", "mock-gemini"}


def test_judge_cost_counts_at_the_judges_price(tmp_path: Path) -> None:
    models = """
targets:
  grader:
    {provider: openai-chat, model: g, mock: {}, price: {input_per_mtok: 1000000}}
"""
    scenario = (
        "id: one\nturns:\n  - user: hi\n    expect: {judge: {rubric: '\"mock\"', target: grader}}\n"
    )
    played = play(tmp_path, scenario, targets=("mock",), models=models)
    assert played.result.exit_code == 0, played.result.output
    (check,) = judge_checks(played)
    assert check["passed"] and check["cost_usd"] == check["usage"]["input_tokens"]
    (row,) = json.loads(played.report("json").output)
    assert row["judge_tokens"] == check["usage"]["total_tokens"]


def test_a_judge_that_fails_after_retries_makes_the_check_an_error(tmp_path: Path) -> None:
    scenario = """
id: broken-judge
turns:
  - user: hi
    expect: {judge: 'say "mock" [[error]]'}
  - user: again
    expect: {judge: 'say "mock" [[no-verdict]]'}
"""
    played = play(tmp_path, scenario, "--judge", "mock", "--max-retries", "1", targets=("mock",))
    assert played.result.exit_code == 1
    record = played.transcripts[0]
    assert record["status"] == "ok" and record["passed"] is False
    http, garbled = judge_checks(played)
    assert http["passed"] is False and http["error"]["status"] == 500
    assert garbled["passed"] is False and garbled["error"]["kind"] == "malformed"
    assert "did not answer" in garbled["reason"]
    judged = [u for u in played.usage if u.get("judge")]
    assert [(u["turn"], u["status"]) for u in judged] == [(0, 500), (0, 500), (1, 200), (1, 200)]


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ('{"pass": true, "reason": "ok"}', {"pass": True, "reason": "ok"}),
        ('```json\n{"pass": false, "reason": "no"}\n```', {"pass": False, "reason": "no"}),
        ('{"pass": false}', {"pass": False, "reason": ""}),
    ],
)
def test_verdicts_parse(text: str, verdict: dict) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text", ['{"pass": "yes"}', "PASS", "[true]", '{"reason": "x"}'])
def test_anything_else_is_a_malformed_verdict_to_retry(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_verdict(text)
    assert caught.value.retryable and caught.value.kind == "malformed"


def test_the_mock_grades_only_a_grading_request() -> None:
    assert verdict_text("hello") is None
    assert verdict_text('grade\n{"rubric": "has \\"x\\"", "reply": "an X"}') == (
        '{"pass": true, "reason": "the reply has \\"x\\""}'
    )


@pytest.mark.parametrize(
    ("expect", "problem"),
    [
        ("{judge: {target: mock}}", "s.yaml:4: 'judge' needs 'rubric: ...'"),
        ("{judge: {rubric: x, model: mock}}", "s.yaml:4: unknown key 'model' in judge"),
        ("{judge: [x]}", "s.yaml:4: 'judge' must be a rubric or {rubric: ..., target: ...}"),
        ("{judge: {rubric: ''}}", "s.yaml:4: 'rubric' must not be empty"),
        ("{judge: x}", "s.yaml:4: this judge check names no target"),
        ("{judge: {rubric: x, target: nope}}", "s.yaml:4: judge target: unknown target 'nope'"),
    ],
)
def test_bad_judge_checks_are_input_errors(tmp_path: Path, expect: str, problem: str) -> None:
    path = write_scenario(
        tmp_path / "s.yaml", f"id: s\nturns:\n  - user: hi\n    expect: {expect}\n"
    )
    result = cli("run", path, "-m", "mock", "-o", tmp_path / "runs", "--no-progress")
    assert result.exit_code == 2
    assert problem in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.jsonl"))


def test_an_unknown_default_judge_is_an_input_error(tmp_path: Path) -> None:
    played = play(tmp_path, JUDGED, "--judge", "nope", targets=("mock",))
    assert played.result.exit_code == 2
    assert "--judge: unknown target 'nope'" in played.result.output
    assert not (played.run_dir / "usage.jsonl").exists()  # nothing was sent


def test_a_resumed_run_judges_with_the_judge_it_started_with(tmp_path: Path) -> None:
    played = play(tmp_path, JUDGED, "--judge", "mock-responses", targets=("mock", "mock-gemini"))
    assert played.result.exit_code == 1
    transcripts = played.run_dir / "transcripts.jsonl"
    first, _ = transcripts.read_text(encoding="utf-8").splitlines()
    transcripts.write_text(first + "\n", encoding="utf-8")  # as if killed before the second
    resumed = played.resume()
    assert resumed.result.exit_code == 1
    assert len(resumed.transcripts) == 2
    again = [
        c for t in resumed.transcripts[1]["turns"] for c in t["checks"] if c["kind"] == "judge"
    ]
    assert [(c["judge"], c["passed"]) for c in again] == [("mock-responses", True),
                                                        ("mock-gemini", False)]  # fmt: skip
