"""Batch mode: rounds of turns through the OpenAI Batch API (chat and responses), against
the mock (driven by the official SDK too) and a raw server answering as documented."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import HOUR_MS, count_lines, play, read_jsonl, spawn, wait_until

# three conversations (vars) of three user turns and a scripted assistant turn
THREE = """
id: three
system: Be brief.
context: full
turns:
  - hello {{who}}
  - assistant: a scripted answer
  - second question for {{who}}
  - user: third question
    expect: {contains: mock}
vars:
  who: [ann, bob, cy]
"""
FAST = {"batch_poll_s": 0.02, "max_wait_s": 0.2}
PRICE = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}


def batch_models(**extra: Any) -> dict[str, Any]:
    return {"batch": True, **FAST, **extra}


def models_text(server: Any, **extra: Any) -> str:
    """A models file of one target per protocol, each with EXTRA."""
    common = {"api_key_env": "TEST_API_KEY", **extra}
    v1 = server.base_url + "/v1"
    return json.dumps({"targets": {
        "chat": {"provider": "openai-chat", "model": "m-chat", "base_url": v1, **common},
        "responses": {"provider": "openai-responses", "model": "m-resp", "base_url": v1,
                      **common},
        "gemini": {"provider": "gemini", "model": "m-gem", "base_url": server.base_url,
                   **common},
        "anthropic": {"provider": "anthropic", "model": "m-claude",
                      "base_url": server.base_url, **common},
    }})  # fmt: skip


PROTOCOLS = ["chat", "responses", "gemini", "anthropic"]
# a batch that ended with its lines answered, in each provider's words
DONE = {"chat": "completed", "responses": "completed", "gemini": "SUCCEEDED", "anthropic": "ended"}


def turns(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each conversation's messages and turns, timings left out."""
    timing = ("latency_ms", "ttft_ms", "started_at", "ended_at")
    return {
        r["conversation_id"]: (
            r["messages"],
            [{k: v for k, v in t.items() if k not in timing} for t in r["turns"]],
        )
        for r in records
    }


def created(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(run_dir / "batches.jsonl") if e["event"] == "created"]


# ---------------------------------------------------------------- the official SDK


def test_openai_sdk_drives_the_mock_batch_api(make_mock):
    openai = pytest.importorskip("openai")
    server = make_mock(batch_fail_rate=0.0)
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="k")
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(5)
    ]  # fmt: skip
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.01)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 5
    assert batch.output_file_id is not None
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    by_id = {x["custom_id"]: x["response"]["body"] for x in out}
    assert set(by_id) == {f"c{i}" for i in range(5)}
    for i in range(5):  # each line answered by its own request
        reply = openai.types.chat.ChatCompletion.model_validate(by_id[f"c{i}"])
        assert f'"q{i}"' in reply.choices[0].message.content
    # cancel: a batch still running ends cancelled
    server.state.options.batch_delay_ms = HOUR_MS
    held = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(held.id).status in ("cancelling", "cancelled")
    assert client.batches.retrieve(held.id).status == "cancelled"


# ---------------------------------------------------------------- through the runner


@pytest.mark.parametrize("target", PROTOCOLS)
def test_batch_mode_gives_the_direct_transcripts_one_batch_per_round(tmp_path, make_mock, target):
    server = make_mock()
    direct, batched = (
        play(tmp_path, THREE, "-c", "10", targets=[target], models=models_text(server, **extra))
        for extra in (FAST, batch_models())
    )
    assert batched.result.exit_code == 0, batched.result.output
    assert turns(batched.transcripts) == turns(direct.transcripts)
    assert len(batched.transcripts) == 3
    rounds = created(batched.run_dir)
    assert [(b["round"], b["lines"]) for b in rounds] == [(1, 3), (2, 3), (3, 3)]
    assert server.state.batches_created == 3
    listed = batched.manifest["batches"]
    assert [b["state"] for b in listed] == [DONE[target]] * 3
    ids = {b["batch_id"] for b in listed}
    assert all(u["batch"] is True and u["batch_id"] in ids for u in batched.usage)
    assert len(batched.usage) == 9


