"""`vars_file:` CSV and JSONL tables, one conversation per row; their errors; lazy planning;
seeded samples (runner/spec/rows.py, runner/spec/variables.py, runner/spec/plan.py)."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from pathlib import Path

import pytest
from conftest import play
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import InputError
from runner.spec.plan import Plan
from runner.spec.rows import HashSet, RowsFile
from runner.spec.scenarios import load_file
from runner.spec.targets import resolve

PEOPLE_CSV = 'name,city\n"Smith, Ann","Paris, France"\n李雷,北京\n'
SCENARIO = """\
id: greet
system: You talk to {{name}}.
turns:
  - Hello, I am {{name}} from {{city}}. {{greeting}}
vars_file: data/people.EXT
vars: {greeting: [Hi, Ciao]}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def users(transcripts: list[dict]) -> list[str]:
    return sorted(t["messages"][1]["content"] for t in transcripts)


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_rows_are_zipped_and_crossed_with_vars(tmp_path: Path, mock_server, ext: str) -> None:
    if ext == "csv":
        write(tmp_path / "data/people.csv", PEOPLE_CSV)
    else:
        rows = [{"name": "Smith, Ann", "city": "Paris, France"}, {"name": "李雷", "city": "北京"}]
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        write(tmp_path / "data/people.jsonl", "\n".join(lines) + "\n\n")
    played = play(tmp_path, SCENARIO.replace("EXT", ext), server=mock_server)

    assert played.result.exit_code == 0, played.result.output
    records = played.transcripts
    assert users(records) == sorted(
        f"Hello, I am {name} from {city}. {greeting}"
        for name, city in (("Smith, Ann", "Paris, France"), ("李雷", "北京"))
        for greeting in ("Hi", "Ciao")
    )
    assert {r["messages"][0]["content"] for r in records} == {
        "You talk to Smith, Ann.",
        "You talk to 李雷.",
    }
    assert {r["vars"]["city"] for r in records} == {"Paris, France", "北京"}
    assert len({r["conversation_id"] for r in records}) == 4
    assert len(mock_server.requests) == 4
    vars_path = str(tmp_path / f"data/people.{ext}")
    assert vars_path in played.manifest["files"]  # a changed table refuses a resume


def test_a_resume_refuses_a_changed_vars_file(tmp_path: Path, mock_server) -> None:
    table = write(tmp_path / "data/people.csv", PEOPLE_CSV)
    played = play(tmp_path, SCENARIO.replace("EXT", "csv"), server=mock_server)
    table.write_text(PEOPLE_CSV + "Bob,Rome\n", encoding="utf-8")
    again = played.resume()
    assert again.result.exit_code == 2
    assert "people.csv" in again.result.output and "changed" in again.result.output


BAD_TABLES = [
    ("missing column", "people.csv", "name\nAnn\n", 1, "no column 'city' (used in a template at"),
    ("jsonl missing key", "people.jsonl", '{"name": "A"}\n', 1, "row 1: no column 'city'"),
    ("short row", "people.csv", "name,city\nAnn,Rome\nBob\n", 3, "row 2: 1 fields"),
    ("quoted newline", "people.csv", 'name,city\n"A\nB",X\nC\n', 4, "row 2: 1 fields"),
    ("empty csv", "people.csv", "", None, "no header row"),
    ("duplicate column", "people.csv", "name,name\n", 1, "names column 'name' twice"),
    ("repeated row", "people.csv", "name,city\nA,B\nC,D\nA,B\n", 4, "repeats row 1 (line 2)"),
    ("no rows", "people.csv", "name,city\n", None, "no rows"),
    ("not json", "people.jsonl", '{"name": "A", "city": "B"}\n{"name": \n', 2, "not JSON"),
    ("not an object", "people.jsonl", '["A", "B"]\n', 1, "must be a JSON object"),
    ("nested value", "people.jsonl", '{"name": ["A"], "city": "B"}\n', 1, "'name' must be"),
    ("clash with vars", "people.jsonl", '{"name":"A","city":"B","greeting":"x"}\n', 1, "also in"),
    ("not utf-8", "people.csv", b"name,city\n\xff,x\n", None, "not UTF-8"),
]


@pytest.mark.parametrize(
    ("name", "content", "line", "message"),
    [case[1:] for case in BAD_TABLES],
    ids=[case[0] for case in BAD_TABLES],
)
def test_a_bad_table_is_an_input_error_with_file_and_row(
    tmp_path: Path, mock_server, name: str, content: str | bytes, line: int | None, message: str
) -> None:
    table = tmp_path / "data" / name
    table.parent.mkdir()
    if isinstance(content, bytes):
        table.write_bytes(content)
    else:
        table.write_text(content, encoding="utf-8")
    scenario = SCENARIO.replace("EXT", name.rsplit(".", 1)[1])
    played = play(tmp_path, scenario, server=mock_server)

    assert played.result.exit_code == 2
    where = f"{table}:{line}: " if line else f"{table}: "
    problems = played.result.output.splitlines()
    assert any(where in p and message in p for p in problems), played.result.output
    assert "Traceback" not in played.result.output
    assert mock_server.requests == []


