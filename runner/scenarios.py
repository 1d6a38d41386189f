"""YAML scenario files -> validated Scenario objects, with file:line errors."""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import InputError, at

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Expect:
    """Checks on one generated reply. Strings may hold {{var}} templates."""

    contains: tuple[str, ...] = ()
    contains_any: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: str | None = None
    equals: str | None = None
    json: bool = False
    max_latency_ms: float | None = None
    finish_reason: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted turn: a user message to send, or a fixed assistant reply."""

    role: str  # "user" | "assistant"
    content: str
    expect: Expect | None = None
    params: dict[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    turns: tuple[Turn, ...]
    file: str
    line: int
    description: str = ""
    tags: tuple[str, ...] = ()
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    context: str = "full"  # "full" | "window" | "server"
    window: int | None = None  # N when context == "window"
    # either a mapping name -> values (cross product) or a list of mappings (one row each)
    vars: dict[str, tuple[Any, ...]] | tuple[dict[str, Any], ...] = field(default_factory=dict)
    repeat: int = 1

    def var_count(self) -> int:
        """Number of var combinations (1 when there are no vars)."""
        if isinstance(self.vars, tuple):
            return len(self.vars)
        n = 1
        for values in self.vars.values():
            n *= len(values)
        return n

    def var_combinations(self) -> Iterator[dict[str, Any]]:
        """The var combinations, lazily, in a stable order."""
        if isinstance(self.vars, tuple):
            yield from self.vars
            return
        names = list(self.vars)
        for values in itertools.product(*(self.vars[n] for n in names)):
            yield dict(zip(names, values, strict=True))


def render(text: str, values: dict[str, Any]) -> str:
    """Fill {{name}} templates; names were checked at load time."""
    if "{{" not in text:
        return text
    return TEMPLATE.sub(lambda m: str(values[m.group(1)]), text)


# ---------------------------------------------------------------- loading

SCENARIO_KEYS = (
    "id",
    "description",
    "tags",
    "system",
    "params",
    "context",
    "turns",
    "vars",
    "repeat",
)
DOCUMENT_KEYS = ("scenarios", "defaults")
USER_TURN_KEYS = ("user", "expect", "params")
EXPECT_KEYS = tuple(f.name for f in fields(Expect))
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VAR_TYPES = (str, int, float, bool)
MERGE_TAG = "tag:yaml.org,2002:merge"
NULL_TAG = "tag:yaml.org,2002:null"

Pair = tuple[Node, Node]  # (key node, value node) of one mapping entry


def load_paths(paths: list[str]) -> list[Scenario]:
    """Load every scenario under PATHS (files, or folders of *.yaml/*.yml).

    Raises one InputError listing every problem found in every file."""
    run = _Run()
    return run.finish([s for path in paths for s in run.load_path(os.fspath(path))])


def load_file(path: str) -> list[Scenario]:
    """Load the scenarios of one YAML file; raise InputError listing every problem."""
    run = _Run()
    return run.finish(run.load_file(os.fspath(path)))


class _Bad(Exception):
    """One problem at one node: the caller reports it and goes on."""

    def __init__(self, node: Node, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line or _line(node)
        self.message = message


class _Run:
    """Problems and scenario ids collected across all files of one load."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, int | None, str]] = []
        self.ids: dict[str, str] = {}  # id -> "file:line" where it was first defined
        self.files: set[str] = set()

    def report(self, path: str, line: int | None, message: str) -> None:
        self.problems.append((path, line, message))

    def finish(self, scenarios: list[Scenario]) -> list[Scenario]:
        """Raise the problems (each once, by file then line) if any; else return SCENARIOS."""
        if not self.problems:
            return scenarios
        order = {path: i for i, (path, _, _) in reversed(list(enumerate(self.problems)))}
        unique = sorted(dict.fromkeys(self.problems), key=lambda p: (order[p[0]], p[1] or 0))
        raise InputError([at(*p) for p in unique])

    def load_path(self, path: str) -> list[Scenario]:
        """A file, or every *.yaml / *.yml below a folder, in sorted order."""
        if not os.path.isdir(path):
            return self.load_file(path)
        found = sorted(
            str(p)
            for p in Path(path).rglob("*.y*ml")
            if p.suffix in (".yaml", ".yml") and p.is_file()
        )
        if not found:
            self.report(path, None, "no *.yaml or *.yml files in this folder")
        return [s for file in found for s in self.load_file(file)]

    def load_file(self, path: str) -> list[Scenario]:
        """Every scenario of one file (a file reached twice is read once)."""
        real = os.path.realpath(path)
        if real in self.files:
            return []
        self.files.add(real)
        text = self._read(path)
        nodes = self._compose(path, text) if text is not None else []
        return [s for node in nodes for s in _document(_Reader(self, path), node)]

    def _read(self, path: str) -> str | None:
        problem, line = None, None
        try:
            data = Path(path).read_bytes()
            return data.decode("utf-8-sig")
        except FileNotFoundError:
            problem = "no such file or folder"
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            problem = f"not UTF-8 text (byte 0x{data[e.start]:02x})"
        except OSError as e:
            problem = f"cannot read: {e.strerror or e}"
        self.report(path, line, problem)
        return None

    def _compose(self, path: str, text: str) -> list[Node]:
        """The documents' node trees; those before a syntax error are kept."""
        nodes: list[Node] = []
        try:
            nodes.extend(yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as e:
            self.report(path, _error_line(e, text), f"YAML syntax error: {_yaml_reason(e)}")
        except RecursionError:
            self.report(path, None, "YAML syntax error: nested too deeply")
        return nodes

    def claim_id(self, scenario_id: str, path: str, line: int) -> None:
        """Record where an id is defined; report it when it was defined before."""
        if scenario_id in self.ids:
            first = self.ids[scenario_id]
            self.report(path, line, f"duplicate id '{scenario_id}' (first defined at {first})")
        self.ids.setdefault(scenario_id, f"{path}:{line}")


class _Reader:
    """Builds values from the nodes of one document or scenario, reporting problems."""

    def __init__(self, run: _Run, path: str):
        self.run, self.path = run, path
        self.constructor = SafeConstructor()
        self.templated: list[tuple[int, str]] = []  # (line, text) of strings with {{var}}

    def report(self, line: int | None, message: str) -> None:
        self.run.report(self.path, line, message)

    def count(self) -> int:
        return len(self.run.problems)

    def value(self, node: Node) -> Any:
        """The Python value of a node, built with yaml.safe_load semantics."""
        try:
            return self.constructor.construct_document(node)
        except yaml.YAMLError as e:
            self.constructor = SafeConstructor()  # drop half-built state
            raise _Bad(node, f"bad YAML value: {_yaml_reason(e)}", _error_line(e, "")) from None

    def text(self, node: Node, value: str) -> str:
        """Note a string that may hold {{var}} templates, to check against the vars."""
        if "{{" in value:
            self.templated.append((_line(node), value))
        return value

    def fields(self, entries: dict[str, Pair], parsers: dict[str, Parser]) -> dict[str, Any]:
        """Parse each entry with its parser; a bad one is reported and left out."""
        out = {}
        for key, (_, node) in entries.items():
            try:
                out[key] = parsers[key](self, node, key)
            except _Bad as e:
                self.report(e.line, e.message)
        return out

    def entries(
        self, node: MappingNode, where: str, allowed: tuple[str, ...] | None, hints: tuple = ()
    ) -> dict[str, Pair]:
        """Key -> (key node, value node) of a mapping; bad, duplicate, unknown keys reported."""
        out: dict[str, Pair] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, ScalarNode) else None
            if knode.tag == MERGE_TAG:
                message = "merge keys (<<) are not supported; use 'defaults:' or an alias (*name)"
            elif key is None:
                message = f"keys in {where} must be plain strings"
            elif key in out:
                message = f"duplicate key '{key}' in {where} (first at line {_line(out[key][0])})"
            elif allowed is not None and key not in allowed:
                message = _unknown_key(key, where, allowed + hints)
            else:
                out[key] = (knode, vnode)
                continue
            self.report(_line(knode), message)
        return out


Parser = Callable[[_Reader, Node, str], Any]


# ---------------------------------------------------------------- documents, scenarios, turns


def _document(r: _Reader, node: Node) -> list[Scenario]:
    """The scenarios of one document: one scenario, or {scenarios: [...], defaults: {...}}."""
    if isinstance(node, ScalarNode) and node.tag == NULL_TAG:
        return []  # an empty document
    if not isinstance(node, MappingNode):
        r.report(
            _line(node),
            "a document must be a scenario (a mapping with 'id' and 'turns') "
            "or a mapping with 'scenarios:'",
        )
        return []
    if not _keys(node) & set(DOCUMENT_KEYS):
        return _keep([_scenario(r, node, {})])
    top = r.entries(node, "document", DOCUMENT_KEYS)
    defaults = _defaults(r, top["defaults"][1]) if "defaults" in top else {}
    items = top["scenarios"][1] if "scenarios" in top else None
    if not isinstance(items, SequenceNode) or not items.value:
        r.report(_line(items or node), "'scenarios' must be a non-empty list of scenarios")
        return []
    return _keep([_scenario(_Reader(r.run, r.path), item, defaults) for item in items.value])


def _defaults(r: _Reader, node: Node) -> dict[str, Pair]:
    """The entries of 'defaults:' (their values are checked with each scenario)."""
    if not isinstance(node, MappingNode):
        r.report(_line(node), "'defaults' must be a mapping of scenario keys")
        return {}
    entries = r.entries(node, "defaults", SCENARIO_KEYS)
    if "id" in entries:
        r.report(_line(entries.pop("id")[0]), "'id' cannot be a default: each scenario has its own")
    return entries


def _scenario(r: _Reader, node: Node, defaults: dict[str, Pair]) -> Scenario | None:
    """One validated scenario, or None when a problem was reported."""
    if not isinstance(node, MappingNode):
        r.report(_line(node), f"a scenario must be a mapping, got {_shown(r, node)}")
        return None
    start = r.count()
    own = r.entries(node, "scenario", SCENARIO_KEYS)
    merged = {**defaults, **own}
    for key in ("id", "turns"):
        if key not in merged:
            r.report(_line(node), f"scenario is missing '{key}'")
    values = r.fields({k: p for k, p in merged.items() if k != "params"}, SCENARIO_FIELDS)
    params = [
        r.fields({"params": e["params"]}, {"params": _params})
        for e in (defaults, own)
        if "params" in e
    ]  # merged shallowly, the scenario's own over the defaults
    values["params"] = {k: v for p in params for k, v in p.get("params", {}).items()}
    if "vars" in values or "vars" not in merged:  # else vars were bad: names unknown
        _check_templates(r, values.get("vars", {}))
    if r.count() > start:
        return None
    context, window = values.pop("context", ("full", None))
    return Scenario(**values, context=context, window=window, file=r.path, line=_line(node))


def _turns(r: _Reader, node: Node, key: str) -> tuple[Turn, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        raise _Bad(node, f"'turns' must be a non-empty list, got {_shown(r, node)}")
    turns: list[Turn | None] = []
    for item in node.value:
        try:
            turns.append(_turn(r, item))
        except _Bad as e:
            r.report(e.line, e.message)
            turns.append(None)
    if turns[-1] is not None and turns[-1].role == "assistant":
        raise _Bad(
            node.value[-1],
            "the last turn is an assistant turn; a conversation must end with a user turn",
        )
    return tuple(t for t in turns if t is not None)


def _turn(r: _Reader, node: Node) -> Turn | None:
    """A string, {user: ..., expect: ..., params: ...} or {assistant: ...}."""
    if not isinstance(node, MappingNode):
        value = r.value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str):
            raise _Bad(
                node,
                "a turn must be a string, {user: ...} or {assistant: ...}, "
                f"got {_shown(r, node)}",
            )
        return Turn("user", r.text(node, value), line=_line(node))
    if "assistant" in _keys(node):
        entries = r.entries(node, "assistant turn", ("assistant",))
        return Turn("assistant", _text(r, entries["assistant"][1], "assistant"), line=_line(node))
    entries = r.entries(node, "turn", USER_TURN_KEYS, hints=("assistant",))
    if "user" not in entries:
        raise _Bad(node, "a turn mapping needs 'user' (or 'assistant')")
    v = r.fields(entries, TURN_FIELDS)
    if "user" not in v:
        return None
    return Turn("user", v["user"], v.get("expect"), v.get("params", {}), _line(node))


def _expect(r: _Reader, node: Node, key: str) -> Expect:
    if not isinstance(node, MappingNode):
        raise _Bad(node, f"'expect' must be a mapping of checks, got {_shown(r, node)}")
    return Expect(**r.fields(r.entries(node, "expect", EXPECT_KEYS), EXPECT_FIELDS))


def _context(r: _Reader, node: Node, key: str) -> tuple[str, int | None]:
    """full | server | {window: N} -> (context, window)."""
    if isinstance(node, MappingNode):
        entries = r.entries(node, "context", ("window",))
        if "window" not in entries:
            raise _Bad(node, "'context' as a mapping needs 'window: N'")
        return "window", _positive_int(r, entries["window"][1], "window")
    value = r.value(node)
    if value in ("full", "server"):
        return value, None
    raise _Bad(node, f"'context' must be full, server or {{window: N}}, got {_show(value)}")


# ---------------------------------------------------------------- vars and templates


def _vars(r: _Reader, node: Node, key: str) -> dict[str, tuple[Any, ...]] | tuple[dict, ...]:
    """name -> values (cross product), or a non-empty list of rows with the same keys."""
    if isinstance(node, MappingNode):
        return {
            name: _var_values(r, knode, vnode, name)
            for name, (knode, vnode) in r.entries(node, "vars", None).items()
        }
    if isinstance(node, SequenceNode) and node.value:
        return _var_rows(r, node)
    raise _Bad(
        node,
        "'vars' must be a mapping of names to values, or a non-empty list of "
        f"mappings, got {_shown(r, node)}",
    )


def _var_values(r: _Reader, knode: Node, vnode: Node, name: str) -> tuple[Any, ...]:
    """The values of one var (a scalar alone is one value); () when reported bad."""
    items = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
    try:
        _var_name(knode, name)
        if not items:
            raise _Bad(vnode, f"var '{name}' has an empty list of values")
        values = tuple(_var_scalar(r, item, name) for item in items)
    except _Bad as e:
        r.report(e.line, e.message)
        return ()
    _no_duplicates(r, zip(items, [(type(v), v) for v in values], strict=True), "value")
    return values


def _var_rows(r: _Reader, node: SequenceNode) -> tuple[dict[str, Any], ...]:
    rows: list[tuple[Node, dict[str, Any]]] = []
    for item in node.value:
        if not isinstance(item, MappingNode):
            r.report(_line(item), f"each row of 'vars' must be a mapping, got {_shown(r, item)}")
            continue
        row = {
            name: _row_value(r, knode, vnode, name)
            for name, (knode, vnode) in r.entries(item, "vars row", None).items()
        }
        if rows and row.keys() != rows[0][1].keys():
            r.report(
                _line(item),
                f"this row of 'vars' has keys {_names(row)}, "
                f"the first row has {_names(rows[0][1])}",
            )
        rows.append((item, row))
    _no_duplicates(
        r,
        ((item, tuple((k, type(v), v) for k, v in sorted(row.items()))) for item, row in rows),
        "row",
    )
    return tuple(row for _, row in rows)


def _row_value(r: _Reader, knode: Node, vnode: Node, name: str) -> Any:
    try:
        _var_name(knode, name)
        return _var_scalar(r, vnode, name)
    except _Bad as e:
        r.report(e.line, e.message)
        return None


def _var_name(knode: Node, name: str) -> None:
    if not VAR_NAME.fullmatch(name):
        raise _Bad(
            knode, f"bad var name '{name}': use letters, digits and _, not starting with a digit"
        )


def _var_scalar(r: _Reader, node: Node, name: str) -> Any:
    value = r.value(node)
    if not isinstance(value, VAR_TYPES):
        raise _Bad(
            node, f"values of var '{name}' must be strings, numbers or booleans, got {_show(value)}"
        )
    return value


def _no_duplicates(r: _Reader, keyed: Iterable[tuple[Node, Any]], what: str) -> None:
    """Equal var values or rows would plan the same conversation (and id) twice."""
    first: dict[Any, int] = {}
    for node, key in keyed:
        if key in first:
            r.report(_line(node), f"duplicate {what} in 'vars' (same as line {first[key]})")
        first.setdefault(key, _line(node))


def _check_templates(r: _Reader, scenario_vars: dict | tuple) -> None:
    """Every {{name}} noted in this scenario must name one of its vars."""
    rows = scenario_vars if isinstance(scenario_vars, tuple) else [scenario_vars]
    names = {name for row in rows for name in row}
    for line, text in r.templated:
        for name in TEMPLATE.findall(text):
            if name not in names:
                r.report(line, f"unknown var '{name}' in template{_var_hint(name, names)}")


def _var_hint(name: str, names: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" (vars: {', '.join(sorted(names))})" if names else " (the scenario has no vars)"


# ---------------------------------------------------------------- value parsers


def _string(r: _Reader, node: Node, key: str) -> str:
    value = r.value(node)
    if not isinstance(value, str):
        raise _Bad(node, f"'{key}' must be a string, got {_show(value)}")
    return value


def _text(r: _Reader, node: Node, key: str) -> str:
    """A string that may hold {{var}} templates."""
    return r.text(node, _string(r, node, key))


def _id(r: _Reader, node: Node, key: str) -> str:
    value = _string(r, node, key)
    if not value.strip():
        raise _Bad(node, "'id' must be a non-empty string")
    r.run.claim_id(value, r.path, _line(node))
    return value


def _strings(r: _Reader, node: Node, key: str, single: bool) -> tuple[str, ...]:
    """A list of strings (or, when SINGLE, also one string), templates noted."""
    want = "a string or a list of strings" if single else "a list of strings"
    if not isinstance(node, SequenceNode) and not single:
        raise _Bad(node, f"'{key}' must be {want}, got {_shown(r, node)}")
    out = []
    for item in node.value if isinstance(node, SequenceNode) else [node]:
        value = r.value(item)
        if not isinstance(value, str):
            raise _Bad(item, f"'{key}' must be {want}, got {_show(value)}")
        out.append(r.text(item, value))
    return tuple(out)


def _regex(r: _Reader, node: Node, key: str) -> str:
    value = _text(r, node, key)
    try:  # templates are filled per conversation; check the pattern with a stand-in
        re.compile(TEMPLATE.sub("x", value))
    except re.error as e:
        raise _Bad(node, f"bad regex {_show(value)}: {e}") from None
    return value


def _params(r: _Reader, node: Node, key: str) -> dict[str, Any]:
    value = r.value(node)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Bad(node, f"'{key}' must be a mapping with string keys, got {_show(value)}")
    return value


def _bool(r: _Reader, node: Node, key: str) -> bool:
    value = r.value(node)
    if not isinstance(value, bool):
        raise _Bad(node, f"'{key}' must be true or false, got {_show(value)}")
    return value


def _positive_int(r: _Reader, node: Node, key: str) -> int:
    value = r.value(node)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(node, f"'{key}' must be a positive integer, got {_show(value)}")
    return value


def _positive_number(r: _Reader, node: Node, key: str) -> float:
    value = r.value(node)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _Bad(node, f"'{key}' must be a positive number, got {_show(value)}")
    return value


SCENARIO_FIELDS: dict[str, Parser] = {
    "id": _id,
    "description": _string,
    "tags": partial(_strings, single=False),
    "system": _text,
    "context": _context,
    "turns": _turns,
    "vars": _vars,
    "repeat": _positive_int,
}
TURN_FIELDS: dict[str, Parser] = {"user": _text, "expect": _expect, "params": _params}
EXPECT_FIELDS: dict[str, Parser] = {
    **dict.fromkeys(("contains", "contains_any", "not_contains"), partial(_strings, single=True)),
    "regex": _regex,
    "equals": _text,
    "json": _bool,
    "max_latency_ms": _positive_number,
    "finish_reason": _string,
    "ignore_case": _bool,
}


# ---------------------------------------------------------------- small helpers


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _keys(node: MappingNode) -> set[str]:
    return {k.value for k, _ in node.value if isinstance(k, ScalarNode)}


def _keep(scenarios: list[Scenario | None]) -> list[Scenario]:
    return [s for s in scenarios if s is not None]


def _shown(r: _Reader, node: Node) -> str:
    """A node's value as a message shows it (a value YAML cannot build shows its tag)."""
    try:
        return _show(r.value(node))
    except _Bad:
        return f"a value tagged {node.tag}"


def _show(value: Any) -> str:
    """A value as a message shows it: 'two', 0, null, a list."""
    if value is None or isinstance(value, bool):
        return str(value).lower() if value is not None else "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | dict):
        kind = "list" if isinstance(value, list) else "mapping"
        return f"a {kind}" if value else f"an empty {kind}"
    return f"a {type(value).__name__}"


def _names(row: dict[str, Any]) -> str:
    return ", ".join(row) or "(none)"


def _unknown_key(key: str, where: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown key '{key}' in {where}; {hint}"


def _error_line(e: Exception, text: str) -> int | None:
    """1-based line of a YAML error (its mark, or a reader error's position)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(e, "position", None)
    return text.count("\n", 0, position) + 1 if position is not None and text else None


def _yaml_reason(e: Exception) -> str:
    parts = [getattr(e, "context", None), getattr(e, "problem", None) or getattr(e, "reason", None)]
    return ", ".join(p for p in parts if p) or str(e)