def test_streaming_is_dropped_in_batch_mode(tmp_path, make_mock):
    server = make_mock()
    batched = play(
        tmp_path, THREE, "--stream", server=server, models=models_text(server, **batch_models())
    )
    assert batched.result.exit_code == 0, batched.result.output
    (line,) = read_jsonl(batched.run_dir / "batches.jsonl")[:1]
    assert line["lines"] == 3
    sent = [r for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert sent and not any(r["json"].get("stream") for r in sent)


@pytest.mark.parametrize("target", PROTOCOLS)
def test_failed_and_expired_lines_are_retried_in_the_next_round(tmp_path, make_mock, target):
    server = make_mock(batch_fail_rate=0.4, batch_expire=1, seed=3)
    models = models_text(server, **batch_models(max_retries=8))
    batched = play(tmp_path, THREE, targets=[target], models=models)
    assert batched.result.exit_code == 0, batched.result.output
    assert all(r["status"] == "ok" for r in batched.transcripts)
    states = [b["state"] for b in batched.manifest["batches"]]
    assert states[0] in ("expired", "EXPIRED", "ended")  # Anthropic: ended, each line expired
    expired = set(created(batched.run_dir)[0]["keys"])
    assert {u["batch_key"]: u["status"] != 200 for u in batched.usage
            if u["batch_key"] in expired} == dict.fromkeys(expired, True)  # fmt: skip
    failed = [u for u in batched.usage if u["status"] != 200]
    assert len(failed) > 3  # the expired batch's three lines, and failed lines
    assert all(u["batch"] for u in batched.usage)
    assert len(states) > 3  # retry rounds beside the three
    ok = [u for u in batched.usage if u["status"] == 200]
    assert len(ok) == 9


def test_cost_and_max_cost_reflect_the_batch_price_factor(tmp_path, make_mock):
    server = make_mock()
    direct = play(tmp_path, THREE, server=server, models=models_text(server, **FAST, price=PRICE))
    batched = play(
        tmp_path, THREE, server=server, models=models_text(server, **batch_models(price=PRICE))
    )
    third = play(
        tmp_path,
        THREE,
        server=server,
        models=models_text(server, **batch_models(price=PRICE, batch_price_factor=0.25)),
    )
    full = direct.manifest["cost_usd"]
    assert full > 0
    assert batched.manifest["cost_usd"] == pytest.approx(full * 0.5, abs=2e-6)
    assert third.manifest["cost_usd"] == pytest.approx(full * 0.25, abs=2e-6)
    # --max-cost between the batch price and the full price: every conversation runs
    capped = play(
        tmp_path, THREE, "-c", "1", "--max-cost", str(full * 0.6), server=server,
        models=models_text(server, **batch_models(price=PRICE)),
    )  # fmt: skip
    assert capped.manifest["counts"]["not_run"] == 0
    over = play(
        tmp_path, THREE, "-c", "1", "--max-cost", str(full * 0.2), server=server,
        models=models_text(server, **batch_models(price=PRICE)),
    )  # fmt: skip
    assert over.manifest["counts"]["not_run"] > 0


def _listed(run_dir: Path) -> bool:
    """Whether run.json lists a batch (it is replaced whole, never seen half written)."""
    path = run_dir / "run.json"
    return path.exists() and bool(json.loads(path.read_text(encoding="utf-8")).get("batches"))


@pytest.mark.parametrize("target", PROTOCOLS)
def test_kill_while_a_batch_is_out_then_resume_polls_it(tmp_path, make_mock, target):
    server = make_mock(batch_delay_ms=HOUR_MS)  # the first batch is held
    models = models_text(server, **batch_models())
    running = spawn(tmp_path, THREE, "-c", "10", targets=[target], models=models)
    # the batch file's line is written first, then run.json: killed once both hold the batch
    wait_until(lambda: _listed(running.run_dir), running.proc)
    running.proc.send_signal(signal.SIGKILL)
    killed = running.finish()
    assert killed.result.exit_code == -signal.SIGKILL
    assert server.state.batches_created == 1
    assert count_lines(killed.run_dir / "batches.jsonl") == 1
    (out,) = killed.manifest["batches"]  # run.json listed it as soon as it existed
    assert out["batch_id"] == created(killed.run_dir)[0]["batch_id"] and out["ended_at"] is None
    server.state.options.batch_delay_ms = 0  # the held batch ends now
    resumed = killed.resume()
    assert resumed.result.exit_code == 0, resumed.result.output
    assert server.state.batches_created == 3  # round 1 polled, not sent again
    ids = [r["conversation_id"] for r in resumed.transcripts]
    assert len(ids) == len(set(ids)) == 3
    keys = [u["batch_key"] for u in resumed.usage]
    assert len(keys) == len(set(keys)) == 9  # each attempt recorded once
    assert [b["round"] for b in created(resumed.run_dir)] == [1, 2, 3]


def test_resume_after_a_kill_is_answered_from_batches_already_read(tmp_path, make_mock):
    # killed during round 2: round 1's answers come from its batch again, unpaid, unrecorded
    server = make_mock()
    running = spawn(
        tmp_path, THREE, "-c", "10", server=server, models=models_text(server, **batch_models())
    )
    wait_until(lambda: count_lines(running.run_dir / "batches.jsonl") >= 2, running.proc)
    server.state.options.batch_delay_ms = HOUR_MS
    wait_until(lambda: server.state.batches_created >= 2, running.proc)
    wait_until(lambda: count_lines(running.run_dir / "batches.jsonl") >= 3, running.proc)
    running.proc.send_signal(signal.SIGKILL)
    killed = running.finish()
    before = server.state.batches_created
    server.state.options.batch_delay_ms = 0
    resumed = killed.resume()
    assert resumed.result.exit_code == 0, resumed.result.output
    assert before >= 2 and server.state.batches_created == 3  # nothing sent twice
    keys = [u["batch_key"] for u in resumed.usage]
    assert len(keys) == len(set(keys)) == 9
    assert len(resumed.transcripts) == 3


def test_cancel_batches_on_resume_sends_their_rounds_again(tmp_path, make_mock):
    server = make_mock(batch_delay_ms=HOUR_MS)
    running = spawn(
        tmp_path, THREE, "-c", "10", server=server, models=models_text(server, **batch_models())
    )
    wait_until(lambda: count_lines(running.run_dir / "batches.jsonl") >= 1, running.proc)
    running.proc.send_signal(signal.SIGKILL)
    killed = running.finish()
    (first,) = created(killed.run_dir)
    server.state.options.batch_delay_ms = 0
    resumed = killed.resume("--cancel-batches")
    assert resumed.result.exit_code == 0, resumed.result.output
    assert server.state.batches_created == 4  # round 1 sent again
    listed = {b["batch_id"]: b["state"] for b in resumed.manifest["batches"]}
    assert listed[first["batch_id"]] == "cancelled"
    assert len(resumed.transcripts) == 3
    assert "cancel_batches" not in resumed.manifest["invocation"]


# ---------------------------------------------------------------- refused at start


def test_a_provider_without_a_batch_api_is_refused_with_its_line(tmp_path, make_mock, monkeypatch):
    from runner.client.providers.base import Capabilities
    from runner.client.providers.gemini import Gemini

    monkeypatch.setattr(Gemini, "capabilities", Capabilities(tools=True))  # as if it had none
    server = make_mock()
    models = f"""
targets:
  g:
    provider: gemini
    model: m
    base_url: {server.base_url}
    api_key_env: TEST_API_KEY
    batch: true
"""
    refused = play(tmp_path, THREE, targets=["g"], models=models)
    assert refused.result.exit_code == 2
    assert "models.yaml:8:" in refused.result.output and "Batch API" in refused.result.output
    assert server.state.answered == 0


def test_context_server_cannot_ride_a_batch(tmp_path, make_mock):
    server = make_mock()
    chained = THREE.replace("context: full", "context: server")
    refused = play(tmp_path, chained, "--batch", targets=["responses"], models=models_text(server))
    assert refused.result.exit_code == 2
    assert "s.yaml:" in refused.result.output and "batch" in refused.result.output
    assert server.state.answered == 0


# ---------------------------------------------------------------- a raw server, as documented


class DocumentedBatches:
    """The OpenAI Batch API as documented: multipart upload, a batch polled through
    in_progress, output lines in reverse order, the first line of round 1 failed in the
    error file (`response: null`, `error: {code, message}`) and the second missing."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lines: list[list[dict[str, Any]]] = []
        self.creates: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/files", self.upload)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches/{id}", self.get)
        app.router.add_get("/v1/files/{id}/content", self.content)
        return app

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        file = form["file"]
        assert isinstance(file, web.FileField)
        data = file.file.read()
        self.uploads.append({"purpose": form["purpose"], "auth": request.headers["Authorization"]})
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return web.json_response({"id": file_id, "object": "file", "bytes": len(data),
                                  "created_at": 1, "filename": file.filename,
                                  "purpose": "batch"})  # fmt: skip

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.creates.append(body)
        lines = [json.loads(x) for x in self.files[body["input_file_id"]].splitlines()]
        self.lines.append(lines)
        batch_id = f"batch_{len(self.batches)}"
        self.batches[batch_id] = {"id": batch_id, "object": "batch", "status": "validating",
                                  "polls": 0, "output_file_id": None, "error_file_id": None,
                                  "request_counts": {"total": len(lines), "completed": 0,
                                                     "failed": 0}}  # fmt: skip
        return web.json_response(self._shown(batch_id))

    def _shown(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if k != "polls"}

    async def get(self, request: web.Request) -> web.Response:
        batch = self.batches[request.match_info["id"]]
        batch["polls"] += 1
        if batch["polls"] == 1:
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress":
            self._complete(batch)
        return web.json_response(self._shown(batch["id"]))

    def _complete(self, batch: dict[str, Any]) -> None:
        lines = self.lines[int(batch["id"].split("_")[1])]
        first_round = batch["id"] == "batch_0"
        out, errors = [], []
        for i, line in enumerate(lines):
            if first_round and i == 0:
                errors.append({"id": "batch_req_e", "custom_id": line["custom_id"],
                               "response": None, "error": {"code": "batch_expired",
                               "message": "This request could not be executed before the "
                               "completion window expired."}})  # fmt: skip
                continue
            if first_round and i == 1:
                continue  # missing from both files
            text = "reply to " + line["body"]["messages"][-1]["content"]
            body = {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1,
                    "model": "m", "choices": [{"index": 0, "message": {"role": "assistant",
                    "content": text, "refusal": None}, "logprobs": None,
                    "finish_reason": "stop"}], "usage": {"prompt_tokens": 5,
                    "completion_tokens": 3, "total_tokens": 8}}  # fmt: skip
            out.append({"id": f"batch_req_{i}", "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "request_id": f"req_{i}",
                                     "body": body}, "error": None})  # fmt: skip
        out.reverse()  # any order
        batch["status"] = "completed"
        for key, part in (("output_file_id", out), ("error_file_id", errors)):
            if part:
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = b"".join(json.dumps(x).encode() + b"\n" for x in part)
                batch[key] = file_id
        batch["request_counts"].update(completed=len(out), failed=len(errors))

    async def content(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["id"]])


ONE_TURN = """
id: one
turns:
  - question {{n}}
vars:
  n: [a, b, c, d]
"""


def test_a_raw_server_answers_the_batch_endpoints_as_documented(tmp_path, serve_app):
    documented = DocumentedBatches()
    served = serve_app(documented.app())
    batched = play(
        tmp_path, ONE_TURN, server=served, models=models_text(served, **batch_models(stream=True))
    )
    assert batched.result.exit_code == 0, batched.result.output
    replies = {r["vars"]["n"]: r["turns"][0]["assistant"] for r in batched.transcripts}
    assert replies == {n: f"reply to question {n}" for n in "abcd"}  # matched by custom_id
    assert [len(x) for x in documented.lines] == [4, 2]  # the failed and the missing line again
    for line in documented.lines[0]:
        assert set(line) == {"custom_id", "method", "url", "body"}
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert "stream" not in line["body"] and "stream_options" not in line["body"]
        assert line["body"]["model"] == "m-chat"
    assert len({x["custom_id"] for x in documented.lines[0]}) == 4
    assert documented.creates[0]["endpoint"] == "/v1/chat/completions"
    assert documented.creates[0]["completion_window"] == "24h"
    assert documented.uploads[0]["purpose"] == "batch"
    assert documented.uploads[0]["auth"].startswith("Bearer ")
    failed = [u for u in batched.usage if u["status"] != 200]
    assert len(failed) == 2 and all(u["attempt"] == 1 for u in failed)


def test_anthropic_sdk_drives_the_mock_message_batches(make_mock):
    anthropic = pytest.importorskip("anthropic")
    server = make_mock(batch_fail_rate=0.0)
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    asked = [
        {"custom_id": f"c_{i}", "params": {"model": "m", "max_tokens": 20,
                                           "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(4)
    ]  # fmt: skip
    batch = client.messages.batches.create(requests=asked)  # type: ignore[arg-type]
    while batch.processing_status != "ended":
        time.sleep(0.01)
        batch = client.messages.batches.retrieve(batch.id)
    assert batch.request_counts.succeeded == 4 and batch.results_url
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {f"c_{i}" for i in range(4)}
    for i in range(4):
        assert results[f"c_{i}"].type == "succeeded"
        assert f'"q{i}"' in results[f"c_{i}"].message.content[0].text  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError):  # custom_id outside ^[a-zA-Z0-9_-]{1,64}$
        client.messages.batches.create(requests=[{**asked[0], "custom_id": "a|b"}])  # type: ignore[list-item]
    server.state.options.batch_delay_ms = HOUR_MS
    held = client.messages.batches.create(requests=asked)  # type: ignore[arg-type]
    assert client.messages.batches.cancel(held.id).processing_status in ("canceling", "ended")
    wait_until(lambda: client.messages.batches.retrieve(held.id).processing_status == "ended")
    kinds = {r.result.type for r in client.messages.batches.results(held.id)}
    assert kinds == {"canceled"}


def test_google_genai_sdk_drives_the_mock_batch_api(make_mock):
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    server = make_mock()
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=server.base_url))
    src = [{"contents": [{"parts": [{"text": f"q{i}"}], "role": "user"}]} for i in range(3)]
    job = client.batches.create(model="mock-gemini", src=src)  # type: ignore[arg-type]
    assert job.name and job.name.startswith("batches/")
    while not job.done:
        time.sleep(0.01)
        job = client.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest and job.dest.inlined_responses
    texts = [r.response.text for r in job.dest.inlined_responses if r.response]
    assert len(texts) == 3 and all(f'"q{i}"' in t for i, t in enumerate(texts))  # input order
    server.state.options.batch_delay_ms = HOUR_MS
    held = client.batches.create(model="mock-gemini", src=src)  # type: ignore[arg-type]
    assert held.name
    client.batches.cancel(name=held.name)
    assert client.batches.get(name=held.name).state == types.JobState.JOB_STATE_CANCELLED


def _last_text(messages: list[dict[str, Any]], key: str = "content") -> str:
    content = messages[-1][key]
    return content if isinstance(content, str) else content[0]["text"]


class DocumentedMessageBatches:
    """Anthropic Message Batches as documented: the batch in_progress, then ended with a
    results_url; results in reverse order; round 1's first line errored (the whole error
    envelope), its second expired, its third errored as the docs' TypeScript sample reads it
    (one level)."""

    def __init__(self) -> None:
        self.batches: dict[str, dict[str, Any]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages/batches", self.create)
        app.router.add_get("/v1/messages/batches/{id}", self.get)
        app.router.add_get("/results/{id}", self.results)
        return app

    async def create(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        batch_id = f"msgbatch_{len(self.batches)}"
        self.batches[batch_id] = {"id": batch_id, "type": "message_batch",
                                  "processing_status": "in_progress", "results_url": None,
                                  "request_counts": {"processing": 1, "succeeded": 0,
                                                     "errored": 0, "canceled": 0,
                                                     "expired": 0}}  # fmt: skip
        return web.json_response(self.batches[batch_id])

    async def get(self, request: web.Request) -> web.Response:
        batch = self.batches[request.match_info["id"]]
        if batch["results_url"] is None and batch.get("polled"):
            base = f"{request.scheme}://{request.host}"
            batch.update(processing_status="ended", results_url=f"{base}/results/{batch['id']}")
        batch["polled"] = True
        return web.json_response({k: v for k, v in batch.items() if k != "polled"})

    async def results(self, request: web.Request) -> web.Response:
        index = int(request.match_info["id"].split("_")[1])
        out = []
        for i, item in enumerate(self.bodies[index]["requests"]):
            result: dict[str, Any]
            if index == 0 and i == 0:
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "Internal server error"}}}  # fmt: skip
            elif index == 0 and i == 1:
                result = {"type": "expired"}
            elif index == 0 and i == 2:
                result = {"type": "errored", "error": {"type": "overloaded_error",
                                                       "message": "Overloaded"}}  # fmt: skip
            else:
                text = "reply to " + _last_text(item["params"]["messages"])
                result = {"type": "succeeded", "message": {
                    "id": f"msg_{i}", "type": "message", "role": "assistant", "model": "m",
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 3}}}  # fmt: skip
            out.append({"custom_id": item["custom_id"], "result": result})
        out.reverse()
        return web.Response(body=b"".join(json.dumps(x).encode() + b"\n" for x in out))


def test_a_raw_server_answers_message_batches_as_documented(tmp_path, serve_app):
    documented = DocumentedMessageBatches()
    served = serve_app(documented.app())
    models = models_text(served, **batch_models(stream=True))
    batched = play(tmp_path, ONE_TURN, targets=["anthropic"], models=models)
    assert batched.result.exit_code == 0, batched.result.output
    replies = {r["vars"]["n"]: r["turns"][0]["assistant"] for r in batched.transcripts}
    assert replies == {n: f"reply to question {n}" for n in "abcd"}  # matched by custom_id
    assert [len(b["requests"]) for b in documented.bodies] == [4, 3]  # three lines again
    for item in documented.bodies[0]["requests"]:
        assert set(item) == {"custom_id", "params"}
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", item["custom_id"])
        assert "stream" not in item["params"] and item["params"]["max_tokens"] >= 1
    assert documented.headers[0]["x-api-key"] and documented.headers[0]["anthropic-version"]
    failed = sorted(str(u["status"]) for u in batched.usage if u["status"] != 200)
    assert failed == ["500", "529", "http"]  # api_error, overloaded_error, expired


class DocumentedGeminiBatches:
    """The Gemini Batch API as documented: an operation named batches/…, polled through
    JOB_STATE_RUNNING (the docs' curl names), then done with `response` (where the docs'
    curl reads it); inline responses in input order without their metadata, round 1's
    second one an error status."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.polls: dict[str, int] = {}
        self.headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{model}:batchGenerateContent", self.create)
        app.router.add_get("/v1beta/batches/{id}", self.get)
        return app

    async def create(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        name = f"batches/b{len(self.bodies) - 1}"
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
                "GenerateContentBatch", "model": "models/m-gem", "state": "BATCH_STATE_PENDING",
                "batchStats": {"requestCount": "1", "pendingRequestCount": "1"}}  # fmt: skip
        return web.json_response({"name": name, "metadata": meta})

    async def get(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        self.polls[batch_id] = self.polls.get(batch_id, 0) + 1
        if self.polls[batch_id] == 1:
            return web.json_response({"name": f"batches/{batch_id}",
                                      "metadata": {"state": "JOB_STATE_RUNNING"}})  # fmt: skip
        index = int(batch_id[1:])
        out = []
        for i, item in enumerate(
            self.bodies[index]["batch"]["input_config"]["requests"]["requests"]
        ):
            if index == 0 and i == 1:
                out.append({"error": {"code": 13, "message": "internal", "status": "INTERNAL"}})
                continue
            text = "reply to " + item["request"]["contents"][-1]["parts"][0]["text"]
            out.append({"response": {"candidates": [{"content": {"parts": [{"text": text}],
                        "role": "model"}, "finishReason": "STOP", "index": 0}],
                        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3,
                                          "totalTokenCount": 8}}})  # fmt: skip
        return web.json_response({
            "name": f"batches/{batch_id}", "done": True,
            "metadata": {"state": "JOB_STATE_SUCCEEDED"},
            "response": {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
                         "GenerateContentBatchOutput",
                         "inlinedResponses": {"inlinedResponses": out}},
        })  # fmt: skip


