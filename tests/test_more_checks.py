"""json_schema, python and similar checks through the CLI: each passing, failing and being
an error as the README says, and what load time refuses (file:line, exit 2, nothing sent)."""

from __future__ import annotations

import json
import sys
import textwrap

from conftest import cli, play, raw_response, write_scenario

from runner.mock import reply_text
from runner.spec import pycheck


def echo(request):
    """A chat completion whose reply is the last user message, as sent."""
    content = json.loads(request.body)["messages"][-1]["content"]
    body = {
        "id": "c1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }  # fmt: skip
    return raw_response(json.dumps(body))


def checks_of(played):
    """scenario id -> its one turn's checks."""
    return {r["scenario_id"]: r["turns"][0]["checks"] for r in played.transcripts}


PERSON = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
}


def test_json_schema_inline_and_from_a_file_pass_and_fail(tmp_path, raw_server):
    server = raw_server(echo)
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "person.json").write_text(json.dumps(PERSON), encoding="utf-8")
    replies = {
        "valid": '{"name": "Li", "age": 3}',
        "fenced": '```json\n{"name": "Li"}\n```',
        "wrong-type": '{"name": "Li", "age": "three"}',
        "missing": '{"age": 3}',
        "not-json": "Li is three",
    }
    lines = ["scenarios:"]
    for sid, reply in replies.items():
        for how, schema in (("inline", PERSON), ("file", "schemas/person.json")):
            turn = {"user": reply, "expect": {"json_schema": schema}}
            lines.append(f"  - {{id: {sid}-{how}, turns: [{json.dumps(turn)}]}}")
    played = play(tmp_path, "\n".join(lines) + "\n", server=server)
    assert played.result.exit_code == 1, played.result.output
    checks = checks_of(played)
    assert len(checks) == 10
    for sid, [check] in checks.items():
        assert check["kind"] == "json_schema"
        assert check["passed"] is sid.startswith(("valid", "fenced")), sid
    assert "schemas/person.json" in checks["valid-file"][0]["reason"]
    wrong = checks["wrong-type-inline"][0]["reason"]
    assert wrong.startswith("at age: ") and "'three'" in wrong
    assert "'name' is a required property" in checks["missing-file"][0]["reason"]
    assert checks["not-json-inline"][0]["reason"].startswith("not JSON")


def test_bad_schemas_are_refused_at_load_time(tmp_path, raw_server):
    server = raw_server(echo)
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "broken.json").write_text('{\n  "type": "object",\n  oops\n}', encoding="utf-8")
    scenario = textwrap.dedent("""\
        scenarios:
          - id: a
            turns: [{user: hi, expect: {json_schema: {type: 5}}}]
          - id: b
            turns: [{user: hi, expect: {json_schema: absent.json}}]
          - id: c
            turns: [{user: hi, expect: {json_schema: broken.json}}]
          - id: d
            turns: [{user: hi, expect: {json_schema: list.json}}]
          - id: e
            turns: [{user: hi, expect: {json_schema: [1]}}]
        """)
    played = play(tmp_path, scenario, server=server)
    assert played.result.exit_code == 2
    err = played.result.stderr
    assert "s.yaml:3: 'json_schema' (inline) is not a JSON Schema" in err and "(at type)" in err
    assert "s.yaml:5: 'json_schema': cannot read" in err and "absent.json" in err
    assert "s.yaml:7: 'json_schema': broken.json:3: not JSON" in err
    assert "s.yaml:9: 'json_schema': list.json holds a list, not a schema" in err
    assert "s.yaml:11: 'json_schema' must be a schema (a mapping) or the path" in err
    assert server.requests == [] and "Traceback" not in played.result.output


def test_json_schema_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # as if not installed
    path = write_scenario(
        tmp_path / "s.yaml", "id: s\nturns: [{user: hi, expect: {json_schema: {type: object}}}]\n"
    )
    for args in (("validate", path), ("run", path, "-m", "mock", "-o", tmp_path / "out")):
        result = cli(*args)
        assert result.exit_code == 2
        assert "s.yaml:2: 'json_schema' needs the jsonschema package" in result.stderr
        assert "pip install 'dialogue-runner[schema]'" in result.stderr
    assert not list((tmp_path / "out").glob("*/transcripts.jsonl"))  # nothing was run


CHECKS_PY = """\
LOADS = []
LOADS.append(1)

def polite(reply, turn, conversation):
    return "please" in reply

def reasoned(reply, turn, conversation):
    last = conversation["messages"][-1]
    ok = last == {"role": "assistant", "content": reply} and turn["assistant"] == reply
    return False, f"turn {turn['index']} of {conversation['scenario_id']} {ok} loads={len(LOADS)}"

def boom(reply, turn, conversation):
    raise ValueError("boom " + reply[:4])

def vague(reply, turn, conversation):
    return "yes"
"""


def test_python_checks_pass_fail_and_err(tmp_path, raw_server):
    server = raw_server(echo)
    (tmp_path / "mychecks.py").write_text(CHECKS_PY, encoding="utf-8")
    scenario = textwrap.dedent("""\
        defaults:
          turns:
            - user: say please
              expect: {python: [mychecks:polite, mychecks:reasoned, mychecks:boom]}
            - user: no manners
              expect: {python: [mychecks:polite, mychecks:vague]}
        scenarios: [{id: one}, {id: two}]
        """)
    played = play(tmp_path, scenario, server=server)
    assert played.result.exit_code == 1, played.result.output
    for record in played.transcripts:
        first, second = ({c["name"]: c for c in t["checks"]} for t in record["turns"])
        assert first["mychecks:polite"]["passed"] is True
        assert not first["mychecks:reasoned"]["passed"]
        sid = record["scenario_id"]
        assert first["mychecks:reasoned"]["reason"] == f"turn 0 of {sid} True loads=1"  # once
        boom = first["mychecks:boom"]
        assert not boom["passed"] and boom["error"]["kind"] == "check_error"
        assert boom["error"]["message"] == "ValueError: boom say (mychecks.py:13 in boom)"
        assert second["mychecks:polite"] == {
            "kind": "python", "name": "mychecks:polite", "passed": False,
            "reason": "mychecks:polite returned False",
        }  # fmt: skip
        vague = second["mychecks:vague"]
        assert not vague["passed"] and "returned 'yes', not a bool" in vague["reason"]
        assert vague["error"]["kind"] == "check_error"


