"""What `run --resume` may change: the options given with it, checked against the run.

A resume runs the conversations of the run as it was started. Options that only say how
to run them (`-c`, `--timeout`, `--max-retries`, `--max-wait`, `--idle-timeout`,
`--max-cost`, `--stream`) replace the recorded ones, and the manifest records them; options
that say what the run is (scenarios, targets, models file, base URL, `--repeat`, `-k`,
`--shard`, `--judge`) are refused unless they equal the run's, and `-o` / `--run-id`
(a new run's folder) are refused outright.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.errors import InputError
from runner.results.reader import RunRecords
from runner.results.stats import Summary
from runner.spec.plan import parse_shard

# option name (as click names it) -> the Invocation field it sets, for options that may change
MAY_CHANGE = {
    "concurrency": "concurrency",
    "stream": "stream",
    "timeout": "timeout_s",
    "max_retries": "max_retries",
    "max_wait": "max_wait_s",
    "idle_timeout": "idle_timeout_s",
    "max_cost": "max_cost",
    "cache": "cache",
    "cache_only": "cache_only",
}
NEW_RUN = ("output_dir", "run_id")  # they name a new run's folder


def _paths(value: Any) -> list[str]:
    return sorted(os.path.realpath(p) for p in value or ())


def _names(value: Any) -> list[str]:
    return sorted(value or ())


def _file(value: Any) -> str | None:
    return os.path.realpath(value) if value else None


def _same(value: Any) -> Any:
    return value


# options that decide what the run is -> how two values are compared
FIXED: dict[str, Callable[[Any], Any]] = {
    "paths": _paths,
    "targets": _names,
    "models_file": _file,
    "base_url": _same,
    "repeat": _same,
    "filters": _names,
    "shard": parse_shard,
    "judge": _same,
}


@dataclass
class Given:
    """An option of `run` given on the command line: how it is typed, and its value."""

    flag: str  # e.g. "-c", "--timeout", "SCENARIOS"
    value: Any


def changes(recorded: Any, given: dict[str, Given]) -> dict[str, Any]:
    """The Invocation fields a resume changes (those given and different from RECORDED,
    the run's Invocation with its paths as seen from here); InputError naming every option
    given that would change what the run is."""
    refused = [f"{g.flag} (a new run's folder)" for name, g in given.items() if name in NEW_RUN]
    for name, key in FIXED.items():
        if name in given and key(given[name].value) != key(getattr(recorded, name)):
            refused.append(
                f"{given[name].flag} {_shown(given[name].value)} "
                f"(the run has {_shown(getattr(recorded, name))})"
            )
    if refused:
        raise InputError(
            [
                "--resume continues a run as it was started; these options would change "
                "what it runs (leave them out, or start a new run):",
                *refused,
                "(a resume may change -c, --stream, --timeout, --max-retries, --max-wait, "
                "--idle-timeout, --max-cost and the --cache options)",
            ]
        )
    wanted = {MAY_CHANGE[n]: g.value for n, g in given.items() if n in MAY_CHANGE}
    return {k: v for k, v in wanted.items() if getattr(recorded, k) != v}


def _shown(value: Any) -> str:
    if value is None or value == [] or value == ():
        return "none"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def recorded_ids(
    records: RunRecords, retry_failed: bool, summary: Summary | None = None
) -> set[str]:
    """The conversations a resume skips: every one recorded (only the ok ones with
    RETRY_FAILED), each added to SUMMARY when given; streamed, only the ids are kept."""
    skip = set()
    for _, record in records.newest():
        if record["status"] == "ok" or not retry_failed:
            skip.add(record["conversation_id"])
            if summary is not None:
                summary.add(record)
    return skip
