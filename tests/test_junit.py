"""JUnit files for CI: read back with junitparser, validated against Jenkins' junit-10.xsd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import xmlschema
from conftest import cli, play
from junitparser import Error, Failure, JUnitXml, Skipped

from runner.results import store

SCHEMA = xmlschema.XMLSchema(Path(__file__).parent / "data" / "junit-10.xsd")

# the mock echoes the last user text, so `contains` of a word of it passes;
# "[[error]]" makes the mock answer 500, final with max_retries: 0
SUITE = """
scenarios:
  - id: passes
    turns:
      - user: please say teal
        expect: {contains: [teal]}
  - id: fails
    turns:
      - first turn
      - user: please say teal
        expect: {contains: [coffee], regex: "^never"}
  - id: errors
    turns:
      - "hello [[error]]"
  - id: hostile
    turns:
      - user: "<b>&amp; \\x07 ]]> \\"quoted\\"</b>"
        expect: {equals: nope}
"""


def suites(path: Path) -> dict[str, object]:
    """The file's suites by name, once it is valid and every count agrees with its testcases."""
    SCHEMA.validate(str(path))  # raises with the offending element when the file is invalid
    xml = JUnitXml.fromfile(str(path))
    for suite in xml:
        kinds = [type(case.result[0]) if case.result else None for case in suite]
        assert suite.tests == len(kinds)
        assert suite.failures == kinds.count(Failure) and suite.errors == kinds.count(Error)
        assert suite.skipped == kinds.count(Skipped)
    assert xml.tests == sum(s.tests for s in xml)
    assert xml.failures == sum(s.failures for s in xml) and xml.errors == sum(s.errors for s in xml)
    return {suite.name: suite for suite in xml}


def results(suite: object) -> dict[str, list[object]]:
    return {case.name: case.result for case in suite}  # type: ignore[attr-defined]


def test_run_writes_a_junit_file_ci_systems_read(tmp_path, mock_server):
    junit = tmp_path / "ci" / "junit.xml"
    played = play(
        tmp_path,
        SUITE,
        "--junit",
        junit,
        server=mock_server,
        targets=("chat", "gemini"),
        models={"max_retries": 0},
    )
    assert played.result.exit_code == 3, played.result.output  # one conversation failed
    by_target = suites(junit)
    assert list(by_target) == ["chat", "gemini"]
    for target, suite in by_target.items():
        assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 2, 1, 0)
        cases = results(suite)
        assert cases[f"passes@{target}"] == []
        (failure,) = cases[f"fails@{target}"]
        assert isinstance(failure, Failure)
        assert failure.type == "contains,regex"
        assert "turn 1: contains: missing ['coffee']" in failure.message
        assert "turn 1: regex: no match for /^never/" in failure.text
        (error,) = cases[f"errors@{target}"]
        assert isinstance(error, Error) and error.type == "http" and "500" in error.message
        (hostile,) = cases[f"hostile@{target}"]
        assert isinstance(hostile, Failure) and hostile.type == "equals"
    case = next(c for c in by_target["chat"] if c.name == "hostile@chat")
    assert case.classname == "hostile"
    assert '<b>&amp; \ufffd ]]> "quoted"</b>' in case.system_out  # text, escaped, kept
    records = {r["conversation_id"]: r for r in played.transcripts}
    assert all(float(c.time) >= 0 for c in by_target["chat"])
    assert records["passes@chat"]["status"] == "ok"


def test_the_junit_command_marks_not_run_conversations_skipped(tmp_path, mock_server):
    scenario = "id: s\nturns: [hi]\nvars: {n: [1, 2, 3, 4]}\n"
    price = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}  # a dollar a token
    played = play(
        tmp_path,
        scenario,
        "--max-cost",
        "0.5",
        "-c",
        "1",
        server=mock_server,
        models={"price": price},
    )
    assert played.result.exit_code == 3
    junit = tmp_path / "junit.xml"
    result = cli("junit", played.run_dir, "-o", junit)
    assert result.exit_code == 0, result.output
    (suite,) = suites(junit).values()
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 0, 0, 3)
    skipped = [case for case in suite if case.result]
    assert all(isinstance(case.result[0], Skipped) for case in skipped)
    assert "--max-cost" in skipped[0].result[0].message
    assert {case.classname for case in suite} == {"s"}


