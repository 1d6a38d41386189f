"""Replies to the same turn, their differences marked word by word (difflib on words).

The first reply is the reference: in it, the words some other reply lacks are marked; in
each other reply, the words the reference lacks. Every piece of text is escaped (`esc`);
the only markup added is `<mark class="diff">`.
"""

from __future__ import annotations

import difflib
import re

from runner.results.compare_html import esc

# a run of spaces, one CJK ideograph or kana (those languages write no spaces between
# words), a run of other letters and digits, or one other character: every character of
# a text falls in exactly one token, so the tokens joined are the text
TOKEN = re.compile(
    r"\s+|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
    r"|[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[^\w\s]"
)
MAX_TOKENS = 8000  # longer replies are shown unmarked: difflib's time grows with the product


def tokens(text: str) -> list[str]:
    """The text's tokens (spaces, words, signs); joined, they are the text."""
    return TOKEN.findall(text)


def _words(parts: list[str]) -> list[int]:
    """Positions of the tokens that are words or signs, not spaces."""
    return [i for i, t in enumerate(parts) if not t.isspace()]


def _changed(a: list[str], b: list[str]) -> tuple[set[int], set[int]]:
    """Positions (in a, in b) of the words that the other one lacks."""
    wa, wb = _words(a), _words(b)
    matcher = difflib.SequenceMatcher(None, [a[i] for i in wa], [b[i] for i in wb], False)
    only_a: set[int] = set()
    only_b: set[int] = set()
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op != "equal":
            only_a.update(wa[a0:a1])
            only_b.update(wb[b0:b1])
    return only_a, only_b


def _render(parts: list[str], changed: set[int]) -> str:
    """The tokens escaped, each run of changed words (and the spaces inside it) in a mark."""
    out, open_mark = [], False
    for i, part in enumerate(parts):
        inside = i in changed or (open_mark and part.isspace() and i + 1 in changed)
        if inside and not open_mark:
            out.append('<mark class="diff">')
        elif not inside and open_mark:
            out.append("</mark>")
        open_mark = inside
        out.append(esc(part))
    if open_mark:
        out.append("</mark>")
    return "".join(out)


def marked(texts: list[str | None]) -> list[str | None]:
    """Each reply's HTML with its differences marked (None where there is no reply, and
    for every reply when fewer than two are there or one is too long to compare)."""
    present = [(i, tokens(t)) for i, t in enumerate(texts) if t is not None]
    if len(present) < 2 or any(len(p) > MAX_TOKENS for _, p in present):
        return [None] * len(texts)
    (first, reference), others = present[0], present[1:]
    out: list[str | None] = [None] * len(texts)
    lacking: set[int] = set()  # words of the reference that some other reply lacks
    for i, parts in others:
        gone, new = _changed(reference, parts)
        lacking |= gone
        out[i] = _render(parts, new)
    out[first] = _render(reference, lacking)
    return out
