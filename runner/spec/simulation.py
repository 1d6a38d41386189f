"""`simulate:`: a second target plays the user after (or instead of) the scripted turns; how it
is read from YAML (runner/engine/simulate.py plays it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from yaml.nodes import MappingNode, Node

from runner.errors import at
from runner.spec.expects import text
from runner.spec.ranges import Range
from runner.spec.variables import ScenarioReader
from runner.spec.yamlnodes import Bad, checked, node_line, string

MAX_TURNS = Range(1, 1000, integer=True)
SIMULATE_KEYS = ("user", "persona", "max_turns", "stop")


@dataclass(frozen=True, slots=True)
class Simulate:
    """The simulated user: its target, its persona (its system prompt), how many turns it
    may write, and the marker with which it ends the conversation (None: only max_turns)."""

    user: str
    persona: str
    max_turns: int
    stop: str | None = None
    line: int = 0


def read_simulate(r: ScenarioReader, node: Node, key: str) -> Simulate:
    """{user: TARGET, persona: TEXT, max_turns: N, stop: MARKER}."""
    if not isinstance(node, MappingNode):
        raise Bad(node, f"'simulate' must be a mapping ({', '.join(SIMULATE_KEYS)}), "
                        f"got {r.shown(node)}")  # fmt: skip
    entries = r.entries(node, "simulate", SIMULATE_KEYS)
    missing = [k for k in ("user", "persona", "max_turns") if k not in entries]
    if missing:
        raise Bad(node, f"'simulate' needs {', '.join(missing)} (the target that plays the "
                        "user, its persona, how many turns it may write)")  # fmt: skip
    v = r.fields(entries, FIELDS)
    if len(v) < len(entries):  # a value was reported
        return Simulate("", "", 1, line=node_line(node))
    if v.get("stop") == "":
        raise Bad(entries["stop"][1], "'stop' must not be empty")
    return Simulate(v["user"], v["persona"], v["max_turns"], v.get("stop"), node_line(node))


def _max_turns(r: ScenarioReader, node: Node, key: str) -> int:
    return checked(r, node, key, MAX_TURNS.text(), MAX_TURNS.holds)


FIELDS = {"user": string, "persona": text, "max_turns": _max_turns, "stop": string}


def simulator_names(scenarios: Iterable[Any]) -> dict[str, str]:
    """The targets that play the user in SCENARIOS, each with where it is first named."""
    names: dict[str, str] = {}
    for s in scenarios:
        if s.simulate is not None:
            names.setdefault(s.simulate.user, at(s.file, s.simulate.line, "simulate.user"))
    return names
