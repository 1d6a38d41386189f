"""Shared helpers: real mock servers on loopback ports, and the CLI played against them.

`play` runs a scenario through the CLI in-process and hands back the exit result and the
records; `spawn` does the same in a child process, for tests that send it signals.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from runner.cli import main
from runner.mock import MockOptions, MockServer, MockThread

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-123"
HOUR_MS = 3_600_000  # a mock request delayed this long is held for the whole test
WAIT_S = 60  # a hang guard only: every wait ends on an event long before this

# a scripted conversation with a system prompt and a scripted assistant turn; CONTEXT is replaced
CHAIN = """
id: chain
system: Be brief.
context: CONTEXT
turns:
  - first question
  - assistant: a scripted answer
  - second question
  - third question
"""


# no test may depend on speed: on a loaded machine an example may take any time, so no
# Hypothesis test has a deadline or the health check that fails slow data generation
settings.register_profile("no-speed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("no-speed")


# ---------------------------------------------------------------- servers


@pytest.fixture
def mock_server() -> Iterator[MockServer]:
    with MockThread(MockOptions(record=True)) as server:
        yield server


@pytest.fixture
def make_mock() -> Iterator[Any]:
    """A factory for mock servers with fault options; all are closed afterwards."""
    made: list[MockThread] = []

    def make(**options: Any) -> MockServer:
        made.append(MockThread(MockOptions(record=True, **options)))
        return made[-1].start()

    yield make
    for thread in made:
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), thread.loop).result(WAIT_S)
        thread.stop()


async def _cancel_the_rest() -> None:
    """Cancel every task of this loop but the caller: requests the mock still holds end now."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@dataclass
class Served:
    base_url: str


@pytest.fixture
def serve_app() -> Iterator[Callable[[web.Application], Served]]:
    """Serve any aiohttp app on a loopback port from its own thread; all are closed afterwards."""
    started: list[tuple[asyncio.AbstractEventLoop, threading.Thread, web.AppRunner]] = []

    def serve(app: web.Application) -> Served:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        async def up() -> web.AppRunner:
            app_runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await app_runner.setup()
            await web.TCPSite(app_runner, "127.0.0.1", 0).start()
            return app_runner

        app_runner = asyncio.run_coroutine_threadsafe(up(), loop).result(WAIT_S)
        started.append((loop, thread, app_runner))
        return Served(f"http://127.0.0.1:{app_runner.addresses[0][1]}")

    yield serve
    for loop, thread, app_runner in started:
        asyncio.run_coroutine_threadsafe(app_runner.cleanup(), loop).result(WAIT_S)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(WAIT_S)  # held ones
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


@dataclass
class RawRequest:
    """What a raw server was sent: the request line's path, headers (lower-case) and body."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RawServer:
    """A loopback server that answers with exactly the bytes `respond(request)` returns."""

    base_url: str
    requests: list[RawRequest] = field(default_factory=list)


STALL = None  # a piece of a raw answer: keep the connection open, send nothing more


def raw_response(
    body: bytes | str, status: str = "200 OK", headers: dict[str, str] | None = None
) -> bytes:
    """An HTTP/1.1 answer as bytes: the body as given, with Content-Length unless the headers
    say otherwise (give "Content-Length" or "Transfer-Encoding" yourself to lie or chunk)."""
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    head = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    if not {"content-length", "transfer-encoding"} & {k.lower() for k in head}:
        head["Content-Length"] = str(len(data))
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1") + data


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[RawRequest], Any]], RawServer]]:
    """Serve arbitrary raw bytes and headers on a loopback port, one thread per server.

    respond(request) returns bytes, or a list of bytes and STALL pieces sent in order (STALL
    holds the connection open until the test ends); the connection is closed after it."""
    started: list[tuple[asyncio.AbstractEventLoop, threading.Thread, asyncio.Server]] = []

    def serve(respond: Callable[[RawRequest], Any]) -> RawServer:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        server = RawServer("")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = RawRequest(lines[0].split(" ")[1], headers, body)
                server.requests.append(request)
                answer = respond(request)
                for piece in answer if isinstance(answer, list) else [answer]:
                    if piece is STALL:
                        await asyncio.Event().wait()
                    writer.write(piece)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        async def up() -> asyncio.Server:
            return await asyncio.start_server(handle, "127.0.0.1", 0)

        listening = asyncio.run_coroutine_threadsafe(up(), loop).result(WAIT_S)
        started.append((loop, thread, listening))
        server.base_url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        return server

    yield serve
    for loop, thread, listening in started:
        loop.call_soon_threadsafe(listening.close)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


def held_requests(among: int, **options: Any) -> list[int]:
    """Which of a mock's first `among` requests (0-based, in arrival order) it holds an hour.

    The mock draws its faults from a seeded RNG, one request after another: these options
    (seed, slow_rate, slow_ms=HOUR_MS, ...) decide, before anything runs, which are held.
    """
    from runner.mock.state import MockState

    state = MockState(MockOptions(**options))
    return [i for i in range(among) if state.plan().delay * 1000 >= HOUR_MS]


def seed_holding(accept: Callable[[list[int]], bool], among: int, **options: Any) -> int:
    """The first seed with which the mock's held requests among its first `among` suit `accept`."""
    for seed in itertools.count():
        if accept(held_requests(among, seed=seed, **options)):
            return seed
    raise AssertionError("unreachable")


