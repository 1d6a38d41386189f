"""A run folder that is not what a run left: links planted in it, records without a manifest,
records edited by hand or from another run. Real files and real symbolic links throughout."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import cli, play

from runner.errors import WriteError
from runner.results.store import JsonlWriter

THREE = "id: s\nturns: [hi]\nvars: {n: [1, 2, 3]}\n"
PRECIOUS = b"precious, no newline at the end"


def outside(tmp_path):
    """A file outside every run folder, which no run may write."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(PRECIOUS)
    return path


@pytest.mark.parametrize("name", ["run.lock", "transcripts.jsonl", "usage.jsonl", "run.json.tmp"])
def test_a_link_planted_in_a_run_folder_is_refused_and_nothing_outside_is_written(
    tmp_path, mock_server, name
):
    played = play(tmp_path, THREE, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    target = outside(tmp_path)
    planted = played.run_dir / name
    planted.unlink(missing_ok=True)
    planted.symlink_to(target)
    resumed = played.resume("--retry-failed")
    assert resumed.result.exit_code == 2, resumed.result.output
    assert "symbolic link" in resumed.result.output and name in resumed.result.output
    assert target.read_bytes() == PRECIOUS
    assert planted.is_symlink()


def test_a_new_run_into_a_folder_with_a_planted_link_writes_nothing_outside(tmp_path, mock_server):
    target = outside(tmp_path)
    run_dir = tmp_path / "runs" / "new"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json.tmp").symlink_to(target)
    played = play(tmp_path, THREE, server=mock_server, run_id="new")
    assert played.result.exit_code == 2, played.result.output
    assert target.read_bytes() == PRECIOUS
    assert not (run_dir / "run.json").exists()


def test_a_record_file_opened_through_a_link_is_a_write_error_not_a_write(tmp_path):
    # a link planted after the folder was checked: the file is opened without following it
    target = outside(tmp_path)
    link = tmp_path / "transcripts.jsonl"
    link.symlink_to(target)
    with pytest.raises(WriteError, match="symbolic link"):
        JsonlWriter(link)
    assert target.read_bytes() == PRECIOUS


def test_a_folder_with_records_but_no_manifest_is_not_run_into(tmp_path, mock_server):
    played = play(tmp_path, THREE, server=mock_server, run_id="same")
    assert played.result.exit_code == 0
    (played.run_dir / "run.json").unlink()
    before = {p.name: p.read_bytes() for p in played.run_dir.iterdir()}
    again = play(tmp_path, THREE, server=mock_server, run_id="same")
    assert again.result.exit_code == 2, again.result.output
    assert "no run.json" in again.result.output
    after = {p.name: p.read_bytes() for p in played.run_dir.iterdir()}
    assert after == before  # not a request more, not a record more
    shutil.rmtree(played.run_dir)
    fresh = play(tmp_path, THREE, server=mock_server, run_id="same")
    assert fresh.result.exit_code == 0, fresh.result.output
    assert (
        len(fresh.usage) == 3
        and json.loads(cli("report", fresh.run_dir, "--format", "json").output)[0]["requests"] == 3
    )
    assert os.path.exists(fresh.run_dir / "run.json")


# ---------------------------------------------------------------- records that are not the run's


def report_json(run_dir) -> tuple[list[dict], str]:
    result = cli("report", run_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_edited_lines_are_skipped_counted_and_named_by_every_reader(tmp_path, mock_server):
    played = play(tmp_path, THREE, server=mock_server)
    usage = played.run_dir / "usage.jsonl"
    no_attempt = {k: v for k, v in played.usage[0].items() if k != "attempt"}
    with usage.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(no_attempt) + "\n")
    with (played.run_dir / "transcripts.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{}\n")
        fh.write(json.dumps({**played.transcripts[0], "status": None}) + "\n")
        fh.write(json.dumps({**played.transcripts[1], "conversation_id": ["a", "list"]}) + "\n")
        fh.write(json.dumps({"conversation_id": "x", "status": "ok"}) + "\n")
    (row,), notes = report_json(played.run_dir)
    assert (row["conversations"], row["ok"], row["requests"]) == (3, 3, 3)
    assert "skipped 5 line(s)" in notes and "transcripts.jsonl line 4" in notes
    assert "usage.jsonl line 4: attempt is missing" in notes
    out = tmp_path / "train.jsonl"
    exported = cli("export", played.run_dir, "--format", "openai", "-o", out)
    assert exported.exit_code == 0 and "3 conversations" in exported.stderr
    assert "skipped 4 line(s)" in exported.stderr
    junit = cli("junit", played.run_dir, "-o", tmp_path / "j.xml")
    assert junit.exit_code == 0, junit.output
    resumed = played.resume()
    assert resumed.result.exit_code == 0, resumed.result.output
    assert "3/3 conversations ok" in resumed.result.output
    assert "skipped 5 line(s)" in resumed.result.output
    assert resumed.manifest["counts"]["ok"] == 3


def test_records_of_another_run_of_the_same_scenarios_are_not_counted(tmp_path, mock_server):
    mine = play(tmp_path, THREE, server=mock_server, run_id="mine")
    other = play(tmp_path, THREE, server=mock_server, run_id="other")
    for name in ("transcripts.jsonl", "usage.jsonl"):
        with (mine.run_dir / name).open("ab") as fh:
            fh.write((other.run_dir / name).read_bytes())
    (row,), notes = report_json(mine.run_dir)
    assert (row["conversations"], row["ok"], row["requests"]) == (3, 3, 3)
    assert "skipped 6 line(s)" in notes and "another run ('other')" in notes


def test_records_of_a_plan_changed_under_force_are_not_counted(tmp_path, mock_server):
    four = "id: s\nturns: [hi]\nvars: {n: [1, 2, 3, 4]}\n"
    played = play(tmp_path, four, server=mock_server)
    assert played.manifest["counts"]["ok"] == 4
    (tmp_path / "s.yaml").write_text(THREE, encoding="utf-8")
    resumed = played.resume("--force")
    assert resumed.result.exit_code == 0, resumed.result.output
    assert "3/3 conversations ok" in resumed.result.output
    counts = resumed.manifest["counts"]
    assert (counts["planned"], counts["ok"], counts["not_run"]) == (3, 3, 0)
    (fourth,) = [r["conversation_id"] for r in played.transcripts if r["vars"] == {"n": 4}]
    assert resumed.manifest["unplanned"] == [fourth]
    (row,), notes = report_json(played.run_dir)
    assert (row["conversations"], row["ok"]) == (3, 3)
    assert "no longer plans" in notes
    (tmp_path / "s.yaml").write_text(four, encoding="utf-8")  # back to the old plan
    again = played.resume("--force")
    assert "4/4 conversations ok" in again.result.output and again.manifest["unplanned"] == []
