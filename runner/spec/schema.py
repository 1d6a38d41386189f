"""The scenario schema: Scenario, Turn and Context, and how each is read from YAML nodes
(the checks' schema, Expect and Judge, is in runner.spec.expects)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.spec.captures import Capture, Uses, captured_names, check_captures, read_captures
from runner.spec.expects import Expect, fraction, read_expect, regex_problem, strings, text
from runner.spec.rows import RowsFile, open_table
from runner.spec.simulation import Simulate, read_simulate
from runner.spec.variables import (
    TEMPLATE,
    ScenarioReader,
    Vars,
    check_templates,
    fill,
    read_vars,
    var_combinations,
    var_count,
    var_names,
)
from runner.spec.yamlnodes import (
    NULL_TAG,
    Bad,
    Pair,
    Parser,
    Reader,
    boolean,
    json_mapping,
    mapping_keys,
    node_line,
    positive_int,
    show,
    string,
)


@dataclass(frozen=True, slots=True)
class Full:
    """Each turn sends the whole history (the default)."""


@dataclass(frozen=True, slots=True)
class Window:
    """Each turn sends only the last N messages (the system prompt apart)."""

    n: int


@dataclass(frozen=True, slots=True)
class Server:
    """The server keeps the history: each turn sends what is new and chains to the last reply."""


Context = Full | Window | Server  # what each turn sends: `context: full | {window: N} | server`


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted turn: a user message to send, or a fixed assistant reply."""

    role: str  # "user" | "assistant"
    content: str
    expect: Expect | None = None
    params: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    capture: tuple[Capture, ...] = ()  # values taken from the reply for later turns


@dataclass(frozen=True, slots=True)
class Scenario:
    """One validated scenario: its turns, settings, vars, and where it was defined."""

    id: str
    turns: tuple[Turn, ...]
    file: str
    line: int
    description: str = ""
    tags: tuple[str, ...] = ()
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    context: Context = Full()
    vars: Vars = field(default_factory=dict)
    vars_file: RowsFile | None = None  # one conversation per row, crossed with vars
    repeat: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)  # carried into the records
    min_pass_rate: float | None = None  # passes when this share of samples pass (verdicts.py)
    cache: bool | None = None  # prompt cache marks (None: as the target says)
    simulate: Simulate | None = None  # a target plays the user after the scripted turns
    expect_final: Expect | None = None  # checks on the conversation's last reply

    def var_count(self) -> int:
        """Number of var combinations (1 when there are no vars), times the file's rows."""
        return var_count(self.vars, self.vars_file)

    def var_combinations(self) -> Iterator[dict[str, Any]]:
        """The var combinations, lazily, in a stable order (a file's rows read one by one)."""
        return var_combinations(self.vars, self.vars_file)


SCENARIO_KEYS = (
    "id",
    "description",
    "tags",
    "system",
    "params",
    "context",
    "turns",
    "vars",
    "vars_file",
    "repeat",
    "metadata",
    "min_pass_rate",
    "cache",
    "simulate",
    "expect_final",
)
DOCUMENT_KEYS = ("scenarios", "defaults")
USER_TURN_KEYS = ("user", "expect", "params", "capture")


# ---------------------------------------------------------------- documents, scenarios, turns


def read_document(r: ScenarioReader, node: Node) -> list[Scenario]:
    """The scenarios of one document: one scenario, or {scenarios: [...], defaults: {...}}."""
    if isinstance(node, ScalarNode) and node.tag == NULL_TAG:
        return []  # an empty document
    if not isinstance(node, MappingNode):
        r.report(
            node_line(node),
            "a document must be a scenario (a mapping with 'id' and 'turns') "
            "or a mapping with 'scenarios:'",
        )
        return []
    if not mapping_keys(node) & set(DOCUMENT_KEYS):
        return _keep([_scenario(r, node, {})])
    top = r.entries(node, "document", DOCUMENT_KEYS)
    defaults = _defaults(r, top["defaults"][1]) if "defaults" in top else {}
    items = top["scenarios"][1] if "scenarios" in top else None
    if not isinstance(items, SequenceNode) or not items.value:
        r.report(node_line(items or node), "'scenarios' must be a non-empty list of scenarios")
        return []
    return _keep([_scenario(r.next_scenario(), item, defaults) for item in items.value])


