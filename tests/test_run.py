"""End to end through the CLI and a real mock server: what each turn sends, and what is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CHAIN, read_jsonl, run_cli, write_models, write_scenario


def chat_messages(request: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["json"]["messages"]]


def run_chain(tmp_path: Path, mock_server, context: str, *extra: str):
    scen = write_scenario(tmp_path / "s.yaml", CHAIN.replace("CONTEXT", context))
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    out = tmp_path / "out"
    result = run_cli(
        "run", str(scen), "-m", "chat", "--models", str(models), "-o", str(out),
        "--run-id", "r", "--no-progress", *extra,
    )  # fmt: skip
    return result, out / "r"


def test_full_context_resends_the_whole_history_with_scripted_turns(tmp_path, mock_server):
    result, run_dir = run_chain(tmp_path, mock_server, "full")
    assert result.exit_code == 0, result.output
    sent = [chat_messages(r) for r in mock_server.requests]
    record = read_jsonl(run_dir / "transcripts.jsonl")[0]
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
    result, run_dir = run_chain(tmp_path, mock_server, "{window: 2}")
    assert result.exit_code == 0, result.output
    sent = [chat_messages(r) for r in mock_server.requests]
    r1, r2, _ = (t["assistant"] for t in read_jsonl(run_dir / "transcripts.jsonl")[0]["turns"])
    assert sent == [
        [("system", "Be brief."), ("user", "first question")],
        [("system", "Be brief."), ("assistant", "a scripted answer"), ("user", "second question")],
        [("system", "Be brief."), ("assistant", r2), ("user", "third question")],
    ]


def test_stream_and_no_stream_give_the_same_transcript(tmp_path, mock_server):
    _, plain = run_chain(tmp_path, mock_server, "full")
    scen = tmp_path / "s.yaml"
    models = tmp_path / "models.yaml"
    result = run_cli(
        "run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path / "out"),
        "--run-id", "streamed", "--no-progress", "--stream",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = read_jsonl(plain / "transcripts.jsonl")[0]
    b = read_jsonl(tmp_path / "out" / "streamed" / "transcripts.jsonl")[0]
    assert a["messages"] == b["messages"]
    assert [t["usage"] for t in a["turns"]] == [t["usage"] for t in b["turns"]]
    assert [t["finish_reason"] for t in b["turns"]] == ["stop"] * 3
    streamed = [r for r in mock_server.requests if r["json"].get("stream")]
    assert len(streamed) == 3
    assert all(r["json"]["stream_options"] == {"include_usage": True} for r in streamed)
    assert all(t["ttft_ms"] is not None for t in b["turns"])


def test_usage_is_normalised_and_raw_usage_kept(tmp_path, mock_server):
    _, run_dir = run_chain(tmp_path, mock_server, "full")
    record = read_jsonl(run_dir / "transcripts.jsonl")[0]
    turn = record["turns"][2]
    raw = turn["raw_usage"]
    assert turn["usage"] == {
        "input_tokens": raw["prompt_tokens"],
        "output_tokens": raw["completion_tokens"],
        "reasoning_tokens": raw["completion_tokens_details"]["reasoning_tokens"],
        "cached_tokens": raw["prompt_tokens_details"]["cached_tokens"],
        "total_tokens": raw["total_tokens"],
    }
    assert turn["usage"]["cached_tokens"] > 0  # the mock's simulated prefix cache
    usage = read_jsonl(run_dir / "usage.jsonl")
    assert [u["turn"] for u in usage] == [0, 1, 2]
    assert all(u["status"] == 200 and u["attempt"] == 1 and u["version"] == 1 for u in usage)
    assert sum(u["input_tokens"] for u in usage) == record["usage"]["input_tokens"]


def test_two_hundred_conversations_at_c50_keep_their_own_histories(tmp_path, mock_server):
    scen = write_scenario(
        tmp_path / "many.yaml",
        "id: many\nturns:\n  - 'I am number {{n}}.'\n  - Who am I?\nvars:\n  n: "
        + str(list(range(200))),
    )
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    result = run_cli(
        "run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path),
        "--run-id", "many", "-c", "50", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "many" / "transcripts.jsonl")
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
    result, run_dir = run_chain(tmp_path, server, "full", "--max-retries", "0")
    assert result.exit_code == 3
    record = read_jsonl(run_dir / "transcripts.jsonl")[0]
    assert record["status"] == "failed"
    assert record["error"]["status"] in (429, 500, 503)
    assert record["error"]["message"]
    assert record["turns"] == []
    assert all(
        m["role"] != "assistant" or m["content"] == "a scripted answer" for m in record["messages"]
    )


def test_records_are_json_lines_with_chinese_kept_readable(tmp_path, mock_server):
    scen = write_scenario(
        tmp_path / "zh.yaml", "id: zh\nturns:\n  - 请记住:我叫小李。\n  - 我叫什么?\n"
    )
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    result = run_cli(
        "run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path),
        "--run-id", "zh", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = (tmp_path / "zh" / "transcripts.jsonl").read_bytes()
    assert "我叫小李".encode() in raw and b"\\u" not in raw
    for name in ("transcripts.jsonl", "usage.jsonl"):
        lines = (tmp_path / "zh" / name).read_bytes().split(b"\n")
        assert lines[-1] == b""  # every record ends its line
        assert all(line.startswith(b"{") for line in lines[:-1])


def test_missing_key_is_exit_2_naming_the_variable(tmp_path, mock_server):
    scen = write_scenario(tmp_path / "s.yaml", "id: a\nturns: [hi]\n")
    models = write_models(tmp_path / "models.yaml", mock_server.base_url, api_key_env="NOPE_KEY")
    result = run_cli("run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "NOPE_KEY" in result.stderr
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
    scen = write_scenario(tmp_path / "bad.yaml", text)
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    for command in (
        ["validate", str(scen)],
        ["run", str(scen), "-m", "chat", "--models", str(models)],
    ):
        result = run_cli(*command)
        assert result.exit_code == 2
        assert f"bad.yaml:{line}:" in result.stderr and needle in result.stderr
    assert mock_server.requests == []


def test_dry_run_prints_first_requests_with_the_key_masked(tmp_path, mock_server):
    scen = write_scenario(tmp_path / "s.yaml", CHAIN.replace("CONTEXT", "full"))
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    result = run_cli(
        "run", str(scen), "-m", "chat", "-m", "gemini", "--models", str(models), "--dry-run"
    )
    assert result.exit_code == 0
    assert "test-key-123" not in result.output
    assert "Authorization: ***" in result.output and "x-goog-api-key: ***" in result.output
    assert '"first question"' in result.output
    assert mock_server.requests == []


def test_shards_partition_the_plan_and_filters_select_scenarios(tmp_path, mock_server):
    scen = write_scenario(
        tmp_path / "s.yaml",
        "scenarios:\n"
        "  - {id: alpha, tags: [x], turns: [hi], vars: {n: [1, 2, 3, 4, 5]}}\n"
        "  - {id: beta, turns: [hi], repeat: 2}\n",
    )
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    common = ["run", str(scen), "-m", "chat", "-m", "gemini", "--models", str(models),
              "-o", str(tmp_path), "--no-progress"]  # fmt: skip
    ids = {}
    for shard in ("1/3", "2/3", "3/3"):
        assert run_cli(*common, "--shard", shard, "--run-id", shard[0]).exit_code == 0
        ids[shard] = [
            r["conversation_id"] for r in read_jsonl(tmp_path / shard[0] / "transcripts.jsonl")
        ]
    every = [cid for shard in ids.values() for cid in shard]
    assert len(every) == len(set(every)) == 14  # (5 + 2) x 2 targets, each in exactly one shard
    assert all(4 <= len(shard) <= 5 for shard in ids.values())
    assert run_cli(*common, "-k", "tag:x", "--run-id", "tag").exit_code == 0
    tagged = read_jsonl(tmp_path / "tag" / "transcripts.jsonl")
    assert {r["scenario_id"] for r in tagged} == {"alpha"} and len(tagged) == 10
    assert run_cli(*common, "-k", "b*", "--run-id", "glob", "--repeat", "3").exit_code == 0
    assert len(read_jsonl(tmp_path / "glob" / "transcripts.jsonl")) == 6
    assert run_cli(*common, "--shard", "4/3").exit_code == 2


def test_failing_check_is_exit_1_with_the_reason_recorded(tmp_path, mock_server):
    scen = write_scenario(
        tmp_path / "c.yaml",
        "id: c\nturns:\n  - user: I like tea.\n    expect:\n"
        "      contains: [tea, coffee]\n      regex: 'mock: \\d+ messages'\n"
        "      json: true\n      finish_reason: STOP\n      max_latency_ms: 600000\n",
    )
    models = write_models(tmp_path / "models.yaml", mock_server.base_url)
    result = run_cli("run", str(scen), "-m", "chat", "--models", str(models), "-o", str(tmp_path),
                     "--run-id", "c", "--no-progress")  # fmt: skip
    assert result.exit_code == 1
    record = read_jsonl(tmp_path / "c" / "transcripts.jsonl")[0]
    checks = {c["kind"]: c for c in record["turns"][0]["checks"]}
    assert record["status"] == "ok" and record["passed"] is False
    assert checks["contains"]["passed"] is False and "coffee" in checks["contains"]["reason"]
    assert checks["regex"]["passed"] and checks["max_latency_ms"]["passed"]
    assert checks["finish_reason"]["passed"]  # compared without case: stop == STOP
    assert checks["json"]["passed"] is False
    report = run_cli("report", str(tmp_path / "c"), "--format", "markdown")
    assert report.exit_code == 0 and "| chat | 1 | 1 | 0 | 3 | 2 |" in report.output


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
    for args in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output + result.stderr
    assert mock_server.requests == []
