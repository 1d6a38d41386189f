"""Verdicts that account for chance: pass rates with Wilson intervals, min_pass_rate, flaky
scenarios, and diffs of repeated runs judged by Fisher's exact test. The statistics are
checked against scipy, computed independently here."""

from __future__ import annotations

import json

import pytest
from conftest import cli, play
from scipy.stats import binom, binomtest, fisher_exact

from runner.results.verdicts import fisher_drop, samples_needed, wilson

# the mock ends its reply with " seed=N" (the seed the sample was sent) when the user text
# holds [[seed]]: with --repeat 5, samples 0..4 are sent seeds 0..4, and this check passes
# on PASSING of them
SEEDED = """
scenarios:
  - id: seeded
    turns:
      - user: "tell me your seed [[seed]]"
        expect: {{regex: "seed=[{passing}]$"}}
  - id: steady
    turns:
      - user: say teal
        expect: {{contains: [teal]}}
"""
FOUR_OF_FIVE = SEEDED.format(passing="0-3")
ALL = SEEDED.format(passing="0-9")
NONE = SEEDED.format(passing="x")


def with_defaults(text: str, **defaults: object) -> str:
    return text.replace("scenarios:", f"defaults: {json.dumps(defaults)}\nscenarios:", 1)


def rate_table(output: str) -> dict[tuple[str, str], list[str]]:
    """The pass-rate table under a report: (scenario, target) -> the other cells."""
    lines = output.split("pass rates (samples of each scenario × target):\n")[1].splitlines()
    assert lines[0].split() == ["scenario", "target", "passed", "pass", "%", "95", "%",
                                "interval", "min", "verdict", "flaky"]  # fmt: skip
    rows = [line.split() for line in lines[1:] if line.startswith("  ")]
    return {(row[0], row[1]): row[2:] for row in rows}


