"""The compare page, for deciding: the matrix of scenarios × targets, the replies'
differences marked word by word, a turn that failed after retries with its attempts.

One run of three mock targets: `full`, `short` (its replies cut at 12 tokens, so that a
check on the end of a reply fails there) and `flaky` (every request fails); each priced.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from runner.results.compare_diff import marked, tokens
from tests.conftest import cli, play
from tests.test_compare import DevTools, Elements, drive_page, needs_browser

PRICES = {
    "full": (1000.0, 2000.0),
    "short": (500.0, 1000.0),
    "flaky": (100.0, 100.0),
}  # USD per million input, output tokens
MODELS = """
targets:
  full:
    provider: openai-chat
    model: mock-chat
    mock: {}
    price: {input_per_mtok: 1000, output_per_mtok: 2000}
  short:
    provider: openai-chat
    model: mock-chat
    mock: {}
    params: {max_tokens: 12}
    price: {input_per_mtok: 500, output_per_mtok: 1000}
  flaky:
    provider: openai-chat
    model: mock-chat
    mock: {error_rate: 1, seed: 3}
    max_retries: 2
    max_wait_s: 0.01
    fail_fast_after: 0         # every conversation's attempts are sent
    price: {input_per_mtok: 100, output_per_mtok: 100}
"""
HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
SCENARIOS = f"""
scenarios:
  - id: hello
    turns: [hello]
  - id: recall
    turns:
      - my name is Ann
      - user: {json.dumps(HOSTILE + " what is my name?")}
        expect: {{contains: earlier}}
  - id: mixed
    vars: {{q: [hi, a question much longer than the limit]}}
    turns:
      - user: "{{{{q}}}}"
        expect: {{contains: "{{{{q}}}}"}}
"""


@pytest.fixture(scope="module")
def decide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("decide")
    played = play(
        tmp, SCENARIOS, "--repeat", "2", models=MODELS, targets=("full", "short", "flaky")
    )
    assert played.result.exit_code == 3, played.result.output  # flaky failed after retries
    page = tmp / "page.html"
    assert cli("compare", played.run_dir, "--html", page).exit_code == 0
    return {"tmp": tmp, "played": played, "page": page}


def expected_costs(played: Any) -> dict[Any, float]:
    """Per (scenario, target), and per conversation id: every attempt's tokens at the
    target's price, from usage.jsonl."""
    scenario_of = {r["conversation_id"]: r["scenario_id"] for r in played.transcripts}
    costs: dict[Any, float] = defaultdict(float)
    for attempt in played.usage:
        pin, pout = PRICES[attempt["target"]]
        spent = (attempt["input_tokens"] * pin + attempt["output_tokens"] * pout) / 1e6
        costs[scenario_of[attempt["conversation_id"]], attempt["target"]] += spent
        costs[attempt["conversation_id"]] += spent
    return costs


MATRIX = """[...document.querySelectorAll('table.matrix tr')].map(tr => [...tr.children].map(
  c => [c.className, (c.querySelector('.state') || c).textContent,
        (c.querySelector('.cost') || {}).textContent || null]))"""


