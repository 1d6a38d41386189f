"""Verdicts that account for chance: each scenario x target of a run is one group of
samples (every vars combination and every repeat of it), with a pass rate, its 95 % Wilson
score interval, whether it is flaky, and whether it clears its `min_pass_rate`.

Two runs' groups are compared with a one-sided Fisher's exact test: a drop in the pass rate
is a regression only when it is significant (p < ALPHA) or the rate falls below the
scenario's `min_pass_rate`. The sample size that would detect the observed drop comes from
the standard two-proportion formula (one-sided ALPHA, POWER), with Fleiss' continuity
correction, which brings it close to what Fisher's exact test needs:

    n  = (z_a * sqrt(2 p q) + z_b * sqrt(p1 q1 + p2 q2))^2 / d^2,  p = (p1 + p2) / 2, q = 1 - p
    n' = n / 4 * (1 + sqrt(1 + 4 / (n d)))^2,                        d = p1 - p2

with z_a, z_b the standard normal quantiles of 1 - ALPHA and POWER (Fleiss, Tytun and Ury,
Biometrics 36, 1980).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from runner.results.records import outcome, why

ALPHA = 0.05  # a drop is significant below this p-value
POWER = 0.8  # of the sample size said to detect a drop
Z95 = NormalDist().inv_cdf(0.975)  # the two-sided 95 % interval's z
EXACT_UP_TO = 2000  # samples in both runs together: exact sums of math.comb up to here
LINES = 100  # samples of a group listed one by one (JUnit's system-out); past this, counted

Key = tuple[str, str]  # (scenario id, target)


# ---------------------------------------------------------------- the statistics


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of passed/n (no continuity correction); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_drop(base_passed: int, base_n: int, new_passed: int, new_n: int) -> float:
    """One-sided Fisher's exact test that the new pass rate is lower than the base's: the
    probability, with both runs' totals fixed, of the new run passing `new_passed` times
    or fewer (the hypergeometric lower tail)."""
    total, passes = base_n + new_n, base_passed + new_passed
    lowest = max(0, new_n - (total - passes))
    if total <= EXACT_UP_TO:  # exact: integers throughout, one division at the end
        ways = sum(
            math.comb(passes, x) * math.comb(total - passes, new_n - x)
            for x in range(lowest, new_passed + 1)
        )
        return min(1.0, ways / math.comb(total, new_n))
    log_all = _log_comb(total, new_n)  # larger runs: the same sum in logarithms
    terms = [
        _log_comb(passes, x) + _log_comb(total - passes, new_n - x) - log_all
        for x in range(lowest, new_passed + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def samples_needed(base_rate: float, new_rate: float) -> int | None:
    """Samples per run that would detect a drop from base_rate to new_rate (one-sided ALPHA,
    POWER; see the module's formula); None when the rate did not drop."""
    drop = base_rate - new_rate
    if drop <= 0:
        return None
    z_a, z_b = NormalDist().inv_cdf(1 - ALPHA), NormalDist().inv_cdf(POWER)
    mean = (base_rate + new_rate) / 2
    spread = z_a * math.sqrt(2 * mean * (1 - mean))
    spread += z_b * math.sqrt(base_rate * (1 - base_rate) + new_rate * (1 - new_rate))
    n = (spread / drop) ** 2
    return math.ceil(n / 4 * (1 + math.sqrt(1 + 4 / (n * drop))) ** 2)


# ---------------------------------------------------------------- groups of samples


@dataclass
class Group:
    """One scenario x target of a run: its samples' outcomes, counted."""

    scenario_id: str
    target: str
    min_pass_rate: float | None = None
    samples: int = 0
    passed: int = 0
    errors: int = 0  # samples failed after retries (the rest of the non-passes failed checks)
    repeated: bool = False  # some conversation has more than one sample
    seconds: float = 0.0  # the samples' wall time, added by JUnit
    lines: list[tuple[int, str]] = field(default_factory=list)  # the first LINES samples
    seen: dict[str, int] = field(default_factory=dict)  # conversation w/o sample -> PASS|FAIL

    def add(self, record: dict[str, Any]) -> None:
        """One sample (the newest record of one conversation)."""
        result = outcome(record)
        self.samples += 1
        self.passed += result == "pass"
        self.errors += result == "error"
        self.repeated = self.repeated or record["sample"] > 0
        if record.get("min_pass_rate") is not None:
            self.min_pass_rate = record["min_pass_rate"]
        sample = record["sample"]
        if record.get("samples", 2) > 1:  # a conversation of one sample cannot flip: not kept
            cid = record["conversation_id"]
            same = cid.removesuffix(f"#{sample}") if sample else cid
            self.seen[same] = self.seen.get(same, 0) | (PASS if result == "pass" else FAIL)
        if len(self.lines) < LINES:
            self.lines.append((sample, _line(record, result)))

    @property
    def rate(self) -> float:
        return self.passed / self.samples if self.samples else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.passed, self.samples)

    @property
    def flaky(self) -> bool:
        """Some conversation (same vars) passed in some samples and not in others."""
        return any(state == PASS | FAIL for state in self.seen.values())

    @property
    def clears(self) -> bool:
        """Its verdict: the pass rate reaches min_pass_rate; without one, every sample passes."""
        if self.min_pass_rate is None:
            return self.passed == self.samples
        return self.rate >= self.min_pass_rate

    def as_json(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "scenario_id": self.scenario_id,
            "target": self.target,
            "samples": self.samples,
            "passed": self.passed,
            "errors": self.errors,
            "pass_rate": self.rate,
            "ci95_low": low,
            "ci95_high": high,
            "min_pass_rate": self.min_pass_rate,
            "flaky": self.flaky,
            "verdict": "pass" if self.clears else "fail",
        }


