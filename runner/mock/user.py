"""The mock as a simulated user: a deterministic user message for a conversation whose system
prompt (the persona) holds `[[mock-user stop-after=N marker=TEXT]]`.

It writes user message number K of the conversation, K = 1 + its own earlier messages (the
assistant messages of what it is sent: the roles are swapped), as a numbered follow-up that
quotes the last message it was sent (the assistant's reply): `user message K, after #<digest>:
"<the reply, clipped>"`, ending with ` seed=N` when the request carries a seed. Once K is
past N (`stop-after`) it answers `Thank you, that is all. TEXT` (`marker`, default
###STOP###). Without stop-after it never stops.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Message = tuple[str, str]  # (role, text), as runner/mock/reply.py has it

PERSONA = re.compile(r"\[\[mock-user(?: stop-after=(\d+))?(?: marker=(\S+?))?\]\]")
DEFAULT_MARKER = "###STOP###"


def user_text(
    messages: Sequence[Message], said: Callable[[], str], seed: object = None
) -> str | None:
    """The user message the mock writes, or None when no system message holds the persona
    marker (the mock then answers as the assistant). SAID: `#<digest>: "<clipped>"` of the
    last user message."""
    first = messages[0] if messages else ("", "")
    found = PERSONA.search(first[1]) if first[0] == "system" else None  # the leading system
    if found is None:
        return None
    number = 1 + sum(role == "assistant" for role, _ in messages)
    stop_after, marker = found.group(1), found.group(2) or DEFAULT_MARKER
    if stop_after is not None and number > int(stop_after):
        return f"Thank you, that is all. {marker}"
    text = f"user message {number}, after {said()}"
    return text + (f" seed={seed}" if seed is not None else "")
