"""A run folder that is not what a run left: links planted in it, records without a manifest,
records edited by hand or from another run. Real files and real symbolic links throughout."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import cli, play

from runner.errors import WriteError
from runner.store import JsonlWriter

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
