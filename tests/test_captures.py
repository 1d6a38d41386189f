"""Captures: values a turn takes from its reply (a regex, a JSON path) for later turns and
checks (runner/spec/captures.py, runner/engine/captures.py); what load time refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import chat_completion, chat_models, cli, play, write_scenario

BUILTINS = ["mock", "mock-responses", "mock-gemini", "mock-anthropic"]

BOOKING = r"""
id: booking
vars: {who: [Ann]}
turns:
  - user: "Table for {{who}}: booking BK-4711 is yours"
    capture: {code: 'BK-\d+', number: 'BK-(\d+)'}
  - user: "Please cancel booking {{code}} (number {{number}}) for {{who}}."
    expect: {contains: ["{{code}}", "number {{number}}"]}
expect_final: {contains: "cancel booking {{code}}"}
"""

# the built-in mocks answer a grading request (a last line of JSON with "rubric" and "reply")
# with a JSON verdict: a reply that is JSON, on every protocol
GRADED = r"""
id: graded
turns:
  - user: |-
      Grade this.
      {"rubric": "says \"BK\"", "reply": "BK-7"}
    capture: {verdict: {json: "$.pass"}, why: {json: "$['reason']"}}
  - user: "The verdict was {{verdict}} because {{why}}"
    expect: {contains: "The verdict was true because the reply has"}
"""


@pytest.mark.parametrize("target", BUILTINS)
def test_regex_captures_reach_later_turns_and_checks(tmp_path: Path, target: str) -> None:
    played = play(tmp_path, BOOKING, targets=(target,))
    assert played.result.exit_code == 0, played.result.output
    [record] = played.transcripts
    first, second = record["turns"]
    assert first["captures"] == {"code": "BK-4711", "number": "4711"}  # match; group 1
    assert "captures" not in second
    assert second["user"] == "Please cancel booking BK-4711 (number 4711) for Ann."
    assert [c["passed"] for c in second["checks"]] == [True, True]
    assert second["checks"][-1] == {
        "kind": "contains", "passed": True, "reason": "all found", "final": True,
    }  # fmt: skip
    assert record["messages"][-2]["content"] == second["user"]  # what was sent


@pytest.mark.parametrize("target", BUILTINS)
def test_json_path_captures_a_reply_that_is_json(tmp_path: Path, target: str) -> None:
    played = play(tmp_path, GRADED, targets=(target,))
    assert played.result.exit_code == 0, played.result.output
    first, second = played.transcripts[0]["turns"]
    assert json.loads(first["assistant"]) == {"pass": True, "reason": 'the reply has "BK"'}
    assert first["captures"] == {"verdict": "true", "why": 'the reply has "BK"'}  # JSON as text
    assert second["user"] == 'The verdict was true because the reply has "BK"'


def test_a_capture_that_finds_nothing_fails_and_sends_no_more(tmp_path, mock_server) -> None:
    scenario = """
id: lost
turns:
  - user: no code here
    capture: {code: 'BK-\\d+'}
  - user: "cancel {{code}}"
  - user: never sent
"""
    played = play(tmp_path, scenario, server=mock_server)
    assert played.result.exit_code == 3, played.result.output
    [record] = played.transcripts
    assert record["status"] == "failed"
    assert record["error"] == {
        "kind": "capture", "status": None,
        "message": "capture 'code' (regex 'BK-\\\\d+') found nothing in the reply",
    }  # fmt: skip
    [turn] = record["turns"]  # the reply is recorded, the later turns were not sent
    assert turn["assistant"].startswith("mock: 1 messages")
    assert "captures" not in turn
    assert len(mock_server.requests) == 1
    assert "capture" in played.result.output  # the end-of-run table names the kind


def test_a_json_path_into_a_reply_that_is_not_json_fails(tmp_path: Path) -> None:
    scenario = 'id: j\nturns:\n  - user: hi\n    capture: {t: {json: "$.total"}}\n  - again\n'
    played = play(tmp_path, scenario, targets=("mock",))
    [record] = played.transcripts
    assert record["error"]["kind"] == "capture"
    assert record["error"]["message"].startswith(
        "capture 't' (JSON path $.total) cannot be read: the reply is not JSON"
    )


def test_openai_chat_replies_as_documented_feed_captures(tmp_path: Path, serve_app) -> None:
    """A server answering exactly as OpenAI documents chat.completion: a fenced JSON reply,
    captured by nested paths, reaches the next request."""
    bodies: list[dict] = []
    order = {"order": {"items": [{"unit price": 9.5, "sku": "A-1"}], "total": 12}}

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        content = "```json\n" + json.dumps(order) + "\n```" if len(bodies) == 1 else "Done."
        return web.json_response(chat_completion(len(bodies), body["model"], content))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    models = chat_models(serve_app(app).base_url, "shop")
    scenario = """
