"""`run --executor ray` on a real local Ray instance: one instance for the module (started
here, with the key in its environment as `ray start` on a node would have it), which runs
join; two runs start their own, to show that no Ray process outlives them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runner.engine.reaper import descendants
from tests.conftest import KEY, WAIT_S, Played, cli, play, spawn, wait_until

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

ROOT = Path(__file__).resolve().parent.parent
VARIED = """
scenarios:
  - id: greet
    system: Be brief.
    turns: ["hello {{name}}", "again", {assistant: scripted}, "last one"]
    vars: {name: [ann, bob, cy, dee, eve]}
    repeat: 3
  - id: plain
    turns: [one, {user: two, expect: {contains: mock, judge: 'says "mock"'}}]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance for the module, its workers' environment holding the key; its
    address (runs in child processes join it)."""
    before = os.environ.get("TEST_API_KEY")
    os.environ["TEST_API_KEY"] = KEY
    ray.init(num_cpus=2, object_store_memory=96 * 2**20, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.pop("TEST_API_KEY")
        if before is not None:
            os.environ["TEST_API_KEY"] = before


def _essence(record: dict[str, Any]) -> tuple[Any, ...]:
    """What a transcript says, without its times."""
    turns = [(t["user"], t["assistant"], t["usage"], t["checks"]) for t in record["turns"]]
    return (record["status"], record["messages"], turns, record["seed"], record["passed"])


def _files_holding(folder: Path, text: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text in p.read_bytes()]


def test_same_ids_and_transcripts_as_a_local_run_and_the_key_is_nowhere(
    tmp_path, cluster, make_mock
):
    server = make_mock(require_key=KEY)
    targets = ("chat", "mock-anthropic")
    judge = ("--judge", "mock-gemini")  # judged in the workers, by their own judge clients
    local = play(tmp_path, VARIED, *judge, server=server, targets=targets, run_id="local")
    spread = play(tmp_path, VARIED, *judge, "--executor", "ray", "--workers", "2",
                  server=server, targets=targets, run_id="ray")  # fmt: skip
    assert local.result.exit_code == spread.result.exit_code == 0, spread.result.output
    mine = {r["conversation_id"]: _essence(r) for r in local.transcripts}
    theirs = {r["conversation_id"]: _essence(r) for r in spread.transcripts}
    assert len(mine) == len(spread.transcripts) == 2 * (5 * 3 + 1)
    assert theirs == mine
    assert {r["run_id"] for r in spread.transcripts + spread.usage} == {"ray"}
    assert len(spread.usage) == len(local.usage)
    judged = [r for r in spread.usage if r.get("judge")]
    assert len(judged) == 2 and {r["target"] for r in judged} == {"mock-gemini"}
    assert "executor: ray, 2 workers" in spread.result.stderr
    assert spread.manifest["executor"]["workers"] == 2
    assert cli("diff", local.run_dir, spread.run_dir).exit_code == 0  # the gate sees no change
    chat = [r for r in local.usage if r["target"] == "chat"]
    assert len(server.requests) == 2 * len(chat)  # the same requests as locally, none more
    assert not _files_holding(tmp_path, KEY.encode())
    assert not _files_holding(Path(ray._private.worker._global_node.get_session_dir_path()),
                              KEY.encode())  # fmt: skip


def test_simulated_users_captures_and_tools_play_as_locally(tmp_path, cluster):
    """refund_sim (a capture, then a simulated user: a helper target the workers make
    clients of, like judges) and tools_weather (tool calls, an image) through two workers."""
    folder = tmp_path / "scenarios"
    folder.mkdir()
    for name in ("refund_sim.yaml", "tools_weather.yaml"):
        (folder / name).write_bytes((ROOT / "scenarios" / name).read_bytes())
    targets = ("mock-responses", "mock-anthropic")  # the simulated user (mock) is a helper
    local = play(tmp_path, folder, "--repeat", "2", targets=targets, run_id="local")
    spread = play(tmp_path, folder, "--repeat", "2", "--executor", "ray", "--workers", "2",
                  targets=targets, run_id="ray")  # fmt: skip
    assert local.result.exit_code == spread.result.exit_code == 0, spread.result.output
    mine = {r["conversation_id"]: _essence(r) for r in local.transcripts}
    theirs = {r["conversation_id"]: _essence(r) for r in spread.transcripts}
    assert len(mine) == len(spread.transcripts) == 2 * 2 * 2
    assert theirs == mine
    simulated = [r for r in spread.usage if r.get("role") == "simulated_user"]
    assert {r["target"] for r in simulated} == {"mock"}
    assert len(simulated) == sum(r.get("role") == "simulated_user" for r in local.usage)
    assert any(t.get("simulated") for r in spread.transcripts for t in r["turns"])
    captured = {
        c["code"] for r in spread.transcripts for t in r["turns"] if (c := t.get("captures"))
    }
    assert captured == {"BK-4711"}
    assert sorted(map(_roles, spread.usage)) == sorted(map(_roles, local.usage))


def _roles(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["conversation_id"], record["target"], record.get("role") or ""


BATCHED = (
    "targets:\n  b:\n    provider: openai-chat\n    model: m\n"
    "    base_url: http://127.0.0.1:9/v1\n    api_key_env: TEST_API_KEY\n    batch: true\n"
)


@pytest.mark.parametrize(
    ("args", "targets", "models", "named"),
    [(("--batch",), ("mock",), None, "mock"), ((), ("b",), BATCHED, "b")],
    ids=["--batch", "batch: true"],
)
def test_batch_mode_is_refused_at_start(tmp_path, args, targets, models, named):
    played = play(tmp_path, "id: s\nturns: [hi]\n", *args, "--executor", "ray",
                  targets=targets, models=models)  # fmt: skip
    assert played.result.exit_code == 2, played.result.output
    assert f"--executor ray cannot run batch mode (--batch, or `batch: true` of target {named})" \
        in played.result.stderr  # fmt: skip
    assert "a batch round gathers" in played.result.stderr
    assert not list(played.run_dir.glob("*"))  # refused before run.json, let alone a request


class _Counting:
    """An OpenAI Chat server that counts requests in flight and when each arrived."""

    def __init__(self) -> None:
        self.in_flight = self.most = 0
        self.arrivals: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.arrivals.append(time.monotonic())
        try:
            await asyncio.sleep(0.1)
        finally:
            self.in_flight -= 1
        return web.json_response({
            "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })  # fmt: skip

    def busiest_second(self) -> int:
        times = sorted(self.arrivals)
        return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


def test_limits_hold_for_the_whole_run_across_workers(tmp_path, cluster, serve_app):
    counting = _Counting()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", counting.handle)
    served = serve_app(app)
    models = (
        "targets:\n  limited:\n    provider: openai-chat\n    model: m\n"
        f"    base_url: {served.base_url}/v1\n    api_key_env: TEST_API_KEY\n"
        "    concurrency: 4\n    rpm: 1200\n"
    )
    scenario = "id: s\nturns: ['{{n}}']\nvars: {n: " + str(list(range(60))) + "}\n"
    played = play(tmp_path, scenario, "--executor", "ray", "--workers", "2", "-c", "32",
                  models=models, targets=("limited",))  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert len(counting.arrivals) == 60
    # concurrency 4 for the run: 2 per worker (each alone would take 4, 8 together)
    assert counting.most <= 4
    # rpm 1200 is 20 a second, a second's burst: each worker's bucket of 10 refilled at 10/s
    # admits at most 20 in any second, 40 together (the whole 60 at once without the split)
    assert counting.busiest_second() <= 40
    one = models.replace("concurrency: 4", "concurrency: 1")
    refused = play(tmp_path, scenario, "--executor", "ray", "--workers", "2", models=one,
                   targets=("limited",))  # fmt: skip
    assert refused.result.exit_code == 2
    assert "target 'limited' has concurrency 1, fewer than the 2 workers" in refused.result.stderr
    # a key only the driver has: the workers read their own environment, and stop the run
    driverside = models.replace("TEST_API_KEY", "ONLY_THE_DRIVER_HAS_IT")
    unkeyed = play(tmp_path, scenario, "--executor", "ray", "--workers", "2", models=driverside,
                   targets=("limited",), env={"ONLY_THE_DRIVER_HAS_IT": KEY})  # fmt: skip
    assert unkeyed.result.exit_code == 2
    assert "ONLY_THE_DRIVER_HAS_IT, which is not set" in unkeyed.result.stderr
    assert len(counting.arrivals) == 60  # nothing more was sent


def _alive(seen: list[tuple[int, str]]) -> list[int]:
    """The processes of SEEN still running (the same ones: same start time)."""
    alive = []
    for pid, start in seen:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2 :].split()[19] == start:
            alive.append(pid)
    return alive


def _ray_processes(pid: int) -> list[tuple[int, str]]:
    """The Ray processes below a driver, once its instance runs its workers."""
    seen: list[tuple[int, str]] = []

    def workers_up() -> bool:
        seen[:] = descendants(pid)
        titles = [Path(f"/proc/{p}/cmdline").read_bytes() for p, _ in seen if _alive([(p, _)])]
        return sum(b"PartWorker" in t for t in titles) == 2 and any(b"raylet" in t for t in titles)

    wait_until(workers_up)
    return seen


def _gone(seen: list[tuple[int, str]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(seen), [Path(f"/proc/{p}/cmdline").read_bytes() for p in _alive(seen)]


SLOW = "id: t\nturns: ['{{n}}: one', two]\nvars:\n  n: " + str(list(range(60))) + "\n"


def _signalled(tmp_path: Path, server: Any, sig: int, records: int, concurrency: int
               ) -> tuple[Played, list[tuple[int, str]]]:  # fmt: skip
    """SLOW through two workers, sent SIG once RECORDS are written: how it ended, and the
    Ray processes it had then."""
    running = spawn(tmp_path, SLOW, "--executor", "ray", "--workers", "2", "-c",
                    str(concurrency), server=server)  # fmt: skip
    running.wait_for_records(records)
    seen = _ray_processes(running.proc.pid)
    running.proc.send_signal(sig)
    return running.finish(), seen


def test_killed_driver_leaves_no_ray_process_and_resume_completes(tmp_path, cluster, make_mock):
    killed, seen = _signalled(tmp_path, make_mock(latency_ms=100), signal.SIGKILL, 4, 8)
    assert killed.result.exit_code == -signal.SIGKILL
    assert 4 <= len(killed.transcripts) < 60
    _gone(seen)
    # the resume joins the module's instance from a process of its own, as a driver does
    resumed = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--resume", str(killed.run_dir), "--no-progress",
         "--executor", "ray", "--ray-address", cluster, "-c", "30"],
        capture_output=True, text=True, timeout=WAIT_S,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_API_KEY": KEY},
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["conversation_id"] for r in killed.transcripts]
    assert sorted(ids) == sorted({f"t[{_digest(n)}]@chat" for n in range(60)}) == sorted(set(ids))


def test_ctrl_c_stops_the_workers_exits_130_and_no_ray_process_stays(tmp_path, cluster, make_mock):
    stopped, seen = _signalled(tmp_path, make_mock(latency_ms=100), signal.SIGINT, 2, 4)
    assert stopped.result.exit_code == 130, stopped.result.stderr
    assert "dialogue-runner run --resume" in stopped.result.stderr
    assert stopped.manifest["status"] == "interrupted"
    first = len(stopped.transcripts)
    assert 2 <= first < 60
    _gone(seen)
    again = stopped.resume(
        "--executor", "ray", "--ray-address", cluster, "-c", "30"
    )  # joins, in-process
    assert again.result.exit_code == 0, again.result.output
    ids = [r["conversation_id"] for r in stopped.transcripts]
    assert len(ids) == len(set(ids)) == 60


def test_the_key_never_reached_rays_session_folder(cluster):
    """Runs after the others (pytest keeps file order): Ray's whole session folder, logs
    and all, as the module's instance left it."""
    # the instance is still up here; the folder is read as it is at the module's last test
    folder = Path(ray._private.worker._global_node.get_session_dir_path())
    assert any(folder.rglob("*.log")) or any(folder.rglob("*.out"))
    assert not _files_holding(folder, KEY.encode())


