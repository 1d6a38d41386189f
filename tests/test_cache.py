"""Replies from a cache: a second run sends nothing and records the same transcripts,
--cache-only sends nothing (and needs no key), a changed prompt sends only what it changed,
repeats do not collapse, and the cache survives kill -9 and two processes at once. What
was sent is counted by the mock itself (GET /mock/stats)."""

from __future__ import annotations

import json
import signal
import textwrap
import urllib.request

import pytest
from conftest import WAIT_S, holding_one, play, spawn, write_models

DOLLAR_A_TOKEN = {"price": {"input_per_mtok": 1e6, "output_per_mtok": 1e6}}
# two vars, two samples, two turns that name the var: 8 requests, no two bodies alike
SCENARIO = textwrap.dedent("""\
    id: s
    system: Be brief.
    turns:
      - "hello {{name}}"
      - user: "and again, {{name}}"
        expect: {contains: mock}
    vars: {name: [Ann, Bo]}
    repeat: 2
    """)
VOLATILE = ("run_id", "started_at", "ended_at")


def answered(server) -> int:
    """API requests the mock answered, as its GET /mock/stats says."""
    with urllib.request.urlopen(server.base_url + "/mock/stats", timeout=WAIT_S) as response:
        return json.loads(response.read())["requests"]


def same(records):
    """Transcripts by id without what differs from run to run (times, run id) and the
    replay's own marks (0 attempts, cached_reply)."""
    out = {}
    for record in records:
        kept = {k: v for k, v in record.items() if k not in VOLATILE}
        kept["turns"] = [
            {k: v for k, v in t.items() if k not in ("attempts", "cached_reply")}
            for t in record["turns"]
        ]
        out[record["conversation_id"]] = kept
    return out


