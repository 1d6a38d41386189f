"""The checks' schema: Expect and Judge, and how each is read from YAML nodes; with the
string parsers that note {{var}} templates, which scenarios and checks share."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import regex
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.finish import FINISH_REASONS, normalise
from runner.spec import pycheck
from runner.spec.pycheck import PythonCheck
from runner.spec.ranges import FRACTION
from runner.spec.variables import ScenarioReader, stand_in
from runner.spec.yamlnodes import (
    Bad,
    Parser,
    Reader,
    boolean,
    checked,
    json_mapping,
    json_only,
    node_line,
    positive_number,
    show,
    string,
    string_keyed,
)


@dataclass(frozen=True, slots=True)
class Judge:
    """A check graded by a model: the rubric, and the target that grades (None: --judge)."""

    rubric: str
    target: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class Schema:
    """A json_schema check: the schema, where it came from, and its validator (made once)."""

    schema: dict[str, Any]
    source: str  # "inline", or the schema file as the scenario names it
    validator: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class Similar:
    """A similar check: difflib's ratio of the reply to `to` must be at least `min`."""

    to: str
    min: float = 0.8  # SIMILAR_MIN


@dataclass(frozen=True, slots=True)
class Called:
    """A tool_called check: the turn called NAME (with ARGS among its arguments, when
    given), TIMES times when given, else at least once."""

    name: str
    args: dict[str, Any] | None = None
    times: int | None = None


@dataclass(frozen=True, slots=True)
class Expect:
    """Checks on one generated reply. Strings may hold {{var}} templates."""

    contains: tuple[str, ...] = ()
    contains_any: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: str | None = None
    equals: str | None = None
    json: bool = False
    json_schema: Schema | None = None
    python: tuple[PythonCheck, ...] = ()
    similar: Similar | None = None
    max_latency_ms: float | None = None
    finish_reason: str | None = None
    ignore_case: bool = False
    judge: Judge | None = None
    tool_called: tuple[Called, ...] = ()
    no_tool_called: tuple[str, ...] | None = None  # (): no tool at all; else these tools


EXPECT_KEYS = tuple(f.name for f in fields(Expect))


def read_expect(r: ScenarioReader, node: Node, key: str) -> Expect:
    if not isinstance(node, MappingNode):
        raise Bad(node, f"'expect' must be a mapping of checks, got {r.shown(node)}")
    return Expect(**r.fields(r.entries(node, "expect", EXPECT_KEYS), EXPECT_FIELDS))


def _judge(r: ScenarioReader, node: Node, key: str) -> Judge:
    """{rubric: TEXT, target: NAME}, or the rubric alone as a string."""
    if isinstance(node, ScalarNode):
        return Judge(text(r, node, "judge"), line=node_line(node))
    if not isinstance(node, MappingNode):
        want = "a rubric or {rubric: ..., target: ...}"
        raise Bad(node, f"'judge' must be {want}, got {r.shown(node)}")
    entries = r.entries(node, "judge", ("rubric", "target"))
    if "rubric" not in entries:
        raise Bad(node, "'judge' needs 'rubric: ...' (what the reply must do to pass)")
    v = r.fields(entries, {"rubric": text, "target": string})
    if "rubric" not in v:  # its problem is reported; the scenario is dropped
        return Judge("", line=node_line(node))
    if not v["rubric"].strip():
        raise Bad(entries["rubric"][1], "'rubric' must not be empty")
    return Judge(v["rubric"], v.get("target"), node_line(node))


SIMILAR_MIN = 0.8
SCHEMA_EXTRA = "pip install 'dialogue-runner[schema]'"


def _json_schema(r: Reader, node: Node, key: str) -> Schema:
    """A JSON Schema (a mapping), or the path of a JSON file holding one (relative to the
    scenario's file); checked against its metaschema now. Needs the `schema` extra."""
    try:
        import jsonschema
    except ImportError:
        raise Bad(node, f"'json_schema' needs the jsonschema package: {SCHEMA_EXTRA}") from None
    value = r.value(node)
    if isinstance(value, str):
        schema, source = _schema_file(node, value, r.path), value
    else:
        want = "a schema (a mapping) or the path of a JSON schema file"
        schema, source = checked(r, node, key, want, string_keyed), "inline"
        json_only(node, "'json_schema'")
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top"
        message = f"'json_schema' ({source}) is not a JSON Schema: {e.message} (at {where})"
        raise Bad(node, message) from None
    return Schema(schema, source, cls(schema, format_checker=cls.FORMAT_CHECKER))