def scipy_wilson(passed: int, n: int) -> tuple[float, float]:
    ci = binomtest(passed, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def scipy_fisher(base: tuple[int, int], new: tuple[int, int]) -> float:
    """The one-sided p-value that the new pass rate is lower (base passes, samples)."""
    table = [[base[0], base[1] - base[0]], [new[0], new[1] - new[0]]]
    return fisher_exact(table, alternative="greater").pvalue


# ---------------------------------------------------------------- the statistics


@pytest.mark.parametrize(
    ("passed", "n"),
    [(0, 1), (1, 1), (0, 5), (4, 5), (5, 5), (3, 10), (7, 20), (50, 100), (999, 1000),
     (0, 100_000), (31_337, 100_000)],
)  # fmt: skip
def test_wilson_intervals_are_scipys(passed, n):
    low, high = wilson(passed, n)
    reference = scipy_wilson(passed, n)
    assert low == pytest.approx(reference[0], abs=1e-12)
    assert high == pytest.approx(reference[1], abs=1e-12)


@pytest.mark.parametrize(
    ("base", "new"),
    [((5, 5), (0, 5)), ((5, 5), (4, 5)), ((3, 3), (0, 3)), ((4, 4), (0, 4)), ((0, 5), (5, 5)),
     ((10, 10), (7, 10)), ((18, 20), (9, 20)), ((30, 40), (20, 25)), ((1, 1), (0, 1)),
     ((97, 100), (80, 100)), ((900, 1000), (870, 1000)), ((1400, 1500), (1380, 1500)),
     ((4000, 5000), (3950, 5000))],
)  # fmt: skip
def test_fisher_p_values_are_scipys(base, new):
    """Both the exact sums of math.comb and, past 2000 samples, the sums in logarithms."""
    assert fisher_drop(*base, *new) == pytest.approx(scipy_fisher(base, new), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("base_rate", "new_rate"), [(1.0, 0.8), (0.9, 0.7), (0.8, 0.5)])
def test_the_sample_size_named_detects_such_a_drop_about_80_percent_of_the_time(
    base_rate, new_rate
):
    """The power of the one-sided Fisher test at the named size, exactly: every outcome of
    both runs weighed by its binomial probability (scipy's)."""
    n = samples_needed(base_rate, new_rate)
    assert n is not None
    power = sum(
        binom.pmf(k1, n, base_rate) * binom.pmf(k2, n, new_rate)
        for k1 in range(n + 1)
        for k2 in range(n + 1)
        if binom.pmf(k1, n, base_rate) > 1e-12 and fisher_drop(k1, n, k2, n) < 0.05
    )
    assert 0.75 <= power <= 0.9, (n, power)
    assert samples_needed(new_rate, base_rate) is None  # a rise needs nothing


def test_the_size_named_for_a_drop_from_all_to_none_is_the_first_that_tells():
    assert samples_needed(1.0, 0.0) == 4
    assert fisher_drop(3, 3, 0, 3) >= 0.05 > fisher_drop(4, 4, 0, 4)


# ---------------------------------------------------------------- runs through the CLI


def test_a_repeated_scenario_has_a_pass_rate_with_its_interval_and_is_flaky(tmp_path, mock_server):
    played = play(tmp_path, FOUR_OF_FIVE, "--repeat", "5", server=mock_server,
                  targets=("chat", "gemini"))  # fmt: skip
    assert played.result.exit_code == 1  # no min_pass_rate: every sample must pass
    seeded = [r for r in played.transcripts if r["scenario_id"] == "seeded"]
    seeds = sorted(r["turns"][0]["assistant"][-6:] for r in seeded)
    assert seeds == [f"seed={i}" for i in range(5) for _ in range(2)]
    for output in (played.result.stdout, played.report().output):
        table = rate_table(output)
        assert table[("seeded", "chat")] == ["4/5", "80.0", "37.6-96.4", "all", "FAIL", "flaky"]
        assert table[("steady", "gemini")] == ["5/5", "100.0", "56.6-100.0", "all", "pass", "-"]
        assert list(table)[:2] == [("seeded", "chat"), ("seeded", "gemini")]  # failing first
    rows = json.loads(played.report("json").output)
    rates = {(g["scenario_id"], g["target"]): g for row in rows for g in row["pass_rates"]}
    seeded = rates[("seeded", "gemini")]
    assert (seeded["samples"], seeded["passed"], seeded["flaky"]) == (5, 4, True)
    assert (seeded["ci95_low"], seeded["ci95_high"]) == pytest.approx(scipy_wilson(4, 5))
    assert seeded["verdict"] == "fail" and rates[("steady", "chat")]["flaky"] is False
    markdown = played.report("markdown").output
    assert "| seeded | chat | 4/5 | 80.0 | 37.6-96.4 | all | FAIL | flaky |" in markdown


@pytest.mark.parametrize(("bar", "exit_code", "verdict"), [(0.8, 0, "pass"), (0.9, 1, "FAIL")])
def test_min_pass_rate_decides_the_runs_exit_code(tmp_path, mock_server, bar, exit_code, verdict):
    text = with_defaults(FOUR_OF_FIVE, min_pass_rate=bar)
    played = play(tmp_path, text, "--repeat", "5", server=mock_server)
    assert played.result.exit_code == exit_code, played.result.output
    table = rate_table(played.result.stdout)
    assert table[("seeded", "chat")] == ["4/5", "80.0", "37.6-96.4", str(bar), verdict, "flaky"]
    assert f"{'1/2' if verdict == 'FAIL' else '2/2'} scenario × target pass" in played.result.stderr
    assert all(r["min_pass_rate"] == bar for r in played.transcripts)


def test_without_repeat_or_min_pass_rate_the_report_is_as_before(tmp_path, mock_server):
    played = play(tmp_path, FOUR_OF_FIVE, server=mock_server)
    assert played.result.exit_code == 1  # seed=none: the check fails
    assert "pass rates" not in played.result.stdout + played.report().output


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [("id: a\nturns: [hi]\nmin_pass_rate: 1.5\n", 3, "got 1.5"),
     ("id: a\nturns: [hi]\nmin_pass_rate: true\n", 3, "got true"),
     ("id: a\nturns: [hi]\nmin_pass_rate: .nan\n", 3, "got nan"),
     ("defaults: {min_pass_rate: -0.1}\nscenarios: [{id: a, turns: [hi]}]\n", 1, "got -0.1"),
     ("id: a\nturns: [hi]\nmin_pass: 0.5\n", 3, "did you mean 'min_pass_rate'?")],
)  # fmt: skip
def test_a_bad_min_pass_rate_is_refused_before_anything_is_sent(
    tmp_path, mock_server, text, line, message
):
    played = play(tmp_path, text, server=mock_server)
    assert played.result.exit_code == 2
    assert f"s.yaml:{line}: " in played.result.output and message in played.result.output
    if "did you mean" not in message:
        assert "'min_pass_rate' must be a number from 0 to 1" in played.result.output
    assert "Traceback" not in played.result.output
    assert mock_server.state.answered == 0


# ---------------------------------------------------------------- diffs of repeated runs


def diff(base, new, *args):
    result = cli("diff", base.run_dir, new.run_dir, *args)
    data = json.loads(cli("diff", base.run_dir, new.run_dir, "--format", "json", *args).output)
    return result, data, {c["scenario_id"]: c for c in data["pass_rates"]}


