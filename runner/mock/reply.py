"""The mock model: a deterministic reply and token counts from the conversation it sees."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from runner.mock.judge import verdict_text
from runner.mock.user import user_text

Message = tuple[str, str]  # (role, text); role is system | user | assistant | tool (a result)

BLOCK_MARKER = "[[block]]"  # last user text containing it: the prompt is blocked / filtered
ERROR_MARKER = "[[error]]"  # last user text containing it: 500, or an in-stream error midway
SEED_MARKER = "[[seed]]"  # last user text containing it: the reply ends with " seed=N" as sent
LOOP_MARKER = "[[tool-loop]]"  # last user text containing it: calls its tools again and again
IMAGE = "[image]"  # what an image part reads as to the mock model (counted in the reply)
CALL = re.compile(r"\bcall ([A-Za-z0-9_-]+) ")  # `call NAME {json args}` in the last user text

STOP, LENGTH, BLOCKED, FAILED = "stop", "length", "content_filter", "error"

EFFORT_TOKENS = {
    "none": 0,
    "minimal": 8,
    "low": 16,
    "medium": 32,
    "high": 64,
    "xhigh": 96,
    "max": 128,
}
PIECE_CHARS = 12
CLIP_CHARS = 60
CACHE_BLOCK = 16


def tokens(text: str) -> int:
    """Simulated token count: about four characters a token, at least one."""
    return (len(text) + 3) // 4 or 1


def length_tokens(chars: int) -> int:
    """tokens() of a text of that many characters."""
    return (chars + 3) // 4 or 1


def clip(text: str) -> str:
    """One line, at most CLIP_CHARS characters plus an ellipsis when longer."""
    if len(text) <= CLIP_CHARS and "\n" not in text and "\r" not in text:
        return text
    flat = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return flat if len(flat) <= CLIP_CHARS else flat[:CLIP_CHARS] + "…"


def digest(text: str) -> str:
    """First eight hex digits of the text's sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def last_user_index(messages: Sequence[Message]) -> int:
    """Index of the last user message, or -1 when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i][0] == "user":
            return i
    return -1


def last_user_text(messages: Sequence[Message]) -> str:
    """Text of the last user message ("" when there is none)."""
    i = last_user_index(messages)
    return messages[i][1] if i >= 0 else ""


def _quotable(role: str, text: str) -> bool:
    return role == "user" or (role == "assistant" and not text.startswith("mock:"))


def reply_text(messages: Sequence[Message]) -> str:
    """The full deterministic reply for a conversation (see SPEC "Mock server"); the tool
    results that follow the last user message are echoed, images received counted."""
    i = last_user_index(messages)
    last = messages[i][1] if i >= 0 else ""
    head = f'mock: {len(messages)} messages; last user #{digest(last)}: "{clip(last)}"'
    images = sum(text.count(IMAGE) for role, text in messages if role == "user")
    if images:
        head += f"; images: {images}"
    results = [text for role, text in messages[i + 1 :] if role == "tool"] if i >= 0 else []
    if results:
        head += " | tool results: " + "; ".join(clip(text) for text in results)
    before = messages[:i] if i >= 0 else messages
    earlier = [f'{role} "{clip(text)}"' for role, text in before if _quotable(role, text)]
    return head + " | earlier: " + "; ".join(earlier) if earlier else head


def tool_calls(messages: Sequence[Message], tools: Collection[str]) -> tuple[Call, ...]:
    """The calls the mock model makes: each `call NAME {json args}` of the last user text
    naming a declared tool, in order; none once results follow that message (unless it
    holds LOOP_MARKER: then it calls again every time)."""
    i = last_user_index(messages)
    if i < 0 or not tools:
        return ()
    last = messages[i][1]
    if LOOP_MARKER not in last and any(role == "tool" for role, _ in messages[i + 1 :]):
        return ()
    calls = []
    for match in CALL.finditer(last):
        try:
            args, _ = json.JSONDecoder().raw_decode(last, match.end())
        except ValueError:
            continue
        if match.group(1) in tools and isinstance(args, dict):
            calls.append(
                (match.group(1), json.dumps(args, ensure_ascii=False, separators=(",", ":")))
            )
    return tuple(calls)


def prompt_usage(messages: Sequence[Message]) -> tuple[int, int]:
    """(input tokens, cached tokens) in one pass; see input_tokens and cached_tokens."""
    costs = [((len(text) + 3) // 4 or 1) + 3 for _, text in messages]
    total = sum(costs)
    prefix = total - costs[-1] if costs else 0
    return total, prefix // CACHE_BLOCK * CACHE_BLOCK


def input_tokens(messages: Sequence[Message]) -> int:
    """Prompt tokens: each message's text tokens plus three for its framing."""
    return prompt_usage(messages)[0]


