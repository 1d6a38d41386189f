"""Loading and strict validation of scenario files (runner/spec/scenarios.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import cli

from runner.errors import InputError
from runner.spec.scenarios import Expect, Full, Server, Turn, Window, load_file, load_paths

GOOD = """\
# a comment on line 1
id: memory-zh
description: remembers what the user said
tags: [memory, zh]
system: 你是{{name}}的助手。
params: {temperature: 0.2}
context: {window: 2}
turns:
  - 你好
  - user: 我叫{{name}},我喜欢 {{ hobby }}。
    params: {max_tokens: 64}
  - assistant: 好的,{{name}}!
  - user: 总结一下我是谁。
    expect:
      contains: ["{{name}}", "{{hobby}}"]
      contains_any: [a, b]
      not_contains: 不知道
      regex: "^.*{{name}}"
      equals: "{{name}}"
      json: false
      max_latency_ms: 1500.5
      finish_reason: stop
      ignore_case: true
vars:
  name: [小李, 小王]
  hobby: [Python, 自动化, 3]
repeat: 2
---
---
defaults:
  params: {temperature: 1, top_p: 0.5}
  context: server
  tags: [shared]
  system: Be brief.
scenarios:
  - id: plain
    turns: [hi]
    params: {temperature: 0}
  - id: rows
    context: full
    tags: []
    turns:
      - user: "{{city}} in {{country}}?"
    vars:
      - {city: Paris, country: France}
      - {city: Lyon, country: France}
