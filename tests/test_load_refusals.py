"""Hostile input, round two: what load time refuses (values JSON cannot hold, alias bombs,
numbers out of range, regexes filled from vars), alike in `validate` and `run`, before
anything is sent; and regex checks bounded in time."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from runner import encoding
from runner.engine.checks import evaluate
from runner.spec import rows
from runner.spec.scenarios import Expect
from tests.conftest import cli, play, raw_response, spawn, write_scenario

GOOD = "id: good\nturns: [hello]\n"


def models_text(base_url: str, **fields: Any) -> str:
    """A models file of one target 'chat' at the server, with FIELDS as YAML text."""
    fields = {"max_wait_s": 0.2, **fields}
    extra = "".join(f"\n    {k}: {v}" for k, v in fields.items())
    return (
        "targets:\n  chat:\n    provider: openai-chat\n    model: m\n"
        f"    base_url: {base_url}/v1\n    api_key_env: TEST_API_KEY{extra}\n"
    )


def refused_alike(tmp_path: Path, server: Any, scenario: str, models: str | None = None) -> str:
    """`validate` and `run` both exit 2 with the same problems, and the run sent nothing;
    the problems are returned."""
    path = write_scenario(tmp_path / "s.yaml", scenario)
    models_file = tmp_path / "models.yaml"
    models_file.write_text(models or models_text(server.base_url), encoding="utf-8")
    checked = cli("validate", path, "--models", models_file)
    assert checked.exit_code == 2, checked.output
    played = play(tmp_path, path, server=server, models=models or models_text(server.base_url))
    assert played.result.exit_code == 2, played.result.output
    assert played.result.stderr == checked.stderr
    assert "Traceback" not in checked.output
    assert server.requests == []
    assert not (played.run_dir / "transcripts.jsonl").exists()
    return checked.stderr


# ---------------------------------------------------------------- YAML that is not JSON


@pytest.mark.parametrize(
    "scenario, line, wanted",
    [
        ("id: a\nmetadata: {created: 2024-05-01}\nturns: [hi]\n", 2, "'metadata' holds a date"),
        ("id: a\nparams: {blob: !!binary aGVsbG8=}\nturns: [hi]\n", 2, "binary data"),
        ("id: a\nparams: {tags: !!set {x, y}}\nturns: [hi]\n", 2, "a set (!!set)"),
        ("id: a\nmetadata:\n  list: [1, .nan]\nturns: [hi]\n", 3, "holds .nan"),
        (
            "id: a\nturns:\n  - user: hi\n    params:\n      t: -.inf\n",
            5,
            "'params' holds -.inf, not a finite number",
        ),
        ("id: a\nmetadata: {when: {2024-05-01: x}}\nturns: [hi]\n", 2, "keys in 'metadata'"),
    ],
)
def test_scenario_values_json_cannot_hold_are_refused_at_load_time(
    tmp_path, make_mock, scenario, line, wanted
):
    problems = refused_alike(tmp_path, make_mock(), scenario)
    assert f"s.yaml:{line}: " in problems and wanted in problems


def test_a_date_in_a_models_files_params_is_refused_at_load_time(tmp_path, make_mock):
    server = make_mock()
    models = models_text(server.base_url, params="{created: 2024-05-01}")
    problems = refused_alike(tmp_path, server, GOOD, models)
    assert "models.yaml:8: 'params' of target 'chat' holds a date" in problems


def test_a_record_that_fails_to_encode_twice_still_fails_only_its_conversation(
    tmp_path, make_mock, monkeypatch
):
    """The plain install's encoder (no orjson) on a value JSON has no type for, in what the
    failed record carries too (the scenario's metadata): that record is written as text."""
    import runner.engine.pool

    monkeypatch.setattr(encoding, "orjson", None)
    play_one = runner.engine.pool.run_conversation

    async def with_a_bug(conv, client, *judges):
        conv.scenario.metadata["when"] = datetime.date(2024, 5, 1)
        return await play_one(conv, client, *judges)

    monkeypatch.setattr(runner.engine.pool, "run_conversation", with_a_bug)
    played = play(tmp_path, "id: a\nmetadata: {}\nturns: [hi]\n", server=make_mock())
    assert played.result.exit_code == 3, played.result.output
    (record,) = played.transcripts
    assert (
        record["error"]["kind"] == "internal"
        and "could not be written" in record["error"]["message"]
    )
    assert record["metadata"] == {"when": "2024-05-01"}
    assert played.manifest["status"] == "finished"


# ---------------------------------------------------------------- alias bombs


def bomb(key: str, levels: int = 7) -> str:
    """A few hundred bytes of aliases nested in each other: 9**levels values when expanded."""
    lines = [f"{key}:", "  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", ["metadata", "params"])
def test_an_alias_bomb_in_a_scenario_is_refused_at_load_time(tmp_path, make_mock, key):
    scenario = "id: a\nturns: [hi]\n" + bomb(key)
    assert len(scenario) < 600
    problems = refused_alike(tmp_path, make_mock(), scenario)
    assert "s.yaml:4: aliases (*name) expand this value past 1,000,000" in problems


def test_an_alias_bomb_in_a_models_files_params_is_refused_at_load_time(tmp_path, make_mock):
    server = make_mock()
    nested = bomb("params").replace("\n  ", "\n      ").rstrip()
    models = models_text(server.base_url) + "    " + nested + "\n"
    problems = refused_alike(tmp_path, server, GOOD, models)
    assert "aliases (*name) expand this value past 1,000,000" in problems


def test_a_value_that_holds_itself_is_refused(tmp_path, make_mock):
    problems = refused_alike(tmp_path, make_mock(), "id: a\nmetadata: &m {a: [*m]}\nturns: [hi]\n")
    assert "s.yaml:2: an alias (*name) here refers to a value that holds it" in problems


def test_large_values_and_modest_aliases_are_kept(tmp_path, make_mock):
    """The bound is on what aliases add: a large value written out, or an alias used a few
    times, loads and is recorded as it is."""
    big = "y" * 1_500_000
    scenario = (
        f"id: a\nmetadata:\n  doc: {big}\n  shared: &s [1, 2]\n  again: [*s, *s]\nturns: [hi]\n"
    )
    played = play(tmp_path, scenario, server=make_mock())
    assert played.result.exit_code == 0, played.result.output
    metadata = played.transcripts[0]["metadata"]
    assert metadata["doc"] == big and metadata["again"] == [[1, 2], [1, 2]]


# ---------------------------------------------------------------- numbers out of range


@pytest.mark.parametrize(
    "field, value",
    [
        ("timeout_s", "0"),
        ("timeout_s", "-1"),
        ("timeout_s", ".nan"),
        ("timeout_s", ".inf"),
        ("rpm", "-5"),
        ("tpm", "0"),
        ("max_wait_s", ".inf"),
        ("idle_timeout_s", ".nan"),
        ("connect_timeout_s", "1.0e+400"),
        ("max_retries", "5000"),
        ("concurrency", "0"),
        ("max_response_mb", ".nan"),
    ],
)
def test_a_models_file_number_out_of_range_is_refused(tmp_path, make_mock, field, value):
    server = make_mock()
    problems = refused_alike(tmp_path, server, GOOD, models_text(server.base_url, **{field: value}))
    assert re.search(rf"models\.yaml:[78]: '{field}' of target 'chat' must be", problems)


@pytest.mark.parametrize("option", ["latency_ms: -5", "error_rate: 5", "limit_rpm: -1"])
def test_a_mock_option_out_of_range_is_refused(tmp_path, make_mock, option):
    server = make_mock()
    models = models_text(server.base_url, mock=f"{{{option}}}")
    problems = refused_alike(tmp_path, server, GOOD, models)
    assert f"mock option '{option.split(':')[0]}' of target 'chat' must be" in problems


@pytest.mark.parametrize(
    "scenario, wanted",
    [
        (
            "id: a\nturns:\n  - user: hi\n    expect: {max_latency_ms: .inf}\n",
            "s.yaml:4: 'max_latency_ms' must be a positive number, got inf",
        ),
        ("id: a\nvars: {x: [1, .nan]}\nturns: ['{{x}}']\n", "s.yaml:2: values of var 'x' must be"),
    ],
)
def test_a_scenario_number_out_of_range_is_refused(tmp_path, make_mock, scenario, wanted):
    assert wanted in refused_alike(tmp_path, make_mock(), scenario)


@pytest.mark.parametrize(
    "option, value",
    [
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "-1"),
        ("--max-wait", "nan"),
        ("--idle-timeout", "inf"),
        ("--max-retries", "5000"),
        ("--max-cost", "nan"),
        ("-c", "0"),
    ],
)
def test_a_command_line_number_out_of_range_is_refused(tmp_path, make_mock, option, value):
    server = make_mock()
    played = play(tmp_path, GOOD, option, value, server=server)
    assert played.result.exit_code == 2
    assert f"{value} is not a" in played.result.stderr and option in played.result.stderr
    assert server.requests == []


