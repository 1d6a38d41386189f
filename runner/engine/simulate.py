"""The user side of a conversation: the scenario's scripted turns, then (with `simulate:`) the
turns a second target writes playing the user.

The simulated user sees the conversation from its side: its persona as the system prompt,
the assistant's replies as user messages and the user's messages (scripted ones too) as its
own, assistant messages. It sees text only: images, tool calls and tool results are left
out (an assistant message of calls only too). It is asked through its target's client (the
same retry loop, limits and reply cache as any turn); its attempts are usage records with
`"role": "simulated_user"`, and what it spent is counted with the conversation.
"""

from __future__ import annotations

from typing import Any

from runner.client.client import TargetClient
from runner.cost import cost
from runner.engine.tooluse import turn_message
from runner.errors import ApiError, Kind
from runner.messages import Message
from runner.spec.plan import Conversation, seed_of
from runner.spec.scenarios import Turn, fill
from runner.usage import Usage, add_usage, no_usage

ROLE = "simulated_user"  # the role of its usage records
SWAP = {"user": "assistant", "assistant": "user"}
# the simulated user's first message when the conversation has none from the assistant's side
OPENING = "(The conversation starts. Write your first message.)"
SIMULATED = Turn("user", "")  # stands for each turn the simulated user writes


def swapped(history: list[Message]) -> list[Message]:
    """The conversation as the simulated user sees it: its text only (tool messages and
    messages without text left out), roles swapped, starting with a user message (OPENING
    when the assistant has not spoken first)."""
    view = [Message.of_text(SWAP[m.role], m.text) for m in history if m.role in SWAP and m.text]
    if not view or view[0].role != "user":
        view.insert(0, Message.of_text("user", OPENING))
    return view


class UserSide:
    """Where a conversation's user messages come from, one at a time (next)."""

    # one per conversation in flight: slots, not an instance dict
    __slots__ = ("conv", "values", "scripted", "sim", "client", "written", "spent", "ended",
                 "stop_message", "last")  # fmt: skip

    def __init__(
        self, conv: Conversation, values: dict[str, Any], client: TargetClient | None
    ) -> None:
        self.conv, self.values = conv, values
        self.scripted = 0  # the scripted turns given so far
        self.sim = conv.scenario.simulate
        self.client = client if self.sim is not None else None  # a dry run has none
        self.written = 0  # turns the simulated user wrote that were sent
        self.spent: Usage | None = None  # its tokens, from its first reply (a cached one: none)
        self.ended: str | None = None  # "stop" (its marker) or "max_turns"
        self.stop_message: str | None = None  # the message with the marker, not sent
        self.last: dict[str, Any] | None = None  # the last simulated turn's request

    async def next(self, history: list[Message], index: int) -> tuple[Turn, Message] | None:
        """The next turn and its message (vars and captures filled in: a scripted turn's
        with its images or tool calls, a simulated one's text); None when the user side is
        done. ApiError when the simulated user could not answer."""
        turns, i = self.conv.scenario.turns, self.scripted
        if i < len(turns):
            self.scripted += 1
            return turns[i], turn_message(turns[i], i, self.values, history)
        self.last = None
        if self.sim is None or self.client is None:
            return None
        if self.written >= self.sim.max_turns:
            self.ended = "max_turns"
            return None
        text = await self._ask(self.client, history, index)
        if self.sim.stop is not None and self.sim.stop in text:
            self.ended, self.stop_message = "stop", text
            return None
        self.written += 1
        return SIMULATED, Message.of_text("user", text)

    async def _ask(self, client: TargetClient, history: list[Message], index: int) -> str:
        assert self.sim is not None
        conv, target = self.conv, client.target
        params = client.params()
        seed = seed_of(params, target, conv.sample, conv.samples)
        if seed is not None:
            params["seed"] = seed
        persona = fill(self.sim.persona, conv.vars)
        try:
            reply, attempts = await client.complete(
                persona, swapped(history), params, None, conv.id, index,
                sample=conv.sample, role=ROLE,
            )  # fmt: skip
        except ApiError as err:
            err.message = f"the simulated user ({target.name}): {err.message}"
            raise
        if not reply.text:
            raise ApiError(Kind.EMPTY, f"the simulated user ({target.name}) returned no text")
        if attempts:  # a reply replayed from the cache spent nothing
            self.spent = add_usage(self.spent or no_usage(), reply.usage)
        self.last = {
            "target": target.name, "usage": reply.usage, "attempts": attempts,
            "latency_ms": round(reply.latency_ms, 2),
        }  # fmt: skip
        return reply.text

    def mark(self, turn: Turn, record: dict[str, Any]) -> None:
        """A turn record of a turn the simulated user wrote is marked so, with its request."""
        if turn is SIMULATED and self.last is not None:
            record["simulated"] = True
            record["simulated_user"] = self.last

    def finish(self, record: dict[str, Any]) -> None:
        """The transcript record gets `simulation` (how the simulated user ended, what it
        spent) and its cost counts the simulated user's."""
        if self.sim is None:
            return
        name = self.client.target.name if self.client is not None else self.sim.user
        price = self.client.target.price if self.client is not None else None
        usage = self.spent or no_usage()
        spent = cost(usage, price)
        record["simulation"] = {
            "target": name, "turns": self.written, "max_turns": self.sim.max_turns,
            "ended": self.ended, "stop_message": self.stop_message,
            "usage": usage, "cost_usd": spent,
        }  # fmt: skip
        if spent is not None:
            record["cost_usd"] = (record["cost_usd"] or 0.0) + spent