def _defaults(r: ScenarioReader, node: Node) -> dict[str, Pair]:
    """The entries of 'defaults:' (their values are checked with each scenario)."""
    if not isinstance(node, MappingNode):
        r.report(node_line(node), "'defaults' must be a mapping of scenario keys")
        return {}
    entries = r.entries(node, "defaults", SCENARIO_KEYS)
    if "id" in entries:
        line = node_line(entries.pop("id")[0])
        r.report(line, "'id' cannot be a default: each scenario has its own")
    return entries


def _scenario(r: ScenarioReader, node: Node, defaults: dict[str, Pair]) -> Scenario | None:
    """One validated scenario, or None when a problem was reported."""
    if not isinstance(node, MappingNode):
        r.report(node_line(node), f"a scenario must be a mapping, got {r.shown(node)}")
        return None
    start = r.count()
    own = r.entries(node, "scenario", SCENARIO_KEYS)
    merged = {**defaults, **own}
    for key in ("id", "turns") if "simulate" not in merged else ("id",):
        if key not in merged:
            r.report(node_line(node), f"scenario is missing '{key}'")
    values = r.fields({k: p for k, p in merged.items() if k != "params"}, SCENARIO_FIELDS)
    _ends_with_user(r, values, merged)
    params = [
        r.fields({"params": e["params"]}, {"params": json_mapping})
        for e in (defaults, own)
        if "params" in e
    ]  # merged shallowly, the scenario's own over the defaults
    values["params"] = {k: v for p in params for k, v in p.get("params", {}).items()}
    uses = Uses(tuple(r.turn_uses), r.final_span)
    captured = captured_names(uses)
    if "vars" in values or "vars" not in merged:  # else vars were bad: names unknown
        given = values.get("vars", {})
        left = check_templates(r, r.templated, given, "vars_file" in merged, set(captured))
        check_captures(r, uses, var_names(given), captured)
        if "vars_file" in values:
            line = node_line(merged["vars_file"][0])
            names = var_names(given) | set(captured)  # a column may be neither
            values["vars_file"] = open_table(r, line, values["vars_file"], left, names)
    if r.count() > start:
        return None
    values.setdefault("turns", ())  # with `simulate`, the simulated user may open it
    scenario = Scenario(**values, file=r.path, line=node_line(node))
    check_filled(r, scenario)
    return scenario if r.count() == start else None


def _turns(r: ScenarioReader, node: Node, key: str) -> tuple[Turn, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        raise Bad(node, f"'turns' must be a non-empty list, got {r.shown(node)}")
    turns: list[Turn | None] = []
    for item in node.value:
        start = len(r.templated)
        try:
            turns.append(_turn(r, item))
        except Bad as e:
            r.report(e.line, e.message)
            turns.append(None)
        made = turns[-1]
        if made is not None:  # where its templates are: captures are used from the next turn
            r.turn_uses.append((made.capture, made.expect, range(start, len(r.templated))))
    return tuple(t for t in turns if t is not None)


def _ends_with_user(r: ScenarioReader, values: dict[str, Any], merged: dict[str, Pair]) -> None:
    """Without a simulated user, the last scripted turn must be a user turn (its reply is
    the conversation's last); with one, the simulated user may follow a scripted reply."""
    turns = values.get("turns") or ()
    if turns and turns[-1].role == "assistant" and "simulate" not in merged:
        r.report(turns[-1].line, "the last turn is an assistant turn; a conversation must end "
                                 "with a user turn (or be followed by 'simulate')")  # fmt: skip


def _turn(r: ScenarioReader, node: Node) -> Turn | None:
    """A string, {user: ..., expect: ..., params: ...} or {assistant: ...}."""
    line = node_line(node)
    if not isinstance(node, MappingNode):
        value = r.value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str):
            raise Bad(
                node,
                "a turn must be a string, {user: ...} or {assistant: ...}, "
                f"got {r.shown(node)}",
            )
        return Turn("user", r.text(node, value), line=line)
    if "assistant" in mapping_keys(node):
        entries = r.entries(node, "assistant turn", ("assistant",))
        return Turn("assistant", text(r, entries["assistant"][1], "assistant"), line=line)
    entries = r.entries(node, "turn", USER_TURN_KEYS, hints=("assistant",))
    if "user" not in entries:
        raise Bad(node, "a turn mapping needs 'user' (or 'assistant')")
    v = r.fields(entries, TURN_FIELDS)
    if "user" not in v:
        return None
    return Turn("user", v["user"], v.get("expect"), v.get("params", {}), line, v.get("capture", ()))


