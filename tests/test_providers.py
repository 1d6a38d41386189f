"""Protocols as plugins: a provider declares its protocol and the rest of the runner reads
it; a bug of ours in a parser is one `internal` request; --dry-run plays the real turn loop."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import KEY, cli, play, raw_response, write_scenario
from multidict import CIMultiDict

import runner.client.client
from runner.client.client import TargetClient
from runner.client.providers import PROVIDERS
from runner.client.providers.base import Capabilities, StreamState
from runner.client.providers.openai_chat import OpenAIChat
from runner.client.providers.ratelimits import RateHeaders
from runner.errors import ApiError, Kind
from runner.spec.targets import Target

NAMES = {"chat": "openai-chat", "responses": "openai-responses", "gemini": "gemini",
         "anthropic": "anthropic"}  # fmt: skip
TWO_TURNS = "id: two\nsystem: Be brief.\nturns: [first question, second question]\n"


# ---------------------------------------------------------------- a provider owns its protocol


@pytest.mark.parametrize("command", ["run", "validate"])
def test_an_auth_mode_the_provider_lacks_is_refused_with_file_and_line(
    tmp_path, mock_server, command
):
    models = (
        "targets:\n"
        "  chat:\n"
        "    provider: openai-chat\n"
        "    model: m\n"
        f"    base_url: {mock_server.base_url}/v1\n"
        "    api_key_env: TEST_API_KEY\n"
        "    auth: query\n"  # line 7: the OpenAI protocols take bearer only
        "  gem:\n"
        "    provider: gemini\n"
        "    model: m\n"
        "    auth: querry\n"  # line 11
    )
    (tmp_path / "models.yaml").write_text(models, encoding="utf-8")
    scenario = write_scenario(tmp_path / "s.yaml", TWO_TURNS)
    args = ["-m", "chat", "-o", tmp_path / "runs"] if command == "run" else []
    result = cli(command, scenario, "--models", tmp_path / "models.yaml", *args)
    assert result.exit_code == 2
    assert "models.yaml:7: target 'chat': provider openai-chat takes auth bearer, not 'query'" in (
        result.stderr
    )
    assert "models.yaml:11: target 'gem'" in result.stderr and "did you mean 'query'?" in (
        result.stderr
    )
    assert "Traceback" not in result.output and mock_server.requests == []


def plain_provider(base_url: str) -> type[OpenAIChat]:
    """A protocol added by declaration alone: Chat's wire, its own name, default base URL,
    key variable, default params and capabilities (no seed)."""

    class Plain(OpenAIChat):
        name = "plain-chat"
        default_base_url = base_url + "/v1"
        key_env = "PLAIN_KEY"
        default_params = {"max_tokens": 77, "temperature": 0.5}
        capabilities = Capabilities(stream_usage=True)

    return Plain


def test_a_registered_provider_is_read_by_targets_plan_and_turn_loop(
    tmp_path, mock_server, monkeypatch
):
    monkeypatch.setitem(PROVIDERS, "plain-chat", plain_provider(mock_server.base_url))
    scenario = write_scenario(tmp_path / "s.yaml", TWO_TURNS + "params: {temperature: 0.1}\n")
    run = ["run", scenario, "-m", "plain-chat:m1", "--repeat", "2", "-o", tmp_path / "runs"]
    env = {"PLAIN_KEY": "plain-key-42"}
    dry = cli(*run, "--run-id", "dry", "--dry-run", env=env)
    assert dry.exit_code == 0, dry.output
    assert mock_server.requests == []
    result = cli(*run, "--run-id", "real", "--no-progress", env=env)
    assert result.exit_code == 0, result.output
    bodies = [r["json"] for r in mock_server.requests]
    assert len(bodies) == 4
    # the provider's defaults under the scenario's params; no seed: it takes none
    assert all(b["max_tokens"] == 77 and b["temperature"] == 0.1 for b in bodies)
    assert not any("seed" in b for b in bodies)
    assert all(r["headers"]["authorization"] == "Bearer plain-key-42" for r in mock_server.requests)
    assert dry.output.count('"max_tokens": 77') == 2 and "seed" not in dry.output
    records = [json.loads(line) for line in (tmp_path / "runs/real/transcripts.jsonl").open()]
    assert {r["provider"] for r in records} == {"plain-chat"}


def test_a_judge_asks_with_the_params_of_its_provider_too(tmp_path, mock_server, monkeypatch):
    monkeypatch.setitem(PROVIDERS, "plain-chat", plain_provider(mock_server.base_url))
    judged = "id: j\nturns:\n  - user: hi\n    expect: {judge: 'says \"mock\"'}\n"
    scenario = write_scenario(tmp_path / "s.yaml", judged)
    target = ["-m", "plain-chat:m1", "--judge", "plain-chat:m1"]
    result = cli("run", scenario, *target, "-o", tmp_path / "runs", env={"PLAIN_KEY": "k"})
    assert result.exit_code == 0, result.output
    bodies = [r["json"] for r in mock_server.requests]
    graders = [b for b in bodies if "strict grader" in b["messages"][0]["content"]]
    assert len(bodies) == 2 and len(graders) == 1
    assert all(b["max_tokens"] == 77 for b in bodies)


def test_context_server_is_refused_naming_the_providers_that_keep_history(tmp_path, mock_server):
    server = TWO_TURNS + "context: server\n"
    result = play(tmp_path, server, server=mock_server, targets=("gemini",)).result
    assert result.exit_code == 2
    assert "needs a target whose provider keeps the history (openai-responses)" in result.stderr


def overloaded_provider(statuses: frozenset[int]) -> type[OpenAIChat]:
    """Chat's wire with its own rate-limit headers (reset in "N seconds") and overloads."""

    class Busy(OpenAIChat):
        name = "busy-chat"
        overloaded = statuses
        rate_headers = RateHeaders(
            "busy-ratelimit-{budget}-{field}", lambda text: float(text.removesuffix(" seconds"))
        )

    return Busy


