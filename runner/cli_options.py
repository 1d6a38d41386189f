"""Option types and option groups of the command line (runner/cli.py uses them): numbers
within their ranges, and the `run` options of batch mode and of `--executor ray`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from runner.spec.ranges import MOCK, WORKERS, Range

F = TypeVar("F", bound=Callable[..., Any])


class Number(click.ParamType):
    """A number within a range (runner/spec/ranges.py), finite: nan and inf are refused (exit 2)."""

    def __init__(self, allowed: Range):
        self.allowed = allowed
        self.name = "integer" if allowed.integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = value if isinstance(value, int | float) else float(value)
            if self.allowed.integer and float(number).is_integer():
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not self.allowed.holds(number):
            self.fail(f"{value} is not {self.allowed.text()}", param, ctx)
        return number


def mock_number(option: str) -> Number:
    """The type of a mock server option: the range a models file's `mock:` takes too."""
    return Number(MOCK[option])


def _grouped(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """One decorator for OPTIONS, shown in --help in their order."""

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


batch_options = _grouped(
    [
        click.option(
            "--batch",
            is_flag=True,
            help="Send turns in rounds through the Batch API of every target whose provider "
            "has one (half price; each round may take hours; not with --executor ray).",
        ),
        click.option(
            "--cancel-batches",
            is_flag=True,
            help="With --resume: cancel the run's batches still out and send their requests "
            "again in new rounds.",
        ),
    ]
)

executor_options = _grouped(
    [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="Where conversations are played: here, or by Ray workers (the ray extra).",
        ),
        click.option(
            "--workers",
            type=Number(WORKERS),
            help="With --executor ray: how many workers (default: one per CPU of the Ray cluster).",
        ),
        click.option(
            "--ray-address",
            metavar="ADDR",
            help="With --executor ray: join this cluster (auto, HOST:PORT, ray://HOST:10001); "
            "default: start one for the run.",
        ),
    ]
)
