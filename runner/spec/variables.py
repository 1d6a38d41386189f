"""Scenario vars: reading them, expanding them into combinations, filling {{name}} templates.

A scenario's vars are either a mapping name -> values, expanded as a cross product,
or a list of rows (mappings with the same keys), one combination each. Rows of a
`vars_file` (runner/spec/rows.py) are crossed with them: each row with every combination.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Collection, Iterable, Iterator, Sized
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from runner.spec.yamlnodes import Bad, Problems, Reader, node_line, show

# {{name}}, but not after a backslash: \{{ is a literal {{ (the backslash is dropped)
TEMPLATE = re.compile(r"(?<!\\)\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
PIECE = re.compile(r"\\(\{\{)|" + TEMPLATE.pattern)  # an escaped {{, or a template
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VAR_TYPES = (str, int, float, bool)

# name -> values (cross product), or rows with the same keys (one combination each)
Vars = dict[str, tuple[Any, ...]] | tuple[dict[str, Any], ...]


def fill(text: str, values: dict[str, Any]) -> str:
    """Fill {{name}} templates (names were checked at load time); \\{{ becomes {{."""
    if "{{" not in text:
        return text
    return PIECE.sub(lambda m: m.group(1) or str(values[m.group(2)]), text)


def var_count(scenario_vars: Vars, rows: Sized | None = None) -> int:
    """Number of var combinations (1 when there are no vars), times the rows of a file."""
    n = len(rows) if rows is not None else 1
    if isinstance(scenario_vars, tuple):
        return n * len(scenario_vars)
    for values in scenario_vars.values():
        n *= len(values)
    return n


def var_combinations(
    scenario_vars: Vars, rows: Iterable[dict[str, Any]] | None = None
) -> Iterator[dict[str, Any]]:
    """The var combinations, lazily, in a stable order: each row crossed with the vars."""
    if rows is None:
        yield from _combinations(scenario_vars)
        return
    for row in rows:  # read one at a time: a file's rows are never all held
        for values in _combinations(scenario_vars):
            yield {**row, **values} if values else row


def _combinations(scenario_vars: Vars) -> Iterator[dict[str, Any]]:
    if isinstance(scenario_vars, tuple):
        yield from scenario_vars
        return
    names = list(scenario_vars)
    for values in itertools.product(*(scenario_vars[n] for n in names)):
        yield dict(zip(names, values, strict=True))


# ---------------------------------------------------------------- reading vars


def read_vars(r: Reader, node: Node, key: str) -> Vars:
    """name -> values (cross product), or a non-empty list of rows with the same keys."""
    if isinstance(node, MappingNode):
        return {
            name: _var_values(r, knode, vnode, name)
            for name, (knode, vnode) in r.entries(node, "vars", None).items()
        }
    if isinstance(node, SequenceNode) and node.value:
        return _var_rows(r, node)
    raise Bad(
        node,
        "'vars' must be a mapping of names to values, or a non-empty list of "
        f"mappings, got {r.shown(node)}",
    )


def _var_values(r: Reader, knode: Node, vnode: Node, name: str) -> tuple[Any, ...]:
    """The values of one var (a scalar alone is one value); () when reported bad."""
    items = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
    try:
        _var_name(knode, name)
        if not items:
            raise Bad(vnode, f"var '{name}' has an empty list of values")
        values = tuple(_var_scalar(r, item, name) for item in items)
    except Bad as e:
        r.report(e.line, e.message)
        return ()
    _no_duplicates(r, zip(items, [(type(v), v) for v in values], strict=True), "value")
    return values


def _var_rows(r: Reader, node: SequenceNode) -> tuple[dict[str, Any], ...]:
    rows: list[tuple[Node, dict[str, Any]]] = []
    for item in node.value:
        if not isinstance(item, MappingNode):
            r.report(node_line(item), f"each row of 'vars' must be a mapping, got {r.shown(item)}")
            continue
        row = {
            name: _row_value(r, knode, vnode, name)
            for name, (knode, vnode) in r.entries(item, "vars row", None).items()
        }
        if rows and row.keys() != rows[0][1].keys():
            r.report(
                node_line(item),
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


def _row_value(r: Reader, knode: Node, vnode: Node, name: str) -> Any:
    try:
        _var_name(knode, name)
        return _var_scalar(r, vnode, name)
    except Bad as e:
        r.report(e.line, e.message)
        return None


def _var_name(knode: Node, name: str) -> None:
    if not VAR_NAME.fullmatch(name):
        raise Bad(
            knode, f"bad var name '{name}': use letters, digits and _, not starting with a digit"
        )


def _var_scalar(r: Reader, node: Node, name: str) -> Any:
    value = r.value(node)
    if isinstance(value, float) and not math.isfinite(value):
        raise Bad(node, f"values of var '{name}' must be finite numbers, got {node.value}")
    if not isinstance(value, VAR_TYPES):
        raise Bad(
            node, f"values of var '{name}' must be strings, numbers or booleans, got {show(value)}"
        )
    return value


def _no_duplicates(r: Reader, keyed: Iterable[tuple[Node, Any]], what: str) -> None:
    """Equal var values or rows would plan the same conversation (and id) twice."""
    first: dict[Any, int] = {}
    for node, key in keyed:
        if key in first:
            r.report(node_line(node), f"duplicate {what} in 'vars' (same as line {first[key]})")
        first.setdefault(key, node_line(node))


def _names(row: dict[str, Any]) -> str:
    return ", ".join(row) or "(none)"


# ---------------------------------------------------------------- templates


def check_templates(
    r: Reader,
    templated: list[tuple[int, str]],
    scenario_vars: Vars,
    from_file: bool = False,
    captured: Collection[str] = (),
) -> dict[str, int]:
    """Every {{name}} in TEMPLATED (line, text) must name one of the scenario's vars (or a
    CAPTURED name: where it may be used is checked by runner/spec/captures.py).

    With FROM_FILE the others are left for the vars_file's rows: returned, name -> line."""
    names = var_names(scenario_vars)
    left: dict[str, int] = {}
    for line, text in templated:
        for name in TEMPLATE.findall(text):
            if name in names or name in captured:
                continue
            if from_file:
                left.setdefault(name, line)
            else:
                r.report(line, f"unknown var '{name}' in template{_var_hint(name, names)}")
    return left


def var_names(scenario_vars: Vars) -> set[str]:
    rows = scenario_vars if isinstance(scenario_vars, tuple) else [scenario_vars]
    return {name for row in rows for name in row}


def _var_hint(name: str, names: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" (vars: {', '.join(sorted(names))})" if names else " (the scenario has no vars)"


def stand_in(text: str) -> str:
    """TEXT with each {{name}} replaced by a plain 'x', for checks made before vars are known."""
    return PIECE.sub(lambda m: m.group(1) or "x", text)


class ScenarioReader(Reader):
    """A Reader for one document or scenario; notes templates, claims ids across files."""

    merge_hint = "use 'defaults:' or an alias (*name)"

    def __init__(self, problems: Problems, path: str, ids: dict[str, str]):
        super().__init__(problems, path)
        self.ids = ids  # scenario id -> "file:line" where it was first defined, for all files
        self.templated: list[tuple[int, str]] = []  # (line, text) of strings with {{var}}
        # each turn's captures, checks and its span of `templated`; expect_final's span
        self.turn_uses: list[tuple[Any, Any, range]] = []
        self.final_span = range(0)

    def next_scenario(self) -> ScenarioReader:
        """A reader for another scenario of the same file: its own templates."""
        return ScenarioReader(self.problems, self.path, self.ids)

    def text(self, node: Node, value: str) -> str:
        """Note a string that may hold {{var}} templates, to check against the vars."""
        if "{{" in value:
            self.templated.append((node_line(node), value))
        return value

    def claim_id(self, scenario_id: str, line: int) -> None:
        """Record where an id is defined; report it when it was defined before."""
        if scenario_id in self.ids:
            first = self.ids[scenario_id]
            self.report(line, f"duplicate id '{scenario_id}' (first defined at {first})")
        self.ids.setdefault(scenario_id, f"{self.path}:{line}")
