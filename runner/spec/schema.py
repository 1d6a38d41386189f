"""The scenario schema: Scenario, Turn and Context, and how each is read from YAML nodes
(the checks' schema, Expect and Judge, is in runner.spec.expects)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.messages import Image, Tool
from runner.spec.captures import Capture, Uses, captured_names, check_captures, read_captures
from runner.spec.expects import Expect, fraction, read_expect, strings, text
from runner.spec.filled import check_filled
from runner.spec.rows import RowsFile, open_table
from runner.spec.simulation import Simulate, read_simulate
from runner.spec.tools import (
    Result,
    ScriptedCall,
    check_history,
    check_results,
    read_calls,
    read_parts,
    read_results,
    read_tool_turn,
    read_tools,
)
from runner.spec.variables import (
    ScenarioReader,
    Vars,
    check_templates,
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
    """One scripted turn: a user message to send, a fixed assistant reply (text, tool
    calls or both), or a tool's result to an earlier scripted call."""

    role: str  # "user" | "assistant" | "tool"
    content: str  # the text (a tool turn: none)
    expect: Expect | None = None
    params: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    parts: tuple[str | Image, ...] = ()  # a user turn with images: its texts and images in order
    calls: tuple[ScriptedCall, ...] = ()  # a scripted assistant turn's tool calls
    tool: str = ""  # a tool turn: the tool's name
    result: Any = None  # a tool turn: the result (JSON)
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
    tools: tuple[Tool, ...] = ()  # the tools the model may call
    tool_results: dict[str, Result] = field(default_factory=dict)  # tool name -> its result
    max_tool_rounds: int = 5  # model requests with tool calls per user turn before tool_loop
    simulate: Simulate | None = None  # a target plays the user after the scripted turns
    expect_final: Expect | None = None  # checks on the conversation's last reply

    def read_files(self) -> set[str]:
        """The files it read beside it (hashed into the manifest like the scenario): its
        turns' images, and the python files of its checks and tool results."""
        files = {p.path for t in self.turns for p in t.parts if isinstance(p, Image) and p.path}
        expects = [t.expect for t in self.turns] + [self.expect_final]
        files |= {c.path for e in expects if e is not None for c in e.python}
        files |= {r.function.path for r in self.tool_results.values() if r.function}
        return files - {""}

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
    "tools",
    "tool_results",
    "max_tool_rounds",
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
    check_results(r, values.get("tools", ()), values.get("tool_results", {}))
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
    kept = tuple(t for t in turns if t is not None)
    check_history(r, kept)
    return kept


def _ends_with_user(r: ScenarioReader, values: dict[str, Any], merged: dict[str, Pair]) -> None:
    """Without a simulated user, the last scripted turn must be a user turn (its reply is
    the conversation's last); with one, the simulated user may follow a scripted reply of
    text (not a call, nor a tool's result: the model answers those)."""
    last = (values.get("turns") or (None,))[-1]
    if last is None or last.role == "user":
        return
    if last.role == "assistant" and not last.calls and "simulate" in merged:
        return
    a = "an" if last.role == "assistant" else "a"
    r.report(last.line, f"the last turn is {a} {last.role} turn; a conversation must end with a "
                        "user turn (or an assistant's text followed by 'simulate')")  # fmt: skip


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
        return _assistant(r, entries["assistant"][1], line)
    if "tool" in mapping_keys(node):
        entries = r.entries(node, "tool turn", ("tool",))
        name, result = read_tool_turn(r, entries["tool"][1])
        return Turn("tool", "", line=line, tool=name, result=result)
    entries = r.entries(node, "turn", USER_TURN_KEYS, hints=("assistant", "tool"))
    if "user" not in entries:
        raise Bad(node, "a turn mapping needs 'user' (or 'assistant' or 'tool')")
    v = r.fields(entries, TURN_FIELDS)
    if "user" not in v:
        return None
    parts, content = (), v["user"]
    if isinstance(content, tuple):
        parts, content = content, "".join(p for p in content if isinstance(p, str))
    expect, params = v.get("expect"), v.get("params", {})
    return Turn("user", content, expect, params, line, parts, capture=v.get("capture", ()))


def _assistant(r: ScenarioReader, node: Node, line: int) -> Turn:
    """A scripted reply: its text, or {content: TEXT, tool_calls: [{name, args}, ...]}."""
    if not isinstance(node, MappingNode):
        return Turn("assistant", text(r, node, "assistant"), line=line)
    entries = r.entries(node, "assistant turn", ("content", "tool_calls"))
    if "tool_calls" not in entries:
        raise Bad(node, "a scripted assistant mapping needs 'tool_calls' (or write its text)")
    content = text(r, entries["content"][1], "content") if "content" in entries else ""
    return Turn("assistant", content, line=line, calls=read_calls(r, entries["tool_calls"][1]))


def _user(r: ScenarioReader, node: Node, key: str) -> str | tuple[str | Image, ...]:
    """The user's text, or a list of {text: ...} and {image: ...} parts."""
    if isinstance(node, SequenceNode) and node.value:
        return read_parts(r, node)
    return text(r, node, key)


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
    "tools": read_tools,
    "tool_results": read_results,
    "max_tool_rounds": positive_int,
    "simulate": read_simulate,
    "expect_final": _expect_final,
}
TURN_FIELDS: dict[str, Parser] = {
    "user": _user, "expect": read_expect, "params": json_mapping, "capture": read_captures,
}  # fmt: skip