def holding_one(within: int, among: int, **options: Any) -> dict[str, Any]:
    """Mock options that hold exactly one of the first `among` requests: one of the first `within`.

    A run then cannot finish by itself once it has sent `within` requests, and no later request
    is ever held (`among` covers the run and its resumes).
    """
    hold = {**options, "slow_rate": 1 / among, "slow_ms": HOUR_MS}
    for seed in itertools.count():  # the cheap test first: one held among the first `within`
        if (
            len(held_requests(within, seed=seed, **hold)) == 1
            and len(held_requests(among, seed=seed, **hold)) == 1
        ):
            return {**hold, "seed": seed}
    raise AssertionError("unreachable")


def chat_completion(number: int, model: str, content: str | None) -> dict[str, Any]:
    """A chat.completion object exactly as OpenAI documents it (non-streamed)."""
    return {
        "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 1, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }  # fmt: skip


def chat_models(base_url: str, *names: str) -> str:
    """A models file's text: one openai-chat target per name, all at the server."""
    return "targets:\n" + "".join(
        f"  {name}:\n    provider: openai-chat\n    model: {name}-model\n"
        f"    base_url: {base_url}/v1\n    api_key_env: TEST_API_KEY\n    max_retries: 1\n"
        f"    max_wait_s: 0.01\n"
        for name in names
    )


# ---------------------------------------------------------------- files


def write_models(path: Path, base_url: str, **extra: Any) -> Path:
    """A models file with one target per protocol, all pointing at one mock server; `auth`
    goes to the gemini target only (the OpenAI protocols take bearer alone)."""
    auth = extra.pop("auth", None)
    common = {"api_key_env": "TEST_API_KEY", "max_wait_s": 0.2, **extra}
    targets = {
        "chat": {"provider": "openai-chat", "base_url": base_url + "/v1", "model": "m-chat"},
        "responses": {
            "provider": "openai-responses",
            "base_url": base_url + "/v1",
            "model": "m-resp",
        },
        "gemini": {"provider": "gemini", "base_url": base_url, "model": "m-gem"},
        "anthropic": {"provider": "anthropic", "base_url": base_url, "model": "m-claude"},
    }
    for target in targets.values():
        target.update(common)
    if auth is not None:
        targets["gemini"]["auth"] = auth
    path.write_text(json.dumps({"targets": targets}), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def count_lines(path: Path) -> int:
    """Complete lines of a file another process may be writing (0 when it does not exist)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def write_scenario(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the CLI


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the CLI in-process; returns click's Result (exit_code, output, stdout, stderr)."""
    env = {"TEST_API_KEY": KEY, **(env or {})}
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


@dataclass
class Played:
    """A run: how the command ended, and its folder; the records are read when asked for."""

    result: Any  # click's Result, or Exited for a child process
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def transcripts(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "transcripts.jsonl")

    @property
    def usage(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "usage.jsonl")

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "run.json").read_text(encoding="utf-8"))

    def resume(self, *args: str) -> Played:
        """`run --resume` this run (in-process), with the environment it was started with."""
        result = cli("run", "--resume", self.run_dir, "--no-progress", *args, env=self.env)
        return Played(result, self.run_dir, self.env)

    def report(self, fmt: str = "table") -> Any:
        return cli("report", self.run_dir, "--format", fmt)


