"""The compare page: self-contained, hostile text escaped, rendered in headless Chromium.

Chromium is Debian's `chromium` package (.ci/run installs it when it runs as root); the
browser tests are skipped, saying why, only where it is not installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runner.results.report import cells
from tests.conftest import KEY, ROOT, cli, play

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
SCENARIOS = f"""
scenarios:
  - id: hostile
    tags: [safety]
    turns:
      - user: {json.dumps(HOSTILE)}
        expect: {{not_contains: pwned-never}}
      - user: second question {"y" * 400}
        expect: {{contains: "this is not in the reply"}}
  - id: long-talk
    tags: [memory, long]
    turns: [{", ".join(f"question number {i} about the weather" for i in range(14))}]
  - id: judged
    tags: [judge]
    turns:
      - user: tell me about apples
        expect: {{judge: 'mentions "apples"', contains: mock}}
"""
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium on this machine: install Debian's chromium package "
    "(apt-get install chromium; .ci/run does it as root) to render the compare page",
)


class Elements(HTMLParser):
    """Every element of a document as (tag, attributes), and the page's text."""

    def __init__(self, markup: str):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, cls: str = "") -> list[dict[str, str | None]]:
        return [
            a for t, a in self.elements if t == tag and cls in (a.get("class") or "").split()
        ] if cls else [a for t, a in self.elements if t == tag]  # fmt: skip