def test_an_unreadable_table_names_the_scenario_line(tmp_path: Path, mock_server) -> None:
    played = play(tmp_path, SCENARIO.replace("EXT", "csv"), server=mock_server)
    assert played.result.exit_code == 2
    table, scenario = tmp_path / "data/people.csv", tmp_path / "s.yaml"
    assert f"{table}: no such file (vars_file of {scenario}:5)" in played.result.output
    assert mock_server.requests == []


def test_a_table_of_another_kind_is_refused_at_the_scenario_line(tmp_path: Path) -> None:
    write(tmp_path / "data/people.tsv", "name\tcity\n")
    scenario = write(tmp_path / "s.yaml", SCENARIO.replace("EXT", "tsv"))
    with pytest.raises(InputError) as info:
        load_file(str(scenario))
    assert info.value.problems == [
        f"{scenario}:5: 'vars_file' must name a .csv or .jsonl file, got 'data/people.tsv'"
    ]


def test_a_systematic_problem_is_shown_ten_times_then_counted(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"name": f"p{i}"}) + "\n" for i in range(25))
    write(tmp_path / "data/people.jsonl", rows)
    scenario = write(tmp_path / "s.yaml", SCENARIO.replace("EXT", "jsonl"))
    with pytest.raises(InputError) as info:
        load_file(str(scenario))
    problems = info.value.problems
    assert len(problems) == 11
    assert problems[-1].endswith("... and 15 more problems in this file")


def test_a_million_rows_are_planned_without_holding_them(tmp_path: Path) -> None:
    with open(tmp_path / "big.csv", "w", encoding="utf-8") as fh:
        fh.write("name,city\n")
        fh.writelines(f'p{i},"Town, {i % 97}"\n' for i in range(1_000_000))
    write(tmp_path / "s.yaml", "id: big\nturns: ['{{name}} of {{city}}']\nvars_file: big.csv\n")
    [scenario] = load_file(str(tmp_path / "s.yaml"))
    plan = Plan([scenario], resolve(["mock"], {}, None))

    assert scenario.vars_file == RowsFile(str(tmp_path / "big.csv"), 1_000_000)  # no rows held
    assert len(plan) == 1_000_000
    tracemalloc.start()
    try:
        first = list(itertools.islice(plan, 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [c.vars for c in first] == [{"name": f"p{i}", "city": f"Town, {i}"} for i in range(3)]
    assert peak < 1_000_000  # the first conversations cost bytes, not the file's 20 MB
    assert len({c.id for c in first}) == 3


def test_samples_get_distinct_stable_seeds_where_the_provider_takes_one(
    tmp_path: Path, mock_server
) -> None:
    targets = ("chat", "gemini", "responses")
    scenario = "id: s\nturns: [hi]\nrepeat: 3\n"
    first = play(tmp_path, scenario, server=mock_server, targets=targets)
    again = play(tmp_path, scenario, server=mock_server, targets=targets)

    assert first.result.exit_code == 0, first.result.output
    seeds = {(r["target"], r["sample"]): r["seed"] for r in first.transcripts}
    assert seeds == {(r["target"], r["sample"]): r["seed"] for r in again.transcripts}
    assert [seeds["chat", i] for i in range(3)] == [0, 1, 2]
    assert [seeds["gemini", i] for i in range(3)] == [0, 1, 2]
    assert [seeds["responses", i] for i in range(3)] == [None] * 3  # Responses takes no seed
    sent = [r["json"] for r in mock_server.requests]
    assert sorted(b["seed"] for b in sent if "messages" in b) == [0, 0, 1, 1, 2, 2]
    gemini = [b["generationConfig"]["seed"] for b in sent if "contents" in b]
    assert sorted(gemini) == [0, 0, 1, 1, 2, 2]
    assert not any("seed" in b for b in sent if "input" in b)


def test_a_given_seed_is_the_first_samples_and_one_sample_sends_none(
    tmp_path: Path, mock_server
) -> None:
    play(tmp_path, "id: s\nturns: [hi]\nparams: {seed: 40}\nrepeat: 2\n", server=mock_server)
    play(tmp_path, "id: t\nturns: [hi]\n", server=mock_server)
    sent = [r["json"] for r in mock_server.requests]
    assert sorted(b.get("seed", -1) for b in sent) == [-1, 40, 41]


@given(st.lists(st.integers(1, 2**64 - 1), max_size=3000))
def test_the_row_hash_table_behaves_as_a_set(keys: list[int]) -> None:
    table, seen = HashSet(size=4), set()
    for key in keys:
        assert table.add(key) == (key in seen)
        seen.add(key)
    assert table.count == len(seen)
    assert len(table.table) >= 2 * len(seen)


def test_a_vars_file_in_defaults_is_relative_to_the_file_and_shared(tmp_path: Path) -> None:
    write(tmp_path / "sets/data/people.csv", PEOPLE_CSV)
    text = """\
defaults:
  vars_file: data/people.csv
scenarios:
  - {id: a, turns: ["{{name}}"]}
  - {id: b, turns: ["{{city}}"], vars: {n: [1, 2, 3]}}
"""
    scenario = write(tmp_path / "sets/s.yaml", text)
    a, b = load_file(str(scenario))
    assert (a.var_count(), b.var_count()) == (2, 6)
    assert list(b.var_combinations())[:2] == [
        {"name": "Smith, Ann", "city": "Paris, France", "n": 1},
        {"name": "Smith, Ann", "city": "Paris, France", "n": 2},
    ]
