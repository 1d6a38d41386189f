"""A message: a role and a list of parts, built once from the scenario and mapped to the
wire by each provider (runner/client/providers/). Parts are text, images (user turns), tool
calls (assistant turns) and tool results (`tool` messages, one result each).

A transcript record keeps the messages in OpenAI's shape: `{"role", "content": text}`
(record version 1) while every part is text; a conversation with tool calls or images is
recorded as OpenAI's chat shape takes them (assistant `tool_calls`, `role: tool` with
`tool_call_id`, content parts with images as references), record version 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class Text:
    """A piece of text."""

    text: str


@dataclass(slots=True, frozen=True)
class Image:
    """An image of a user turn: `url` is what OpenAI takes (an https URL, or a data URL
    built from the file); `ref` is what records keep (the path as written, or the URL),
    never the base64; media_type and data (base64) are set unless it is an https URL."""

    url: str
    ref: str
    sha256: str | None = None
    media_type: str | None = None
    data: str | None = None
    path: str | None = None  # the file read (its sha256 goes into the manifest)

    @property
    def text(self) -> str:
        return ""


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A call the model made (or a scripted one): its id kept exactly as the server gave
    it, the tool's name and its arguments as JSON text. wire_id is False where the protocol
    gave no id (Gemini may not): the id is then ours, and is not sent back."""

    id: str
    name: str
    arguments: str
    wire_id: bool = True
    signature: str | None = None  # Gemini's thoughtSignature on the part, replayed as is

    @property
    def text(self) -> str:
        return ""


@dataclass(slots=True, frozen=True)
class ToolResult:
    """The result of one call: the call's id and tool name, the result as text (JSON text
    for a result that is not a string)."""

    call_id: str
    name: str
    content: str
    wire_id: bool = True

    @property
    def text(self) -> str:
        return ""


@dataclass(slots=True, frozen=True)
class Tool:
    """A tool the model may call: its name, description and JSON Schema of parameters."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool | None = None

    def record(self) -> dict[str, Any]:
        """The tool as OpenAI's chat shape (and its fine-tuning format) declares it."""
        function: dict[str, Any] = {"name": self.name, "description": self.description,
                                    "parameters": self.parameters}  # fmt: skip
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


Part = Text | Image | ToolCall | ToolResult  # the union of every kind of part


@dataclass(slots=True, frozen=True)
class Message:
    """One message of a conversation: its role (system, user, assistant or tool) and its
    parts."""

    role: str
    parts: tuple[Part, ...]

    @classmethod
    def of_text(cls, role: str, text: str) -> Message:
        """A message of one text part."""
        return cls(role, (Text(text),))

    @property
    def text(self) -> str:
        """The text of every text part, joined."""
        parts = self.parts
        if len(parts) == 1:  # the common case, first
            return parts[0].text
        return "".join(part.text for part in parts)

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        """The tool calls among the parts."""
        return tuple(p for p in self.parts if isinstance(p, ToolCall))

    @property
    def plain(self) -> bool:
        """Whether every part is text (the message is recorded as version 1 keeps it)."""
        return all(type(part) is Text for part in self.parts)

    def record(self) -> dict[str, Any]:
        """The message as a transcript record holds it, in OpenAI's chat shape."""
        if self.plain:
            return {"role": self.role, "content": self.text}
        if self.role == "tool":
            result = self.parts[0]
            assert isinstance(result, ToolResult)
            return {"role": "tool", "tool_call_id": result.call_id, "name": result.name,
                    "content": result.content}  # fmt: skip
        calls = self.calls
        if calls:
            return {"role": self.role, "content": self.text or None,
                    "tool_calls": [call_record(c) for c in calls]}  # fmt: skip
        return {"role": self.role, "content": [part_record(p) for p in self.parts]}


def call_record(call: ToolCall) -> dict[str, Any]:
    """A tool call as OpenAI's chat shape (and its fine-tuning format) writes it."""
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}  # fmt: skip


def part_record(part: Part) -> dict[str, Any]:
    """A content part of a record: text, or an image by reference (path or URL, sha256)."""
    if isinstance(part, Image):
        image: dict[str, Any] = {"url": part.ref}
        if part.sha256:
            image["sha256"] = part.sha256
        if part.media_type:
            image["media_type"] = part.media_type
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": part.text}


def as_records(system: str | None, messages: Iterable[Message]) -> list[dict[str, Any]]:
    """A conversation as a transcript record holds it: the system prompt first, if any."""
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, *(message.record() for message in messages)]