id: order
turns:
  - user: Summarise the order as JSON.
    capture:
      total: {json: "$.order.total"}
      price: {json: "$.order.items[0]['unit price']"}
      item: {json: '$.order.items[0]'}
  - user: "Total {{total}}, unit price {{price}}, item {{item}}"
"""
    played = play(tmp_path, scenario, targets=("shop",), models=models)
    assert played.result.exit_code == 0, played.result.output
    assert bodies[1]["messages"][-1] == {
        "role": "user",
        "content": 'Total 12, unit price 9.5, item {"unit price": 9.5, "sku": "A-1"}',
    }
    assert played.transcripts[0]["turns"][0]["captures"]["total"] == "12"


@pytest.mark.parametrize(
    ("scenario", "problems"),
    [
        (
            "id: a\nsystem: 'hi {{code}}'\nturns:\n  - user: x\n    capture: {code: 'BK'}\n"
            "  - y {{code}}\n",
            ["2: 'code' is used before it is captured (at line 5) (the system prompt, persona "
             "and tool_results are filled with vars only); a captured value can be used from "
             "the next turn on"],
        ),
        (
            "id: a\nturns:\n  - user: 'x {{code}}'\n    capture: {code: 'BK'}\n",
            ["3: 'code' is used before it is captured (at line 4); a captured value can be "
             "used from the next turn on"],
        ),
        (
            "id: a\nvars: {code: [1]}\nturns:\n  - user: x\n    capture: {code: 'BK'}\n",
            ["5: capture 'code' has the name of a var: rename one of them"],
        ),
        (
            "id: a\nturns:\n  - user: x\n    capture: {c: 'B'}\n  - user: y\n"
            "    capture: {c: 'C'}\n",
            ["6: 'c' is captured twice (first at line 4)"],
        ),
        (
            "id: a\nturns:\n  - user: x\n    capture: {c: 'B'}\n  - user: y\n"
            "    expect: {regex: 'a{{c}}'}\n",
            ["6: a regex check cannot use the captured 'c' (regexes are checked when the file "
             "is read); use contains"],
        ),
        (
            "id: a\nturns:\n  - user: x\n    capture: {c: {json: 'order.total'}, d: '(('}\n",
            ["4: capture 'c': bad JSON path 'order.total': a JSON path starts with $",
             "4: capture 'd': bad regex '((': missing ) at position 2"],
        ),
        (
            "id: a\nturns:\n  - user: x\n    capture: {c: {json: '$.a[x]'}, 2d: 'B'}\n",
            ["4: capture 'c': bad JSON path '$.a[x]': cannot read '[x]': use .name, [index] "
             "or ['key']",
             "4: bad capture name '2d': use letters, digits and _, not starting with a digit"],
        ),
        (
            "id: a\nturns:\n  - user: x\n    capture: [a]\n",
            ["4: 'capture' must be a mapping of names to a regex or {json: PATH}, got a list"],
        ),
    ],
)  # fmt: skip
def test_bad_captures_are_refused_with_file_and_line(
    tmp_path: Path, scenario: str, problems: list[str]
) -> None:
    path = write_scenario(tmp_path / "s.yaml", scenario)
    for args in (["validate", path], ["run", path, "-m", "mock", "-o", tmp_path / "runs"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        shown = [line.strip().removeprefix("error: ") for line in result.stderr.splitlines()]
        assert shown == [f"{path}:{p}" for p in problems]
    assert not list((tmp_path / "runs").rglob("*.jsonl"))  # nothing was run


def test_a_capture_named_like_a_vars_file_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("code\nA\n", encoding="utf-8")
    scenario = "id: a\nvars_file: rows.csv\nturns:\n  - user: x\n    capture: {code: 'B'}\n"
    result = cli("validate", write_scenario(tmp_path / "s.yaml", scenario))
    assert result.exit_code == 2
    assert "rows.csv:2: row 1: column code is also in the scenario's 'vars'" in result.stderr


def test_a_python_check_sees_the_values_captured_so_far(tmp_path: Path) -> None:
    # captured names are vars from the next turn on, for templates and python checks alike
    (tmp_path / "seen.py").write_text(
        "def code_kept(reply, turn, conversation):\n"
        "    code = conversation['vars'].get('code')\n"
        "    return code == 'BK-4711', f'vars: {sorted(conversation[\"vars\"])}'\n",
        encoding="utf-8",
    )
    scenario = BOOKING.replace(
        '    expect: {contains: ["{{code}}", "number {{number}}"]}',
        '    expect: {python: "seen:code_kept"}',
    )
    played = play(tmp_path, scenario, targets=("mock",))
    assert played.result.exit_code == 0, played.result.output
    [check] = played.transcripts[0]["turns"][1]["checks"][:1]
    assert check["passed"], check["reason"]