PASS, FAIL = 1, 2


def _line(record: dict[str, Any], result: str) -> str:

    head = f"sample {record['sample']} {record['conversation_id']}: {result}"
    return head if result == "pass" else f"{head}: {why(record)}"


def tally(records: Iterable[dict[str, Any]], target: str | None = None) -> dict[Key, Group]:
    """The groups of these records (the newest of each conversation), in order of appearance;
    with TARGET, every record counted as that target's."""
    groups: dict[Key, Group] = {}
    for record in records:
        add_to(groups, record, target)
    return groups


def add_to(groups: dict[Key, Group], record: dict[str, Any], target: str | None = None) -> None:
    """Count one record (the newest of its conversation) in its scenario × target group."""
    key = (record["scenario_id"], target or record["target"])
    group = groups.get(key) or groups.setdefault(key, Group(*key))
    group.add(record)


def shown(groups: Iterable[Group]) -> list[Group]:
    """The groups a report shows, failing first, then flaky ones: all of them when some has
    repeated samples or a min_pass_rate, else none (one sample each: the conversations say
    it all)."""
    listed = sorted(groups, key=lambda g: (g.clears, not g.flaky, g.scenario_id, g.target))
    return listed if any(g.repeated or g.min_pass_rate is not None for g in listed) else []


def attach(rows: list[dict[str, Any]], groups: dict[Key, Group]) -> None:
    """Each report row (a target) gets `pass_rates`: its scenarios' groups, as JSON."""
    for row in rows:
        row["pass_rates"] = [g.as_json() for g in groups.values() if g.target == row["target"]]


# ---------------------------------------------------------------- two runs' groups compared


@dataclass
class RateChange:
    """One repeated scenario x target in both runs: its pass rates and what the drop means.

    verdict: "regression" (a significant drop, or below min_pass_rate where the base was
    not), "flaky" (samples changed outcome in a group that is flaky in either run; listed
    apart, never a regression), "not significant" (a drop the samples cannot tell from
    chance), "better" (the rate rose), "same" (no sample changed outcome)."""

    scenario_id: str
    target: str
    base_passed: int
    base_samples: int
    new_passed: int
    new_samples: int
    p_value: float  # one-sided Fisher's exact test of a drop
    samples_needed: int | None  # per run, to detect a drop of this size; None: no drop
    min_pass_rate: float | None
    flaky: bool
    flips: list[str]  # "id: before -> after" of the samples whose outcome changed
    verdict: str
    reason: str


def compare(
    base: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], target: str | None = None
) -> list[RateChange]:
    """The groups repeated in either run and present in both, judged by their pass rates.
    BASE and NEW: the newest record of each conversation, under the key that pairs them
    (its id, or its scenario, vars and sample); with TARGET, the base run's groups stand for
    that target's (runs of two targets paired by scenario)."""
    before, after = tally(base.values(), target), tally(new.values())
    flips: dict[Key, list[str]] = {}  # samples whose outcome changed (pass <-> not)
    for key, old in base.items():
        now, was = new.get(key), outcome(old)
        if now is not None and (was == "pass") != (outcome(now) == "pass"):
            group = (now["scenario_id"], now["target"])
            flips.setdefault(group, []).append(f"{now['conversation_id']}: {was} -> {outcome(now)}")
    return [
        _judged(before[key], now, flips.get(key, []))
        for key, now in after.items()
        if key in before and (before[key].repeated or now.repeated)
    ]


def _judged(was: Group, now: Group, flips: list[str]) -> RateChange:
    p = fisher_drop(was.passed, was.samples, now.passed, now.samples)
    needed = samples_needed(was.rate, now.rate)
    bar = now.min_pass_rate
    fell = bar is not None and was.rate >= bar > now.rate
    flaky = was.flaky or now.flaky
    rates = f"pass rate {_pct(was.rate)} -> {_pct(now.rate)}"
    if p < ALPHA or fell:
        verdict = "regression"
        reason = f"{rates}, below min_pass_rate {bar:g}" if fell else rates
        reason += f" (one-sided Fisher p = {p:.3g}{' < 0.05' if p < ALPHA else ''})"
    elif flips and flaky:
        verdict, reason = "flaky", f"{rates}, p = {p:.3g}; {len(flips)} sample(s) flipped"
    elif needed is not None:
        verdict = "not significant"
        reason = (
            f"{rates}, p = {p:.3g}: not significant with {was.samples} and {now.samples} "
            f"samples; about {needed} per run would detect a drop this size "
            f"{POWER:.0%} of the time"
        )
    else:
        verdict = "better" if now.rate > was.rate else "same"
        reason = rates
    return RateChange(
        now.scenario_id, now.target, was.passed, was.samples, now.passed, now.samples, p,
        needed, bar, flaky, flips, verdict, reason,
    )  # fmt: skip


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f} %"