def _schema_file(node: Node, name: str, scenario_file: str) -> dict[str, Any]:
    path = Path(scenario_file).parent / name
    try:
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise Bad(node, f"'json_schema': {name}:{e.lineno}: not JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise Bad(node, f"'json_schema': cannot read {path}: {why}") from None
    if not isinstance(schema, dict):
        raise Bad(node, f"'json_schema': {name} holds a {type(schema).__name__}, not a schema")
    return schema


def _python(r: Reader, node: Node, key: str) -> tuple[PythonCheck, ...]:
    """MODULE:FUNCTION, or a list of them: each loaded now (runner/spec/pycheck.py)."""
    items = node.value if isinstance(node, SequenceNode) else [node]
    checks = []
    for item in items:
        try:
            checks.append(pycheck.load(string(r, item, key), r.path))
        except ValueError as e:
            raise Bad(item, str(e)) from None
    return tuple(checks)


def _similar(r: ScenarioReader, node: Node, key: str) -> Similar:
    """{to: TEXT, min: RATIO}; min defaults to 0.8."""
    if not isinstance(node, MappingNode):
        raise Bad(node, f"'similar' must be {{to: TEXT, min: 0.8}}, got {r.shown(node)}")
    entries = r.entries(node, "similar", ("to", "min"))
    if "to" not in entries:
        raise Bad(node, "'similar' needs 'to: ...' (the text the reply should resemble)")
    v = r.fields(entries, {"to": text, "min": fraction})
    return Similar(v.get("to", ""), v.get("min", SIMILAR_MIN))


def _tool_called(r: Reader, node: Node, key: str) -> tuple[Called, ...]:
    """{name, args, times}, or a list of them."""
    out = []
    for item in node.value if isinstance(node, SequenceNode) else [node]:
        if not isinstance(item, MappingNode):
            raise Bad(item, f"'tool_called' must be {{name, args, times}}, got {r.shown(item)}")
        entries = r.entries(item, "tool_called", ("name", "args", "times"))
        if "name" not in entries:
            raise Bad(item, "'tool_called' needs 'name' (the tool)")
        args = json_mapping(r, entries["args"][1], "args") if "args" in entries else None
        times = non_negative_int(r, entries["times"][1], "times") if "times" in entries else None
        out.append(Called(string(r, entries["name"][1], "name"), args, times))
    return tuple(out)


def _no_tool_called(r: Reader, node: Node, key: str) -> tuple[str, ...]:
    """true (no tool at all), or a tool's name or a list of them."""
    value = r.value(node)
    if value is True:
        return ()
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        return (value,) if isinstance(value, str) else tuple(value)
    raise Bad(node, f"'{key}' must be true, a tool's name or a list of them, got {show(value)}")


def non_negative_int(r: Reader, node: Node, key: str) -> int:
    return checked(r, node, key, "a whole number of at least 0", _count)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def fraction(r: Reader, node: Node, key: str) -> float:
    """A number from 0 to 1 (similar's min, a scenario's min_pass_rate)."""
    return checked(r, node, key, "a number from 0 to 1", FRACTION.holds)


def _finish_reason(r: Reader, node: Node, key: str) -> str:
    """One of the normalised finish reasons (any case); a provider's own name is refused
    with the normalised one it stands for."""
    value = string(r, node, key)
    if value.lower() in FINISH_REASONS:
        return value
    hint = (
        f" ('{value}' is recorded as '{normalise(value)}')" if normalise(value) != "other" else ""
    )
    raise Bad(node, f"'{key}' must be one of {', '.join(FINISH_REASONS)}{hint}")


def text(r: ScenarioReader, node: Node, key: str) -> str:
    """A string that may hold {{var}} templates."""
    return r.text(node, string(r, node, key))


def strings(r: ScenarioReader, node: Node, key: str, single: bool) -> tuple[str, ...]:
    """A list of strings (or, when SINGLE, also one string), templates noted."""
    want = "a string or a list of strings" if single else "a list of strings"
    if not isinstance(node, SequenceNode) and not single:
        raise Bad(node, f"'{key}' must be {want}, got {r.shown(node)}")
    out = []
    for item in node.value if isinstance(node, SequenceNode) else [node]:
        value = r.value(item)
        if not isinstance(value, str):
            raise Bad(item, f"'{key}' must be {want}, got {show(value)}")
        out.append(r.text(item, value))
    return tuple(out)


def _regex(r: ScenarioReader, node: Node, key: str) -> str:
    value = text(r, node, key)
    problem = regex_problem(stand_in(value))  # filled per conversation: see check_filled
    if problem:
        raise Bad(node, f"bad regex {show(value)}: {problem}")
    return value


@functools.lru_cache(maxsize=4096)
def regex_problem(pattern: str) -> str | None:
    """Why PATTERN is not a regex (the `regex` package's syntax, as checks use it), or None."""
    try:
        regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError, ValueError) as e:
        return str(e)
    return None


EXPECT_FIELDS: dict[str, Parser] = {
    **dict.fromkeys(("contains", "contains_any", "not_contains"), partial(strings, single=True)),
    "regex": _regex,
    "equals": text,
    "json": boolean,
    "json_schema": _json_schema,
    "python": _python,
    "similar": _similar,
    "max_latency_ms": positive_number,
    "finish_reason": _finish_reason,
    "ignore_case": boolean,
    "judge": _judge,
    "tool_called": _tool_called,
    "no_tool_called": _no_tool_called,
}
