"""Reading YAML input files node by node, every problem reported with file and line.

Scenario files and the models file are both read this way: the text is composed into
node trees (yaml.compose), values are built from nodes with yaml.safe_load's rules,
and each problem is collected as (file, line, message) and raised together at the end.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode

from runner.errors import InputError, at

MERGE_TAG = "tag:yaml.org,2002:merge"
NULL_TAG = "tag:yaml.org,2002:null"
YAML_TAG = "tag:yaml.org,2002:"
JSON_SCALARS = ("str", "int", "float", "bool", "null")  # the tags of values JSON can hold
NOT_JSON = {
    "timestamp": "a date, which JSON cannot hold; quote it to keep it as text",
    "binary": "binary data (!!binary), which JSON cannot hold; use a (base64) string",
    "set": "a set (!!set), which JSON cannot hold; use a list",
    "omap": "an ordered mapping (!!omap), which JSON cannot hold; use a mapping",
    "pairs": "pairs (!!pairs), which JSON cannot hold; use a mapping",
}
# what aliases (*name) may add to one value, in nodes plus characters of text: a few hundred
# bytes of aliases nested in each other would otherwise expand to gigabytes
MAX_ALIAS_GROWTH = 1_000_000

Pair = tuple[Node, Node]  # (key node, value node) of one mapping entry
Parser = Callable[[Any, Node, str], Any]  # (reader, value node, key) -> value; raises Bad


class Bad(Exception):
    """One problem at one node: the caller reports it and goes on."""

    def __init__(self, node: Node, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line or node_line(node)
        self.message = message


class Problems:
    """The problems found in the input files of one load, each (file, line, message)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, int | None, str]] = []

    def __len__(self) -> int:
        return len(self.found)

    def report(self, path: str, line: int | None, message: str) -> None:
        self.found.append((path, line, message))

    def raise_any(self) -> None:
        """Raise an InputError listing each problem once, by file (first seen first), then line."""
        if not self.found:
            return
        order = {path: i for i, (path, _, _) in reversed(list(enumerate(self.found)))}
        unique = sorted(dict.fromkeys(self.found), key=lambda p: (order[p[0]], p[1] or 0))
        raise InputError([at(*p) for p in unique])


def read_documents(path: str, problems: Problems) -> list[Node]:
    """The node trees of a file's YAML documents; those before a syntax error are kept.

    A file that cannot be read, is not UTF-8 or breaks YAML syntax is reported."""
    text = _read_text(path, problems)
    if text is None:
        return []
    nodes: list[Node] = []
    try:
        nodes.extend(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        problems.report(path, error_line(e, text), f"YAML syntax error: {yaml_reason(e)}")
    except RecursionError:
        problems.report(path, None, "YAML syntax error: nested too deeply")
    return nodes


def _read_text(path: str, problems: Problems) -> str | None:
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
    problems.report(path, line, problem)
    return None


class Reader:
    """Builds values from the nodes of one file, reporting problems with its path."""

    merge_hint = "use an alias (*name)"  # what to write instead where merge keys are refused

    def __init__(self, problems: Problems, path: str):
        self.problems, self.path = problems, path
        self.constructor = SafeConstructor()

    def report(self, line: int | None, message: str) -> None:
        self.problems.report(self.path, line, message)

    def count(self) -> int:
        """How many problems were reported so far (in any file of this load)."""
        return len(self.problems)

    def value(self, node: Node) -> Any:
        """The Python value of a node, built with yaml.safe_load semantics; a value that
        aliases expand past MAX_ALIAS_GROWTH, or that holds itself, is refused."""
        if isinstance(node, CollectionNode):
            _check_growth(node)
        try:
            return self.constructor.construct_document(node)
        except yaml.YAMLError as e:
            self.constructor = SafeConstructor()  # drop half-built state
            raise Bad(node, f"bad YAML value: {yaml_reason(e)}", error_line(e, "")) from None

    def shown(self, node: Node) -> str:
        """A node's value as a message shows it (a value YAML cannot build shows its tag)."""
        try:
            return show(self.value(node))
        except Bad:
            return f"a value tagged {node.tag}"

    def fields(self, entries: dict[str, Pair], parsers: Mapping[str, Parser]) -> dict[str, Any]:
        """Parse each entry with its parser; a bad one is reported and left out."""
        out = {}
        for key, (_, node) in entries.items():
            try:
                out[key] = parsers[key](self, node, key)
            except Bad as e:
                self.report(e.line, e.message)
        return out

    def entries(
        self,
        node: MappingNode,
        where: str,
        allowed: tuple[str, ...] | None,
        hints: tuple[str, ...] = (),
        merges: bool = False,
    ) -> dict[str, Pair]:
        """Key -> (key node, value node) of a mapping; bad, duplicate, unknown keys reported.

        With MERGES, merge keys (<<) are resolved as yaml.safe_load does, the mapping's own
        keys over merged ones; without, each merge key is reported."""
        out: dict[str, Pair] = {}
        own = {id(knode) for knode, _ in node.value}
        for knode, vnode in self._merged(node) if merges else node.value:
            key = knode.value if isinstance(knode, ScalarNode) else None
            if knode.tag == MERGE_TAG:
                message = f"merge keys (<<) are not supported; {self.merge_hint}"
            elif key is None:
                message = f"keys in {where} must be plain strings"
            elif key in out and id(out[key][0]) in own:
                message = (
                    f"duplicate key '{key}' in {where} (first at line {node_line(out[key][0])})"
                )
            elif allowed is not None and key not in allowed:
                message = unknown_key(key, where, allowed + hints)
            else:
                out[key] = (knode, vnode)
                continue
            self.report(node_line(knode), message)
        return out

    def _merged(self, node: MappingNode) -> list[Pair]:
        """A mapping's entries with merge keys resolved: the merged ones first."""
        flat = MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark)
        try:
            self.constructor.flatten_mapping(flat)
        except yaml.YAMLError as e:
            raise Bad(node, f"bad YAML value: {yaml_reason(e)}", error_line(e, "")) from None
        return flat.value


