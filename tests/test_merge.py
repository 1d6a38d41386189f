"""`merge`: shard runs joined into one run folder that report, export and resume read
(runner/results/merge.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Played, cli, play, read_jsonl

SCENARIO = """\
id: s
turns:
  - Hello {{who}}
  - user: and again
    expect: {contains: ["mock:"]}
vars: {who: [a, b, c, d, e]}
repeat: 2
"""
TARGETS = ("chat", "gemini")


def ids(played: Played) -> list[str]:
    return [r["conversation_id"] for r in played.transcripts]


def test_shards_are_disjoint_covering_and_merge_into_the_single_run(
    tmp_path: Path, mock_server
) -> None:
    single = play(tmp_path, SCENARIO, server=mock_server, targets=TARGETS)
    shards = [
        play(tmp_path, SCENARIO, "--shard", f"{k}/3", server=mock_server, targets=TARGETS)
        for k in (1, 2, 3)
    ]
    assert all(s.result.exit_code == 0 for s in [single, *shards])
    shard_ids = [set(ids(s)) for s in shards]
    assert sum(len(s) for s in shard_ids) == len(set().union(*shard_ids)) == 20  # disjoint
    assert set().union(*shard_ids) == set(ids(single))  # covering

    out = tmp_path / "merged"
    result = cli("merge", *(s.run_dir for s in shards), "-o", out)
    assert result.exit_code == 0, result.output
    merged = Played(result, out)
    assert sorted(ids(merged)) == sorted(ids(single))
    assert len(merged.usage) == sum(len(s.usage) for s in shards) == 40
    manifest = merged.manifest
    assert manifest["counts"] == {**single.manifest["counts"], "resumed": 0}
    assert manifest["usage"] == single.manifest["usage"]
    assert manifest["files"] == single.manifest["files"]
    assert [t["name"] for t in manifest["targets"]] == list(TARGETS)
    assert [m["shard"] for m in manifest["merged_from"]] == ["1/3", "2/3", "3/3"]
    assert manifest["invocation"]["shard"] is None

    assert report_rows(merged) == report_rows(single)
    exported = tmp_path / "merged.jsonl"
    assert cli("export", out, "--format", "openai", "-o", exported).exit_code == 0
    assert len(read_jsonl(exported)) == 20

    before = len(mock_server.requests)
    again = merged.resume()  # the common invocation without its shard: nothing is left
    assert again.result.exit_code == 0, again.result.output
    assert len(mock_server.requests) == before


def report_rows(played: Played) -> list[dict]:
    """The report's rows without latencies (which differ from run to run)."""
    keys = ("target", "conversations", "ok", "failed", "checks_passed", "checks_failed",
            "input_tokens", "output_tokens")  # fmt: skip
    return [{k: r[k] for k in keys} for r in json.loads(played.report("json").output)]


def test_the_newest_record_of_a_conversation_in_several_runs_wins(
    tmp_path: Path, make_mock
) -> None:
    failing = make_mock(error_rate=1.0)
    first = play(tmp_path, "id: s\nturns: [hi]\n", "--max-retries", "0", server=failing)
    second = play(tmp_path, "id: s\nturns: [hi]\n", server=make_mock())
    assert (first.result.exit_code, second.result.exit_code) == (3, 0)

    out = tmp_path / "merged"
    assert cli("merge", first.run_dir, second.run_dir, "-o", out).exit_code == 0
    [record] = read_jsonl(out / "transcripts.jsonl")
    assert record["status"] == "ok"
    manifest = Played(None, out).manifest
    assert manifest["counts"]["planned"] == 1  # the same invocation twice is one plan
    assert (manifest["counts"]["ok"], manifest["counts"]["failed"]) == (1, 0)
    assert len(read_jsonl(out / "usage.jsonl")) == 2  # the failed attempt was sent too

    out2 = tmp_path / "merged-the-other-way"
    assert cli("merge", second.run_dir, first.run_dir, "-o", out2).exit_code == 0
    assert read_jsonl(out2 / "transcripts.jsonl")[0]["status"] == "ok"  # by end time


def test_merge_refuses_a_folder_that_holds_a_run_or_is_an_input(
    tmp_path: Path, mock_server
) -> None:
    run = play(tmp_path, "id: s\nturns: [hi]\n", server=mock_server)
    other = play(tmp_path, "id: t\nturns: [hi]\n", server=mock_server, name="t.yaml")
    result = cli("merge", run.run_dir, "-o", other.run_dir)
    assert result.exit_code == 2 and "already holds a run" in result.output
    result = cli("merge", tmp_path, "-o", tmp_path / "m")
    assert result.exit_code == 2 and "not a readable run folder" in result.output

    merged = tmp_path / "mixed"
    assert cli("merge", run.run_dir, other.run_dir, "-o", merged).exit_code == 0
    assert Played(None, merged).manifest["counts"]["planned"] == 2  # two plans, summed
    resumed = Played(None, merged).resume()
    assert resumed.result.exit_code == 2 and "cannot be resumed" in resumed.result.output
