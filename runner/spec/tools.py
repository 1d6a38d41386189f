"""Tools in a scenario: the tools the model may call, each tool's scripted result, the
scripted tool history (an assistant turn's calls, a tool turn's result) and the images of a
user turn; how each is read from YAML nodes, with file:line problems.

A scripted result is any JSON value (sent as JSON text), a string template (`{{args.NAME}}`
is the call's argument, `{{name}}` a var) or `{python: "module:function"}`: a function of a
file beside the scenario, called as `function(args, vars)`, returning JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, SequenceNode

from runner.encoding import to_json
from runner.messages import Image, Tool
from runner.spec import pycheck
from runner.spec.pycheck import PythonCheck
from runner.spec.variables import PIECE, ScenarioReader
from runner.spec.yamlnodes import (
    Bad,
    Reader,
    boolean,
    json_mapping,
    json_only,
    mapping_keys,
    node_line,
    show,
    string,
)

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what every protocol takes (Chat's rule)
TOOL_KEYS = ("name", "description", "parameters", "strict")
ARG = re.compile(r"(?<!\\)\{\{\s*args\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
IMAGE_TYPES = {  # magic bytes -> media type: the types every protocol with images takes
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # inline images past this are refused by the providers
DATA_URL = re.compile(r"^data:([\w/+.-]+);base64,(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Result:
    """A tool's scripted result: a JSON value, a template string, or a function."""

    name: str
    value: Any = None
    function: PythonCheck | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """A call of a scripted assistant turn: the tool's name and its arguments."""

    name: str
    args: dict[str, Any]


def read_tools(r: Reader, node: Node, key: str) -> tuple[Tool, ...]:
    """A list of {name, description, parameters, strict}; parameters (a JSON Schema
    mapping) is required, names are unique."""
    if not isinstance(node, SequenceNode) or not node.value:
        raise Bad(node, f"'tools' must be a non-empty list of tools, got {r.shown(node)}")
    tools: dict[str, Tool] = {}
    for item in node.value:
        if not isinstance(item, MappingNode):
            raise Bad(
                item, f"a tool must be a mapping {{name, parameters, ...}}, got {r.shown(item)}"
            )
        entries = r.entries(item, "tool", TOOL_KEYS)
        for needed in ("name", "parameters"):
            if needed not in entries:
                raise Bad(item, f"a tool needs '{needed}'")
        v = r.fields(entries, {"name": string, "description": string,
                               "parameters": json_mapping, "strict": boolean})  # fmt: skip
        name = v.get("name", "")
        if name and not TOOL_NAME.match(name):
            raise Bad(
                entries["name"][1],
                f"tool name {show(name)}: letters, digits, _ and - only, at most 64",
            )
        if name in tools:
            raise Bad(entries["name"][1], f"tool '{name}' is declared twice")
        if "name" in v and "parameters" in v:
            tools[name] = Tool(name, v.get("description", ""), v["parameters"], v.get("strict"))
    return tuple(tools.values())


def read_results(r: ScenarioReader, node: Node, key: str) -> dict[str, Result]:
    """Tool name -> its scripted result."""
    if not isinstance(node, MappingNode):
        raise Bad(
            node, f"'tool_results' must be a mapping of tool names to results, got {r.shown(node)}"
        )
    out = {}
    for name, (knode, vnode) in r.entries(node, "tool_results", None).items():
        try:
            out[name] = _result(r, name, vnode, node_line(knode))
        except Bad as e:
            r.report(e.line, e.message)
    return out


def _result(r: ScenarioReader, name: str, node: Node, line: int) -> Result:
    if isinstance(node, MappingNode) and mapping_keys(node) == {"python"}:
        spec = string(r, node.value[0][1], "python")
        try:
            return Result(name, function=pycheck.load(spec, r.path, ("args", "vars")), line=line)
        except ValueError as e:
            raise Bad(node, str(e)) from None
    json_only(node, f"the result of '{name}'")
    value = r.value(node)
    if isinstance(value, str):
        r.text(node, ARG.sub("x", value))  # its vars are checked like any template's
    return Result(name, value, line=line)


def check_results(r: Reader, tools: tuple[Tool, ...], results: dict[str, Result]) -> None:
    """A result for a tool the scenario does not declare is a problem at its line."""
    names = {t.name for t in tools}
    for result in results.values():
        if result.name not in names:
            known = ", ".join(sorted(names)) or "none declared"
            r.report(
                result.line,
                f"'tool_results' names '{result.name}', not a tool of this scenario "
                f"(tools: {known})",
            )


def result_text(value: Any, args: dict[str, Any], values: dict[str, Any]) -> str:
    """A result as sent: a string with {{args.NAME}} and {{var}} filled, else JSON text."""
    if not isinstance(value, str):
        return to_json(value).decode()

    def arg(m: re.Match[str]) -> str:
        given = args.get(m.group(1), "")
        return given if isinstance(given, str) else to_json(given).decode()

    text = ARG.sub(arg, value)
    return PIECE.sub(lambda m: m.group(1) or str(values.get(m.group(2), m.group(0))), text)