def node_line(node: Node) -> int:
    """The 1-based line a node starts on."""
    return node.start_mark.line + 1


def mapping_keys(node: MappingNode) -> set[str]:
    """The plain keys of a mapping node, unchecked."""
    return {k.value for k, _ in node.value if isinstance(k, ScalarNode)}


def show(value: Any) -> str:
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


def unknown_key(key: str, where: str, known: tuple[str, ...]) -> str:
    """The message for a key not in KNOWN: the closest known key, or all of them."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown key '{key}' in {where}; {hint}"


def error_line(e: Exception, text: str) -> int | None:
    """1-based line of a YAML error (its mark, or a reader error's position)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(e, "position", None)
    return text.count("\n", 0, position) + 1 if position is not None and text else None


def yaml_reason(e: Exception) -> str:
    """What a YAML error says is wrong, without its marks."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None) or getattr(e, "reason", None)]
    return ", ".join(p for p in parts if p) or str(e)


# ---------------------------------------------------------------- value parsers
# each takes (reader, value node, key) and returns the value, or raises Bad naming the key


def checked(r: Reader, node: Node, key: str, want: str, ok: Callable[[Any], bool]) -> Any:
    """The node's value when OK says so; else Bad: "'KEY' must be WANT, got ..."."""
    value = r.value(node)
    if not ok(value):
        raise Bad(node, f"'{key}' must be {want}, got {show(value)}")
    return value


def string(r: Reader, node: Node, key: str) -> str:
    return checked(r, node, key, "a string", lambda v: isinstance(v, str))


def json_mapping(r: Reader, node: Node, key: str) -> dict[str, Any]:
    """A mapping with string keys whose values JSON can hold (no dates, sets, binary data,
    NaN or infinity): it is sent to servers or written to records as it is."""
    value = checked(r, node, key, "a mapping with string keys", string_keyed)
    json_only(node, f"'{key}'")
    return value


def json_only(node: Node, where: str) -> None:
    """Bad at the first node under NODE (an alias once) that JSON cannot hold; WHERE names
    the value in the message ("'params' of target 'x'")."""
    seen: set[int] = set()
    todo = [node]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        _json_node(item, where)
        if isinstance(item, MappingNode):
            for knode, _ in item.value:
                _json_key(knode, where)
            todo += [n for pair in reversed(item.value) for n in reversed(pair)]
        elif isinstance(item, CollectionNode):
            todo += reversed(item.value)  # popped in the file's order


def _json_node(node: Node, where: str) -> None:
    name = node.tag.removeprefix(YAML_TAG)
    if name in NOT_JSON:
        raise Bad(node, f"{where} holds {NOT_JSON[name]}")
    if isinstance(node, ScalarNode) and name == "float" and not _finite(node):
        raise Bad(node, f"{where} holds {node.value}, not a finite number (JSON has none)")


def _json_key(node: Node, where: str) -> None:
    if not isinstance(node, ScalarNode) or node.tag not in (YAML_TAG + "str", YAML_TAG + "int"):
        raise Bad(node, f"keys in {where} must be strings (or integers), got {node.value!r}")


def _check_growth(node: Node) -> None:
    """Bad when aliases make NODE's value more than MAX_ALIAS_GROWTH larger (in nodes plus
    characters) than its nodes counted once each, or when the value holds itself."""
    sizes: dict[int, int] = {}  # node id -> expanded size; -1 while it is being counted
    once = 0

    def size(item: Node) -> int:
        nonlocal once
        known = sizes.get(id(item))
        if known is not None:
            if known < 0:
                raise Bad(item, "an alias (*name) here refers to a value that holds it")
            return known
        sizes[id(item)] = -1
        own = 1 + (len(item.value) if isinstance(item, ScalarNode) else 0)
        once += own
        children = item.value if isinstance(item, CollectionNode) else []
        pairs = children if isinstance(item, MappingNode) else [(c,) for c in children]
        total = own + sum(size(child) for pair in pairs for child in pair)
        if total - once > MAX_ALIAS_GROWTH:
            raise Bad(
                node,
                f"aliases (*name) expand this value past {MAX_ALIAS_GROWTH:,} "
                "nodes and characters beyond its own text",
            )
        sizes[id(item)] = total
        return total

    try:
        size(node)
    except RecursionError:
        raise Bad(node, "the value is nested too deeply") from None


def boolean(r: Reader, node: Node, key: str) -> bool:
    return checked(r, node, key, "true or false", lambda v: isinstance(v, bool))


def positive_int(r: Reader, node: Node, key: str) -> int:
    return checked(r, node, key, "a positive integer", lambda v: is_number(v, int) and v >= 1)


def positive_number(r: Reader, node: Node, key: str) -> float:
    ok = lambda v: is_number(v) and 0 < v < math.inf  # noqa: E731  (NaN is not above 0)
    return checked(r, node, key, "a positive number", ok)


def string_keyed(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def is_number(value: Any, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """An int (or float) that is not a bool (YAML's true is an int to Python)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def _finite(node: ScalarNode) -> bool:
    return math.isfinite(SafeConstructor().construct_yaml_float(node))