# ---------------------------------------------------------------- regexes


def test_a_regex_filled_from_a_var_is_checked_with_every_value(tmp_path, make_mock):
    scenario = (
        "id: a\nvars: {x: [ok, 'f(x']}\nturns:\n  - user: hi {{x}}\n    expect: {regex: '{{x}}'}\n"
    )
    problems = refused_alike(tmp_path, make_mock(), scenario)
    assert "s.yaml:4: regex '{{x}}' filled with x='f(x': missing )" in problems


def test_a_regex_filled_from_a_vars_file_row_is_checked(tmp_path, make_mock):
    (tmp_path / "rows.csv").write_text("x\nfine\n[oops\n", encoding="utf-8")
    scenario = (
        "id: a\nvars_file: rows.csv\nturns:\n  - user: '{{x}}'\n    expect: {regex: '^{{x}}'}\n"
    )
    problems = refused_alike(tmp_path, make_mock(), scenario)
    assert "s.yaml:4: regex '^{{x}}' filled with x='[oops'" in problems


def test_templated_regexes_read_the_vars_file_once_for_all_of_them(
    tmp_path, make_mock, monkeypatch
):
    """The rows are read once to check the table and once for every templated regex
    together; each bad regex is still reported, in turn order, with its first bad values."""
    (tmp_path / "rows.csv").write_text("x,y\nfine,a\n[oops,(b\nok,c\n", encoding="utf-8")
    scenario = (
        "id: a\nvars_file: rows.csv\nvars: {z: [1, 2]}\nturns:\n"
        "  - user: '{{x}} {{y}}'\n    expect: {regex: '{{y}}$'}\n"
        "  - user: again\n    expect: {regex: '{{z}}'}\n"
        "  - user: more\n    expect: {regex: '^{{x}}{{z}}'}\n"
    )
    opened: list[str] = []

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file).name)
        return open(file, *args, **kwargs)

    monkeypatch.setattr(rows, "open", counting_open, raising=False)
    path = write_scenario(tmp_path / "s.yaml", scenario)
    checked = cli("validate", path)
    assert checked.exit_code == 2, checked.output
    assert opened == ["rows.csv", "rows.csv"]
    problems = [line.split("s.yaml:")[1] for line in checked.stderr.splitlines()]
    assert problems == [
        "5: regex '{{y}}$' filled with y='(b': missing ) at position 3",
        "9: regex '^{{x}}{{z}}' filled with x='[oops', z=1: unterminated character set at "
        "position 7",
    ]


