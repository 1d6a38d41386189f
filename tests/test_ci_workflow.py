"""The shipped GitHub Actions workflow, its steps run as written (each `run:` script in bash as
GitHub runs it, `if:` conditions and step outputs followed) against the shipped scenarios and
the stored baseline: a clean run passes the gate and each gate case fails it. Steps that use an
action (checkout, setup-python, the JUnit report, the upload) are GitHub's and are not run;
`python -m pip` and `gh` are stand-ins that record what they were asked (no network)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT
from junitparser import JUnitXml

WORKFLOW = ROOT / ".github" / "workflows" / "dialogue-regression.yml"
EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")
# what a user puts in DIALOGUE_RUNNER (the shipped line names no real place: it must be edited)
REQUIREMENT = "dialogue-runner @ git+https://git.example.org/acme/dialogue-runner@v0.1.0"
BOT = "github-actions[bot]"
CONDITIONS = {  # each `if:` of the workflow: (an earlier step failed, the event) -> run it?
    None: lambda failed, event: not failed,
    "always()": lambda failed, event: True,
    "always() && github.event_name == 'pull_request'": lambda failed, event: (
        event == "pull_request"
    ),
}
SHIMS = {
    # dialogue-runner as installed: this checkout's
    "dialogue-runner": '#!/bin/sh\nexec "$REAL_PYTHON" -m runner "$@"\n',
    # pip records what it was asked to install; any other use of python is the real one
    "python": '#!/bin/sh\nif [ "$1 $2" = "-m pip" ]; then printf "%s\\n" "$*" >> "$PIP_LOG"; '
    'exit 0; fi\nexec "$REAL_PYTHON" "$@"\n',
    # gh api: records each call; GET answers the pull request's comments (--slurp: pages)
    "gh": """#!/bin/sh
exec "$REAL_PYTHON" - "$@" <<'EOF'
import json, os, sys
args, call, i = sys.argv[1:], {"method": "GET", "fields": {}}, 1
while i < len(args):
    if args[i] in ("--method", "-F"):
        if args[i] == "--method":
            call["method"] = args[i + 1]
        else:
            key, value = args[i + 1].split("=", 1)
            call["fields"][key] = open(value[1:], encoding="utf-8").read()
        i += 2
        continue
    if args[i].startswith("--"):
        call.setdefault("flags", []).append(args[i])
    else:
        call["path"] = args[i]
    i += 1