"""


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def problems_of(paths: list[str]) -> list[str]:
    with pytest.raises(InputError) as info:
        load_paths(paths)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# ---------------------------------------------------------------- good input


def test_good_file_parses_every_feature(tmp_path: Path) -> None:
    path = write(tmp_path, "good.yaml", GOOD)
    first, plain, rows = load_paths([path])

    assert (first.id, first.file, first.line) == ("memory-zh", path, 2)
    assert first.description == "remembers what the user said"
    assert first.tags == ("memory", "zh")
    assert first.system == "你是{{name}}的助手。"
    assert first.params == {"temperature": 0.2}
    assert (first.context, first.repeat) == (Window(2), 2)
    assert first.turns == (
        Turn("user", "你好", line=9),
        Turn("user", "我叫{{name}},我喜欢 {{ hobby }}。", params={"max_tokens": 64}, line=10),
        Turn("assistant", "好的,{{name}}!", line=12),
        Turn(
            "user",
            "总结一下我是谁。",
            line=13,
            expect=Expect(
                contains=("{{name}}", "{{hobby}}"),
                contains_any=("a", "b"),
                not_contains=("不知道",),
                regex="^.*{{name}}",
                equals="{{name}}",
                json=False,
                max_latency_ms=1500.5,
                finish_reason="stop",
                ignore_case=True,
            ),
        ),
    )
    assert first.vars == {"name": ("小李", "小王"), "hobby": ("Python", "自动化", 3)}
    assert first.var_count() == 6
    assert [tuple(c.values()) for c in first.var_combinations()] == [
        ("小李", "Python"),
        ("小李", "自动化"),
        ("小李", 3),
        ("小王", "Python"),
        ("小王", "自动化"),
        ("小王", 3),
    ]


def test_defaults_apply_and_scenario_keys_override(tmp_path: Path) -> None:
    _, plain, rows = load_paths([write(tmp_path, "good.yaml", GOOD)])

    assert (plain.id, plain.line, plain.turns) == ("plain", 36, (Turn("user", "hi", line=37),))
    assert plain.params == {"temperature": 0, "top_p": 0.5}  # shallow merge, scenario wins
    assert plain.context == Server()
    assert (plain.tags, plain.system, plain.repeat, plain.vars) == (("shared",), "Be brief.", 1, {})
    assert (rows.id, rows.line, rows.context, rows.tags) == ("rows", 39, Full(), ())
    assert rows.params == {"temperature": 1, "top_p": 0.5}
    assert rows.turns[0].line == 43


def test_vars_as_rows_give_one_conversation_per_row(tmp_path: Path) -> None:
    rows = load_paths([write(tmp_path, "good.yaml", GOOD)])[2]
    assert rows.vars == (
        {"city": "Paris", "country": "France"},
        {"city": "Lyon", "country": "France"},
    )
    assert rows.var_count() == 2
    assert list(rows.var_combinations()) == list(rows.vars)


def test_scalar_var_is_one_value_and_anchors_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        textwrap.dedent("""\
        id: a
        vars: {who: Ann, n: [1, 2.5, true]}
        turns:
          - user: hi {{who}}
            expect: &check {contains: "{{who}}"}
          - user: &again again
            expect: *check
          - *again
        """),
    )
    (scenario,) = load_file(path)
    assert scenario.vars == {"who": ("Ann",), "n": (1, 2.5, True)}
    assert scenario.var_count() == 3
    assert scenario.turns[0].expect == scenario.turns[1].expect == Expect(contains=("{{who}}",))
    assert [t.content for t in scenario.turns] == ["hi {{who}}", "again", "again"]


def test_folder_loads_yaml_and_yml_recursively_in_sorted_order(tmp_path: Path) -> None:
    for name in ("suite/b.yml", "suite/a.yaml", "suite/sub/c.yaml", "suite/0/d.yml"):
        write(tmp_path, name, f"id: {Path(name).stem}\nturns: [hi]\n")
    write(tmp_path, "suite/notes.txt", "not: [a scenario")
    write(tmp_path, "other.yaml", "id: e\nturns: [hi]\n")

    scenarios = load_paths([str(tmp_path / "suite"), str(tmp_path / "other.yaml")])

    assert [s.id for s in scenarios] == ["d", "a", "b", "c", "e"]
    assert scenarios[1].file == str(tmp_path / "suite" / "a.yaml")


def test_empty_files_and_documents_give_no_scenarios(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "# nothing yet\n---\n---\n")
    assert load_paths([path]) == []
    assert load_paths([]) == []


@pytest.mark.parametrize("content", ["", "# only comments\n\n# here\n"], ids=["empty", "comments"])
def test_an_empty_file_is_an_input_error_naming_it(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, "empty.yaml", content)
    assert problems_of([path]) == [f"{path}: no scenarios: the file is empty or only comments"]
    result = cli("validate", path)
    assert result.exit_code == 2 and f"{path}: no scenarios" in result.stderr


def test_a_file_named_twice_is_loaded_once(tmp_path: Path) -> None:
    path = write(tmp_path, "s/a.yaml", "id: a\nturns: [hi]\n")
    assert [s.id for s in load_paths([path, str(tmp_path / "s")])] == ["a"]


def test_server_context_is_accepted_at_load_time(tmp_path: Path) -> None:
    (s,) = load_file(write(tmp_path, "a.yaml", "id: a\ncontext: server\nturns: [hi]\n"))
    assert s.context == Server()


# ---------------------------------------------------------------- bad input

BAD = [  # (case id, {file name: content}, (file name, line, text the problem must hold))
    (
        "unknown key in scenario",
        {"a.yaml": "id: a\nturn: [hi]\n"},
        ("a.yaml", 2, "unknown key 'turn' in scenario; did you mean 'turns'?"),
    ),
    (
        "unknown key in turn",
        {"a.yaml": "id: a\nturns:\n  - user: hi\n    expct: {json: true}\n"},
        ("a.yaml", 4, "unknown key 'expct' in turn; did you mean 'expect'?"),
    ),
    (
        "unknown key in expect",
        {"a.yaml": "id: a\nturns:\n  - user: hi\n    expect:\n      contain: x\n"},
        ("a.yaml", 5, "unknown key 'contain' in expect; did you mean 'contains'?"),
    ),
    (
        "unknown key in defaults",
        {"a.yaml": "defaults:\n  repat: 2\nscenarios:\n  - {id: a, turns: [hi]}\n"},
        ("a.yaml", 2, "unknown key 'repat' in defaults; did you mean 'repeat'?"),
    ),
    (
        "unknown key in document",
        {"a.yaml": "scenarios: [{id: a, turns: [hi]}]\ndefault: {}\n"},
        ("a.yaml", 2, "unknown key 'default' in document; did you mean 'defaults'?"),
    ),
    (
        "id in defaults",
        {"a.yaml": "defaults: {id: x}\nscenarios: [{id: a, turns: [hi]}]\n"},
        ("a.yaml", 1, "'id' cannot be a default"),
    ),
    (
        "missing id",
        {"a.yaml": "description: x\nturns: [hi]\n"},
        ("a.yaml", 1, "scenario is missing 'id'"),
    ),
    (
        "missing id in list",
        {"a.yaml": "scenarios:\n  - id: a\n    turns: [hi]\n  - turns: [hi]\n"},
        ("a.yaml", 4, "scenario is missing 'id'"),
    ),
    (
        "empty id",
        {"a.yaml": "id: ''\nturns: [hi]\n"},
        ("a.yaml", 1, "'id' must be a non-empty string"),
    ),
    ("missing turns", {"a.yaml": "id: a\n"}, ("a.yaml", 1, "scenario is missing 'turns'")),
    (
        "duplicate id across files",
        {"a.yaml": "id: same\nturns: [hi]\n", "b.yaml": "# another file\nid: same\nturns: [hi]\n"},
        ("b.yaml", 2, "duplicate id 'same' (first defined at {dir}/a.yaml:1)"),
    ),
    (
        "duplicate key",
        {"a.yaml": "id: a\nturns: [hi]\nid: b\n"},
        ("a.yaml", 3, "duplicate key 'id' in scenario (first at line 1)"),
    ),
    (
        "number as turn",
        {"a.yaml": "id: a\nturns:\n  - hi\n  - 42\n"},
        ("a.yaml", 4, "a turn must be a string, {user: ...} or {assistant: ...}, got 42"),
    ),
    (
        "number as user text",
        {"a.yaml": "id: a\nturns:\n  - user: 3.5\n"},
        ("a.yaml", 3, "'user' must be a string, got 3.5"),
    ),
    (
        "list as turn",
        {"a.yaml": "id: a\nturns:\n  - [a, b]\n"},
        ("a.yaml", 3, "a turn must be a string, {user: ...} or {assistant: ...}, got a list"),
    ),
    (
        "assistant turn with more keys",
        {"a.yaml": "id: a\nturns:\n  - {assistant: x, user: y}\n  - hi\n"},
        ("a.yaml", 3, "unknown key 'user' in assistant turn"),
    ),
    (
        "turns not a list",
        {"a.yaml": "id: a\nturns: hello\n"},
        ("a.yaml", 2, "'turns' must be a non-empty list, got 'hello'"),
    ),
    (
        "empty turns",
        {"a.yaml": "id: a\nturns: []\n"},
        ("a.yaml", 2, "'turns' must be a non-empty list, got an empty list"),
    ),
    (
        "last turn assistant",
        {"a.yaml": "id: a\nturns:\n  - hi\n  - assistant: bye\n"},
        ("a.yaml", 4, "the last turn is an assistant turn"),
    ),
    (
        "unknown var in system",
        {"a.yaml": "id: a\nsystem: Hi {{nme}}\nturns: [hi]\nvars: {name: [x]}\n"},
        ("a.yaml", 2, "unknown var 'nme' in template; did you mean 'name'?"),
    ),
    (
        "unknown var in turn",
        {"a.yaml": "id: a\nturns:\n  - hi\n  - user: I am {{who}}\n"},
        ("a.yaml", 4, "unknown var 'who' in template (the scenario has no vars)"),
    ),
    (
        "unknown var in assistant turn",
        {"a.yaml": "id: a\nturns:\n  - assistant: '{{x}}'\n  - hi\n"},
        ("a.yaml", 3, "unknown var 'x' in template"),
    ),
    (
        "unknown var in expect",
        {
            "a.yaml": "id: a\nvars: {name: [x], age: [1]}\nturns:\n"
            "  - user: hi\n    expect:\n      contains:\n"
            "        - ok\n        - '{{nam}}'\n"
        },
        ("a.yaml", 8, "unknown var 'nam' in template; did you mean 'name'?"),
    ),
    (
        "unknown var in rows",
        {"a.yaml": "id: a\nvars: [{a: 1}]\nturns: ['{{b}}']\n"},
        ("a.yaml", 3, "unknown var 'b' in template (vars: a)"),
    ),
    (
        "window 0",
        {"a.yaml": "id: a\ncontext:\n  window: 0\nturns: [hi]\n"},
        ("a.yaml", 3, "'window' must be a positive integer, got 0"),
    ),
    (
        "window -1",
        {"a.yaml": "id: a\ncontext: {window: -1}\nturns: [hi]\n"},
        ("a.yaml", 2, "'window' must be a positive integer, got -1"),
    ),
    (
        "window x",
        {"a.yaml": "id: a\nturns: [hi]\ncontext:\n  window: x\n"},
        ("a.yaml", 4, "'window' must be a positive integer, got 'x'"),
    ),
    (
        "bad context",
        {"a.yaml": "id: a\nturns: [hi]\ncontext: fulll\n"},
        ("a.yaml", 3, "'context' must be full, server or {window: N}, got 'fulll'"),
    ),
    (
        "repeat two",
        {"a.yaml": "id: a\nturns: [hi]\nrepeat: two\n"},
        ("a.yaml", 3, "'repeat' must be a positive integer, got 'two'"),
    ),
    (
        "repeat 0",
        {"a.yaml": "id: a\nturns: [hi]\nrepeat: 0\n"},
        ("a.yaml", 3, "'repeat' must be a positive integer, got 0"),
    ),
    (
        "repeat true",
        {"a.yaml": "id: a\nturns: [hi]\nrepeat: true\n"},
        ("a.yaml", 3, "'repeat' must be a positive integer, got true"),
    ),
    (
        "bad regex",
        {"a.yaml": "id: a\nturns:\n  - user: hi\n    expect: {regex: '(unclosed'}\n"},
        ("a.yaml", 4, "bad regex '(unclosed': missing ) at position 9"),
    ),
    (
        "bad regex with template",
        {
            "a.yaml": "id: a\nvars: {v: [x]}\nturns:\n  - user: hi\n"
            "    expect:\n      regex: '[{{v}}'\n"
        },
        ("a.yaml", 6, "bad regex '[{{v}}'"),
    ),
    (
        "bad expect value",
        {"a.yaml": "id: a\nturns:\n  - user: hi\n    expect:\n      max_latency_ms: 0\n"},
        ("a.yaml", 5, "'max_latency_ms' must be a positive number, got 0"),
    ),
    (
        "empty var list",
        {"a.yaml": "id: a\nturns: [hi]\nvars:\n  name: []\n"},
        ("a.yaml", 4, "var 'name' has an empty list of values"),
    ),
    (
        "bad var name",
        {"a.yaml": "id: a\nturns: [hi]\nvars:\n  1st: [a]\n"},
        ("a.yaml", 4, "bad var name '1st'"),
    ),
    (
        "var value not scalar",
        {"a.yaml": "id: a\nturns: [hi]\nvars:\n  n: [a, {b: 1}]\n"},
        ("a.yaml", 4, "values of var 'n' must be strings, numbers or booleans, got a mapping"),
    ),
    (
        "rows with other keys",
        {"a.yaml": "id: a\nturns: [hi]\nvars:\n  - {a: 1, b: 2}\n  - {a: 3, c: 4}\n"},
        ("a.yaml", 5, "this row of 'vars' has keys a, c, the first row has a, b"),
    ),
    (
        "duplicate var value",
        {"a.yaml": "id: a\nturns: [hi]\nvars:\n  n:\n    - x\n    - x\n"},
        ("a.yaml", 6, "duplicate value in 'vars' (same as line 5)"),
    ),
    (
        "tags not a list",
        {"a.yaml": "id: a\ntags: smoke\nturns: [hi]\n"},
        ("a.yaml", 2, "'tags' must be a list of strings, got 'smoke'"),
    ),
    (
        "params not a mapping",
        {"a.yaml": "id: a\nparams: [1]\nturns: [hi]\n"},
        ("a.yaml", 2, "'params' must be a mapping with string keys, got a list"),
    ),
    (
        "document not a mapping",
        {"a.yaml": "- id: a\n"},
        ("a.yaml", 1, "a document must be a scenario"),
    ),
    (
        "unknown yaml tag",
        {"a.yaml": "id: a\nturns:\n  - !shout hi\n"},
        ("a.yaml", 3, "could not determine a constructor for the tag '!shout'"),
    ),
    (
        "merge key",
        {"a.yaml": "id: a\nturns:\n  - user: hi\n    expect: {<<: {json: true}}\n"},
        ("a.yaml", 4, "merge keys (<<) are not supported"),
    ),
    (
        "non-UTF-8 file",
        {"a.yaml": b"id: a\nturns:\n  - caf\xe9\n"},
        ("a.yaml", 3, "not UTF-8 text (byte 0xe9)"),
    ),
    (
        "YAML syntax error",
        {"a.yaml": "id: a\nturns:\n  - hi\n - bad indent\n"},
        ("a.yaml", 4, "YAML syntax error:"),
    ),
    (
        "YAML unclosed bracket",
        {"a.yaml": "id: a\nturns: [hi\nrepeat: 1\n"},
        ("a.yaml", 3, "YAML syntax error:"),
    ),
    (
        "control character",
        {"a.yaml": 'id: a\nturns: ["a\x07"]\n'},
        ("a.yaml", 2, "YAML syntax error:"),
    ),
    ("missing path", {}, ("missing.yaml", None, "no such file or folder")),
    (
        "folder without scenarios",
        {"empty/notes.txt": "x"},
        ("empty", None, "no *.yaml or *.yml files in this folder"),
    ),
]


@pytest.mark.parametrize(
    ("files", "expected"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_input_is_reported_with_file_and_line(
    tmp_path: Path, files: dict[str, str | bytes], expected: tuple[str, int | None, str]
) -> None:
    for name, content in files.items():
        write(tmp_path, name, content)
    paths = sorted({str(tmp_path / Path(name).parts[0]) for name in files})
    name, line, text = expected
    problems = problems_of(paths or [str(tmp_path / name)])

    where = f"{tmp_path / name}:{line}: " if line else f"{tmp_path / name}: "
    text = text.replace("{dir}", str(tmp_path))
    assert any(p.startswith(where) and text in p for p in problems), problems


def test_every_problem_in_a_file_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.yaml",
        textwrap.dedent("""\
        scenarios:
          - id: one
            turns: [hi]
            repeat: 0
          - id: two
            turns:
              - 5
              - user: hi
                expect: {regex: "(", colour: red}
          - turns: [hi]
          - id: one
            context: {window: x}
            turns: ["{{nobody}}"]
        """),
    )
    problems = problems_of([path])
    assert [p.removeprefix(path + ":").split(":")[0] for p in problems] == [
        "4",
        "7",
        "9",
        "9",
        "10",
        "11",
        "12",
        "13",
    ]
    assert problems[0].endswith("'repeat' must be a positive integer, got 0")
    assert "duplicate id 'one'" in problems[5]


def test_problems_of_all_files_are_collected(tmp_path: Path) -> None:
    bad_yaml = write(tmp_path, "a.yaml", "id: [\n")
    bad_key = write(tmp_path, "b.yaml", "id: b\nturns: [hi]\nrepeats: 2\n")
    good = write(tmp_path, "c.yaml", "id: c\nturns: [hi]\n")
    problems = problems_of([bad_yaml, bad_key, good, str(tmp_path / "nope")])
    assert [p.split(":")[0] for p in problems] == [bad_yaml, bad_key, str(tmp_path / "nope")]
    assert "did you mean 'repeat'?" in problems[1]


def test_a_bad_default_is_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        "defaults: {repeat: two}\nscenarios: [{id: a, turns: [hi]}, {id: b, turns: [hi]}]\n",
    )
    assert problems_of([path]) == [f"{path}:1: 'repeat' must be a positive integer, got 'two'"]


def test_load_file_raises_for_its_own_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "id: a\nturns: [hi]\n---\nid: a\nturns: [hi]\n")
    with pytest.raises(InputError, match="duplicate id 'a'"):
        load_file(path)


def test_a_tagged_value_of_the_wrong_kind_shows_its_tag(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", "id: a\nturns: !odd hi\n")
    assert problems_of([path]) == [
        f"{path}:2: 'turns' must be a non-empty list, got a value tagged !odd"
    ]
