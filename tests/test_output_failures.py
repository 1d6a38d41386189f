"""Full disks, unwritable manifests, deleted files, two processes on one run folder, and
signals during start-up: nothing finished is lost, nothing is played twice, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Played, holding_one, play, spawn, wait_until
from test_reliability import signal_pending

from runner.errors import WriteError
from runner.results import store
from runner.results.store import JsonlWriter, RunLock

CONVERSATIONS = "id: t\nturns: ['{{n}}: one', two, three]\nvars:\n  n: {n}\n"
RETRIES = {"max_retries": 12}


def numbered(count: int) -> str:
    return CONVERSATIONS.format(n=list(range(count)))


def whole_lines(path: Path) -> list[dict]:
    """Every line of a JSONL file parses, and the file ends on a newline: no torn record."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), path
    return [json.loads(line) for line in data.splitlines()]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------- 7. output failures


@pytest.fixture
def small_disk(tmp_path):
    """A 192 kB tmpfs (root only): a real ENOSPC; grown afterwards with grow()."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
            "test_a_short_write_is_cut_back_and_stops_the_run covers the class without one"
        )

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=16m", str(where)], check=True)

    yield where, grow
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_run_with_exit_4_and_resume_finishes_it(
    tmp_path, make_mock, small_disk
):
    disk, grow = small_disk
    server = make_mock()
    args = ("-c", "4", "-o", str(disk), "--run-id", "full")
    played = play(tmp_path, numbered(400), *args, server=server, models=RETRIES)
    run_dir = disk / "full"
    assert played.result.exit_code == 4, played.result.output
    line = one_error_line(played.result.stderr)
    assert "results could not be written" in line and "No space left on device" in line
    records = whole_lines(run_dir / "transcripts.jsonl")
    usage = whole_lines(run_dir / "usage.jsonl")
    assert 0 < len(records) < 400
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "write_failed"  # rewritten in the space it already had
    # it stopped at the first failed write: only conversations in flight were spent after it
    assert len(server.requests) <= len(usage) + 4
    grow()
    played.run_dir = run_dir
    resumed = played.resume()
    assert resumed.result.exit_code == 0, resumed.result.output
    ids = [r["conversation_id"] for r in whole_lines(run_dir / "transcripts.jsonl")]
    assert len(ids) == len(set(ids)) == 400
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


# the file-size limit makes the write that crosses it short and every later one fail (EFBIG):
# a failing disk without a mount, for any user
SMALL_FILES = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
"""


def test_a_short_write_is_cut_back_and_stops_the_run(tmp_path, make_mock):
    server = make_mock()
    running = spawn(
        tmp_path, numbered(200), "-c", "4", server=server, models=RETRIES, preamble=SMALL_FILES
    )
    played = running.finish()
    assert played.result.exit_code == 4, played.result.stderr
    assert "results could not be written" in one_error_line(played.result.stderr)
    records = whole_lines(played.run_dir / "transcripts.jsonl")  # the short write was cut away
    usage = whole_lines(played.run_dir / "usage.jsonl")
    assert 0 < len(records) < 200
    manifest = played.manifest
    assert manifest["status"] == "write_failed"
    assert manifest["counts"]["ok"] == len(records)
    assert len(server.requests) <= len(usage) + 4
    resumed = played.resume()
    assert resumed.result.exit_code == 0, resumed.result.output
    ids = [r["conversation_id"] for r in played.transcripts]
    assert len(ids) == len(set(ids)) == 200


def test_an_unwritable_manifest_on_resume_is_exit_4_before_anything_is_sent(tmp_path, mock_server):
    played = play(tmp_path, numbered(3), server=mock_server, models=RETRIES)
    assert played.result.exit_code == 0
    sent = len(mock_server.requests)
    manifest = played.manifest
    (played.run_dir / "run.json.tmp").mkdir()  # even root cannot write a file there
    resumed = played.resume("--retry-failed")
    assert resumed.result.exit_code == 4
    assert "results could not be written" in one_error_line(resumed.result.stderr)
    assert played.manifest == manifest and len(mock_server.requests) == sent


def test_a_record_file_deleted_during_the_run_is_a_write_error(tmp_path):
    writer = JsonlWriter(tmp_path / "x.jsonl")
    writer.write({"a": 1})
    os.unlink(tmp_path / "x.jsonl")
    time.sleep(store.LINK_CHECK_S)  # looked at that often (an fstat per record cost too much)
    with pytest.raises(WriteError, match="deleted"):
        writer.write({"a": 2})
    (tmp_path / "x.jsonl").write_text("")  # the space came back: still nothing more goes in
    with pytest.raises(WriteError, match="deleted"):
        writer.write({"a": 3})
    writer.close()


