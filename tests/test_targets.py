"""The models file (runner/targets.py): problems name file and line, anchors merge."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.errors import InputError
from runner.targets import load_models


def write_models(tmp_path: Path, text: str) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_models_file_problems_name_file_and_line(tmp_path: Path) -> None:
    path = write_models(
        tmp_path,
        """\
        targets:
          a:
            provider: openai-chat
            model: m
            concurency: 4
          b:
            provider: openai-chat
            model: m
            stream: yes-please
          c:
            provider: open-ai
            model: m
        """,
    )
    with pytest.raises(InputError) as info:
        load_models(path)
    assert info.value.problems == [
        f"{path}:5: unknown key 'concurency' in target 'a'; did you mean 'concurrency'?",
        f"{path}:9: 'stream' of target 'b' must be bool",
        f"{path}:11: unknown provider 'open-ai'; use one of openai-chat, openai-responses, gemini",
    ]


def test_models_file_targets_share_settings_through_merge_keys(tmp_path: Path) -> None:
    path = write_models(
        tmp_path,
        """\
        gateway: &gateway {provider: openai-chat, api_key_env: GW_KEY, concurrency: 4}
        targets:
          a: {<<: *gateway, model: m1, concurrency: 8}
          b: {<<: *gateway, model: m2}
        """,
    )
    a, b = load_models(path).values()
    assert (a.model, a.api_key_env, a.concurrency) == ("m1", "GW_KEY", 8)
    assert (b.model, b.provider, b.concurrency) == ("m2", "openai-chat", 4)