def _digest(n: int) -> str:
    return hashlib.sha1(json.dumps({"n": n}).encode()).hexdigest()[:10]


def test_a_vars_file_a_node_lacks_travels_with_the_work(tmp_path, cluster):
    from runner.engine.cluster_part import Part, tables
    from runner.spec.scenarios import load_file

    table = tmp_path / "people.csv"
    table.write_text("name\nann\nbob\n", encoding="utf-8")
    scenario = tmp_path / "s.yaml"
    scenario.write_text('id: s\nturns: ["hi {{name}}"]\nvars_file: people.csv\n')
    loaded = load_file(str(scenario))
    carried = tables(ray, loaded)
    part = Part(1, 1, loaded, [], None, None, [], None, [], None, False, 1, None, carried)
    table.unlink()  # as on a node without the driver's folder
    here = tmp_path / "node"
    here.mkdir()
    plan = part.plan(here)
    [copied] = here.iterdir()
    assert copied.read_text(encoding="utf-8") == "name\nann\nbob\n"
    assert [s.vars_file.path for s in plan.scenarios] == [str(copied)]
    assert [next(s.var_combinations()) for s in plan.scenarios] == [{"name": "ann"}]


def test_an_address_nobody_answers_is_refused_at_once():
    from runner.engine.cluster import _reachable
    from runner.errors import InputError

    with pytest.raises(InputError, match=r"--ray-address 127.0.0.1:1: cannot connect"):
        _reachable("127.0.0.1:1")
    _reachable("auto")  # Ray's own: found by Ray
