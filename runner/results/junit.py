"""A run as a JUnit XML file for CI: one testsuite per target, one testcase per conversation.

A conversation whose checks failed is a `failure` (each failed check's kind and reason), one
that failed after retries an `error` (its kind and message), one planned but not run
`skipped` (the first LISTED of them; the rest are counted). The file is written streamed,
one testcase at a time, whatever the size of the run or its plan. Follows the schema CI
systems read (Jenkins xUnit's junit-10.xsd, which GitLab's and GitHub's JUnit readers
accept).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from runner.outfile import output_file
from runner.results.reader import RunRecords
from runner.results.store import TRANSCRIPTS, read_at, read_manifest
from runner.results.verdicts import Group, Key, add_to

if TYPE_CHECKING:
    from runner.spec.plan import Plan

# characters XML 1.0 cannot hold, even escaped: a reply may contain them
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
EXCERPT = 2000  # characters of a reply shown in a failure's system-out


def xml_text(text: str) -> str:
    """Text as XML can hold it: characters XML forbids become U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


LISTED = 1000  # conversations planned but not run listed one by one; past this, counted


@dataclass
class Suite:
    """One target's counts (known before its testcases are written), its recorded
    conversations (their offsets in transcripts.jsonl) and the not-run ones listed."""

    name: str
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    offsets: list[int] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)  # (scenario id, id)
    groups: list[Group] = field(default_factory=list)  # repeated scenarios: one testcase each
    recorded: int = 0  # conversations recorded (a group's are one testcase)

    @property
    def unlisted(self) -> int:
        return self.skipped - len(self.not_run)


def write_junit(run_dir: Path, path: Path, plan: Plan | None) -> None:
    """Write the JUnit file of a run folder (its folder created), streamed: a first pass
    counts, a second writes one testcase at a time. `plan` names the conversations not run
    (the first LISTED of them; the rest are counted, and the file says so)."""
    manifest = read_manifest(run_dir)
    suites = _suites(RunRecords(run_dir, manifest), manifest, plan)
    with output_file(path) as fh:  # `-`, a special file in place, else replaced whole
        for piece in _document(suites, manifest, run_dir / TRANSCRIPTS):
            fh.write(piece.encode("utf-8"))


def _suites(records: RunRecords, manifest: dict[str, Any], plan: Plan | None) -> list[Suite]:
    """Every suite counted in one read of the run's newest records: those of a scenario
    grouped (repeated, or with a min_pass_rate: known once all are read) are one testcase
    per group, the others one each; then what the plan has not run."""
    suites = {t["name"]: Suite(t["name"]) for t in manifest.get("targets", [])}
    groups: dict[Key, Group] = {}
    placed: list[tuple[Suite, int, Key]] = []  # each record's suite, offset and group, in order
    counts: dict[Key, list[int]] = {}  # a group's records' errors and failures, one each
    recorded: set[str] = set()
    for offset, record in records.newest():
        suite = suites.setdefault(record["target"], Suite(record["target"]))
        key = (record["scenario_id"], record["target"])
        seconds = _seconds(record)
        suite.seconds += seconds
        suite.recorded += 1
        recorded.add(record["conversation_id"])
        add_to(groups, record)
        groups[key].seconds += seconds
        placed.append((suite, offset, key))
        outcome = _outcome(record)
        tally = counts.setdefault(key, [0, 0])
        tally[0] += outcome == "error"
        tally[1] += outcome == "failure"
    grouped = {k: g for k, g in groups.items() if _is_grouped(g)}
    for suite, offset, key in placed:
        if key not in grouped:
            suite.offsets.append(offset)
    for key, (errors, failures) in counts.items():
        if key not in grouped:
            suite = suites[key[1]]
            suite.tests += groups[key].samples
            suite.errors, suite.failures = suite.errors + errors, suite.failures + failures
    _add_groups(suites, grouped)
    if plan is not None:
        _not_run(plan, suites, recorded)
    return list(suites.values())


def _is_grouped(group: Group) -> bool:
    """A repeated scenario, or one with a min_pass_rate: one testcase for all its samples."""
    return group.repeated or bool(group.min_pass_rate)