def _context(r: ScenarioReader, node: Node, key: str) -> Context:
    """full | server | {window: N}."""
    if isinstance(node, MappingNode):
        entries = r.entries(node, "context", ("window",))
        if "window" not in entries:
            raise Bad(node, "'context' as a mapping needs 'window: N'")
        return Window(positive_int(r, entries["window"][1], "window"))
    value = r.value(node)
    if value == "full":
        return Full()
    if value == "server":
        return Server()
    raise Bad(node, f"'context' must be full, server or {{window: N}}, got {show(value)}")


def _expect_final(r: ScenarioReader, node: Node, key: str) -> Expect:
    """expect_final: checks on the last reply; its templates may use every captured name."""
    start = len(r.templated)
    expect = read_expect(r, node, key)
    r.final_span = range(start, len(r.templated))
    return expect


def _keep(scenarios: list[Scenario | None]) -> list[Scenario]:
    return [s for s in scenarios if s is not None]


# ---------------------------------------------------------------- value parsers of scenarios


def _id(r: ScenarioReader, node: Node, key: str) -> str:
    value = string(r, node, key)
    if not value.strip():
        raise Bad(node, "'id' must be a non-empty string")
    r.claim_id(value, node_line(node))
    return value


SCENARIO_FIELDS: dict[str, Parser] = {
    "id": _id,
    "description": string,
    "tags": partial(strings, single=False),
    "system": text,
    "context": _context,
    "turns": _turns,
    "vars": read_vars,
    "vars_file": string,
    "repeat": positive_int,
    "metadata": json_mapping,
    "min_pass_rate": fraction,
    "cache": boolean,
    "simulate": read_simulate,
    "expect_final": _expect_final,
}
TURN_FIELDS: dict[str, Parser] = {
    "user": text, "expect": read_expect, "params": json_mapping, "capture": read_captures,
}  # fmt: skip


def check_filled(r: Reader, scenario: Scenario) -> None:
    """A regex with {{var}} templates must still be one when filled with each of the
    scenario's var combinations: else the problem is reported at its turn, with the values
    of the first combination that breaks it, before anything is sent. A vars_file's rows are
    read once more for all the regexes that name its columns together."""
    templated = [
        (turn.line, pattern, sorted(set(TEMPLATE.findall(pattern))))
        for turn in scenario.turns
        for pattern in [turn.expect.regex if turn.expect else None]
        if pattern is not None and "{{" in pattern
    ]
    own = var_names(scenario.vars)
    found: dict[int, str] = {}
    for from_file in (False, True):  # the file is read only for regexes that need it
        group = [
            i for i, (_, _, names) in enumerate(templated) if bool(set(names) - own) == from_file
        ]
        found.update(_first_problems(scenario, templated, group))
    for i, (line, _, _) in enumerate(templated):
        if i in found:
            r.report(line, found[i])


def _first_problems(
    scenario: Scenario, templated: list[tuple[int, str, list[str]]], group: list[int]
) -> dict[int, str]:
    """Index -> problem of the regexes of GROUP (indexes into TEMPLATED) that some var
    combination breaks, found in one pass over the combinations of the names they use."""
    found: dict[int, str] = {}
    last: dict[int, str] = {}  # each regex's last filling: not compiled twice in a row
    names = {n for i in group for n in templated[i][2]}
    for values in _combinations_of(scenario, names) if group else ():
        for i in group:
            _, pattern, used = templated[i]
            filled = fill(pattern, values)
            if i in found or last.get(i) == filled:
                continue
            last[i] = filled
            problem = regex_problem(filled)
            if problem:
                given = ", ".join(f"{n}={show(values[n])}" for n in used)
                found[i] = f"regex {show(pattern)} filled with {given}: {problem}"
        if len(found) == len(group):
            break
    return found


def _combinations_of(scenario: Scenario, names: set[str]) -> Iterator[dict[str, Any]]:
    """The combinations of the values of NAMES only (a vars_file's rows when it gives any)."""
    own = scenario.vars
    if isinstance(own, dict):
        used: Vars = {n: v for n, v in own.items() if n in names}
    else:
        used = tuple({n: v for n, v in row.items() if n in names} for row in own)
    from_file = scenario.vars_file if names - var_names(own) else None
    return var_combinations(used, from_file)
