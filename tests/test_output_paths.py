"""Files a command writes where the user says (-o, --junit, --html): `-` is stdout, a path
that is not a regular file (a FIFO, a symlink to /dev/null or /dev/stdout) is written in
place and never replaced, a symlink to a regular file stays a link."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, WAIT_S, cli, play

TWO = "id: s\nturns: [hi]\nvars: {n: [1, 2]}\n"


@pytest.fixture
def run_dir(tmp_path, mock_server) -> Path:
    played = play(tmp_path, TWO, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    return played.run_dir


class FifoReader:
    """A FIFO and a thread reading all that is written into it."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path, self.data = path, b""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as fh:
            self.data = fh.read()

    def text(self) -> str:
        self._thread.join(WAIT_S)
        return self.data.decode("utf-8")


def still_a_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def test_export_to_a_fifo_writes_into_it_and_leaves_it_a_fifo(tmp_path, run_dir):
    fifo = FifoReader(tmp_path / "pipe")
    result = cli("export", run_dir, "--format", "jsonl", "-o", fifo.path)
    assert result.exit_code == 0, result.output
    lines = fifo.text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert still_a_fifo(fifo.path)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_to_a_symlink_to_dev_null_keeps_the_link(tmp_path, run_dir):
    link = tmp_path / "null"
    link.symlink_to(os.devnull)
    result = cli("export", run_dir, "--format", "openai", "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_symlink_to_a_regular_file_stays_a_link_and_its_file_is_replaced(tmp_path, run_dir):
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n", encoding="utf-8")
    real.chmod(0o600)
    link.symlink_to(real)
    result = cli("export", run_dir, "--format", "jsonl", "-o", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and len(real.read_text(encoding="utf-8").splitlines()) == 2
    assert stat.S_IMODE(real.stat().st_mode) == 0o600  # a private file stays private


def test_dash_writes_to_stdout(tmp_path, run_dir):
    result = cli("export", run_dir, "--format", "sharegpt", "-o", "-")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all("conversations" in r for r in rows)
    assert "2 conversations -> -" in result.stderr
    assert not (tmp_path / "-").exists()
    junit = cli("junit", run_dir, "-o", "-")
    assert junit.exit_code == 0 and junit.stdout.startswith("<?xml")
    page = cli("compare", run_dir, "--html", "-")
    assert page.exit_code == 0 and page.stdout.lstrip().lower().startswith("<!doctype html")


def test_a_symlink_to_dev_stdout_is_written_in_place(tmp_path, run_dir):
    link = tmp_path / "out.jsonl"
    link.symlink_to("/dev/stdout")
    done = subprocess.run(
        [sys.executable, "-m", "runner", "export", run_dir, "--format", "jsonl", "-o", link],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2  # through the pipe that is its stdout
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"


def test_run_junit_and_html_to_fifos_and_the_table_leaves_stdout_to_a_dash(tmp_path, mock_server):
    junit, page = FifoReader(tmp_path / "junit.fifo"), FifoReader(tmp_path / "page.fifo")
    played = play(tmp_path, TWO, "--junit", junit.path, "--html", page.path, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    assert "<testsuites" in junit.text() and "<html" in page.text().lower()
    assert still_a_fifo(junit.path) and still_a_fifo(page.path)
    dashed = play(tmp_path, TWO, "--junit", "-", server=mock_server)
    assert dashed.result.exit_code == 0
    assert dashed.result.stdout.startswith("<?xml")  # only the JUnit file
    assert "target" in dashed.result.stderr  # the table went to stderr
    both = play(tmp_path, TWO, "--junit", "-", "--html", "-", server=mock_server)
    assert both.result.exit_code == 2 and "both write to stdout" in both.result.stderr


def test_import_writes_to_stdout_and_fifos(tmp_path):
    questions = ROOT / "tests" / "data" / "mt_bench_question.jsonl"
    result = cli("import", "mtbench", questions, "-o", "-")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("id: mt-bench-") == 80 and "80 scenarios" in result.stderr
    fifo = FifoReader(tmp_path / "q.fifo")
    assert cli("import", "mtbench", questions, "-o", fifo.path).exit_code == 0
    assert fifo.text().count("id: mt-bench-") == 80 and still_a_fifo(fifo.path)


def test_merge_refuses_stdout_and_a_path_that_is_not_a_folder(tmp_path, run_dir):
    dashed = cli("merge", run_dir, "-o", "-")
    assert dashed.exit_code == 2 and "writes a run folder" in dashed.stderr
    link = tmp_path / "null"
    link.symlink_to(os.devnull)
    refused = cli("merge", run_dir, "-o", link)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert link.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert cli("export", run_dir, "--format", "mtbench", "-o", "-").exit_code == 2


@pytest.mark.parametrize(
    "command",
    [
        ["export", "{run}", "--format", "jsonl", "-o", "-"],
        ["export", "{run}", "--format", "openai", "-o", "/dev/stdout"],
        ["report", "{run}"],
        ["report", "{run}", "--format", "json"],
        ["diff", "{run}", "{run}"],
    ],
)
def test_a_reader_that_closed_the_pipe_ends_the_command_quietly(run_dir, command):
    """`... | head -1`: the reader goes away; the command stops writing, says nothing and
    ends as a tool killed by SIGPIPE does (141), never "error: cannot write -"."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runner", *(a.format(run=run_dir) for a in command)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