@needs_browser
def test_the_matrix_shows_each_scenario_on_each_target_failing_first(decide) -> None:
    async def steps(page: DevTools) -> Any:
        heads = await page.js(
            """[...document.querySelectorAll('article.conv')].map(a => [JSON.parse(a.dataset.ids),
              [...a.querySelectorAll('div.side .cost')].map(c => c.textContent)])"""
        )
        return await page.js(MATRIX), heads

    url = decide["page"].as_uri()
    (rows, heads), asked = asyncio.run(drive_page(decide["tmp"], url, steps))
    assert asked == [url]
    head, *body, totals = rows
    assert [text for _, text, _ in head] == [
        "scenario",
        "full",
        "short",
        "flaky",
        "best",
    ]
    shown = {row[0][1]: [(cls, text) for cls, text, _ in row[1:]] for row in body}
    assert [row[0][1] for row in body] == ["recall", "mixed", "hello"]  # failing first
    assert shown == {
        # short cuts its replies: the check on the reply's end fails; flaky never answers
        "recall": [("cell pass best", "★ 2/2"), ("cell fail", "0/2"),
                   ("cell error", "0/2 · 2 failed"), ("winner", "full")],
        # the long var's check fails on short, the short one passes: 2 of 4
        "mixed": [("cell pass best", "★ 4/4"), ("cell some", "2/4"),
                  ("cell error", "0/4 · 4 failed"), ("winner", "full")],
        # a tie on pass rate: short costs less per conversation
        "hello": [("cell pass", "2/2"), ("cell pass best", "★ 2/2"),
                  ("cell error", "0/2 · 2 failed"), ("winner", "short")],
    }  # fmt: skip
    assert [text for _, text, _ in totals[1:4]] == ["8/8", "4/8", "0/8 · 8 failed"]
    costs = expected_costs(decide["played"])
    conversations = {"recall": 2, "mixed": 4, "hello": 2}
    for row in body:
        scenario = row[0][1]
        for (_, _, cost), target in zip(row[1:4], PRICES, strict=True):
            spent = costs[scenario, target]
            n = conversations[scenario]
            assert cost == f"${spent:.4f} · ${spent / n:.4f}/conv", (scenario, target)
    assert costs["hello", "short"] < costs["hello", "full"]
    report = {
        r["target"]: r["cost_usd"] for r in json.loads(decide["played"].report("json").output)
    }
    for (_, _, cost), target in zip(totals[1:4], PRICES, strict=True):
        assert cost.startswith(f"${report[target]:.4f} · ")  # as the report counts it
    for ids, shown in heads:  # each conversation's own cost, in its head
        assert shown == [f"${costs[i]:.4f}" for i in ids]


@needs_browser
def test_the_replies_differences_are_marked_word_by_word_and_stay_text(decide) -> None:
    async def steps(page: DevTools) -> Any:
        seen = await page.js(
            """[...document.querySelectorAll('article.conv')].map(a => [
              JSON.parse(a.dataset.ids),
              [...a.querySelectorAll('div.reply:not(.failed):not(.missing) > .text')].map(
                t => [t.textContent, [...t.querySelectorAll('mark.diff')].map(m => m.textContent),
                      [...t.querySelectorAll('*')].map(e => e.tagName + '.' + e.className)])])"""
        )
        state = {
            "title": await page.js("document.title"),
            "scripts": await page.js("document.scripts.length"),
            "images": await page.js("document.images.length"),
        }
        await page.js("document.getElementById('f-diff').click()")
        state["plain"] = await page.js("document.body.classList.contains('plain')")
        state["unmarked"] = await page.js(
            "getComputedStyle(document.querySelector('mark.diff')).backgroundColor"
        )
        return seen, state

    (seen, state), _ = asyncio.run(drive_page(decide["tmp"], decide["page"].as_uri(), steps))
    assert state == {
        "title": "dialogue-runner · run0", "scripts": 1, "images": 0, "plain": True,
        "unmarked": "rgba(0, 0, 0, 0)",  # unticked: the differences are no longer coloured
    }  # fmt: skip
    replies = {r["conversation_id"]: r["turns"] for r in decide["played"].transcripts}
    by_ids = {ids[0]: cells for ids, cells in seen}
    for ids, cells in seen:  # every reply shown is the recorded text, whole and only text
        answered = [replies[i] for i in ids if replies[i]]
        texts = [t["assistant"] for turns in answered for t in turns]
        assert sorted(text for text, _, _ in cells) == sorted(texts)
        assert {tag for _, _, tags in cells for tag in tags} <= {"MARK.diff"}
    # the second turn of recall: full's reply, then short's (cut after 48 characters)
    (full, full_marks, _), (short, short_marks, _) = by_ids["recall@full"][2:4]
    assert full.startswith(short) and short.startswith("mock: 3 messages; last user #")
    assert short_marks == []  # every word of short's reply is in full's
    assert full_marks and full.endswith(full_marks[-1])  # full's words that short lacks
    assert "onerror=\"document.title='pwned'\"" in "".join(full_marks)  # marked, as text
    hello = by_ids["hello@full"]
    assert [marks for _, marks, _ in hello] == [[], []]  # identical replies: nothing marked