def test_a_bad_filled_regex_is_an_error_of_its_check_not_of_the_reply():
    """Load time finds these; were one to get through, the reply would still be kept."""
    checks = asyncio.run(evaluate(Expect(regex="{{x}}"), "a reply", "stop", 1.0, {"x": "f(x"}))
    (check,) = checks
    assert check["passed"] is False and check["error"]["kind"] == "internal"


CATASTROPHIC = "a" * 33 + "!"  # `^(a+)+$` backtracks 2**33 times on it with Python's re


def aaa_server(raw_server: Any) -> Any:
    body = {
        "id": "c1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": CATASTROPHIC},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return raw_server(lambda request: raw_response(json.dumps(body)))


def test_a_catastrophic_regex_is_a_check_timeout_and_the_run_ends(tmp_path, raw_server):
    scenario = (
        "id: a\nturns:\n  - user: one\n    expect: {regex: '^(a+)+$'}\n"
        "  - user: two\n    expect: {regex: '^(a|a)*$'}\n"
    )
    played = play(tmp_path, scenario, server=aaa_server(raw_server))
    assert played.result.exit_code == 1, played.result.output  # a check failed
    (record,) = played.transcripts
    assert record["status"] == "ok"  # both replies kept
    assert [t["assistant"] for t in record["turns"]] == [CATASTROPHIC] * 2
    (first,), (second,) = (t["checks"] for t in record["turns"])
    assert first["passed"] is False and "error" not in first  # the regex package: no blow-up
    assert second["passed"] is False and second["error"]["kind"] == "check_timeout"
    assert played.manifest["status"] == "finished"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_of_catastrophic_regexes_still_answers_signals(tmp_path, raw_server, sig):
    values = ", ".join(f"v{i}" for i in range(40))
    scenario = f"id: a\nvars: {{n: [{values}]}}\nturns:\n  - user: '{{{{n}}}}'\n"
    scenario += "    expect: {regex: '^(a|a)*$'}\n"
    running = spawn(tmp_path, scenario, "-c", "2", server=aaa_server(raw_server))
    try:
        running.wait_for_records(1)  # a check has ended: no re-style backtracking without end
    finally:
        running.proc.send_signal(sig)
    played = running.finish()
    assert played.result.exit_code == 130, played.result.stderr
    assert played.manifest["status"] == "interrupted"
    assert played.transcripts[0]["turns"][0]["checks"][0]["error"]["kind"] == "check_timeout"