def test_junit_of_a_run_whose_scenarios_are_gone_lists_what_was_recorded(tmp_path, mock_server):
    played = play(tmp_path, "id: s\nturns: [hi]\n", server=mock_server)
    (tmp_path / "s.yaml").unlink()
    junit = tmp_path / "junit.xml"
    result = cli("junit", played.run_dir, "-o", junit)
    assert result.exit_code == 0
    assert "not-run conversations are not listed" in result.stderr
    (suite,) = suites(junit).values()
    assert (suite.tests, suite.skipped) == (1, 0)


@pytest.mark.parametrize("run_dir", ["missing", "empty"])
def test_junit_of_something_that_is_not_a_run_is_exit_2(tmp_path, run_dir):
    (tmp_path / "empty").mkdir()
    result = cli("junit", tmp_path / run_dir, "-o", tmp_path / "j.xml")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_junit_of_a_run_stopped_early_in_a_huge_plan_lists_a_few_and_counts_the_rest(
    tmp_path, mock_server
):
    # 1000^3 = 10^9 conversations planned; --max-cost stops the run after the first one
    values = ", ".join(str(i) for i in range(1000))
    scenario = f"id: s\nturns: [hi]\nvars: {{a: [{values}], b: [{values}], c: [{values}]}}\n"
    price = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}  # a dollar a token
    junit = tmp_path / "run.xml"
    played = play(
        tmp_path, scenario, "--max-cost", "0.5", "-c", "1", "--junit", junit,
        server=mock_server, models={"price": price},
    )  # fmt: skip
    assert played.result.exit_code == 3, played.result.output
    again = tmp_path / "again.xml"
    assert cli("junit", played.run_dir, "-o", again).exit_code == 0
    for path in (junit, again):
        SCHEMA.validate(str(path))
        (suite,) = JUnitXml.fromfile(str(path))
        assert (suite.tests, suite.skipped) == (10**9, 10**9 - 1)
        cases = list(suite)
        assert len(cases) == 1 + 1000  # the one run, then the first 1000 not run
        assert all(isinstance(c.result[0], Skipped) for c in cases[1:])
        said = suite._elem.find("system-out").text
        assert f"{10**9 - 1001} more conversations planned but not run" in said
        properties = {p.name: p.value for p in suite.properties()}
        assert properties["skipped_not_listed"] == str(10**9 - 1001)
        assert path.stat().st_size < 1_000_000


@pytest.mark.parametrize("shard", [None, (1, 3), (2, 3), (3, 3), (2, 4), (5, 5)])
def test_each_targets_planned_count_is_what_its_plan_holds(tmp_path, shard):
    from collections import Counter

    from runner.results.junit import planned_per_target
    from runner.spec.plan import Plan
    from runner.spec.scenarios import load_paths
    from runner.spec.targets import resolve

    path = tmp_path / "s.yaml"
    path.write_text("id: s\nturns: [hi]\nvars: {n: [1, 2, 3, 4, 5, 6, 7]}\nrepeat: 2\n")
    targets = resolve(["mock", "mock-gemini"], {})
    plan = Plan(load_paths([str(path)]), targets, None, shard)
    held = Counter(conv.target.name for conv in plan)
    assert planned_per_target(plan) == {t.name: held[t.name] for t in targets}


# the mock ends its reply with " seed=N" when the user text holds [[seed]]: with --repeat 5
# the regex passes on samples 0-3 and fails on sample 4
REPEATED = """
scenarios:
  - id: short
    min_pass_rate: 0.9
    turns:
      - user: "your seed [[seed]]"
        expect: {regex: "seed=[0-3]$"}
  - id: enough
    min_pass_rate: 0.8
    turns:
      - user: "your seed [[seed]]"
        expect: {regex: "seed=[0-3]$"}
  - id: errors
    turns: ["hello [[error]]"]
  - id: steady
    turns: [hello]
"""


