"""--dry-run: the first request of each conversation, secrets masked, nothing sent.

Each conversation is played by the real turn loop (runner/engine/conversation.py) through the
real client, whose transport only captures (runner/client/providers/transport.py, `Capture`): the
request shown is the one a run would send, params merged and messages built the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from runner.client.client import TargetClient
from runner.client.providers.transport import Capture
from runner.engine.conversation import run_conversation
from runner.spec.plan import Conversation, Plan
from runner.spec.targets import Target, mock_base_url

MOCK_PLACEHOLDER = "http://127.0.0.1:<mock port>"
UNSET = "<unset>"  # where a dry run shows a key that is not set
HIDDEN = "***"  # where it shows a key that is set
BATCH = 256  # conversations played per turn of the event loop: its start-up is not free


@dataclass(slots=True)
class Dry:
    """One target's client for the dry run, the transport it captures with, and what is
    shown in place of its key."""

    client: TargetClient
    capture: Capture
    hidden: str


def dry_run(
    plan: Plan, stream: bool, skip: set[str] | frozenset[str] = frozenset()
) -> Iterator[str]:
    """The first request of every planned conversation (but those in SKIP), secrets masked;
    nothing is sent. Conversations are played BATCH at a time in one event loop."""
    dries: dict[str, Dry] = {}
    todo = (conv for conv in plan if conv.id not in skip)
    with asyncio.Runner() as loop:
        while batch := list(islice(todo, BATCH)):
            yield from loop.run(_firsts(batch, dries, stream))


async def _firsts(batch: list[Conversation], dries: dict[str, Dry], stream: bool) -> list[str]:
    """Each conversation played until its first request, and that request as text."""
    shown = []
    for conv in batch:
        dry = dries.get(conv.target.name)
        if dry is None:
            dry = dries[conv.target.name] = _dry(conv.target, stream)
        await run_conversation(conv, dry.client)
        if not dry.capture.requests:  # no user turn: nothing would be sent
            shown.append(f"# {conv.id}\n(no request)\n")
            continue
        request = dry.capture.requests.pop()
        shown.append(f"# {conv.id}\n{request.masked(dry.client.target.key, dry.hidden)}\n")
    return shown


def _dry(target: Target, stream: bool) -> Dry:
    """The target as a dry run shows it: a mock's address as a placeholder, an unset key as
    UNSET (a dry run does not need the key); its client captures instead of sending, and
    does not wait for its rpm and tpm (nothing is sent)."""
    target = replace(target, rpm=None, tpm=None)
    if target.mock is not None:
        target = replace(target, base_url=mock_base_url(target.provider, MOCK_PLACEHOLDER))
    hidden = HIDDEN
    if target.api_key_env and not target.key:
        target, hidden = replace(target, key=UNSET), UNSET
    capture = Capture()
    return Dry(TargetClient(target, stream, _ignore, transport=capture), capture, hidden)


def _ignore(record: dict[str, Any]) -> None:
    """A dry run's attempts are not recorded."""