def cached_tokens(messages: Sequence[Message]) -> int:
    """Simulated prefix cache: all but the last message, rounded down to a multiple of 16."""
    return prompt_usage(messages)[1]


def effort_tokens(effort: object) -> int:
    """Reasoning tokens for an OpenAI reasoning effort (unknown or missing: 32)."""
    return EFFORT_TOKENS.get(effort, 32) if isinstance(effort, str) else 32


def budget_tokens(budget: object) -> int:
    """Thinking tokens for a Gemini thinkingBudget: -1 → 32, >0 → min(budget, 64), else 0."""
    if not isinstance(budget, int) or isinstance(budget, bool):
        return 0
    return 32 if budget == -1 else min(budget, 64) if budget > 0 else 0


def pieces(text: str) -> list[str]:
    """Stream pieces of about PIECE_CHARS characters; they join back to the text."""
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def stream_pieces(reply: Reply) -> list[str]:
    """What a stream sends: every piece, or only the first half when the reply FAILED."""
    parts = pieces(reply.text)
    return parts[: len(parts) // 2] if reply.finish == FAILED else parts


Call = tuple[str, str]  # a tool call the mock makes: (tool name, arguments as JSON text)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the mock model answers, with its usage; finish is STOP/LENGTH/BLOCKED/FAILED.
    A reply with calls has no text (its finish is STOP: each protocol says "tool calls")."""

    text: str
    finish: str
    messages: int
    input_tokens: int
    cached_tokens: int
    text_tokens: int
    reasoning_tokens: int
    calls: tuple[Call, ...] = ()

    def call_id(self, k: int) -> str:
        """The id of call K: the same for the same conversation (a digest of the calls)."""
        return f"{digest(repr(self.calls))}{self.input_tokens:04x}{k}"

    @property
    def output_tokens(self) -> int:
        """Generated tokens, reasoning included (OpenAI's completion/output tokens)."""
        return self.text_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        """Prompt plus output tokens."""
        return self.input_tokens + self.output_tokens


def _finish(last: str) -> str:
    if BLOCK_MARKER in last:
        return BLOCKED
    return FAILED if ERROR_MARKER in last else STOP


def make_reply(
    messages: Sequence[Message],
    reasoning: int = 0,
    max_tokens: int | None = None,
    seed: object = None,
    tools: Collection[str] = (),
) -> Reply:
    """Answer a conversation; max_tokens (reasoning included) truncates to finish LENGTH.
    SEED_MARKER in the last user text: the reply says the request's seed (each sample of a
    repeated conversation is sent its own), so a check can pass on some samples only.
    TOOLS are the names of the tools the request declares (tool_calls says which it calls)."""
    last = last_user_text(messages)
    finish = _finish(last)
    usage = (len(messages), *prompt_usage(messages))
    if finish == BLOCKED:
        return Reply("", BLOCKED, *usage, 0, 0)
    calls = tool_calls(messages, tools)
    if calls and finish == STOP:
        return Reply("", STOP, *usage, tokens("".join(a for _, a in calls)), reasoning, calls)
    said = lambda: f'#{digest(last)}: "{clip(last)}"'  # noqa: E731
    played = user_text(messages, said, seed)  # the mock as a simulated user: runner/mock/user.py
    text = played or verdict_text(last) or reply_text(messages)
    if SEED_MARKER in last and played is None:
        text += f" seed={'none' if seed is None else seed}"
    out = tokens(text)
    if max_tokens is None or finish == FAILED or reasoning + out <= max_tokens:
        return Reply(text, finish, *usage, out, reasoning)
    reasoning = max(0, min(reasoning, max_tokens))
    budget = max(0, max_tokens - reasoning)
    return Reply(text[: budget * 4], LENGTH, *usage, budget, reasoning)