def test_records_are_strict_json_without_orjson_too(tmp_path, monkeypatch):
    import runner.encoding

    monkeypatch.setattr(runner.encoding, "orjson", None)
    writer = JsonlWriter(tmp_path / "x.jsonl")
    writer.write({"n": float("nan"), "t": "a\ud800b", "deep": [{"x": float("inf")}]})
    writer.close()
    text = (tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert json.loads(text) == {"n": None, "t": "a\ufffdb", "deep": [{"x": None}]}


# ---------------------------------------------------------------- 2. one process per run folder


def test_a_run_folder_in_use_is_refused_with_exit_2_naming_the_holder(tmp_path, mock_server):
    played = play(tmp_path, numbered(3), server=mock_server, models=RETRIES)
    before = (played.run_dir / "transcripts.jsonl").read_bytes()
    with RunLock(played.run_dir):
        resumed = played.resume("--retry-failed")
    assert resumed.result.exit_code == 2
    line = one_error_line(resumed.result.stderr)
    assert f"pid {os.getpid()}" in line and "in use" in line
    assert (played.run_dir / "transcripts.jsonl").read_bytes() == before


def test_a_resume_while_the_run_is_alive_is_refused(tmp_path, make_mock):
    server = make_mock(**holding_one(within=12, among=200))
    running = spawn(tmp_path, numbered(20), "-c", "4", server=server, models=RETRIES)
    wait_until(lambda: len(server.requests) >= 12, running.proc)  # the held one is in flight
    second = running.run_dir

    resumed = Played(None, second, running.env).resume()
    assert resumed.result.exit_code == 2
    assert f"pid {running.proc.pid}" in one_error_line(resumed.result.stderr)
    running.proc.send_signal(signal.SIGINT)
    wait_until(lambda: not signal_pending(running.proc.pid, signal.SIGINT), running.proc)
    running.proc.send_signal(signal.SIGINT)
    played = running.finish()
    assert played.result.exit_code == 130
    ids = [r["conversation_id"] for r in played.transcripts]
    assert len(ids) == len(set(ids))  # nothing was played twice


# ---------------------------------------------------------------- 9. signals at start-up


# the signal arrives while the scenarios are being read: before the event loop exists
SIGNAL_DURING_LOAD = """
import os, signal
import runner.engine.run as run
assert hasattr(run, "load")
_load = run.load
def load(inv):
    os.kill(os.getpid(), signal.{sig})
    return _load(inv)
run.load = load
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_exits_130_with_the_manifest(tmp_path, mock_server, sig):
    preamble = SIGNAL_DURING_LOAD.format(sig=sig)
    running = spawn(tmp_path, numbered(5), server=mock_server, preamble=preamble)
    played = running.finish()
    assert played.result.exit_code == 130, played.result.stderr
    assert "Aborted" not in played.result.stderr and "Traceback" not in played.result.stderr
    manifest = played.manifest
    assert manifest["status"] == "interrupted" and manifest["counts"]["not_run"] == 5
    assert mock_server.requests == []  # it stopped before sending anything
    assert played.resume().result.exit_code == 0
    assert len(played.transcripts) == 5


def test_a_record_that_cannot_be_encoded_fails_its_conversation_not_the_run(
    tmp_path, mock_server, monkeypatch
):
    import runner.engine.pool

    play_one = runner.engine.pool.run_conversation

    async def with_a_bug(conv, client, *judges):
        record = await play_one(conv, client, *judges)
        if conv.vars["n"] == 1:
            record["vars"] = {object()}  # not JSON by any encoder
        return record

    monkeypatch.setattr(runner.engine.pool, "run_conversation", with_a_bug)
    played = play(tmp_path, numbered(3), server=mock_server, models=RETRIES)
    assert played.result.exit_code == 3, played.result.output
    records = whole_lines(played.run_dir / "transcripts.jsonl")
    assert sorted(r["status"] for r in records) == ["failed", "ok", "ok"]
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert (
        failed["error"]["kind"] == "internal"
        and "could not be written" in failed["error"]["message"]
    )
    assert played.manifest["status"] == "finished"


@pytest.mark.parametrize("how", ["read-only", "deleted"])
def test_a_run_folder_made_read_only_or_deleted_mid_run_ends_with_exit_4(tmp_path, make_mock, how):
    server = make_mock(**holding_one(within=12, among=200))
    running = spawn(tmp_path, numbered(20), "-c", "4", server=server, models=RETRIES)
    running.wait_for_records(19)  # every conversation but the held one: nothing else to write
    folder = str(running.run_dir)
    if how == "read-only":  # a read-only bind mount over the folder (root only)
        if subprocess.run(["mount", "--bind", folder, folder]).returncode:
            running.proc.kill()
            pytest.skip("cannot bind-mount here")
        subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)
    else:
        shutil.rmtree(folder)
    try:
        running.proc.send_signal(signal.SIGINT)
        wait_until(lambda: not signal_pending(running.proc.pid, signal.SIGINT), running.proc)
        running.proc.send_signal(signal.SIGINT)
        played = running.finish()
    finally:
        if how == "read-only":
            subprocess.run(["umount", folder], check=False)
    assert played.result.exit_code == 4, played.result.stderr
    line = one_error_line(played.result.stderr)
    assert "results could not be written" in line and "run.json" in line
    if how == "read-only":  # the records written before are whole, and resume finishes
        whole_lines(played.run_dir / "transcripts.jsonl")
        assert played.resume().result.exit_code == 0
        ids = [r["conversation_id"] for r in played.transcripts]
        assert len(ids) == len(set(ids)) == 20


def test_a_second_signal_during_start_up_stops_at_once(tmp_path, mock_server):
    preamble = SIGNAL_DURING_LOAD.format(sig="SIGINT").replace(
        "    return _load(inv)", "    os.kill(os.getpid(), signal.SIGINT)\n    return _load(inv)"
    )
    running = spawn(tmp_path, numbered(5), server=mock_server, preamble=preamble)
    played = running.finish()
    assert played.result.exit_code == 130, played.result.stderr
    assert "Traceback" not in played.result.stderr and "Aborted" not in played.result.stderr
    assert mock_server.requests == [] and not (played.run_dir / "run.json").exists()