def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    """Run headless Chromium on URL (no network, fresh profile); its stdout."""
    assert BROWSER is not None
    args = [
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", *extra, url,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two runs: the three scenarios on two mocks, then again on one; and their pages."""
    tmp = tmp_path_factory.mktemp("compare")
    first = play(tmp, SCENARIOS, "--judge", "mock", targets=("mock", "mock-gemini"))
    second = play(tmp, SCENARIOS, "--judge", "mock-gemini", targets=("mock",))
    assert first.result.exit_code == second.result.exit_code == 1  # one check fails
    one, two = tmp / "one.html", tmp / "two.html"
    result = cli("compare", first.run_dir, "--html", one)
    assert result.exit_code == 0 and f"compare page: {one}" in result.output
    assert cli("compare", first.run_dir, second.run_dir, "--html", two).exit_code == 0
    return {"tmp": tmp, "first": first, "second": second, "one": one, "two": two}


def test_the_page_is_self_contained_and_escapes_every_transcript_text(runs) -> None:
    markup = runs["one"].read_text(encoding="utf-8")
    page = Elements(markup)
    csp = [a for a in page.having("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp[0]["content"] == (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    )
    links = [a["href"] for _, a in page.elements if "href" in a]
    assert not [t for t, a in page.elements if "src" in a]  # nothing to fetch
    assert links and all(re.fullmatch(r"#s\d+", link or "") for link in links)  # in the page
    assert not re.search(r"https?://", markup)
    assert len(page.having("script")) == 1 and not page.having("img")  # only the filter script
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in markup
    assert HOSTILE in "".join(page.text)  # shown as text, whole


def section(markup: str, name: str) -> Elements:
    """The elements of the page's section with this id."""
    return Elements(markup.split(f'<section id="{name}">')[1].split("</section>")[0])


def test_the_report_table_shows_the_reports_rows(runs) -> None:
    report = json.loads(runs["first"].report("json").output)
    page = section(runs["one"].read_text(encoding="utf-8"), "report")
    text = "".join(page.text)
    for row in report:
        assert row["target"] in text
    _, body = cells(report)  # the very cells `report` prints: tokens, requests and cost too
    assert all(row["input_tokens"] > 0 and row["requests"] > 0 for row in report)
    for shown in body:
        assert "".join(shown) in text
    assert len(page.having("tr")) == 1 + len(report)
    charts = section(runs["one"].read_text(encoding="utf-8"), "charts")
    assert len(charts.having("svg")) == 2 * len(report)  # latency and tokens per target


@needs_browser
def test_chromium_renders_every_conversation_and_runs_no_hostile_script(runs) -> None:
    tmp, page_file = runs["tmp"], runs["one"]
    dom = Elements(chromium(tmp, page_file.as_uri(), "--dump-dom"))
    title = "".join(dom.text[: 1 + [t for t, _ in dom.elements].index("title")])
    assert "pwned" not in title and not dom.having("img")
    assert len(dom.having("script")) == 1
    recorded = {r["conversation_id"] for r in runs["first"].transcripts}
    shown = [i for a in dom.having("article", "conv") for i in json.loads(a["data-ids"] or "[]")]
    assert sorted(shown) == sorted(recorded) and len(recorded) == 6
    turns = sum(len(r["turns"]) for r in runs["first"].transcripts)
    assert len(dom.having("div", "reply")) == turns
    assert not any("hidden" in a for a in dom.having("article", "conv"))
    assert "6 of 6 conversations shown" in "".join(dom.text)
    assert dom.having("details")  # the long conversation's replies are collapsed
    judged = [a for a in dom.having("li", "pass") if a.get("title") == 'mentions "apples"']
    assert len(judged) == 2


@needs_browser
@pytest.mark.parametrize(
    ("fragment", "visible", "count"),
    [
        ("#failed", {"hostile"}, "2 of 6"),
        ("#tag=memory", {"long-talk"}, "2 of 6"),
        ("#failed&tag=judge", set(), "0 of 6"),
    ],
)
def test_the_filters_hide_what_they_should(runs, fragment: str, visible, count: str) -> None:
    dom = Elements(chromium(runs["tmp"], runs["one"].as_uri() + fragment, "--dump-dom"))
    shown = {
        json.loads(a["data-ids"] or "[]")[0].split("@")[0]
        for a in dom.having("article", "conv")
        if "hidden" not in a
    }
    assert shown == visible
    assert f"{count} conversations shown" in "".join(dom.text)


@needs_browser
def test_two_runs_side_by_side_and_a_screenshot(runs) -> None:
    tmp = runs["tmp"]
    dom = Elements(chromium(tmp, runs["two"].as_uri(), "--dump-dom"))
    heads = [a for a in dom.having("div", "side")]
    assert len(heads) == 3 * 3  # three conversations, three sides: run0 · mock, ..., run1 · mock
    text = "".join(dom.text)
    assert "run0 · mock-gemini" in text and "run1 · mock" in text
    shot = tmp / "compare.png"
    chromium(tmp, runs["one"].as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copyfile(shot, "/tmp/compare.png")  # for the closing note


def test_the_demo_writes_a_compare_page_of_the_four_built_in_targets(tmp_path: Path) -> None:
    # `make demo`: run scenarios/ -m mock -m mock-responses -m mock-gemini -m mock-anthropic ...
    page_file = tmp_path / "compare.html"
    builtins = ("mock", "mock-responses", "mock-gemini", "mock-anthropic")
    played = play(tmp_path, ROOT / "scenarios", "--html", page_file, targets=builtins)
    assert played.result.exit_code == 0
    assert f"compare page: {page_file}" in played.result.stderr
    assert played.result.stdout.splitlines()[0].startswith("target")  # the table comes last
    page = Elements(page_file.read_text(encoding="utf-8"))
    shown = [i for a in page.having("article", "conv") for i in json.loads(a["data-ids"] or "[]")]
    assert sorted(shown) == sorted(r["conversation_id"] for r in played.transcripts)
    heads = [a for a in page.having("div", "side")]
    assert len(heads) == 4 * len(page.having("article", "conv"))


class DevTools:
    """A page of headless Chromium driven over the DevTools protocol (its websocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    async def until(self, wanted: Any, start: int = 0) -> int:
        """The index of the first event from `start` on that `wanted(event)` accepts."""
        index = start
        while True:
            while index < len(self.events):
                if wanted(self.events[index]):
                    return index
                index += 1
            self.events.append(await self.ws.receive_json())

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


async def drive_page(tmp: Path, url: str, steps: Any) -> tuple[Any, list[str]]:
    """Open URL in Chromium, run `steps(devtools)`; its result and every URL the page asked for."""
    assert BROWSER is not None
    proc = await asyncio.create_subprocess_exec(
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--remote-debugging-port=0", "--window-size=1280,900",
        f"--user-data-dir={tmp / 'cdp-profile'}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = b""
        while b"DevTools listening on" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, "Chromium ended before it listened"
        port = re.search(rb"ws://[^:]+:(\d+)/", line).group(1).decode()  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as http:
            pages = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            ws_url = next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"]
            async with http.ws_connect(ws_url, max_msg_size=0) as ws:
                page = DevTools(ws)
                await page.call("Network.enable")
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                navigated = await page.until(  # our page, not the blank one it replaces
                    lambda e: (
                        e.get("method") == "Page.frameNavigated"
                        and e["params"]["frame"]["url"] == url
                    )
                )
                await page.until(lambda e: e.get("method") == "Page.loadEventFired", navigated)
                result = await steps(page)
                asked = [
                    e["params"]["request"]["url"]
                    for e in page.events
                    if e.get("method") == "Network.requestWillBeSent"
                ]
                return result, asked
    finally:
        proc.kill()
        await proc.wait()


SHOWN = "[...document.querySelectorAll('article.conv:not([hidden])')].map(a => a.dataset.ids)"
COUNT = "document.getElementById('f-count').textContent"


@needs_browser
def test_the_filters_respond_to_clicks_and_the_page_fetches_nothing(runs) -> None:
    async def steps(page: DevTools) -> dict[str, Any]:
        seen = {"start": await page.js(COUNT)}
        await page.js("document.getElementById('f-failed').click()")
        seen["failed"] = (await page.js(COUNT), await page.js(SHOWN))
        await page.js(
            "const t = document.getElementById('f-tag'); t.value = 'memory';"
            "t.dispatchEvent(new Event('change'))"
        )
        seen["failed+memory"] = await page.js(COUNT)
        await page.js("document.getElementById('f-failed').click()")
        seen["memory"] = (await page.js(COUNT), await page.js(SHOWN))
        seen["hash"] = await page.js("location.hash")
        seen["open"] = await page.js(
            "const d = document.querySelector('details');d.querySelector('summary').click(); d.open"
        )
        seen["title"] = await page.js("document.title")
        seen["fits"] = await page.js(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        return seen

    url = runs["one"].as_uri()
    seen, asked = asyncio.run(drive_page(runs["tmp"], url, steps))
    assert seen["start"] == "6 of 6 conversations shown"
    assert seen["failed"][0] == "2 of 6 conversations shown"
    assert [json.loads(ids)[0] for ids in seen["failed"][1]] == ["hostile@mock"]
    assert seen["failed+memory"] == "0 of 6 conversations shown"
    assert seen["memory"][0] == "2 of 6 conversations shown"
    assert [json.loads(ids)[0] for ids in seen["memory"][1]] == ["long-talk@mock"]
    assert seen["hash"] == "#tag=memory"  # the filter can be shared as a link
    assert seen["open"] is True  # a long reply opens
    assert seen["title"] == "dialogue-runner · run0"  # no transcript text ran as script
    assert seen["fits"] is True  # long replies and unbroken words wrap: no sideways scroll
    assert asked == [url]  # the page itself, nothing else


def test_a_long_run_shows_its_failing_rows_first_and_says_what_it_left_out(runs) -> None:
    page_file = runs["tmp"] / "short.html"
    assert (
        cli("compare", runs["first"].run_dir, "--html", page_file, "--max-rows", "1").exit_code == 0
    )
    markup = page_file.read_text(encoding="utf-8")
    page = Elements(markup)
    shown = [json.loads(a["data-ids"] or "[]") for a in page.having("article", "conv")]
    assert shown == [["hostile@mock", "hostile@mock-gemini"]]
    assert "2 more rows of conversations are not shown" in "".join(page.text)
    assert len(section(markup, "report").having("tr")) == 3  # the report counts every one
    matrix = section(markup, "matrix")  # and so does the matrix, linking to what is shown
    assert len(matrix.having("tr")) == 1 + 3 + 1  # head, every scenario, all scenarios
    assert [a["href"] for a in matrix.having("a")] == ["#s0"]


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = cli("compare", tmp_path, "--html", tmp_path / "x.html")
    assert result.exit_code == 2
    assert "not a readable run folder" in result.output
    assert not (tmp_path / "x.html").exists()


def test_a_failed_conversation_shows_its_error_and_the_turns_it_never_reached(
    tmp_path: Path,
) -> None:
    scenario = "id: cut\nturns:\n  - hello\n  - '[[block]] this one is refused'\n  - never sent\n"
    played = play(tmp_path, scenario, targets=("mock",))
    assert played.result.exit_code == 3
    page_file = tmp_path / "page.html"
    assert cli("compare", played.run_dir, "--html", page_file).exit_code == 0
    markup = page_file.read_text(encoding="utf-8")
    page = Elements(markup)
    (conv,) = page.having("article", "conv")
    assert conv["data-failed"] == "1"
    text = "".join(page.text)
    assert "failed: empty" in text
    assert [a["class"] for a in page.having("div", "reply")] == ["reply", "reply failed"]
    assert "failed after 1 attempt empty" in text and "attempt 1: HTTP 200 · " in text
    users = [a for a in page.having("div", "user")]
    assert len(users) == 2  # the refused turn is shown; the one after it was never sent
    assert not page.having("div", "missing")


def test_the_page_never_shows_a_key(tmp_path: Path, mock_server) -> None:
    played = play(tmp_path, "id: k\nturns: [hi]\n", server=mock_server, targets=("chat",))
    assert played.result.exit_code == 0
    page_file = tmp_path / "page.html"
    assert cli("compare", played.run_dir, "--html", page_file).exit_code == 0
    assert KEY not in page_file.read_text(encoding="utf-8")
    assert "hi" in Elements(page_file.read_text(encoding="utf-8")).text