@needs_browser
def test_a_turn_that_failed_after_retries_shows_its_attempts_and_error(decide) -> None:
    async def steps(page: DevTools) -> Any:
        return await page.js(
            """[...document.querySelectorAll('div.reply.failed')].map(d => [
              JSON.parse(d.closest('article').dataset.ids), d.querySelector('.badge').textContent,
              d.querySelector('b').textContent, d.querySelector('.text').textContent,
              [...d.querySelectorAll('ol.attempts li')].map(li => li.textContent)])"""
        )

    failed, _ = asyncio.run(drive_page(decide["tmp"], decide["page"].as_uri(), steps))
    played = decide["played"]
    records = {r["conversation_id"]: r for r in played.transcripts}
    tries = defaultdict(list)
    for attempt in played.usage:
        tries[attempt["conversation_id"]].append(attempt)
    flaky = sorted(i for i, r in records.items() if r["target"] == "flaky")
    assert sorted(ids[-1] for ids, *_ in failed) == flaky and len(flaky) == 8
    for ids, badge, kind, message, items in failed:
        error = records[ids[-1]]["error"]
        assert badge == "failed after 3 attempts"  # max_retries 2: three were sent
        assert kind == f"{error['kind']} {error['status']}"
        assert message == error["message"]
        sent = tries[ids[-1]]
        assert [(a["turn"], a["attempt"]) for a in sent] == [(0, 1), (0, 2), (0, 3)]
        assert len(items) == 3
        for item, attempt in zip(items, sent, strict=True):
            assert item.startswith(f"attempt {attempt['attempt']}: HTTP {attempt['status']} · ")
            assert item.endswith(" ms")
    page = Elements(decide["page"].read_text(encoding="utf-8"))
    # only recall's second turn on flaky, after the turn it failed at, was never sent
    assert len(page.having("div", "missing")) == 2


WORDS = st.lists(
    st.sampled_from(["the", "cat", "<script>", "&amp;", "猫", "。", " ", "\n", "'", '"', "x"])
    | st.text(),
    max_size=12,
).map("".join)


@given(st.lists(WORDS, min_size=2, max_size=3))
@example(["' q7", "'q7"])  # only the spaces differ: nothing to mark
def test_marked_replies_are_the_replies_whole_with_nothing_but_marks(texts: list[str]) -> None:
    assert all("".join(tokens(t)) == t for t in texts)
    for text, shown in zip(texts, marked(texts), strict=True):
        assert shown is not None
        page = Elements(shown)
        page.close()
        assert "".join(page.text) == text  # hostile text stays text, every character of it
        assert {(tag, a.get("class")) for tag, a in page.elements} <= {("mark", "diff")}
    pair = "".join(shown or "" for shown in marked(texts[:2]))
    words = [[t for t in tokens(text) if not t.isspace()] for text in texts[:2]]
    # marked when their words (and signs) differ: where the spaces fall is no difference
    # ("' q7" and "'q7" are the same sign and word)
    assert ("<mark" in pair) is (words[0] != words[1])


def test_several_runs_of_one_target_are_the_matrix_columns(tmp_path: Path) -> None:
    cut = play(tmp_path, SCENARIOS, "-k", "recall", models=MODELS, targets=("short",))
    whole = MODELS.replace("    params: {max_tokens: 12}\n", "")  # the fix: no cut replies
    fixed = play(tmp_path, SCENARIOS, "-k", "recall", models=whole, targets=("short",))
    assert (cut.result.exit_code, fixed.result.exit_code) == (1, 0)
    page_file = tmp_path / "page.html"
    assert cli("compare", cut.run_dir, fixed.run_dir, "--html", page_file).exit_code == 0
    markup = page_file.read_text(encoding="utf-8")
    matrix = markup.split('<section id="matrix">')[1].split("</section>")[0]
    assert "<h2>Scenarios × runs</h2>" in matrix
    heads = re.findall(r"<th>([^<]*)</th>", matrix)
    assert heads == ["scenario", "run0 · short", "run1 · short"]
    cells = re.findall(r'<td class="cell ([^"]*)"[^>]*><div class="state">(.*?)</div>', matrix)
    assert cells == [
        ("fail", "checks failed"), ("pass best", '<span class="star">★ </span>pass'),
        ("fail", "checks failed"), ("pass", "pass"),  # all scenarios
    ]  # fmt: skip
