"""Shared fixtures: a real mock server on a loopback port, and the CLI run in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.mock import MockOptions, MockServer, MockThread

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
        thread.stop()


def write_models(path: Path, base_url: str, **extra: Any) -> Path:
    """A models file with one target per protocol, all pointing at one mock server."""
    common = {"api_key_env": "TEST_API_KEY", "max_wait_s": 0.2, **extra}
    targets = {
        "chat": {"provider": "openai-chat", "base_url": base_url + "/v1", "model": "m-chat"},
        "responses": {
            "provider": "openai-responses",
            "base_url": base_url + "/v1",
            "model": "m-resp",
        },
        "gemini": {"provider": "gemini", "base_url": base_url, "model": "m-gem"},
    }
    for target in targets.values():
        target.update(common)
    path.write_text(json.dumps({"targets": targets}), encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    env = {"TEST_API_KEY": "test-key-123", **(env or {})}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_scenario(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