def test_a_python_check_that_never_returns_is_a_check_timeout(tmp_path, raw_server, monkeypatch):
    monkeypatch.setattr(pycheck, "TIMEOUT_S", 0.5)  # it never returns: any bound will do
    release = __import__("threading").Event()
    monkeypatch.setitem(sys.modules, "stuck_release", release)
    (tmp_path / "stuck.py").write_text(
        "import sys\ndef check(reply, turn, conversation):\n"
        "    sys.modules['stuck_release'].wait()\n    return True\n",
        encoding="utf-8",
    )
    scenario = "id: s\nturns: [{user: hi, expect: {python: stuck:check}}, again]\n"
    played = play(tmp_path, scenario, server=raw_server(echo))
    release.set()  # the thread left behind ends
    assert played.result.exit_code == 1, played.result.output
    (record,) = played.transcripts
    [check] = record["turns"][0]["checks"]
    assert not check["passed"] and check["error"]["kind"] == "check_timeout"
    assert check["reason"] == "python error (check_timeout): stuck:check took more than 0.5 s"
    assert record["status"] == "ok" and len(record["turns"]) == 2  # the conversation went on


def test_python_checks_that_cannot_be_loaded_are_refused(tmp_path, raw_server):
    server = raw_server(echo)
    (tmp_path / "mychecks.py").write_text(CHECKS_PY, encoding="utf-8")
    (tmp_path / "broken.py").write_text("x = 1\ndef f(:\n", encoding="utf-8")
    (tmp_path / "raising.py").write_text("raise RuntimeError('no db')\n", encoding="utf-8")
    (tmp_path / "arity.py").write_text("def one(reply):\n    return True\n", encoding="utf-8")
    scenario = textwrap.dedent("""\
        scenarios:
          - id: a
            turns: [{user: hi, expect: {python: absent:polite}}]
          - id: b
            turns: [{user: hi, expect: {python: mychecks:polit}}]
          - id: c
            turns: [{user: hi, expect: {python: broken:f}}]
          - id: d
            turns: [{user: hi, expect: {python: raising:f}}]
          - id: e
            turns: [{user: hi, expect: {python: arity:one}}]
          - id: f
            turns: [{user: hi, expect: {python: mychecks}}]
        """)
    played = play(tmp_path, scenario, server=server)
    assert played.result.exit_code == 2
    err = played.result.stderr
    assert "s.yaml:3: 'python': no file absent.py beside the scenario" in err
    assert "s.yaml:5: 'python': mychecks.py has no function 'polit'; did you mean 'polite'?" in err
    assert "s.yaml:7: 'python': importing broken.py failed: SyntaxError:" in err
    assert "(broken.py:2)" in err
    assert "s.yaml:9: 'python': importing raising.py failed: RuntimeError: no db" in err
    assert "s.yaml:11: 'python': arity:one must take three arguments" in err
    assert "s.yaml:13: 'python' must be a string MODULE:FUNCTION" in err
    assert server.requests == [] and "Traceback" not in played.result.output


ASKED = "I like Tea."
REPLY = reply_text([("user", ASKED)])  # what the mock answers


def test_similar_is_lexical(tmp_path, mock_server):
    near = REPLY.replace("Tea", "tea").replace("messages", "message")
    cases = {
        "near": ({"to": near}, True),
        "far": ({"to": "Something else entirely, about coffee."}, False),
        "strict": ({"to": near, "min": 1.0}, False),
        "folded": ({"to": REPLY.upper(), "min": 1.0}, True),
        "templated": ({"to": "{{whole}}", "min": 1.0}, True),
    }
    lines = ["scenarios:"]
    for sid, (similar, _) in cases.items():
        turn = {"user": ASKED, "expect": {"similar": similar, "ignore_case": sid == "folded"}}
        more = f", vars: {{whole: [{json.dumps(REPLY)}]}}" if sid == "templated" else ""
        lines.append(f"  - {{id: {sid}, turns: [{json.dumps(turn)}]{more}}}")
    played = play(tmp_path, "\n".join(lines) + "\n", server=mock_server)
    assert played.result.exit_code == 1, played.result.output
    checks = checks_of(played)
    for sid, (_, passes) in cases.items():
        [check] = checks[sid]
        assert check["kind"] == "similar" and check["passed"] is passes, (sid, check)
    assert checks["near"][0]["reason"].startswith("similarity 0.9")
    assert "(min 0.8)" in checks["near"][0]["reason"]
    # below the minimum already by difflib's quick upper bound: said as a bound
    assert checks["strict"][0]["reason"].startswith("similarity at most 0.9")
    refused = play(tmp_path, "id: s\nturns: [{user: hi, expect: {similar: {min: 0.5}}}]\n")
    assert refused.result.exit_code == 2
    assert "s.yaml:2: 'similar' needs 'to: ...'" in refused.result.stderr