def entries(cache) -> list[dict]:
    """Every whole entry of a cache folder (a torn line is not one)."""
    found = []
    for path in sorted(cache.glob("*.jsonl")):
        for line in path.read_bytes().split(b"\n"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@pytest.mark.parametrize("target", ["chat", "responses", "gemini", "anthropic"])
def test_a_second_run_sends_nothing_and_records_the_same_transcripts(tmp_path, make_mock, target):
    cache = tmp_path / "cache"
    first_server, same_args = make_mock(), {"targets": (target,), "models": DOLLAR_A_TOKEN}
    first = play(tmp_path, SCENARIO, "--cache", cache, "--stream", server=first_server, **same_args)
    assert first.result.exit_code == 0, first.result.output
    assert answered(first_server) == 8 and len(entries(cache)) == 8
    # a new server, and not streamed: a streamed request and a plain one ask the same
    server = make_mock()
    second = play(tmp_path, SCENARIO, "--cache", cache, server=server, **same_args)
    assert second.result.exit_code == 0, second.result.output
    assert answered(server) == 0
    assert same(second.transcripts) == same(first.transcripts)
    assert len(entries(cache)) == 8  # nothing new stored
    turns = [t for r in second.transcripts for t in r["turns"]]
    assert all(t["cached_reply"] is True and t["attempts"] == 0 for t in turns)
    assert all("cached_reply" not in t for r in first.transcripts for t in r["turns"])
    usage = second.usage
    assert len(usage) == 8 and all(u["cached_reply"] is True for u in usage)
    assert all(u["total_tokens"] == 0 and u["status"] == 200 for u in usage)
    (row,) = json.loads(second.report("json").output)
    assert (row["requests"], row["cost_usd"], row["passed"]) == (0, 0.0, 4)
    (first_row,) = json.loads(first.report("json").output)
    assert first_row["requests"] == 8 and first_row["cost_usd"] > 0
    assert second.manifest["cost_usd"] == 0.0
    # CI: the committed folder replayed with no key at all
    ci = play(
        tmp_path, SCENARIO, "--cache", cache, "--cache-only", server=server, **same_args,
        env={"TEST_API_KEY": ""},
    )  # fmt: skip
    assert ci.result.exit_code == 0, ci.result.output
    assert answered(server) == 0
    assert same(ci.transcripts) == same(first.transcripts)


def test_entries_written_before_cache_write_tokens_still_replay(tmp_path, make_mock):
    cache = tmp_path / "cache"
    first = play(tmp_path, SCENARIO, "--cache", cache, server=make_mock(), targets=("chat",))
    assert first.result.exit_code == 0, first.result.output
    for path in cache.glob("*.jsonl"):  # as an older runner wrote them: five token counts
        old = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for entry in old:
            del entry["reply"]["usage"]["cache_write_tokens"]
        path.write_text("".join(json.dumps(e) + "\n" for e in old), encoding="utf-8")
    server = make_mock()
    replay = play(tmp_path, SCENARIO, "--cache", cache, "--cache-only", server=server,
                  targets=("chat",))  # fmt: skip
    assert replay.result.exit_code == 0, replay.result.output
    assert answered(server) == 0
    turns = [t for r in replay.transcripts for t in r["turns"]]
    assert len(turns) == 8 and all(t["usage"]["cache_write_tokens"] == 0 for t in turns)


def test_cache_only_with_an_empty_cache_fails_every_conversation_and_sends_nothing(
    tmp_path, make_mock
):
    server, cache = make_mock(), tmp_path / "empty"
    cache.mkdir()
    played = play(
        tmp_path, SCENARIO, "--cache", cache, "--cache-only", server=server,
        targets=("chat", "gemini"), env={"TEST_API_KEY": ""},
    )  # fmt: skip
    assert played.result.exit_code == 3, played.result.output
    records = played.transcripts
    assert len(records) == 8
    assert {r["error"]["kind"] for r in records} == {"cache_miss"}
    assert all(r["status"] == "failed" and r["turns"] == [] for r in records)
    assert answered(server) == 0 and played.usage == []
    assert "cache_miss: no cached reply for this request (--cache-only sends nothing)" in (
        played.result.output
    )
    assert list(cache.iterdir()) == []
    nowhere = play(tmp_path, SCENARIO, "--cache-only", server=server)
    assert nowhere.result.exit_code == 2 and "--cache-only needs a cache folder" in (
        nowhere.result.stderr
    )
    missing = play(tmp_path, SCENARIO, "--cache-only", "--cache", tmp_path / "typo", server=server)
    assert missing.result.exit_code == 2 and "does not exist" in missing.result.stderr


def test_a_changed_prompt_sends_only_the_conversations_it_changed(tmp_path, make_mock):
    cache = tmp_path / "cache"
    three = "scenarios:\n" + "".join(
        f"  - {{id: {sid}, turns: [first {sid}, second {sid}]}}\n" for sid in "abc"
    )
    first = play(tmp_path, three, "--cache", cache, server=make_mock())
    assert first.result.exit_code == 0
    server = make_mock()
    changed = three.replace("first b", "first b (changed)")
    second = play(tmp_path, changed, "--cache", cache, server=server)
    assert second.result.exit_code == 0, second.result.output
    assert answered(server) == 2  # both turns of b: its second turn's history changed too
    sent = {u["conversation_id"] for u in second.usage if not u.get("cached_reply")}
    assert sent == {"b@chat"}
    records = {r["conversation_id"]: r for r in second.transcripts}
    assert [t["user"] for t in records["b@chat"]["turns"]] == ["first b (changed)", "second b"]
    assert len(entries(cache)) == 8


@pytest.mark.parametrize("target", ["chat", "responses"])
def test_repeats_do_not_collapse(tmp_path, make_mock, target):
    """Responses takes no seed, so its samples send the same body: the sample is in the key.
    One conversation at a time, so that a collapse could not hide behind concurrency."""
    server, cache = make_mock(), tmp_path / "cache"
    played = play(
        tmp_path, "id: r\nturns: [one, two]\n", "--repeat", "3", "-c", "1", "--cache", cache,
        server=server, targets=(target,),
    )  # fmt: skip
    assert played.result.exit_code == 0
    assert answered(server) == 6
    assert sorted(e["sample"] for e in entries(cache)) == [0, 0, 1, 1, 2, 2]


def test_the_models_file_names_the_cache_and_no_cache_turns_it_off(tmp_path, make_mock):
    server = make_mock()
    models = json.loads(write_models(tmp_path / "m.json", server.base_url).read_text())
    (tmp_path / "conf").mkdir()
    text = json.dumps({"cache": "replies", **models})
    (tmp_path / "conf" / "models.yaml").write_text(text, encoding="utf-8")
    args = ("--models", tmp_path / "conf" / "models.yaml")
    first = play(tmp_path, "id: m\nturns: [hi]\n", *args)
    assert first.result.exit_code == 0 and answered(server) == 1
    assert len(entries(tmp_path / "conf" / "replies")) == 1  # beside the models file
    again = play(tmp_path, "id: m\nturns: [hi]\n", *args)
    assert again.result.exit_code == 0 and answered(server) == 1
    off = play(tmp_path, "id: m\nturns: [hi]\n", *args, "--no-cache")
    assert off.result.exit_code == 0 and answered(server) == 2
    bad = text.replace('"replies"', "[1]")
    (tmp_path / "conf" / "models.yaml").write_text(bad, encoding="utf-8")
    refused = play(tmp_path, "id: m\nturns: [hi]\n", *args)
    assert refused.result.exit_code == 2
    assert "models.yaml:1: 'cache' must be a folder" in refused.result.stderr


MANY = "id: k\nturns: ['q {{n}}', 'again {{n}}']\nvars: {n: [NUMBERS]}\n".replace(
    "NUMBERS", ", ".join(str(i) for i in range(60))
)


def test_kill_9_during_a_cached_run_leaves_a_cache_the_next_run_reads(tmp_path, make_mock):
    cache = tmp_path / "cache"
    # the mock holds one of its first three requests for an hour: the run cannot end by itself
    held = make_mock(**holding_one(within=3, among=500))
    running = spawn(tmp_path, MANY, "-c", "8", "--cache", cache, server=held)
    running.wait_for_records(20)
    running.proc.send_signal(signal.SIGKILL)
    assert running.finish().result.exit_code == -signal.SIGKILL
    stored = len(entries(cache))
    assert 40 <= stored < 120  # at least the 20 conversations written; not the whole run
    (path,) = cache.glob("*.jsonl")
    with open(path, "ab") as fh:  # as a kill in the middle of an entry would leave it
        fh.write(b'{"version":1,"key":"ab12","rep')
    server = make_mock()
    resumed = play(tmp_path, MANY, "--cache", cache, server=server)
    assert resumed.result.exit_code == 0, resumed.result.output
    assert answered(server) == 120 - stored
    lines = path.read_bytes().split(b"\n")
    assert b'{"version":1,"key":"ab12","rep' in lines  # the torn line stands apart
    assert len(entries(cache)) == 120
    again = play(tmp_path, MANY, "--cache", cache, "--cache-only", server=server)
    assert again.result.exit_code == 0 and answered(server) == 120 - stored


def test_two_processes_append_to_one_cache(tmp_path, make_mock):
    cache, server = tmp_path / "cache", make_mock()
    runs = [
        spawn(tmp_path, MANY, "-c", "8", "--cache", cache, server=server, run_id=f"p{i}")
        for i in range(2)
    ]
    for run in runs:
        assert run.finish().result.exit_code == 0
    (path,) = cache.glob("*.jsonl")
    lines = path.read_bytes().splitlines()
    assert all(json.loads(line)["version"] == 1 for line in lines)  # none interleaved
    assert {e["key"] for e in entries(cache)} and len({e["key"] for e in entries(cache)}) == 120
    server2 = make_mock()
    replay = play(tmp_path, MANY, "--cache", cache, "--cache-only", server=server2)
    assert replay.result.exit_code == 0 and answered(server2) == 0


def test_judge_verdicts_are_replayed_too(tmp_path, make_mock):
    cache = tmp_path / "cache"
    judged = 'id: j\nturns: [{user: hi, expect: {judge: {rubric: says "mock", target: gemini}}}]\n'
    first = play(tmp_path, judged, "--cache", cache, server=make_mock(), models=DOLLAR_A_TOKEN)
    assert first.result.exit_code == 0, first.result.output
    assert len(entries(cache)) == 2  # the reply and the verdict
    server = make_mock()
    second = play(tmp_path, judged, "--cache", cache, server=server, models=DOLLAR_A_TOKEN)
    assert second.result.exit_code == 0, second.result.output
    assert answered(server) == 0
    (check,) = second.transcripts[0]["turns"][0]["checks"]
    assert check["passed"] is True and check["cached_reply"] is True and check["attempts"] == 0
    assert [u.get("judge", False) for u in second.usage] == [False, True]
    (row,) = json.loads(second.report("json").output)
    assert row["cost_usd"] == 0.0 and row["requests"] == 0
    (first_row,) = json.loads(first.report("json").output)
    assert first_row["cost_usd"] > 0


def test_a_resume_may_change_the_cache_options(tmp_path, make_mock):
    server, empty, cache = make_mock(), tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    replayed = play(tmp_path, SCENARIO, "--cache", empty, "--cache-only", server=server)
    assert replayed.result.exit_code == 3 and answered(server) == 0
    resumed = replayed.resume("--retry-failed", "--cache", str(cache), "--no-cache-only")
    assert resumed.result.exit_code == 0, resumed.result.output
    assert answered(server) == 8 and len(entries(cache)) == 8
    invocation = replayed.manifest["invocation"]
    assert (invocation["cache"], invocation["cache_only"]) == (str(cache), False)
    both = play(tmp_path, SCENARIO, "--cache", cache, "--no-cache", server=server)
    assert both.result.exit_code == 2 and "not both" in both.result.stderr