def _add_groups(suites: dict[str, Suite], grouped: dict[Key, Group]) -> None:
    """Each group is one testcase of its target's suite: a failure when its pass rate falls
    short, an error when every sample that did not pass failed after retries."""
    for group in grouped.values():
        suite = suites.setdefault(group.target, Suite(group.target))
        suite.groups.append(group)
        suite.tests += 1
        kind = _group_result(group)
        suite.failures += kind == "failure"
        suite.errors += kind == "error"


def _group_result(group: Group) -> str | None:
    if group.clears:
        return None
    return "error" if group.errors == group.samples - group.passed else "failure"


def _group_case(group: Group) -> ET.Element:
    """A repeated scenario's testcase: its pass rate and verdict, its samples in system-out."""
    case = ET.Element(
        "testcase",
        classname=xml_text(group.scenario_id),
        name=xml_text(f"{group.scenario_id}@{group.target}"),
        time=f"{group.seconds:.3f}",
    )
    low, high = group.interval
    bar = "every sample must pass" if group.min_pass_rate is None else (
        f"min_pass_rate {group.min_pass_rate:g}"
    )  # fmt: skip
    summary = (
        f"{group.passed}/{group.samples} samples passed ({100 * group.rate:.1f} %, 95 % "
        f"interval {100 * low:.1f}-{100 * high:.1f} %); {bar}"
    )
    kind = _group_result(group)
    if kind is not None:
        ET.SubElement(case, kind, type="pass_rate", message=xml_text(summary))
    more = group.samples - len(group.lines)
    lines = [summary + ("; flaky" if group.flaky else "")] + [t for _, t in sorted(group.lines)]
    lines += [f"... and {more} more samples"] if more else []
    ET.SubElement(case, "system-out").text = xml_text("\n".join(lines))
    return case


def _not_run(plan: Plan, suites: dict[str, Suite], recorded: set[str]) -> None:
    """Count each target's conversations planned but not run and list the first LISTED; the
    plan is read only until they are listed (or all of them are found)."""
    for name, planned in planned_per_target(plan).items():
        suite = suites.setdefault(name, Suite(name))
        suite.skipped = max(0, planned - suite.recorded)
        suite.tests += suite.skipped
    left, room = sum(s.skipped for s in suites.values()), LISTED
    for conv in plan if left and room else ():
        if conv.id not in recorded:
            suites[conv.target.name].not_run.append((conv.scenario.id, conv.id))
            left, room = left - 1, room - 1
            if not (left and room):
                break


def planned_per_target(plan: Plan) -> dict[str, int]:
    """Conversations the plan holds for each target, counted, not made: the plan's index
    runs over targets innermost, and a shard K/N takes the indexes i with i % N == K - 1."""
    names, total = [t.name for t in plan.targets], plan.unsharded_total()
    k, n = plan.shard or (1, 1)
    period = math.lcm(n, len(names)) if names else 1
    whole, rest = divmod(total, period)
    counts = dict.fromkeys(names, 0)
    for i in range(period):
        if i % n == k - 1:
            counts[names[i % len(names)]] += whole + (i < rest)
    return counts


