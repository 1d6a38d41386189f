"""A message: a role and a list of parts, built once from the scenario and mapped to the
wire by each provider (runner/client/providers/). Text is the only part today; an image, a tool
call and a tool result join `Part` when scenarios can say them.

A transcript record keeps the messages in OpenAI's shape (`{"role", "content": text}`,
record version 1) while every part is text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Text:
    """A piece of text."""

    text: str


Part = Text  # the union of every kind of part (one kind so far)


@dataclass(slots=True, frozen=True)
class Message:
    """One message of a conversation: its role (system, user or assistant) and its parts."""

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

    def record(self) -> dict[str, str]:
        """The message as a transcript record holds it (version 1: text content)."""
        return {"role": self.role, "content": self.text}


def as_records(system: str | None, messages: Iterable[Message]) -> list[dict[str, str]]:
    """A conversation as a transcript record holds it: the system prompt first, if any."""
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, *(message.record() for message in messages)]