def test_a_raw_server_answers_gemini_batches_as_documented(tmp_path, serve_app):
    documented = DocumentedGeminiBatches()
    served = serve_app(documented.app())
    models = models_text(served, **batch_models())
    batched = play(tmp_path, ONE_TURN, targets=["gemini"], models=models)
    assert batched.result.exit_code == 0, batched.result.output
    replies = {r["vars"]["n"]: r["turns"][0]["assistant"] for r in batched.transcripts}
    assert replies == {n: f"reply to question {n}" for n in "abcd"}  # by position
    requests = documented.bodies[0]["batch"]["input_config"]["requests"]["requests"]
    assert [set(r) for r in requests] == [{"request", "metadata"}] * 4
    assert len({r["metadata"]["key"] for r in requests}) == 4
    assert len(documented.bodies) == 2  # the failed line once more
    assert documented.headers[0]["x-goog-api-key"]
    assert len([u for u in batched.usage if u["status"] != 200]) == 1


def test_ctrl_c_leaves_batches_running_and_says_how_to_resume(tmp_path, make_mock):
    server = make_mock(batch_delay_ms=HOUR_MS)
    models = models_text(server, **batch_models())
    running = spawn(tmp_path, THREE, targets=["chat"], models=models)
    wait_until(lambda: count_lines(running.run_dir / "batches.jsonl") >= 1, running.proc)
    running.proc.send_signal(signal.SIGINT)
    stopped = running.finish()
    assert stopped.result.exit_code == 130, stopped.result.stderr
    assert "1 batch(es) left running" in stopped.result.stderr
    assert f"--resume {running.run_dir}" in stopped.result.stderr
    assert "--cancel-batches" in stopped.result.stderr
    (listed,) = stopped.manifest["batches"]
    assert listed["ended_at"] is None and listed["lines"] == 3
    assert listed["state"] == "in_progress"  # as last polled
    server.state.options.batch_delay_ms = 0
    resumed = stopped.resume()
    assert resumed.result.exit_code == 0, resumed.result.output
    assert server.state.batches_created == 3 and len(resumed.transcripts) == 3


@pytest.mark.parametrize("target", PROTOCOLS)
def test_a_round_is_split_at_the_providers_line_limit(tmp_path, make_mock, monkeypatch, target):
    from runner.client.providers.anthropic import AnthropicBatch
    from runner.client.providers.gemini import GeminiBatch
    from runner.client.providers.openai_chat import OpenAIBatch

    for wire in (OpenAIBatch, GeminiBatch, AnthropicBatch):
        monkeypatch.setattr(wire, "max_lines", 2)
    server = make_mock()
    direct = play(tmp_path, THREE, targets=[target], models=models_text(server, **FAST))
    models = models_text(server, **batch_models())
    batched = play(tmp_path, THREE, targets=[target], models=models)
    assert batched.result.exit_code == 0, batched.result.output
    rounds = created(batched.run_dir)  # three lines a round, at most two a batch
    assert sorted((b["round"], b["lines"]) for b in rounds) == [
        (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)
    ]  # fmt: skip
    assert turns(batched.transcripts) == turns(direct.transcripts)