call["token"] = os.environ.get("GH_TOKEN")
with open(os.environ["GH_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(call) + "\\n")
print(open(os.environ["GH_COMMENTS"], encoding="utf-8").read() if call["method"] == "GET" else "{}")
EOF
""",
}


@dataclass
class Step:
    name: str
    ran: bool
    exit: int | None = None
    output: str = ""


@dataclass
class Job:
    """How the job went: each step, whether the job failed, and what the steps left behind."""

    steps: list[Step]
    failed: bool
    outputs: dict[str, dict[str, str]]
    summary: str
    pip: list[str]
    gh: list[dict[str, Any]] = field(default_factory=list)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name.startswith(name))


@pytest.fixture
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture
def repo(tmp_path) -> Path:
    """A project that keeps the shipped scenarios and the stored baseline, as checked out."""
    where = tmp_path / "repo"
    shutil.copytree(ROOT / "scenarios", where / "scenarios")
    shutil.copytree(ROOT / ".ci" / "baseline", where / ".ci" / "baseline")
    return where


def run_job(
    workflow: dict,
    repo: Path,
    event: str = "push",
    env: dict[str, str] | None = None,
    comments: list[dict[str, Any]] | None = None,
) -> Job:
    """Run the regression job's steps as GitHub would, in `repo`; `env` edits the job's env."""
    job, tmp = workflow["jobs"]["regression"], repo.parent
    shims = tmp / "bin"
    shims.mkdir(exist_ok=True)
    for name, text in SHIMS.items():
        (shims / name).write_text(text, encoding="utf-8")
        (shims / name).chmod(0o755)
    files = {n: tmp / n for n in ("output", "summary", "pip.log", "gh.log", "comments.json")}
    for path in files.values():
        path.write_text("", encoding="utf-8")
    files["comments.json"].write_text(json.dumps([comments or []]), encoding="utf-8")
    github = {"token": "gh-t0ken", "event_name": event, "workflow": workflow["name"],
              "event": {"pull_request": {"number": 7}}}  # fmt: skip
    base = {
        **os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
        "REAL_PYTHON": sys.executable, "PIP_LOG": str(files["pip.log"]),
        "GH_LOG": str(files["gh.log"]), "GH_COMMENTS": str(files["comments.json"]),
        "GITHUB_OUTPUT": str(files["output"]), "GITHUB_STEP_SUMMARY": str(files["summary"]),
        "GITHUB_REPOSITORY": "acme/app", **job["env"], **(env or {}),
    }  # fmt: skip
    steps: list[Step] = []
    outputs: dict[str, dict[str, str]] = {}
    failed = False
    for spec in job["steps"]:
        step = Step(spec.get("name") or spec["uses"], ran=False)
        steps.append(step)
        if "run" not in spec or not CONDITIONS[spec.get("if")](failed, event):
            continue
        assert "${{" not in spec["run"], "expressions go through env:, never into a script"
        step_env = {k: fill(str(v), outputs, github) for k, v in spec.get("env", {}).items()}
        files["output"].write_text("", encoding="utf-8")
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", spec["run"]],
            cwd=repo, env={**base, **step_env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        step.ran, step.exit, step.output = True, done.returncode, done.stdout + done.stderr
        lines = files["output"].read_text(encoding="utf-8").splitlines()
        outputs[spec.get("id", "")] = dict(line.split("=", 1) for line in lines)
        failed |= done.returncode != 0 and not spec.get("continue-on-error")
    gh = [json.loads(line) for line in files["gh.log"].read_text(encoding="utf-8").splitlines()]
    return Job(
        steps, failed, outputs, files["summary"].read_text(encoding="utf-8"),
        files["pip.log"].read_text(encoding="utf-8").splitlines(), gh,
    )  # fmt: skip


def fill(text: str, outputs: dict[str, dict[str, str]], github: dict[str, Any]) -> str:
    """A value with its ${{ }} expressions evaluated (those the workflow uses)."""

    def value(match: re.Match[str]) -> str:
        kind, *path = match.group(1).split(".")
        if kind == "steps" and path[1] == "outputs":
            return outputs.get(path[0], {}).get(path[2], "")
        if kind == "github":
            found: Any = github
            for key in path:
                found = found[key]
            return str(found)
        raise AssertionError(f"the test does not know {match.group(0)}")

    return EXPRESSION.sub(value, text)


def exits(job: Job) -> tuple[str | None, str | None]:
    return job.outputs.get("run", {}).get("exit"), job.outputs.get("diff", {}).get("exit")


# ---------------------------------------------------------------- passing


@pytest.mark.parametrize("target", ["mock", "mock-gemini"])
def test_a_clean_run_passes_the_gate(workflow, repo, target):
    """mock-gemini: another target than the baseline's, paired by scenario (--match)."""
    job = run_job(workflow, repo, env={"DIALOGUE_RUNNER": REQUIREMENT, "TARGET": target})
    assert not job.failed, [(s.name, s.exit, s.output) for s in job.steps if s.exit]
    assert exits(job) == ("0", "0")
    assert job.pip == [f"-m pip install {REQUIREMENT}"]  # dialogue-runner, not the project
    out = repo / "ci-out"
    (suite,) = JUnitXml.fromfile(str(out / "junit.xml"))
    assert suite.tests == 2 and suite.failures == suite.errors == 0
    diff = (out / "diff.md").read_text(encoding="utf-8")
    assert diff.startswith("### ✅ dialogue-runner diff") and "**gate: passed**" in diff
    assert "0 regressions" in diff and "0 missing, 0 new (0 not passing)" in diff
    assert f"| {target} | 2 | 2 | 0 | 100.0 | 4/4 |" in (out / "report.md").read_text()
    assert diff in job.summary and (out / "compare.html").stat().st_size > 0
    assert "run exit 0, diff exit 0" in job.step("Gate").output
    assert not job.step("Comment").ran  # a push: no pull request to comment on


# ---------------------------------------------------------------- the gate cases

SUITE = "scenarios/regression_en.yaml"
NEW_FAILING = "  - id: added\n    turns:\n      - user: hello\n        expect: {contains: [bye]}\n"
PRICED = """targets:
  priced: {provider: openai-chat, model: mock-chat, mock: {},
           price: {input_per_mtok: 1000000, output_per_mtok: 1000000}}
"""


def regression(repo: Path) -> dict[str, str]:
    edit(repo, "contains: [teal]", "contains: [crimson]")
    return {}


def missing(repo: Path) -> dict[str, str]:
    text = (repo / SUITE).read_text(encoding="utf-8")
    (repo / SUITE).write_text(text[: text.index("  - id: remember-pet-name")], encoding="utf-8")
    return {}


def new_failing(repo: Path) -> dict[str, str]:
    with (repo / SUITE).open("a", encoding="utf-8") as f:
        f.write(NEW_FAILING)
    return {}


def not_completed(repo: Path) -> dict[str, str]:
    """More conversations than the run keeps in flight, a dollar a token and a cap of $0.5:
    those started first finish, the rest are not run (exit 3)."""
    (repo / "models.yaml").write_text(PRICED, encoding="utf-8")
    with (repo / SUITE).open("a", encoding="utf-8") as f:
        f.write(f"  - id: many\n    turns: [hi]\n    vars: {{n: {list(range(40))}}}\n")
    return {"TARGET": "priced", "MAX_COST": "0.5"}


def bad_input(repo: Path) -> dict[str, str]:
    edit(repo, "    turns:\n", "    turnz:\n")
    return {}


def edit(repo: Path, old: str, new: str) -> None:
    text = (repo / SUITE).read_text(encoding="utf-8")
    assert old in text
    (repo / SUITE).write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("case", "run_exit", "diff_exit", "why"),
    [
        (regression, "1", "1", "1 regression"),
        (missing, "0", "1", "1 conversation missing from the new run"),
        (new_failing, "1", "1", "1 new conversation not passing"),
        (not_completed, "3", "1", "the new run did not complete: status over_budget"),
        (bad_input, "2", "2", "could not compare the runs (exit 2)"),
    ],
)
def test_each_gate_case_fails_the_job(workflow, repo, case, run_exit, diff_exit, why):
    env = {"DIALOGUE_RUNNER": REQUIREMENT, **case(repo)}
    job = run_job(workflow, repo, env=env)
    assert job.failed and exits(job) == (run_exit, diff_exit)
    gate = job.step("Gate")
    assert gate.ran and gate.exit == 1
    if run_exit in ("0", "1"):
        assert "::error::the diff against the baseline failed the gate" in gate.output
    else:
        assert f"::error::the run did not complete (exit {run_exit};" in gate.output
    diff = (repo / "ci-out" / "diff.md").read_text(encoding="utf-8")
    assert diff.startswith("### ❌ dialogue-runner diff") and why in diff
    assert diff in job.summary
    failed = [s.name for s in job.steps if s.exit and s.name != "Compare page"]
    assert failed == ["Gate"]  # the run and diff steps record their exits; the gate judges


def test_the_shipped_requirement_line_must_be_edited(workflow, repo):
    job = run_job(workflow, repo)  # DIALOGUE_RUNNER as shipped
    install = job.step("Install dialogue-runner")
    assert install.exit == 1 and "::error::edit DIALOGUE_RUNNER in this workflow" in install.output
    assert job.pip == [] and not job.step("Run the regression scenarios").ran
    assert job.failed and job.step("Gate").exit == 1


# ---------------------------------------------------------------- the pull-request comment


def comment(cid: int, login: str, body: str) -> dict[str, Any]:
    return {"id": cid, "user": {"login": login}, "body": body}


@pytest.mark.parametrize("own", [True, False])
def test_the_pull_request_comment_edits_only_its_own(workflow, repo, own):
    marker = f"<!-- dialogue-regression: {workflow['name']} -->"
    comments = [
        comment(1, "someone", marker + "\nquoting the bot"),  # the marker, another author
        comment(2, BOT, "another workflow's comment"),  # the author, no marker
        *([comment(3, BOT, marker + "\nthe diff of the last push")] if own else []),
    ]
    env = {"DIALOGUE_RUNNER": REQUIREMENT}
    job = run_job(workflow, repo, event="pull_request", env=env, comments=comments)
    assert not job.failed and job.step("Comment").exit == 0
    listed, written = job.gh
    assert listed["method"] == "GET" and listed["path"] == "repos/acme/app/issues/7/comments"
    assert listed["flags"] == ["--paginate", "--slurp"] and listed["token"] == "gh-t0ken"
    if own:
        assert (written["method"], written["path"]) == ("PATCH", "repos/acme/app/issues/comments/3")
    else:
        assert (written["method"], written["path"]) == ("POST", "repos/acme/app/issues/7/comments")
    body = written["fields"]["body"]
    diff = (repo / "ci-out" / "diff.md").read_text(encoding="utf-8")
    assert body == f"{marker}\n{diff}"


# ---------------------------------------------------------------- what the workflow uses


def test_the_junit_file_is_published_by_a_pinned_maintained_action(workflow):
    job = workflow["jobs"]["regression"]
    uses = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
    report = uses["mikepenz/action-junit-report"]
    assert re.fullmatch(r"mikepenz/action-junit-report@[0-9a-f]{40}", report["uses"])  # a commit
    assert report["with"]["report_paths"] == "${{ env.OUT }}/junit.xml"
    assert report["if"] == "always()" and workflow["permissions"]["checks"] == "write"
    paths = uses["actions/upload-artifact"]["with"]["path"]
    assert "junit.xml" in paths and "compare.html" in paths and "diff.md" in paths


# ---------------------------------------------------------------- the baseline


def machine_paths(run_dir: Path) -> list[str]:
    """Absolute paths anywhere in a run folder's records, its manifest's cwd, a run lock."""
    found = [p.name for p in run_dir.iterdir() if p.name == "run.lock"]
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    records = [manifest] + [
        json.loads(line)
        for name in ("transcripts.jsonl", "usage.jsonl")
        for line in (run_dir / name).read_text(encoding="utf-8").splitlines()
    ]
    found += [s for r in records for s in strings(r) if s.startswith(("/", "~", "C:\\"))]
    return found + (["cwd"] if "cwd" in manifest else [])


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_stored_baseline_holds_no_machine_paths():
    assert machine_paths(ROOT / ".ci" / "baseline") == []


def test_make_baseline_leaves_no_machine_paths(tmp_path):
    where = tmp_path / "project"
    shutil.copytree(ROOT / "scenarios", where / "scenarios")
    (where / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "scrub_baseline.py", where / ".ci")
    shutil.copy(ROOT / "pyproject.toml", where)
    (where / "installed").touch()  # stands for the runtime install, done already
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dialogue-runner", "python"):
        (bin_dir / name).write_text(SHIMS[name], encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    done = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), "baseline", f"BIN={bin_dir}", "RUNTIME=installed"],
        cwd=where, capture_output=True, text=True, timeout=120,
        env={**os.environ, "REAL_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    baseline = where / ".ci" / "baseline"
    assert machine_paths(baseline) == []
    manifest = json.loads((baseline / "run.json").read_text(encoding="utf-8"))
    assert manifest["command"][:2] == ["dialogue-runner", "run"]
    assert manifest["counts"]["ok"] == 2 and manifest["status"] == "finished"
