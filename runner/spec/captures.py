"""Captures: values a user turn takes from its reply for later turns (`capture:`), read from
YAML, and the load-time rules for their names (runner/engine/captures.py takes them).

    capture: {code: 'BK-\\d+'}                  # a regex: group 1 if it has one, else the match
    capture: {total: {json: "$.order.total"}}  # a JSON path into a reply that is JSON
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode

from runner.spec.expects import Expect, regex_problem
from runner.spec.variables import TEMPLATE, VAR_NAME, ScenarioReader
from runner.spec.yamlnodes import Bad, Reader, node_line, show, string

Path = tuple[str | int, ...]  # keys of objects and indexes of arrays, from the top


@dataclass(frozen=True, slots=True)
class Capture:
    """One value to take from a reply: by a regex, or by a JSON path (`json` is its text)."""

    name: str
    regex: str | None = None
    json: str | None = None
    path: Path = ()
    line: int = 0

    def how(self) -> str:
        """The capture as a message names it."""
        return f"regex {show(self.regex)}" if self.regex is not None else f"JSON path {self.json}"


STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def json_path(text: str) -> Path:
    """`$.order.items[0]['unit price']` -> ("order", "items", 0, "unit price");
    ValueError when TEXT is not such a path."""
    if not text.startswith("$"):
        raise ValueError("a JSON path starts with $")
    path: list[str | int] = []
    at = 1
    while at < len(text):
        step = STEP.match(text, at)
        if step is None:
            raise ValueError(f"cannot read {text[at:]!r}: use .name, [index] or ['key']")
        name, index, quoted, double = step.groups()
        path.append(int(index) if index is not None else next(
            s for s in (name, quoted, double) if s is not None
        ))  # fmt: skip
        at = step.end()
    return tuple(path)


def read_captures(r: Reader, node: Node, key: str) -> tuple[Capture, ...]:
    """{name: REGEX, name: {json: PATH}, name: {regex: REGEX}}."""
    if not isinstance(node, MappingNode) or not node.value:
        raise Bad(node, f"'capture' must be a mapping of names to a regex or {{json: PATH}}, "
                        f"got {r.shown(node)}")  # fmt: skip
    captures = []
    for name, (knode, vnode) in r.entries(node, "capture", None).items():
        try:
            captures.append(_capture(r, name, knode, vnode))
        except Bad as e:
            r.report(e.line, e.message)
    return tuple(captures)


def _capture(r: Reader, name: str, knode: Node, vnode: Node) -> Capture:
    if not VAR_NAME.fullmatch(name):
        raise Bad(knode, f"bad capture name '{name}': use letters, digits and _, "
                         "not starting with a digit")  # fmt: skip
    line = node_line(knode)
    if isinstance(vnode, ScalarNode):
        return _regex(name, string(r, vnode, name), vnode, line)
    if not isinstance(vnode, MappingNode):
        raise Bad(vnode, f"capture '{name}' must be a regex or {{json: PATH}}")
    entries = r.entries(vnode, f"capture '{name}'", ("json", "regex"))
    if len(entries) != 1:
        raise Bad(vnode, f"capture '{name}' needs one of 'json: PATH' or 'regex: REGEX'")
    ((kind, (_, value)),) = entries.items()
    text = string(r, value, kind)
    if kind == "regex":
        return _regex(name, text, value, line)
    try:
        return Capture(name, json=text, path=json_path(text), line=line)
    except ValueError as e:
        raise Bad(value, f"capture '{name}': bad JSON path {show(text)}: {e}") from None


def _regex(name: str, pattern: str, node: Node, line: int) -> Capture:
    problem = regex_problem(pattern)
    if problem:
        raise Bad(node, f"capture '{name}': bad regex {show(pattern)}: {problem}")
    return Capture(name, regex=pattern, line=line)


# ---------------------------------------------------------------- names, at load time


@dataclass(frozen=True, slots=True)
class Uses:
    """Where the templates of a scenario are: each turn's (and its captures), expect_final's,
    and the rest (the system prompt, the persona: filled before the first turn). Spans are
    index ranges into ScenarioReader.templated."""

    turns: tuple[tuple[tuple[Capture, ...], Expect | None, range], ...]
    final: range


def captured_names(uses: Uses) -> dict[str, int]:
    """Every captured name of a scenario -> the line of its first capture."""
    names: dict[str, int] = {}
    for captures, _, _ in uses.turns:
        for c in captures:
            names.setdefault(c.name, c.line)
    return names


def check_captures(
    r: ScenarioReader, uses: Uses, var_names: set[str], captured: dict[str, int]
) -> None:
    """A turn may use the names captured by the turns before it; expect_final every one; the
    system prompt, persona and tool results none. A capture named like a var or like an
    earlier capture is refused, and so is a captured name in a regex check (regexes are
    checked at load time)."""
    made: set[str] = set()
    seen: set[int] = set()
    for captures, expect, span in uses.turns:
        _used(r, span, made, captured, "")
        if expect is not None and expect.regex is not None:
            _no_regex(r, span, expect.regex, captured)
        seen.update(span)
        for c in captures:
            if c.name in var_names:
                r.report(c.line, f"capture '{c.name}' has the name of a var: rename one of them")
            elif c.name in made:
                first = captured[c.name]
                r.report(c.line, f"'{c.name}' is captured twice (first at line {first})")
            made.add(c.name)
    _used(r, uses.final, made, captured, "")
    seen.update(uses.final)
    rest = [i for i in range(len(r.templated)) if i not in seen]
    why = " (the system prompt, persona and tool_results are filled with vars only)"
    _used(r, rest, set(), captured, why)


def _used(
    r: ScenarioReader, span: Iterable[int], made: set[str], captured: dict[str, int], why: str
) -> None:
    """Report the templates in SPAN that name a capture not made before them."""
    for i in span:
        line, text = r.templated[i]
        for name in TEMPLATE.findall(text):
            if name in captured and name not in made:
                r.report(line, f"'{name}' is used before it is captured (at line "
                               f"{captured[name]}){why}; a captured value can be used from "
                               "the next turn on")  # fmt: skip


def _no_regex(r: ScenarioReader, span: range, pattern: str, captured: dict[str, int]) -> None:
    used = [n for n in TEMPLATE.findall(pattern) if n in captured]
    line = next((r.templated[i][0] for i in span if r.templated[i][1] == pattern), 0)
    if used:
        r.report(line, f"a regex check cannot use the captured '{used[0]}' (regexes are "
                       "checked when the file is read); use contains")  # fmt: skip