def _prepare(
    tmp_path: Path,
    scenario: str | Path,
    cli_args: Sequence[str],
    server: Any = None,
    targets: Sequence[str] = ("chat",),
    models: dict[str, Any] | str | None = None,
    run_id: str | None = None,
    name: str = "s.yaml",
) -> tuple[list[str], Path]:
    """Write the scenario and models files; the `run` arguments and the run folder."""
    path = scenario if isinstance(scenario, Path) else write_scenario(tmp_path / name, scenario)
    args = ["run", str(path)]
    for target in targets:
        args += ["-m", target]
    if isinstance(models, str):
        models_file = tmp_path / "models.yaml"
        models_file.write_text(models, encoding="utf-8")
        args += ["--models", str(models_file)]
    elif server is not None:
        models_file = write_models(tmp_path / "models.yaml", server.base_url, **(models or {}))
        args += ["--models", str(models_file)]
    out = tmp_path / "runs"
    run_id = run_id or f"run{len(list(out.iterdir())) if out.exists() else 0}"
    args += ["-o", str(out), "--run-id", run_id, "--no-progress", *cli_args]
    return args, out / run_id


def play(
    tmp_path: Path,
    scenario: str | Path,
    *cli_args: str,
    server: Any = None,
    targets: Sequence[str] = ("chat",),
    models: dict[str, Any] | str | None = None,
    run_id: str | None = None,
    name: str = "s.yaml",
    env: dict[str, str] | None = None,
) -> Played:
    """Run a scenario through the CLI, in-process, and return how it ended and its records.

    scenario: YAML text (written to tmp_path/name), or the Path of a scenario file or folder.
    server: anything with a base_url; the models file then points every target at it, with
    `models` (a dict) as extra target fields. models as a str: the models file's whole text.
    Without either, no models file is given (built-in targets). Runs go to tmp_path/runs.
    """
    args, run_dir = _prepare(tmp_path, scenario, cli_args, server, targets, models, run_id, name)
    env = {"TEST_API_KEY": KEY, **(env or {})}
    return Played(cli(*args, env=env), run_dir, env)


@dataclass
class Exited:
    """How a child process ended, shaped like click's Result."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Spawned:
    """A run in a child process: send it signals, then finish() it."""

    proc: subprocess.Popen
    run_dir: Path
    env: dict[str, str]

    def written(self) -> int:
        """Transcript records written so far."""
        return count_lines(self.run_dir / "transcripts.jsonl")

    def wait_for_records(self, at_least: int) -> None:
        wait_until(lambda: self.written() >= at_least, self.proc)

    def finish(self) -> Played:
        """Wait for the process to end (killing it if it hangs) and return the run."""
        try:
            stdout, stderr = self.proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            raise AssertionError(f"the run did not end:\n{stderr}") from None
        return Played(Exited(self.proc.returncode, stdout, stderr), self.run_dir, self.env)


def spawn(
    tmp_path: Path, scenario: str | Path, *cli_args: str, preamble: str = "", **where: Any
) -> Spawned:
    """Like play (the same keywords but env), in a child process: `python -m runner`, or
    `preamble` (Python code) and then the CLI."""
    args, run_dir = _prepare(tmp_path, scenario, cli_args, **where)
    env = {"TEST_API_KEY": KEY}
    code = (
        ["-c", f"{preamble}\nfrom runner.cli import main\nmain()"] if preamble else ["-m", "runner"]
    )
    proc = subprocess.Popen(
        [sys.executable, *code, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Spawned(proc, run_dir, env)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen | None = None) -> None:
    """Wait for a condition another thread or process brings about (a hang fails the test)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc is not None and proc.poll() is not None:
            _, stderr = proc.communicate()
            raise AssertionError(f"the process ended first ({proc.returncode}): {stderr}")
        if time.monotonic() > deadline:
            raise AssertionError("the condition never came true")
        time.sleep(0.005)


TIMEOUT_S = 10  # an SDK client's timeout against the mock


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    """One mock server on a background loop for a whole module (the SDK fidelity tests;
    a module may define its own)."""
    with MockThread(MockOptions()) as srv:
        yield srv


@pytest.fixture
def oai(server: MockServer) -> Iterator[Any]:
    """The official openai SDK's client against `server`, with no retries of its own."""
    import openai

    client = openai.OpenAI(
        base_url=server.base_url + "/v1", api_key="k", max_retries=0, timeout=TIMEOUT_S
    )
    yield client
    client.close()
