"""`run --resume` with other options: those that may change are honoured and recorded,
those that would change what the run is are refused (exit 2, naming them); a resume's
--dry-run sends nothing; Ctrl-C says how to resume; tokens/s counts only this resume's."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request

import pytest
from aiohttp import web
from conftest import WAIT_S, Played, cli, holding_one, play, spawn, write_scenario

from runner.mock import MockOptions, make_app

DOLLAR_A_TOKEN = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}
EIGHT = "id: s\nturns: [hi]\nvars: {n: [1, 2, 3, 4, 5, 6, 7, 8]}\n"


def answered(base_url: str) -> int:
    """API requests the mock answered, as its GET /mock/stats says."""
    with urllib.request.urlopen(base_url + "/mock/stats", timeout=WAIT_S) as response:
        return json.loads(response.read())["requests"]


def stopped_early(tmp_path, server):
    """A run of EIGHT that --max-cost stopped after its first conversation (exit 3)."""
    played = play(
        tmp_path, EIGHT, "--max-cost", "0.5", "-c", "1", server=server,
        models={"price": DOLLAR_A_TOKEN},
    )  # fmt: skip
    assert played.result.exit_code == 3, played.result.output
    assert len(played.transcripts) == 1
    return played


def test_a_resume_with_dry_run_sends_nothing_and_shows_what_is_left(tmp_path, make_mock):
    server = make_mock()
    played = stopped_early(tmp_path, server)
    sent, manifest = answered(server.base_url), (played.run_dir / "run.json").read_bytes()
    dry = played.resume("--dry-run", "--max-cost", "1000000", "-c", "16")
    assert dry.result.exit_code == 0, dry.result.output
    assert answered(server.base_url) == sent  # not one request
    assert (played.run_dir / "run.json").read_bytes() == manifest  # the folder is untouched
    assert len(played.transcripts) == 1
    done = played.transcripts[0]["conversation_id"]
    shown = [line[2:] for line in dry.result.stdout.splitlines() if line.startswith("# s[")]
    assert len(shown) == 7 and done not in shown  # the seven a resume would run
    assert "7 of 8 conversations to run" in dry.result.stdout
    (tmp_path / "s.yaml").write_text(EIGHT.replace("[hi]", "[hello]"), encoding="utf-8")
    refused = played.resume("--dry-run")  # a dry run refuses what the resume would refuse
    assert refused.result.exit_code == 2 and "changed since" in refused.result.stderr


class Gate:
    """Holds every request until `wanted` are in flight at once (then none), when armed."""

    def __init__(self, wanted: int):
        self.wanted, self.armed, self.peak, self.inflight = wanted, False, 0, 0
        self.open: asyncio.Event | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if not self.armed:
            return await handler(request)
        self.open = self.open or asyncio.Event()
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        if self.inflight >= self.wanted:
            self.open.set()
        try:  # the timeout is a hang guard only: with the old -c the run would wait here
            await asyncio.wait_for(self.open.wait(), WAIT_S / 4)
        except TimeoutError:
            pass
        finally:
            self.inflight -= 1
        return await handler(request)


def test_a_resume_honours_a_new_concurrency_and_records_it(tmp_path, serve_app):
    gate = Gate(wanted=4)
    app = make_app(MockOptions())
    app.middlewares.append(gate.middleware)
    played = stopped_early(tmp_path, serve_app(app))  # started with -c 1
    gate.armed = True
    same = [tmp_path / "s.yaml", "-m", "chat", "--models", tmp_path / "models.yaml"]  # accepted
    resumed = Played(
        cli("run", *same, "--resume", played.run_dir, "-c", "4", "--max-cost", "1000000",
            "--timeout", "30", "--no-progress", env=played.env),
        played.run_dir,
    )  # fmt: skip
    assert resumed.result.exit_code == 0, resumed.result.output
    assert gate.peak == 4  # four requests at once: only a run at -c 4 sends them
    invocation = resumed.manifest["invocation"]
    assert invocation["concurrency"] == 4 and invocation["max_cost"] == 1000000
    assert invocation["timeout_s"] == 30
    assert len(resumed.transcripts) == 8


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-m", "mock"], "-m/--model mock (the run has chat)"),
        (["--repeat", "2"], "--repeat 2 (the run has none)"),
        (["-k", "other*"], "-k/--filter other* (the run has none)"),
        (["--shard", "1/2"], "--shard 1/2 (the run has none)"),
        (["--judge", "chat"], "--judge chat (the run has none)"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url http://127.0.0.1:9/v1"),
        (["-o", "elsewhere"], "-o/--output-dir (a new run's folder)"),
        (["--run-id", "x"], "--run-id (a new run's folder)"),
        (["OTHER"], "SCENARIOS "),
    ],
)
def test_a_resume_refuses_options_that_change_the_run(tmp_path, make_mock, args, named):
    server = make_mock()
    played = stopped_early(tmp_path, server)
    other = write_scenario(tmp_path / "other.yaml", EIGHT.replace("id: s", "id: other"))
    args = [str(other) if a == "OTHER" else a for a in args]
    sent = answered(server.base_url)
    refused = cli("run", *args, "--resume", played.run_dir, "--max-cost", "1000", env=played.env)
    assert refused.exit_code == 2, refused.output
    assert (
        named in refused.stderr and "--resume continues a run as it was started" in refused.stderr
    )
    assert "Traceback" not in refused.output
    assert answered(server.base_url) == sent and len(played.transcripts) == 1
    assert played.manifest["invocation"]["max_cost"] == 0.5  # nothing of it was kept


def test_ctrl_c_says_how_to_resume(tmp_path, make_mock):
    server = make_mock(**holding_one(within=10, among=1000, latency_ms=10))
    running = spawn(tmp_path, EIGHT.replace("4, 5, 6, 7, 8", "4, 5, 6, 7, 8, 9, 10, 11, 12"),
                    "-c", "4", server=server)  # fmt: skip
    running.wait_for_records(2)
    running.proc.send_signal(signal.SIGINT)
    played = running.finish()
    assert played.result.exit_code == 130
    not_run = played.manifest["counts"]["not_run"]
    assert not_run > 0
    assert (
        f"interrupted: {not_run} conversations were not run; run them with: "
        f"dialogue-runner run --resume {played.run_dir}"
    ) in played.result.stderr


def test_tokens_per_second_after_a_resume_counts_only_its_own_tokens(tmp_path, mock_server):
    played = play(tmp_path, EIGHT, server=mock_server)
    assert played.result.exit_code == 0 and played.manifest["usage"]["total_tokens"] > 0
    again = cli("run", "--resume", played.run_dir, env=played.env)  # progress lines on stderr
    assert again.exit_code == 0, again.output
    assert "0/0 ok=0 failed=0 retries=0 tok/s=0" in again.stderr  # nothing sent: none this time