def test_a_flaky_scenario_is_listed_apart_not_as_a_regression(tmp_path, mock_server):
    base = play(tmp_path, ALL, "--repeat", "5", server=mock_server)
    new = play(tmp_path, FOUR_OF_FIVE, "--repeat", "5", server=mock_server)
    assert base.result.exit_code == 0 and new.result.exit_code == 1

    result, data, rates = diff(base, new)
    assert result.exit_code == 0, result.output
    assert "0 regressions" in result.output and data["regressions"] == []
    assert "FLAKY (samples changed outcome; listed apart, not regressions)" in result.output
    assert "seeded@chat  5/5 -> 4/5 passed  pass rate 100.0 % -> 80.0 %" in result.output
    assert "    seeded@chat#4: pass -> fail" in result.output
    seeded = rates["seeded"]
    assert seeded["verdict"] == "flaky" and seeded["flips"] == ["seeded@chat#4: pass -> fail"]
    assert seeded["p_value"] == pytest.approx(scipy_fisher((5, 5), (4, 5)))
    assert rates["steady"]["verdict"] == "same"
    markdown = cli("diff", base.run_dir, new.run_dir, "--format", "markdown").output
    assert markdown.startswith("### ✅") and "<summary>Flaky (1)</summary>" in markdown

    back, data, rates = diff(new, base)  # and the other way round it is no fix either
    assert back.exit_code == 0 and rates["seeded"]["verdict"] == "flaky"
    assert data["fixes"] == []


def test_a_significant_drop_is_a_regression(tmp_path, mock_server):
    base = play(tmp_path, ALL, "--repeat", "5", server=mock_server)
    new = play(tmp_path, NONE, "--repeat", "5", server=mock_server)
    result, data, rates = diff(base, new)
    assert result.exit_code == 1
    (regression,) = data["regressions"]
    assert regression["conversation_id"] == "seeded@chat"
    assert (regression["before"], regression["after"]) == ("5/5 passed", "0/5 passed")
    p = scipy_fisher((5, 5), (0, 5))
    assert rates["seeded"]["p_value"] == pytest.approx(p) and p == pytest.approx(1 / 252)
    assert "seeded@chat  5/5 passed -> 0/5 passed  pass rate 100.0 % -> 0.0 % " in result.output
    assert "(one-sided Fisher p = 0.00397 < 0.05)" in result.output
    assert "seeded@chat#2" not in result.output  # the samples are not listed one by one

    back, data, rates = diff(new, base)
    assert back.exit_code == 0 and rates["seeded"]["verdict"] == "better"
    assert "PASS RATES UP\n  seeded@chat  0/5 -> 5/5 passed" in back.output


def test_rates_are_compared_across_targets_paired_by_scenario(tmp_path, mock_server):
    # the CI gate with another model than the baseline's: diff --match scenario
    base = play(tmp_path, ALL, "--repeat", "5", server=mock_server)
    new = play(tmp_path, NONE, "--repeat", "5", server=mock_server, targets=["gemini"])
    result, data, rates = diff(base, new, "--match", "scenario")
    assert result.exit_code == 1
    (regression,) = data["regressions"]
    assert (regression["before"], regression["after"]) == ("5/5 passed", "0/5 passed")
    assert rates["seeded"]["target"] == "gemini"
    assert rates["seeded"]["p_value"] == pytest.approx(1 / 252)


def test_a_drop_too_few_samples_can_tell_says_how_many_would(tmp_path, mock_server):
    base = play(tmp_path, ALL, "--repeat", "3", server=mock_server)
    new = play(tmp_path, NONE, "--repeat", "3", server=mock_server)
    result, data, rates = diff(base, new)
    assert result.exit_code == 0 and data["regressions"] == []
    seeded = rates["seeded"]
    assert seeded["verdict"] == "not significant" and seeded["samples_needed"] == 4
    assert seeded["p_value"] == pytest.approx(scipy_fisher((3, 3), (0, 3)))
    assert "DROPS NOT SIGNIFICANT (not regressions)" in result.output
    assert (
        "p = 0.05: not significant with 3 and 3 samples; about 4 per run would detect a drop "
        "this size 80% of the time" in result.output
    )


def test_falling_below_min_pass_rate_is_a_regression_however_few_the_samples(tmp_path, mock_server):
    base = play(tmp_path, with_defaults(ALL, min_pass_rate=0.8), "--repeat", "3",
                server=mock_server)  # fmt: skip
    new = play(tmp_path, with_defaults(NONE, min_pass_rate=0.8), "--repeat", "3",
               server=mock_server)  # fmt: skip
    result, data, rates = diff(base, new)
    assert result.exit_code == 1
    assert [c["conversation_id"] for c in data["regressions"]] == ["seeded@chat"]
    assert "below min_pass_rate 0.8 (one-sided Fisher p = 0.05)" in result.output
    assert rates["seeded"]["verdict"] == "regression"
