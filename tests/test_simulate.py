"""A simulated user: a second target plays the user after (or instead of) the scripted turns
(runner/engine/simulate.py); the mock plays one given [[mock-user ...]] (runner/mock/user.py)."""

from __future__ import annotations

import gc
import html
import json
import signal
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runner.engine.simulate import OPENING
from tests.conftest import (
    chat_completion,
    chat_models,
    cli,
    holding_one,
    play,
    read_jsonl,
    spawn,
    write_scenario,
)

PERSONA = "A customer whose order #123 arrived broken. [[mock-user stop-after=5]]"
SUPPORT = f"""
id: refund
system: You are ACME's support agent.
turns:
  - Hi, my order arrived broken.
  - user: It is order 123.
  - user: Can you help?
simulate:
  user: anthropic
  persona: "{PERSONA}"
  max_turns: 6
  stop: "###STOP###"
expect_final: {{contains: "user message 5"}}
"""


def said(body: dict[str, Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system, [(role, text)]) of an OpenAI Chat or Anthropic Messages request body."""

    def text(content: Any) -> str:
        return content if isinstance(content, str) else "".join(b["text"] for b in content)

    messages = [(m["role"], text(m["content"])) for m in body["messages"]]
    if "system" in body:
        system = body["system"]
        return text(system if isinstance(system, list) else [{"text": system}]), messages
    if messages and messages[0][0] == "system":
        return messages[0][1], messages[1:]
    return None, messages


def sides(server: Any) -> tuple[list[dict], list[dict]]:
    """The requests the assistant (OpenAI Chat) and the simulated user (Anthropic) were sent."""
    assistant = [r["json"] for r in server.requests if r["path"].endswith("/chat/completions")]
    user = [r["json"] for r in server.requests if r["path"].endswith("/messages")]
    return assistant, user


def test_both_sides_see_the_exact_history_and_the_marker_ends_it(tmp_path, mock_server):
    played = play(tmp_path, SUPPORT, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    [record] = played.transcripts
    messages = [(m["role"], m["content"]) for m in record["messages"]]
    replies = [c for role, c in messages if role == "assistant"]
    scripted = ["Hi, my order arrived broken.", "It is order 123.", "Can you help?"]
    written = [t["user"] for t in record["turns"] if t.get("simulated")]
    assert [t.get("simulated", False) for t in record["turns"]] == [False] * 3 + [True] * 2
    assert written[0].startswith("user message 4, after #") and written[1].startswith(
        "user message 5, after #"
    )
    users = scripted + written
    assert messages == [("system", "You are ACME's support agent."),
                        *[m for pair in zip(users, replies, strict=True)
                          for m in (("user", pair[0]), ("assistant", pair[1]))]]  # fmt: skip
    assistant, simulator = sides(mock_server)
    assert len(assistant) == 5 and len(simulator) == 3  # the third said the marker
    for n, body in enumerate(assistant):  # the assistant's side: the history as it is
        assert said(body) == ("You are ACME's support agent.", messages[1 : 2 + 2 * n])
    for k, body in enumerate(simulator):  # the user's side: roles swapped, persona as system
        swapped = [("assistant" if r == "user" else "user", c) for r, c in messages[1 : 7 + 2 * k]]
        assert said(body) == (PERSONA, [("user", OPENING), *swapped])
    assert "###STOP###" not in json.dumps(assistant)  # the marker is never sent to it
    simulation = record["simulation"]
    assert simulation["stop_message"] == "Thank you, that is all. ###STOP###"
    assert {k: simulation[k] for k in ("target", "turns", "max_turns", "ended")} == {
        "target": "anthropic", "turns": 2, "max_turns": 6, "ended": "stop",
    }  # fmt: skip
    assert record["turns"][-1]["checks"][-1]["final"] is True  # expect_final on the last reply
    # usage: the simulated user's attempts are its own records, marked with their role
    roles = [(u["target"], u.get("role"), u["turn"]) for u in played.usage]
    assert roles == [("chat", None, 0), ("chat", None, 1), ("chat", None, 2),
                     ("anthropic", "simulated_user", 3), ("chat", None, 3),
                     ("anthropic", "simulated_user", 4), ("chat", None, 4),
                     ("anthropic", "simulated_user", 5)]  # fmt: skip
    spent = [u for u in played.usage if u.get("role") == "simulated_user"]
    assert simulation["usage"]["total_tokens"] == sum(u["total_tokens"] for u in spent)
    assert [t["simulated_user"]["usage"] for t in record["turns"][3:]] == [
        {k: u[k] for k in t["simulated_user"]["usage"]} for u, t in
        zip(spent, record["turns"][3:], strict=False)
    ]  # fmt: skip
    assert [t["name"] for t in played.manifest["simulators"]] == ["anthropic"]


def test_max_turns_bounds_a_simulated_user_that_never_stops(tmp_path, mock_server):
    scenario = SUPPORT.replace(" stop-after=5", "")
    played = play(tmp_path, scenario, server=mock_server)
    [record] = played.transcripts
    assert record["status"] == "ok"
    assert len(record["turns"]) == 3 + 6
    assert record["simulation"]["ended"] == "max_turns"
    assert record["simulation"]["stop_message"] is None
    assistant, simulator = sides(mock_server)
    assert (len(assistant), len(simulator)) == (9, 6)  # not asked a seventh time
    assert record["turns"][-1]["user"].startswith("user message 9")


@pytest.mark.parametrize("target", ["mock", "mock-responses", "mock-gemini", "mock-anthropic"])
def test_a_simulated_user_alone_opens_the_conversation(tmp_path: Path, target: str) -> None:
    scenario = f"""
id: alone
simulate:
  {{user: {target}, persona: "[[mock-user stop-after=2]]", max_turns: 5, stop: "###STOP###"}}
"""
    played = play(tmp_path, scenario, targets=(target,))
    assert played.result.exit_code == 0, played.result.output
    [record] = played.transcripts
    assert [t["user"][:14] for t in record["turns"]] == ["user message 1", "user message 2"]
    assert "after #" in record["turns"][0]["user"]  # it quoted the opening it was sent
    assert record["simulation"]["ended"] == "stop"


def test_repeat_samples_send_the_simulated_user_its_own_seed(tmp_path, mock_server) -> None:
    scenario = SUPPORT.replace("user: anthropic", "user: chat").replace(
        "max_turns: 6", "max_turns: 1"
    )
    first = play(tmp_path, scenario, "--repeat", "3", server=mock_server)
    again = play(tmp_path, scenario, "--repeat", "3", server=mock_server)
    written = [
        [t["user"] for t in r["turns"] if t.get("simulated")]
        for played in (first, again)
        for r in sorted(played.transcripts, key=lambda r: r["sample"])  # written as they end
    ]  # fmt: skip
    ends = [w[0].rsplit(" ", 1)[1] for w in written]
    assert ends == ["seed=0", "seed=1", "seed=2"] * 2  # samples differ, a rerun repeats
    assert written[:3] == written[3:]


def test_the_simulated_users_cost_counts_with_the_conversation(tmp_path: Path) -> None:
    models = """
targets:
  agent: {provider: openai-chat, model: a, mock: {}, price: {input_per_mtok: 1, output_per_mtok: 2}}
  customer: {provider: gemini, model: c, mock: {}, price: {input_per_mtok: 1000000}}
"""
    scenario = SUPPORT.replace("user: anthropic", "user: customer")
    played = play(tmp_path, scenario, targets=("agent",), models=models)
    [record] = played.transcripts
    spent = [u for u in played.usage if u.get("role") == "simulated_user"]
    simulated = sum(u["input_tokens"] for u in spent) * 1.0  # $1 a token
    own = [u for u in played.usage if u.get("role") is None]
    agent = sum(u["input_tokens"] * 1 + u["output_tokens"] * 2 for u in own) / 1e6
    assert record["simulation"]["cost_usd"] == pytest.approx(simulated)
    assert record["cost_usd"] == pytest.approx(agent + simulated)
    [row] = json.loads(played.report("json").stdout)
    assert row["cost_usd"] == pytest.approx(agent + simulated)
    assert row["requests"] == len(own)  # the simulated user's are not the agent's requests
    assert row["simulator_tokens"] == sum(u["total_tokens"] for u in spent)
    assert played.manifest["cost_usd"] == pytest.approx(agent + simulated, abs=1e-6)


def test_an_unknown_simulated_user_target_is_refused_with_file_and_line(tmp_path: Path) -> None:
    scenario = "id: s\nturns: [hi]\nsimulate:\n  user: mock-gemeni\n  persona: p\n  max_turns: 2\n"
    path = write_scenario(tmp_path / "s.yaml", scenario)
    for args in (["validate", path], ["run", path, "-m", "mock", "-o", tmp_path / "runs"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert f"{path}:4: simulate.user: unknown target 'mock-gemeni'" in result.stderr
        assert "did you mean 'mock-gemini'" in result.stderr
    assert not list((tmp_path / "runs").rglob("*.jsonl"))


@pytest.mark.parametrize(
    ("scenario", "problem"),
    [
        ("id: s\nsimulate: {user: mock, persona: p}\n",
         "2: 'simulate' needs max_turns (the target that plays the user, its persona, how many "
         "turns it may write)"),
        ("id: s\nsimulate: {user: mock, persona: p, max_turns: 0}\n",
         "2: 'max_turns' must be an integer >= 1 and <= 1000, got 0"),
        ("id: s\nsimulate: {user: mock, persona: p, max_turns: 2, stop: ''}\n",
         "2: 'stop' must not be empty"),
        ("id: s\nturns: [hi, {assistant: ok}]\n",
         "2: the last turn is an assistant turn; a conversation must end with a user turn (or an "
         "assistant's text followed by 'simulate')"),
        ("id: s\nsimulate: {user: mock, persona: 'hi {{name}}', max_turns: 2}\n",
         "2: unknown var 'name' in template (the scenario has no vars)"),
    ],
)  # fmt: skip
def test_bad_simulate_blocks_are_refused(tmp_path: Path, scenario: str, problem: str) -> None:
    path = write_scenario(tmp_path / "s.yaml", scenario)
    result = cli("validate", path)
    assert result.exit_code == 2
    assert result.stderr.strip().removeprefix("error: ") == f"{path}:{problem}"


def test_a_server_playing_both_sides_as_openai_documents(tmp_path: Path, serve_app) -> None:
    """One OpenAI Chat server plays the assistant and (by its persona) the simulated user,
    answering chat.completion objects as OpenAI documents them; what each side is sent."""
    seen: list[tuple[str, list[dict]]] = []
    lines = iter(["I want a refund.", "Order 123, please.", "Thanks! ###STOP###"])

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        is_user = body["messages"][0]["content"].startswith("You are a customer")
        seen.append(("user" if is_user else "agent", body["messages"]))
        content = next(lines) if is_user else f"Agent reply {len(seen)}."
        return web.json_response(chat_completion(len(seen), body["model"], content))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    models = chat_models(serve_app(app).base_url, "agent", "customer")
    scenario = """
id: raw
system: Be helpful.
turns:
  - user: Hello.
  - assistant: How can I help?
simulate: {user: customer, persona: You are a customer., max_turns: 5, stop: "###STOP###"}
"""
    played = play(tmp_path, scenario, targets=("agent",), models=models)
    assert played.result.exit_code == 0, played.result.output

    def m(role: str, content: str) -> dict:
        return {"role": role, "content": content}

    persona = m("system", "You are a customer.")
    assert seen == [
        ("agent", [m("system", "Be helpful."), m("user", "Hello.")]),
        ("user", [persona, m("user", OPENING), m("assistant", "Hello."),
                  m("user", "Agent reply 1."), m("user", "How can I help?")]),
        ("agent", [m("system", "Be helpful."), m("user", "Hello."),
                   m("assistant", "Agent reply 1."), m("assistant", "How can I help?"),
                   m("user", "I want a refund.")]),
        ("user", [persona, m("user", OPENING), m("assistant", "Hello."),
                  m("user", "Agent reply 1."), m("user", "How can I help?"),
                  m("assistant", "I want a refund."), m("user", "Agent reply 3.")]),
        ("agent", [m("system", "Be helpful."), m("user", "Hello."),
                   m("assistant", "Agent reply 1."), m("assistant", "How can I help?"),
                   m("user", "I want a refund."), m("assistant", "Agent reply 3."),
                   m("user", "Order 123, please.")]),
        ("user", [persona, m("user", OPENING), m("assistant", "Hello."),
                  m("user", "Agent reply 1."), m("user", "How can I help?"),
                  m("assistant", "I want a refund."), m("user", "Agent reply 3."),
                  m("assistant", "Order 123, please."), m("user", "Agent reply 5.")]),
    ]  # fmt: skip
    [record] = played.transcripts
    assert record["simulation"]["stop_message"] == "Thanks! ###STOP###"
    assert record["messages"][-1] == m("assistant", "Agent reply 5.")


def test_diff_compares_simulated_conversations_by_outcome_and_turns(tmp_path, mock_server):
    scenario = SUPPORT.replace('"user message 5"', '"user message"')
    base = play(tmp_path, scenario, server=mock_server)
    new = play(tmp_path, scenario.replace("stop-after=5", "stop-after=4"), server=mock_server)
    result = cli("diff", base.run_dir, new.run_dir)
    assert result.exit_code == 0, result.output  # same outcome: pass -> pass
    assert "0 conversations with changed replies" in result.stdout  # text is not compared
    assert (
        "SIMULATED: 1 conversation with a simulated user compared by outcome and number of "
        "turns, not by text (a simulated user's text is not expected to repeat); 1 changed "
        "their number of turns\n  refund@chat  5 -> 4 turns"
    ) in result.stdout
    data = json.loads(cli("diff", base.run_dir, new.run_dir, "--format", "json").stdout)
    assert data["simulated"] == 1
    assert data["turns_changed"] == [{"conversation_id": "refund@chat", "before": 5, "after": 4}]
    markdown = cli("diff", base.run_dir, new.run_dir, "--format", "markdown").stdout
    assert "Number of turns changed (1)" in markdown


def test_killed_simulated_runs_resume_from_the_start(tmp_path, make_mock) -> None:
    # one of the mock's first six requests is held for an hour, no later one: the run cannot
    # finish before its kill, and its resumes never wait
    server = make_mock(**holding_one(within=6, among=3000))
    scenario = SUPPORT.replace(
        "id: refund", "id: refund\nvars: {n: [" + ", ".join(str(i) for i in range(100)) + "]}"
    ).replace("Can you help?", "Can you help {{n}}?")
    running = spawn(tmp_path, scenario, "-c", "20", server=server)
    running.wait_for_records(30)
    running.proc.send_signal(signal.SIGKILL)
    killed = running.finish()
    assert killed.result.exit_code == -signal.SIGKILL
    assert 30 <= running.written() < 100
    result = killed.resume().result
    assert result.exit_code == 0, result.output + result.stderr
    records = killed.transcripts
    ids = [r["conversation_id"] for r in records]
    assert len(ids) == len(set(ids)) == 100
    assert all(r["status"] == "ok" and r["simulation"]["ended"] == "stop" for r in records)
    assert all(len(r["turns"]) == 5 and len(r["messages"]) == 11 for r in records)
    again = killed.resume()
    assert again.result.exit_code == 0
    assert killed.transcripts == records  # nothing more was played


MANY = """
id: many
vars_file: rows.csv
system: You are ACME's support agent.
turns:
  - "Hi, my order {{n}} arrived broken."
simulate: {user: mock, persona: "[[mock-user stop-after=2]]", max_turns: 6, stop: "###STOP###"}
"""


def test_a_thousand_simulated_conversations_at_once_keep_nothing_each(tmp_path: Path) -> None:
    """1,000 simulated conversations in flight together (-c 1000): every one is played to its
    marker, and a run of them holds nothing per conversation once it ended (traced Python
    memory before and after, the first run's imports paid by a small run first)."""
    (tmp_path / "rows.csv").write_text("n\n" + "".join(f"{i}\n" for i in range(1000)))
    (tmp_path / "few.csv").write_text("n\n1\n2\n")
    write_scenario(tmp_path / "few.yaml", MANY.replace("rows.csv", "few.csv"))
    tracemalloc.start()
    try:
        warm = play(tmp_path, tmp_path / "few.yaml", "-c", "1000", targets=("mock",))
        assert warm.result.exit_code == 0, warm.result.output
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        played = play(tmp_path, MANY, "-c", "1000", targets=("mock",))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert played.result.exit_code == 0, played.result.output
    records = played.transcripts
    assert len(records) == 1000
    assert all(r["simulation"]["ended"] == "stop" and len(r["turns"]) == 2 for r in records)
    roles = Counter(u.get("role") for u in played.usage)
    assert roles == {None: 2000, "simulated_user": 2000}
    assert after - before < 1_000_000  # under 1 kB a conversation: none is held


def test_exports_carry_simulated_turns_as_user_turns(tmp_path, mock_server) -> None:
    scenario = SUPPORT.replace("id: refund", "id: refund\nrepeat: 2").replace(
        "max_turns: 6", "max_turns: 1"
    )  # one simulated turn, then max_turns: expect_final fails on the last reply
    played = play(tmp_path, scenario, server=mock_server)
    assert played.result.exit_code == 1
    out = tmp_path / "chat.jsonl"
    result = cli("export", played.run_dir, "--format", "openai", "-o", out)
    assert result.exit_code == 0, result.output
    [first, second] = [r["messages"] for r in read_jsonl(out)]
    record = played.transcripts[0]
    assert first == record["messages"]  # simulated turns are plain user messages
    assert [m["role"] for m in first] == ["system"] + ["user", "assistant"] * 4
    result = cli("export", played.run_dir, "--format", "openai", "-o", out, "--only-passed")
    assert result.exit_code == 0 and read_jsonl(out) == []  # the final check failed


def test_an_expect_final_judge_sees_the_whole_conversation(tmp_path, mock_server) -> None:
    scenario = SUPPORT.replace(
        'expect_final: {contains: "user message 5"}',
        "expect_final: {judge: {rubric: 'quotes \"user message 5\"', target: gemini}}",
    )
    played = play(tmp_path, scenario, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    [record] = played.transcripts
    [check] = record["turns"][-1]["checks"]
    assert (check["kind"], check["passed"], check["final"]) == ("judge", True, True)
    [asked] = [r["json"] for r in mock_server.requests if ":generateContent" in r["path"]]
    material = json.loads(asked["contents"][0]["parts"][0]["text"].splitlines()[-1])
    assert material["conversation"] == record["messages"][:-1]  # all but the judged reply
    assert material["reply"] == record["messages"][-1]["content"]


def test_context_server_chains_the_simulated_turns(tmp_path: Path) -> None:
    scenario = """
id: chained
context: server
turns: [hello]
simulate: {user: mock, persona: "[[mock-user stop-after=3]]", max_turns: 4, stop: "###STOP###"}
"""
    played = play(tmp_path, scenario, targets=("mock-responses",))
    assert played.result.exit_code == 0, played.result.output
    [record] = played.transcripts
    assert [t["sent_messages"] for t in record["turns"]] == [1, 1, 1]  # each new message alone
    # the server kept the history: each reply counts every message before it
    assert [t["assistant"].split(";")[0] for t in record["turns"]] == [
        "mock: 1 messages", "mock: 3 messages", "mock: 5 messages",
    ]  # fmt: skip


def test_the_compare_page_shows_each_sides_own_simulated_message(tmp_path: Path) -> None:
    scenario = """
id: page
turns: [hello]
simulate: {user: mock, persona: "[[mock-user stop-after=2]]", max_turns: 3, stop: "###STOP###"}
"""
    seeded = play(tmp_path, scenario, "--repeat", "2", targets=("mock",))  # seed=0 and 1
    plain = play(tmp_path, scenario, targets=("mock",))  # no seed sent
    page = tmp_path / "page.html"
    result = cli("compare", seeded.run_dir, plain.run_dir, "--html", page)
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    [own] = [t["user"] for t in plain.transcripts[0]["turns"] if t.get("simulated")]
    assert '<span class="role">user (simulated)</span>' in text
    assert html.escape(own) in text  # beside the first run's, which says seed=0
    assert html.escape(own + " seed=0") in text


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (web.json_response(chat_completion(1, "customer-model", "")), {
            "kind": "empty", "status": None,
            "message": "the simulated user (customer) returned no text",
        }),
        (web.json_response({"error": {"message": "bad persona", "type": "invalid_request_error",
                                      "param": None, "code": None}}, status=400), {
            "kind": "http", "status": 400,
            "message": "the simulated user (customer): bad persona",
        }),
    ],
)  # fmt: skip
def test_a_simulated_user_that_cannot_answer_fails_the_conversation(
    tmp_path: Path, serve_app, answer: web.Response, error: dict
) -> None:
    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        if body["model"] == "customer-model":
            return answer
        return web.json_response(chat_completion(1, body["model"], "Agent reply."))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    models = chat_models(serve_app(app).base_url, "agent", "customer")
    scenario = "id: f\nturns: [Hello.]\nsimulate: {user: customer, persona: p, max_turns: 3}\n"
    played = play(tmp_path, scenario, targets=("agent",), models=models)
    assert played.result.exit_code == 3, played.result.output
    [record] = played.transcripts
    assert record["error"] == error
    assert len(record["turns"]) == 1  # the scripted turn's reply is kept
    assert record["simulation"]["ended"] is None
    failed = [u for u in played.usage if u.get("role") == "simulated_user"]
    assert [u["status"] for u in failed] == [200 if error["kind"] == "empty" else 400]


TOGETHER = """
id: together
system: You are ACME's support agent.
tools:
  - {name: w, description: an order's code, parameters: {type: object, properties: {}}}
tool_results: {w: {code: BK-42}}
turns:
  - user: 'call w {} please'
    capture: {code: 'BK-\\d+'}
  - user: 'call w {} and refund {{code}}'
    expect: {contains: "{{code}}", tool_called: {name: w, times: 1}}
simulate:
  user: TARGET
  persona: "A customer. [[mock-user stop-after=4]]"
  max_turns: 5
  stop: "###STOP###"
expect_final: {contains: "user message 4", tool_called: {name: w, times: 3}}
"""
TOOL_SHAPES = ("tool_calls", '"tool"', "function_call", "functionCall", "functionResponse",
               "tool_use", "tool_result", '"tools"')  # fmt: skip


@pytest.mark.parametrize("target", ["chat", "responses", "gemini", "anthropic"])
def test_tools_captures_and_a_simulated_user_together(tmp_path, mock_server, target) -> None:
    """A capture from a turn's final reply (after its tool loop) feeds the next turn; the
    simulated user, quoting `call w {}` from a reply, makes the model call the tool in a
    turn it wrote; it sees text only; expect_final counts every call of the conversation."""
    played = play(tmp_path, TOGETHER.replace("TARGET", target), server=mock_server,
                  targets=(target,))  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    [record] = played.transcripts
    assert record["status"] == "ok" and record["version"] == 2  # tools: version 2
    turns = record["turns"]
    assert [t.get("simulated", False) for t in turns] == [False, False, True, True]
    assert turns[0]["captures"] == {"code": "BK-42"}  # only in the reply after the tool loop
    assert turns[1]["user"] == "call w {} and refund BK-42"
    assert [t["user"][:16] for t in turns[2:]] == ["user message 3, ", "user message 4, "]
    assert [[c["name"] for c in t.get("tool_calls", [])] for t in turns] == [["w"]] * 3 + [[]]
    assert turns[0]["tool_calls"][0]["result"] == '{"code":"BK-42"}'
    assert [t.get("request_attempts") for t in turns] == [[1, 1]] * 3 + [None]
    assert all(c["passed"] for t in turns for c in t["checks"])
    final = [(c["kind"], c["reason"]) for c in turns[-1]["checks"] if c.get("final")]
    assert final == [("contains", "all found"), ("tool_called", "w called 3 times")]
    simulation = record["simulation"]
    assert (simulation["turns"], simulation["ended"]) == (2, "stop")
    # usage: the model's requests of each tool loop, and the simulated user's, marked so
    used = [(u.get("role"), u["turn"], u.get("request")) for u in played.usage]
    sim = "simulated_user"
    assert used == [(None, 0, 0), (None, 0, 1), (None, 1, 0), (None, 1, 1),
                    (sim, 2, None), (None, 2, 0), (None, 2, 1),
                    (sim, 3, None), (None, 3, 0), (sim, 4, None)]  # fmt: skip
    # the simulated user was sent text only: no tools, no calls, no results
    asked = [json.dumps(r["json"]) for r in mock_server.requests if "mock-user" in json.dumps(r)]
    assert len(asked) == 3
    assert not [s for s in TOOL_SHAPES for body in asked if s in body]