def _outcome(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return "error"
    failed = any(not c["passed"] for t in record["turns"] for c in t["checks"])
    return "failure" if failed else "pass"


def _document(suites: list[Suite], manifest: dict[str, Any], transcripts: Path) -> Iterator[str]:
    """The file, piece by piece: each testcase is made, written and dropped in turn."""
    yield "<?xml version='1.0' encoding='utf-8'?>\n"
    yield _open(
        "testsuites",
        name=f"dialogue-runner {manifest.get('run_id', '')}",
        tests=str(sum(s.tests for s in suites)),
        failures=str(sum(s.failures for s in suites)),
        errors=str(sum(s.errors for s in suites)),
        time=f"{sum(s.seconds for s in suites):.3f}",
    )
    reason = _not_run_reason(manifest)
    for suite in suites:
        yield "  " + _open(
            "testsuite",
            name=suite.name,
            tests=str(suite.tests),
            failures=str(suite.failures),
            errors=str(suite.errors),
            skipped=str(suite.skipped),
            time=f"{suite.seconds:.3f}",
            timestamp=str(manifest.get("started_at") or ""),
        )
        properties = ET.Element("properties")
        for key, value in _properties(suite, manifest):
            ET.SubElement(properties, "property", name=key, value=xml_text(value))
        yield _element(properties)
        for record in read_at(transcripts, suite.offsets):
            yield _element(_case(record))
        for group in suite.groups:
            yield _element(_group_case(group))
        for scenario_id, conversation_id in suite.not_run:
            yield _element(_skipped(scenario_id, conversation_id, reason))
        if suite.unlisted:
            out = ET.Element("system-out")
            out.text = (
                f"{suite.unlisted} more conversations planned but not run are counted in "
                f"skipped, not listed one by one (only the first {LISTED} are)"
            )
            yield _element(out)
        yield "  </testsuite>\n"
    yield "</testsuites>\n"


def _open(tag: str, **attributes: str) -> str:
    """An element's start tag, its attributes escaped."""
    attrs = "".join(f" {k}={quoteattr(xml_text(v))}" for k, v in attributes.items())
    return f"<{tag}{attrs}>\n"


def _element(node: ET.Element) -> str:
    """An element inside a testsuite, indented as the rest of the file."""
    ET.indent(node, space="  ", level=2)
    return "    " + ET.tostring(node, encoding="unicode") + "\n"


def _properties(suite: Suite, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    found = [t for t in manifest.get("targets", []) if t["name"] == suite.name]
    props = [("run_id", str(manifest.get("run_id", "")))]
    if found:
        props += [("provider", found[0]["provider"]), ("model", found[0]["model"])]
    if suite.unlisted:
        props.append(("skipped_not_listed", str(suite.unlisted)))
    return props


def _case(record: dict[str, Any]) -> ET.Element:
    """A recorded conversation's testcase: an error, a failure (its failed checks) or a pass."""
    case = ET.Element(
        "testcase",
        classname=xml_text(record["scenario_id"]),
        name=xml_text(record["conversation_id"]),
        time=f"{_seconds(record):.3f}",
    )
    failed = [(t["index"], c) for t in record["turns"] for c in t["checks"] if not c["passed"]]
    lines = [f"turn {i}: {c['kind']}: {c['reason']}" for i, c in failed]
    if record["status"] != "ok":
        error = record.get("error") or {}
        status = f"HTTP {error['status']}: " if error.get("status") else ""
        message = status + str(error.get("message", ""))
        kind = str(error.get("kind", "unknown"))
        node = ET.SubElement(case, "error", type=kind, message=xml_text(message))
        node.text = xml_text("\n".join([*lines, f"{kind}: {message}"]))
    elif failed:
        kinds = sorted({c["kind"] for _, c in failed})
        message = f"{len(failed)} check(s) failed: " + "; ".join(lines)
        node = ET.SubElement(case, "failure", type=",".join(kinds), message=xml_text(message))
        node.text = xml_text("\n".join(lines))
    if record["status"] != "ok" or failed:
        ET.SubElement(case, "system-out").text = xml_text(_dialogue(record))
    return case


def _skipped(scenario_id: str, conversation_id: str, reason: str) -> ET.Element:
    case = ET.Element(
        "testcase",
        classname=xml_text(scenario_id),
        name=xml_text(conversation_id),
        time="0.000",
    )
    ET.SubElement(case, "skipped", message=reason)
    return case


def _not_run_reason(manifest: dict[str, Any]) -> str:
    status = manifest.get("status")
    if status == "over_budget":
        cap = (manifest.get("invocation") or {}).get("max_cost")
        return f"not run: the estimated cost passed --max-cost {cap}"
    if status == "interrupted":
        return "not run: the run was interrupted (continue it with --resume)"
    return "not run"


def _seconds(record: dict[str, Any]) -> float:
    """The conversation's wall time, from its start and end timestamps."""
    try:
        start = datetime.fromisoformat(record["started_at"])
        end = datetime.fromisoformat(record["ended_at"])
    except (KeyError, TypeError, ValueError):
        return sum(t["latency_ms"] for t in record["turns"]) / 1000
    return max(0.0, (end - start).total_seconds())


def _dialogue(record: dict[str, Any]) -> str:
    """The turns as text, for a reader of a failed testcase."""
    parts = []
    for turn in record["turns"]:
        reply = turn["assistant"]
        if len(reply) > EXCERPT:
            reply = reply[:EXCERPT] + f"... ({len(reply)} characters)"
        parts.append(f"[turn {turn['index']}] user: {turn['user']}\nassistant: {reply}")
    return "\n\n".join(parts)
