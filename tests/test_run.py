"""End to end through the CLI and a real mock server: what each turn sends, and what is written."""

from __future__ import annotations

import pytest
from conftest import CHAIN, cli, play, write_models, write_scenario

FULL = CHAIN.replace("CONTEXT", "full")


def chat_messages(request: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["json"]["messages"]]


def test_full_context_resends_the_whole_history_with_scripted_turns(tmp_path, mock_server):
    played = play(tmp_path, FULL, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    sent = [chat_messages(r) for r in mock_server.requests]
    record = played.transcripts[0]
    r1, r2, r3 = (t["assistant"] for t in record["turns"])
    assert sent == [
        [("system", "Be brief."), ("user", "first question")],
        [
            ("system", "Be brief."),
            ("user", "first question"),
            ("assistant", r1),
            ("assistant", "a scripted answer"),
            ("user", "second question"),
        ],
        [
            ("system", "Be brief."),
            ("user", "first question"),
            ("assistant", r1),
            ("assistant", "a scripted answer"),
            ("user", "second question"),
            ("assistant", r2),
            ("user", "third question"),
        ],
    ]
    assert [(m["role"], m["content"]) for m in record["messages"]] == [*sent[2], ("assistant", r3)]
    assert r3.startswith("mock: 7 messages")  # the model saw the whole history
    assert [t["sent_messages"] for t in record["turns"]] == [2, 5, 7]


def test_window_context_sends_system_plus_last_n(tmp_path, mock_server):
    played = play(tmp_path, CHAIN.replace("CONTEXT", "{window: 2}"), server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    sent = [chat_messages(r) for r in mock_server.requests]
    r1, r2, _ = (t["assistant"] for t in played.transcripts[0]["turns"])
    assert sent == [
        [("system", "Be brief."), ("user", "first question")],
        [("system", "Be brief."), ("assistant", "a scripted answer"), ("user", "second question")],
        [("system", "Be brief."), ("assistant", r2), ("user", "third question")],
    ]


def test_stream_and_no_stream_give_the_same_transcript(tmp_path, mock_server):
    plain = play(tmp_path, FULL, server=mock_server)
    streamed = play(tmp_path, FULL, "--stream", server=mock_server)
    assert streamed.result.exit_code == 0, streamed.result.output
    a = plain.transcripts[0]
    b = streamed.transcripts[0]
    assert a["messages"] == b["messages"]
    assert [t["usage"] for t in a["turns"]] == [t["usage"] for t in b["turns"]]
    assert [t["finish_reason"] for t in b["turns"]] == ["stop"] * 3
    streamed = [r for r in mock_server.requests if r["json"].get("stream")]
    assert len(streamed) == 3
    assert all(r["json"]["stream_options"] == {"include_usage": True} for r in streamed)
    assert all(t["ttft_ms"] is not None for t in b["turns"])


def test_usage_is_normalised_and_raw_usage_kept(tmp_path, mock_server):
    played = play(tmp_path, FULL, server=mock_server)
    record = played.transcripts[0]
    turn = record["turns"][2]
    raw = turn["raw_usage"]
    assert turn["usage"] == {
        "input_tokens": raw["prompt_tokens"],
        "output_tokens": raw["completion_tokens"],
        "reasoning_tokens": raw["completion_tokens_details"]["reasoning_tokens"],
        "cached_tokens": raw["prompt_tokens_details"]["cached_tokens"],
        "cache_write_tokens": 0,  # OpenAI reports none: its cache writes cost nothing extra
        "total_tokens": raw["total_tokens"],
    }
    assert turn["usage"]["cached_tokens"] > 0  # the mock's simulated prefix cache
    usage = played.usage
    assert [u["turn"] for u in usage] == [0, 1, 2]
    assert all(u["status"] == 200 and u["attempt"] == 1 and u["version"] == 1 for u in usage)
    assert sum(u["input_tokens"] for u in usage) == record["usage"]["input_tokens"]


def test_two_hundred_conversations_at_c50_keep_their_own_histories(tmp_path, mock_server):
    text = "id: many\nturns:\n  - 'I am number {{n}}.'\n  - Who am I?\nvars:\n  n: "
    played = play(tmp_path, text + str(list(range(200))), "-c", "50", server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    records = played.transcripts
    assert len(records) == 200
    assert len({r["conversation_id"] for r in records}) == 200
    for r in records:
        n = r["vars"]["n"]
        assert r["status"] == "ok"
        assert r["messages"][0] == {"role": "user", "content": f"I am number {n}."}
        assert f'earlier: user "I am number {n}."' in r["turns"][1]["assistant"]
    assert len(mock_server.requests) == 400


def test_server_error_becomes_a_failed_record_with_status_and_message(tmp_path, make_mock):
    server = make_mock(error_rate=1.0)
    played = play(tmp_path, FULL, "--max-retries", "0", server=server)
    assert played.result.exit_code == 3
    record = played.transcripts[0]
    assert record["status"] == "failed"
    assert record["error"]["status"] in (429, 500, 503)
    assert record["error"]["message"]
    assert record["turns"] == []
    assert all(
        m["role"] != "assistant" or m["content"] == "a scripted answer" for m in record["messages"]
    )


def test_records_are_json_lines_with_chinese_kept_readable(tmp_path, mock_server):
    played = play(
        tmp_path, "id: zh\nturns:\n  - 请记住:我叫小李。\n  - 我叫什么?\n", server=mock_server
    )
    assert played.result.exit_code == 0, played.result.output
    raw = (played.run_dir / "transcripts.jsonl").read_bytes()
    assert "我叫小李".encode() in raw and b"\\u" not in raw
    for name in ("transcripts.jsonl", "usage.jsonl"):
        lines = (played.run_dir / name).read_bytes().split(b"\n")
        assert lines[-1] == b""  # every record ends its line
        assert all(line.startswith(b"{") for line in lines[:-1])


def test_missing_key_is_exit_2_naming_the_variable(tmp_path, mock_server):
    played = play(
        tmp_path, "id: a\nturns: [hi]\n", server=mock_server, models={"api_key_env": "NOPE_KEY"}
    )
    assert played.result.exit_code == 2
    assert "NOPE_KEY" in played.result.stderr
    assert mock_server.requests == []


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("id: a\nturns: [hi]\ncontxt: full\n", 3, "contxt"),
        ("id: a\nturns:\n  - user: hi\n  - assistant: bye\n", 4, "assistant"),
        ("id: a\nturns: [hi]\ncontext: {window: 0}\n", 3, "window"),
        ("id: a\nturns: ['{{who}}']\n", 2, "who"),
    ],
)
def test_bad_scenarios_exit_2_with_file_and_line_before_sending(
    tmp_path, mock_server, text, line, needle
):
    validated = cli("validate", write_scenario(tmp_path / "bad.yaml", text))
    played = play(tmp_path, text, server=mock_server, name="bad.yaml")
    for result in (validated, played.result):
        assert result.exit_code == 2
        assert f"bad.yaml:{line}:" in result.stderr and needle in result.stderr
    assert mock_server.requests == []


def test_dry_run_prints_first_requests_with_the_key_masked(tmp_path, mock_server):
    played = play(tmp_path, FULL, "--dry-run", server=mock_server, targets=("chat", "gemini"))
    result = played.result
    assert result.exit_code == 0
    assert "test-key-123" not in result.output
    assert "Authorization: ***" in result.output and "x-goog-api-key: ***" in result.output
    assert '"first question"' in result.output
    assert mock_server.requests == []


def test_shards_partition_the_plan_and_filters_select_scenarios(tmp_path, mock_server):
    text = (
        "scenarios:\n"
        "  - {id: alpha, tags: [x], turns: [hi], vars: {n: [1, 2, 3, 4, 5]}}\n"
        "  - {id: beta, turns: [hi], repeat: 2}\n"
    )
    both = {"server": mock_server, "targets": ("chat", "gemini")}
    ids = {}
    for shard in ("1/3", "2/3", "3/3"):
        played = play(tmp_path, text, "--shard", shard, **both)
        assert played.result.exit_code == 0
        ids[shard] = [r["conversation_id"] for r in played.transcripts]
    every = [cid for shard in ids.values() for cid in shard]
    assert len(every) == len(set(every)) == 14  # (5 + 2) x 2 targets, each in exactly one shard
    assert all(4 <= len(shard) <= 5 for shard in ids.values())
    tagged = play(tmp_path, text, "-k", "tag:x", **both)
    assert tagged.result.exit_code == 0
    assert {r["scenario_id"] for r in tagged.transcripts} == {"alpha"}
    assert len(tagged.transcripts) == 10
    globbed = play(tmp_path, text, "-k", "b*", "--repeat", "3", **both)
    assert globbed.result.exit_code == 0
    assert len(globbed.transcripts) == 6
    assert play(tmp_path, text, "--shard", "4/3", **both).result.exit_code == 2


def test_failing_check_is_exit_1_with_the_reason_recorded(tmp_path, mock_server):
    played = play(
        tmp_path,
        "id: c\nturns:\n  - user: I like tea.\n    expect:\n"
        "      contains: [tea, coffee]\n      regex: 'mock: \\d+ messages'\n"
        "      json: true\n      finish_reason: STOP\n      max_latency_ms: 600000\n",
        server=mock_server,
    )
    assert played.result.exit_code == 1
    record = played.transcripts[0]
    checks = {c["kind"]: c for c in record["turns"][0]["checks"]}
    assert record["status"] == "ok" and record["passed"] is False
    assert checks["contains"]["passed"] is False and "coffee" in checks["contains"]["reason"]
    assert checks["regex"]["passed"] and checks["max_latency_ms"]["passed"]
    assert checks["finish_reason"]["passed"]  # compared without case: stop == STOP
    assert checks["json"]["passed"] is False
    report = played.report("markdown")
    assert report.exit_code == 0 and "| chat | 1 | 1 | 0 | 0.0 | 3/5 |" in report.output


def test_unusable_paths_are_input_errors_not_tracebacks(tmp_path, mock_server):
    scen = write_scenario(tmp_path / "s.yaml", "id: a\nturns: [hi]\n")
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    tagged = tmp_path / "tagged.yaml"  # a tag that would run code under yaml.load
    tagged.write_text(
        "targets:\n  x:\n    provider: openai-chat\n    model: !!python/name:os.system m\n"
    )
    cases = [
        ["run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path / "afile")],
        ["run", "--resume", str(tmp_path / "empty")],
        ["run", "--resume", str(tmp_path / "broken")],
        ["report", str(tmp_path / "empty")],
        ["run", str(tmp_path / "missing.yaml"), "-m", "chat", "--models", str(models)],
        ["run", str(scen), "-m", "chat", "--models", str(tmp_path / "nope.yaml")],
        ["run", str(scen), "-m", "no-such-target"],
        ["run", str(scen), "-m", "x", "--models", str(tagged)],
        ["run", str(scen), "-m", "chat", "--models", str(models), "-c", "zero"],
    ]
    out = ["-o", str(tmp_path / "runs")]  # a run folder is made before the input is read
    for args in cases:
        result = cli(*args, *(out if args[0] == "run" and "-o" not in args else []))
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output + result.stderr
    assert mock_server.requests == []
