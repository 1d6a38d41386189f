"""The shipped GitHub Actions workflow: its dialogue-runner commands, run as written against the
shipped scenarios and the stored baseline, pass the gate (and the baseline is not stale)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from string import Template

import pytest
import yaml
from conftest import ROOT, cli
from junitparser import JUnitXml

from runner.cli import main

WORKFLOW = ROOT / ".github" / "workflows" / "dialogue-regression.yml"


def commands(job: dict) -> list[tuple[list[str], str | None]]:
    """Each dialogue-runner line of the job's steps, variables filled in: (argv, stdout file)."""
    found = []
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            line = line.strip()
            if not line.startswith("dialogue-runner "):
                continue
            words = shlex.split(Template(line).substitute(job["env"]))
            target = words[words.index(">") + 1] if ">" in words else None
            found.append((words[1 : words.index(">")] if target else words[1:], target))
    return found


@pytest.fixture
def job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["regression"]


def test_the_workflow_uploads_the_junit_file_and_the_compare_page(job):
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    paths = upload["with"]["path"]
    assert "junit.xml" in paths and "compare.html" in paths
    argv = [argv for argv, _ in commands(job)]
    assert [a[0] for a in argv] == ["run", "diff", "report", "compare"]
    assert "--junit" in argv[0] and argv[1][1] == ".ci/baseline"


def test_the_workflow_commands_pass_the_gate_against_the_stored_baseline(
    job, tmp_path, monkeypatch
):
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    shutil.copytree(ROOT / ".ci" / "baseline", tmp_path / ".ci" / "baseline")
    monkeypatch.chdir(tmp_path)
    exits = {}
    for argv, stdout_file in commands(job):
        if argv[0] not in main.commands:  # compare comes with the compare page (issue 11, item 3)
            continue
        result = cli(*argv)
        exits[argv[0]] = result.exit_code
        if stdout_file:
            Path(stdout_file).write_text(result.stdout, encoding="utf-8")
    assert exits["run"] == 0 and exits["diff"] == 0, exits  # the gate's two conditions
    out = tmp_path / job["env"]["OUT"]
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    assert suite.tests == 2 and suite.failures == suite.errors == 0
    diff = (out / "diff.md").read_text(encoding="utf-8")
    assert diff.startswith("### ✅ dialogue-runner diff") and "0 regressions" in diff
    assert "0 missing, 0 new" in diff  # the baseline holds every conversation the job runs
    assert "| mock | 2 | 2 | 0 | 100.0 | 4/4 |" in (out / "report.md").read_text(encoding="utf-8")