@pytest.mark.parametrize(("statuses", "shrinks"), [(frozenset({503}), False), (None, True)])
def test_the_provider_says_which_answers_are_overloads_and_how_its_limits_read(
    monkeypatch, statuses, shrinks
):
    busy = overloaded_provider(statuses or frozenset({429, 503, 529}))
    monkeypatch.setitem(PROVIDERS, "busy-chat", busy)
    client = TargetClient(Target("t", "busy-chat", "m", concurrency=32), False, lambda r: None)

    async def scenario() -> float:
        marks = await client.pacer.acquire(10)
        said = CIMultiDict({"busy-ratelimit-requests-limit": "10",
                            "busy-ratelimit-requests-remaining": "0",
                            "busy-ratelimit-requests-reset": "2 seconds"})  # fmt: skip
        client.pacer.answered(said, marks, 10)  # read with the provider's names and format
        overloaded = ApiError(Kind.HTTP, "overloaded_error", status=529, retryable=True)
        client._failed(overloaded, await client.limit.acquire(), marks, 10)
        return client.limit.limit

    after = asyncio.run(scenario())
    assert client.pacer.requests.rate == pytest.approx(5)  # 10 used over a 2 s reset
    assert (after < 32) is shrinks


# ---------------------------------------------------------------- our bugs are ours