def test_repeated_scenarios_are_one_testcase_per_scenario_and_target(tmp_path, mock_server):
    junit = tmp_path / "junit.xml"
    played = play(tmp_path, REPEATED, "--repeat", "5", "--junit", junit, server=mock_server,
                  targets=("chat", "gemini"), models={"max_retries": 0})  # fmt: skip
    assert played.result.exit_code == 3, played.result.output  # `errors` failed after retries
    again = tmp_path / "again.xml"
    assert cli("junit", played.run_dir, "-o", again).exit_code == 0
    assert again.read_text() == junit.read_text()
    for target, suite in suites(junit).items():
        assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 1, 1, 0)
        cases = {case.name: case for case in suite}
        assert set(cases) == {f"{s}@{target}" for s in ("short", "enough", "errors", "steady")}
        short = cases[f"short@{target}"]
        (failure,) = short.result
        assert isinstance(failure, Failure) and failure.type == "pass_rate"
        assert failure.message == (
            "4/5 samples passed (80.0 %, 95 % interval 37.6-96.4 %); min_pass_rate 0.9"
        )
        assert short.classname == "short"
        lines = short.system_out.splitlines()
        assert lines[0] == failure.message + "; flaky"
        assert lines[1:5] == [f"sample 0 short@{target}: pass"] + [
            f"sample {i} short@{target}#{i}: pass" for i in (1, 2, 3)
        ]
        assert lines[5] == (
            f"sample 4 short@{target}#4: fail: turn 0: regex: no match for /seed=[0-3]$/"
        )
        enough = cases[f"enough@{target}"]
        assert enough.result == [] and "; min_pass_rate 0.8; flaky" in enough.system_out
        (error,) = cases[f"errors@{target}"].result
        assert isinstance(error, Error) and error.type == "pass_rate"
        assert error.message.startswith("0/5 samples passed (0.0 %, 95 % interval 0.0-43.4 %)")
        assert "every sample must pass" in error.message
        assert "sample 3 errors@" in cases[f"errors@{target}"].system_out
        assert float(cases[f"steady@{target}"].time) >= 0


def test_a_repeated_run_stopped_early_counts_its_samples_not_run(tmp_path, mock_server):
    scenario = "id: s\nturns: [hi]\nrepeat: 4\nmin_pass_rate: 0.5\n"
    price = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}  # a dollar a token
    played = play(tmp_path, scenario, "--max-cost", "0.5", "-c", "1", server=mock_server,
                  models={"price": price})  # fmt: skip
    assert played.result.exit_code == 3
    junit = tmp_path / "junit.xml"
    assert cli("junit", played.run_dir, "-o", junit).exit_code == 0
    (suite,) = suites(junit).values()
    assert (suite.tests, suite.failures, suite.skipped) == (1 + 3, 0, 3)
    assert [case.name for case in suite] == ["s@chat", "s@chat#1", "s@chat#2", "s@chat#3"]
    assert "1/1 samples passed" in next(iter(suite)).system_out


def test_junit_reads_the_transcripts_once(tmp_path, mock_server, monkeypatch):
    """One read of the newest records (RunRecords.newest: two passes over the file) counts
    every suite and group; the testcases are then read at their offsets: three opens."""
    played = play(tmp_path, REPEATED, "--repeat", "2", server=mock_server,
                  models={"max_retries": 0})  # fmt: skip
    assert played.result.exit_code == 3, played.result.output
    opened: list[str] = []

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file).name)
        return open(file, *args, **kwargs)

    monkeypatch.setattr(store, "open", counting_open, raising=False)
    junit = tmp_path / "junit.xml"
    assert cli("junit", played.run_dir, "-o", junit).exit_code == 0
    assert opened.count(store.TRANSCRIPTS) == 3
    (suite,) = suites(junit).values()
    assert (suite.tests, suite.failures, suite.errors) == (4, 0, 1)  # samples 0 and 1 pass