# ---------------------------------------------------------------- scripted tool turns


def read_calls(r: Reader, node: Node) -> tuple[ScriptedCall, ...]:
    """{tool_calls: [{name, args}, ...]} of a scripted assistant turn."""
    if not isinstance(node, SequenceNode) or not node.value:
        raise Bad(
            node, f"'tool_calls' must be a non-empty list of {{name, args}}, got {r.shown(node)}"
        )
    calls = []
    for item in node.value:
        if not isinstance(item, MappingNode):
            raise Bad(item, f"a tool call must be {{name, args}}, got {r.shown(item)}")
        entries = r.entries(item, "tool call", ("name", "args"))
        if "name" not in entries:
            raise Bad(item, "a tool call needs 'name'")
        args = json_mapping(r, entries["args"][1], "args") if "args" in entries else {}
        calls.append(ScriptedCall(string(r, entries["name"][1], "name"), args))
    return tuple(calls)


def read_tool_turn(r: Reader, node: Node) -> tuple[str, Any]:
    """{tool: {name, result}}: the result of the earliest unanswered call of that name."""
    if not isinstance(node, MappingNode):
        raise Bad(node, f"a tool turn must be {{name: TOOL, result: ...}}, got {r.shown(node)}")
    entries = r.entries(node, "tool turn", ("name", "result"))
    for needed in ("name", "result"):
        if needed not in entries:
            raise Bad(node, f"a tool turn needs '{needed}'")
    json_only(entries["result"][1], "'result'")
    return string(r, entries["name"][1], "name"), r.value(entries["result"][1])


def check_history(r: Reader, turns: Sequence[Any]) -> None:
    """Each scripted call is answered by a tool turn before the next user turn; each tool
    turn answers a call of its name that is not answered yet."""
    pending: list[tuple[str, int]] = []  # (tool name, line of its call)
    for turn in turns:
        if turn.role == "tool":
            found = next((i for i, (name, _) in enumerate(pending) if name == turn.tool), None)
            if found is None:
                r.report(turn.line, f"tool turn '{turn.tool}' answers no scripted call of it")
            else:
                pending.pop(found)
            continue
        for name, line in pending:
            r.report(line, f"the scripted call of '{name}' has no tool turn answering it")
        pending = [(c.name, turn.line) for c in turn.calls]


# ---------------------------------------------------------------- images


def read_parts(r: ScenarioReader, node: SequenceNode) -> tuple[str | Image, ...]:
    """A user turn as a list of {text: ...} and {image: PATH | https URL | data: URL}."""
    parts: list[str | Image] = []
    for item in node.value:
        keys = mapping_keys(item) if isinstance(item, MappingNode) else set()
        if len(keys) != 1 or not keys <= {"text", "image"}:
            raise Bad(
                item,
                "a part of a user turn must be {text: ...} or {image: ...}, "
                f"got {r.shown(item)}",
            )
        value = string(r, item.value[0][1], keys.pop())
        if "text" in mapping_keys(item):
            parts.append(r.text(item.value[0][1], value))
        else:
            parts.append(load_image(item.value[0][1], value, r.path))
    if not any(isinstance(p, str) for p in parts):
        parts.insert(0, "")
    return tuple(parts)


def load_image(node: Node, given: str, scenario_file: str) -> Image:
    """An image part: an https URL as is; a data: URL checked; a file beside the scenario
    read now, its type known from its first bytes (png, jpeg, gif, webp)."""
    if given.startswith("https://"):
        return Image(given, given, media_type=_type_by_name(given))
    if given.startswith("data:"):
        return _data_url(node, given)
    if "://" in given:
        raise Bad(node, f"image {show(given)}: a path, an https:// URL or a data: URL")
    path = Path(scenario_file).parent / given
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise Bad(node, f"image {given}: cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise Bad(node, f"image {given}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
    media = _sniff(data)
    if media is None:
        raise Bad(node, f"image {given}: not a png, jpeg, gif or webp image")
    encoded = base64.b64encode(data).decode()
    url = f"data:{media};base64,{encoded}"
    digest = hashlib.sha256(data).hexdigest()
    return Image(url, given, digest, media, encoded, path=str(path))


def _data_url(node: Node, given: str) -> Image:
    match = DATA_URL.match(given)
    if match is None or match.group(1) not in MEDIA_TYPES:
        raise Bad(node, f"image: a data: URL must be data:<{'|'.join(MEDIA_TYPES)}>;base64,...")
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise Bad(node, "image: the data: URL's base64 does not decode") from None
    digest = hashlib.sha256(data).hexdigest()
    return Image(given, f"data:{match.group(1)}", digest, match.group(1), match.group(2))


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((t for magic, t in IMAGE_TYPES.items() if data.startswith(magic)), None)


def _type_by_name(url: str) -> str | None:
    suffix = Path(url.split("?")[0]).suffix.lower()
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".gif": "image/gif", ".webp": "image/webp"}.get(suffix)  # fmt: skip
