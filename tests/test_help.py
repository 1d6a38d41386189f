"""--help of every command: a description of every option, examples at the end, and the
command lists showing whole summaries."""

from __future__ import annotations

import click
import pytest
from conftest import cli

from runner.cli import main


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def flat(text: str) -> str:
    """The words, however wrapped (click breaks lines after a hyphen too)."""
    return " ".join(text.split()).replace("- ", "-")


@pytest.mark.parametrize("path", commands(main), ids=lambda p: " ".join(p) or "top")
def test_every_option_is_described_and_examples_end_the_help(path):
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.output
    shown = flat(result.stdout)
    for param in command_at(path).params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            assert param.help, f"{param.opts} has no description"
            assert flat(param.help) in shown, param.opts
    examples = result.stdout.split("Examples:\n", 1)[1].splitlines()
    invoked = " ".join(("dialogue-runner", *path))
    assert examples and all(line.startswith("  dialogue-runner ") for line in examples)
    assert any(line.strip().startswith(invoked) for line in examples)


@pytest.mark.parametrize(
    "path", [p for p in commands(main) if isinstance(command_at(p), click.Group)]
)
def test_command_lists_show_whole_summaries(path):
    result = cli(*path, "--help")
    listed = flat(result.stdout.split("Commands:", 1)[1].split("Examples:", 1)[0])
    assert "..." not in listed
    for name, command in command_at(path).commands.items():
        summary = flat((command.help or "").split("\n\n")[0])
        assert f"{name} {summary}" in listed