@pytest.mark.parametrize("target", ["chat", "responses", "gemini", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bug_in_a_parser_is_one_internal_request_not_retried(
    tmp_path, mock_server, monkeypatch, target, stream
):
    provider = PROVIDERS[NAMES[target]]

    def broken_parse(self, body):
        return body["no such key"]  # a bug of ours: KeyError, whatever the server sent

    class BrokenStream(StreamState):
        def feed(self, event, data):
            return self.parts.no_such_method()  # AttributeError

    monkeypatch.setattr(provider, "parse", broken_parse)
    monkeypatch.setattr(provider, "stream_state", lambda self: BrokenStream())
    flag = "--stream" if stream else "--no-stream"
    played = play(tmp_path, TWO_TURNS, flag, server=mock_server, targets=(target,))
    assert played.result.exit_code == 3, played.result.output
    assert len(mock_server.requests) == 1  # not retried: the server is not at fault
    assert [u["status"] for u in played.usage] == ["internal"]
    error = played.transcripts[0]["error"]
    where = "in feed" if stream else "in broken_parse"
    assert error["kind"] == "internal" and "tests/test_providers.py:" in error["message"]
    assert where in error["message"]
    assert ("AttributeError" if stream else "KeyError") in error["message"]
    failures = json.loads(played.report("json").output)[0]["failures"]
    assert [(f["kind"], f["count"]) for f in failures] == [("internal", 1)]


SSE = {"Content-Type": "text/event-stream"}


@pytest.mark.parametrize(
    ("target", "flag", "answer"),
    [
        ("chat", "--no-stream", raw_response('{"choices": [{"message": "text"}]}')),
        ("responses", "--stream", raw_response('data: {"type": ["a list"]}\n\n', headers=SSE)),
    ],
)
def test_a_reply_of_the_wrong_shape_is_still_malformed_and_retried(
    tmp_path, raw_server, target, flag, answer
):
    server = raw_server(lambda request: answer)
    where = {"server": server, "targets": (target,), "models": {"max_retries": 2}}
    played = play(tmp_path, TWO_TURNS, flag, **where)
    assert played.result.exit_code == 3
    assert [u["status"] for u in played.usage] == ["malformed"] * 3
    assert played.transcripts[0]["error"]["kind"] == "malformed"


# ---------------------------------------------------------------- one transport seam


def test_a_dry_run_plays_the_real_turn_loop_through_the_client(tmp_path, mock_server, monkeypatch):
    calls = []
    complete = TargetClient.complete

    async def spied(self, system, messages, *args, **kwargs):
        calls.append([m.text for m in messages])
        return await complete(self, system, messages, *args, **kwargs)

    monkeypatch.setattr(runner.client.client.TargetClient, "complete", spied)
    scenario = "id: s\nturns: [{assistant: scripted}, 'hi {{n}}', again]\nvars: {n: [1, 2]}\n"
    dry = play(tmp_path, scenario, "--dry-run", server=mock_server, targets=("chat", "gemini"))
    assert dry.result.exit_code == 0, dry.result.output
    assert calls == [["scripted", "hi 1"]] * 2 + [["scripted", "hi 2"]] * 2  # first turns only
    assert mock_server.requests == []


@pytest.mark.parametrize("target", ["chat", "responses", "gemini", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_dry_run_shows_the_first_request_a_run_sends(tmp_path, mock_server, target, stream):
    scenario = (
        "id: same\nsystem: Be {{tone}}.\nparams: {temperature: 0.3}\ncontext: {window: 2}\n"
        "turns:\n  - assistant: I am scripted.\n  - user: Hi {{name}}\n"
        "    params: {max_tokens: 50}\n  - second\n"
        "vars: {name: [Ann, Bo], tone: [brief]}\n"
    )
    flag = "--stream" if stream else "--no-stream"
    where = {"server": mock_server, "targets": (target,), "models": {"params": {"top_p": 0.9}}}
    dry = play(tmp_path, scenario, flag, "--dry-run", "--repeat", "2", **where)
    assert dry.result.exit_code == 0, dry.result.output
    shown = [json.loads(block.split("\n\n", 1)[1]) for block in dry.result.stdout.split("# ")[1:]]
    run = play(tmp_path, scenario, flag, "-c", "1", "--repeat", "2", **where)
    assert run.result.exit_code == 0, run.result.output
    sent = [r["json"] for r in mock_server.requests]
    assert len(shown) == 4 and shown == sent[::2]  # each conversation's first of two
    assert KEY not in dry.result.output


def test_a_dry_run_does_not_wait_for_the_targets_rates(tmp_path, mock_server):
    scenario = "id: r\nturns: ['hi {{n}}']\nvars: {n: [1, 2, 3]}\n"
    slow = {"rpm": 0.001, "tpm": 0.001}  # a second request would wait for days
    dry = play(tmp_path, scenario, "--dry-run", server=mock_server, models=slow)
    assert dry.result.exit_code == 0, dry.result.output
    assert dry.result.stdout.count("# r[") == 3 and mock_server.requests == []


def test_a_request_body_held_in_flight_costs_its_length_not_an_encoders_buffer():
    # 10,000 conversations in flight hold 10,000 bodies: orjson's result of any length kept
    # its 4 KiB buffer (41 MB for bodies of 100 bytes)
    import tracemalloc

    from runner.client.providers import Call
    from runner.messages import Message, Text

    provider = OpenAIChat("http://127.0.0.1:9/v1", "m", "k")
    call = Call(None, [Message("user", (Text("Hello there"),))], {}, False, None)
    tracemalloc.start()
    try:
        held = [provider.build(call) for _ in range(1000)]
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held[0].body) < 100
    assert used < 1000 * 1024  # well under 1 KiB a request, headers and URL included
