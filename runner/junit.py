"""A run as a JUnit XML file for CI: one testsuite per target, one testcase per conversation.

A conversation whose checks failed is a `failure` (each failed check's kind and reason), one
that failed after retries an `error` (its kind and message), one planned but not run
`skipped`. Follows the schema CI systems read (Jenkins xUnit's junit-10.xsd, which GitLab's
and GitHub's JUnit readers accept).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.outfile import output_file
from runner.store import latest_transcripts, read_manifest

if TYPE_CHECKING:
    from runner.plan import Plan

# characters XML 1.0 cannot hold, even escaped: a reply may contain them
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
EXCERPT = 2000  # characters of a reply shown in a failure's system-out


def xml_text(text: str) -> str:
    """Text as XML can hold it: characters XML forbids become U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


@dataclass
class Planned:
    """A conversation the run planned: enough to name its testcase when it was not run."""

    conversation_id: str
    scenario_id: str
    target: str


@dataclass
class Suite:
    """One target's testcases and their counts."""

    name: str
    cases: list[ET.Element] = field(default_factory=list)
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0


def junit_xml(
    records: dict[str, dict[str, Any]],
    manifest: dict[str, Any],
    planned: Iterable[Planned] | None = None,
) -> bytes:
    """The JUnit document of a run: `records` (newest transcript per conversation id), in plan
    order when `planned` is given (and its unrecorded conversations as skipped)."""
    suites = {t["name"]: Suite(t["name"]) for t in manifest.get("targets", [])}
    reason = _not_run_reason(manifest)
    seen: set[str] = set()
    for conv in planned or ():
        suite = suites.setdefault(conv.target, Suite(conv.target))
        record = records.get(conv.conversation_id)
        if record is None:
            _add_skipped(suite, conv, reason)
        else:
            _add_case(suite, record)
            seen.add(conv.conversation_id)
    for cid, record in records.items():  # recorded but no longer planned: still reported
        if cid not in seen:
            _add_case(suites.setdefault(record["target"], Suite(record["target"])), record)
    return _document(list(suites.values()), manifest)


def _document(suites: list[Suite], manifest: dict[str, Any]) -> bytes:
    root = ET.Element("testsuites", name=f"dialogue-runner {manifest.get('run_id', '')}")
    for suite in suites:
        node = ET.SubElement(
            root,
            "testsuite",
            name=suite.name,
            tests=str(len(suite.cases)),
            failures=str(suite.failures),
            errors=str(suite.errors),
            skipped=str(suite.skipped),
            time=f"{suite.seconds:.3f}",
            timestamp=str(manifest.get("started_at") or ""),
        )
        properties = ET.SubElement(node, "properties")
        for key, value in _properties(suite.name, manifest):
            ET.SubElement(properties, "property", name=key, value=xml_text(value))
        node.extend(suite.cases)
    root.set("tests", str(sum(len(s.cases) for s in suites)))
    root.set("failures", str(sum(s.failures for s in suites)))
    root.set("errors", str(sum(s.errors for s in suites)))
    root.set("time", f"{sum(s.seconds for s in suites):.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _properties(target: str, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    found = [t for t in manifest.get("targets", []) if t["name"] == target]
    props = [("run_id", str(manifest.get("run_id", "")))]
    if found:
        props += [("provider", found[0]["provider"]), ("model", found[0]["model"])]
    return props


def _add_case(suite: Suite, record: dict[str, Any]) -> None:
    seconds = _seconds(record)
    case = ET.Element(
        "testcase",
        classname=xml_text(record["scenario_id"]),
        name=xml_text(record["conversation_id"]),
        time=f"{seconds:.3f}",
    )
    suite.seconds += seconds
    failed = [(t["index"], c) for t in record["turns"] for c in t["checks"] if not c["passed"]]
    lines = [f"turn {i}: {c['kind']}: {c['reason']}" for i, c in failed]
    if record["status"] != "ok":
        error = record.get("error") or {}
        status = f"HTTP {error['status']}: " if error.get("status") else ""
        message = status + str(error.get("message", ""))
        kind = str(error.get("kind", "unknown"))
        node = ET.SubElement(case, "error", type=kind, message=xml_text(message))
        node.text = xml_text("\n".join([*lines, f"{kind}: {message}"]))
        suite.errors += 1
    elif failed:
        kinds = sorted({c["kind"] for _, c in failed})
        message = f"{len(failed)} check(s) failed: " + "; ".join(lines)
        node = ET.SubElement(case, "failure", type=",".join(kinds), message=xml_text(message))
        node.text = xml_text("\n".join(lines))
        suite.failures += 1
    if record["status"] != "ok" or failed:
        ET.SubElement(case, "system-out").text = xml_text(_dialogue(record))
    suite.cases.append(case)


def _add_skipped(suite: Suite, conv: Planned, reason: str) -> None:
    case = ET.Element(
        "testcase",
        classname=xml_text(conv.scenario_id),
        name=xml_text(conv.conversation_id),
        time="0.000",
    )
    ET.SubElement(case, "skipped", message=reason)
    suite.skipped += 1
    suite.cases.append(case)


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


def write_junit(run_dir: Path, path: Path, plan: Plan | None) -> None:
    """Write the JUnit file of a run folder (its folder created); `plan` names the skipped."""
    planned = (Planned(c.id, c.scenario.id, c.target.name) for c in plan) if plan else None
    xml = junit_xml(latest_transcripts(run_dir), read_manifest(run_dir), planned)
    with output_file(path) as fh:
        fh.write(xml)
