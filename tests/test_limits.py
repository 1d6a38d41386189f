"""Provider limits: the mock's buckets and headers, the runner's pacing from those headers and
its concurrency controller, all on injected clocks (nothing sleeps for real)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections.abc import Callable
from functools import partial

import aiohttp
import pytest
from multidict import CIMultiDict

import runner.client.client
import runner.client.retry
from runner.client.client import TargetClient
from runner.client.limits import AdaptiveLimit
from runner.client.pacing import Pacer
from runner.client.providers.ratelimits import reset_seconds
from runner.errors import ApiError, Kind
from runner.mock.limits import Limits, admission_tokens, go_duration
from runner.spec.targets import Target
from tests.conftest import play, raw_response


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# ---------------------------------------------------------------- the mock's limits


def test_go_durations_are_written_and_read_as_openai_sends_them():
    assert [go_duration(s) for s in (0, 0.0062, 0.02, 1, 1.5, 360, 179.56)] == [
        "0s", "7ms", "20ms", "1s", "1.5s", "6m0s", "2m59.56s"
    ]  # fmt: skip
    assert [reset_seconds(t) for t in ("6m0s", "20ms", "2m59.56s", "1s", "0.5", "1h")] == [
        360, 0.02, pytest.approx(179.56), 1, 0.5, 3600
    ]  # fmt: skip
    assert reset_seconds("soon") is None and reset_seconds("5s later") is None


def test_resets_no_server_means_are_no_reset():
    # a wait of days, an epoch timestamp, 1e300, infinity, a negative: said as nothing
    for text in ("1000000s", "1733328000", "1e300", "inf", "nan", "-1", "2h"):
        assert reset_seconds(text) is None, text


def test_mock_states_the_limit_per_minute_and_enforces_it_on_a_shorter_window():
    # 600 a minute served as 10 a second in buckets of half a second (5), as OpenAI's
    # quantization does: the sixth at once is refused while `remaining` says 595
    clock = FakeClock()
    limits = Limits(rpm=600, tpm=0, window_s=0.5, concurrency=0, retry_after_ms=50, clock=clock)
    verdicts = [limits.admit(tokens=5) for _ in range(6)]
    assert [v.retry_after_ms for v in verdicts] == [None] * 5 + [100]  # 1 request at 10/s
    assert [v.headers["x-ratelimit-remaining-requests"] for v in verdicts] == [
        "599", "598", "597", "596", "595", "595"
    ]  # fmt: skip
    assert {v.headers["x-ratelimit-limit-requests"] for v in verdicts} == {"600"}
    assert verdicts[4].headers["x-ratelimit-reset-requests"] == "500ms"  # 5 used at 10/s
    assert "requests" in verdicts[5].reason
    clock.now += 0.1  # one request's worth refilled
    assert limits.admit(tokens=5).retry_after_ms is None
    assert limits.admit(tokens=5).retry_after_ms == 100


def test_mock_can_state_the_window_it_enforces_or_nothing():
    window = Limits(600, 0, 0.5, 0, 50, headers="window", clock=FakeClock())
    stated = [window.admit(0).headers for _ in range(5)]
    assert [h["x-ratelimit-remaining-requests"] for h in stated] == ["4", "3", "2", "1", "0"]
    assert stated[0]["x-ratelimit-limit-requests"] == "600"
    assert stated[-1]["x-ratelimit-reset-requests"] == "500ms"
    silent = Limits(600, 0, 0.5, 0, 50, headers="none", clock=FakeClock())
    assert [silent.admit(0).headers for _ in range(6)] == [{}] * 6


def test_mock_token_limit_charges_the_reply_tokens():
    clock = FakeClock()
    limits = Limits(rpm=0, tpm=6000, window_s=1, concurrency=0, retry_after_ms=50, clock=clock)
    first = limits.admit(tokens=60)
    assert first.retry_after_ms is None
    assert first.headers == {
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5940",
        "x-ratelimit-reset-tokens": "600ms",
    }
    refused = limits.admit(tokens=60)
    assert refused.retry_after_ms == 200 and "tokens" in refused.reason  # 20 more at 100/s
    clock.now += 0.2
    assert limits.admit(tokens=60).retry_after_ms is None


def test_mock_concurrency_limit_refuses_past_it_until_one_is_done():
    limits = Limits(rpm=0, tpm=0, window_s=1, concurrency=2, retry_after_ms=50, clock=FakeClock())
    assert [limits.admit(0).retry_after_ms for _ in range(3)] == [None, None, 50]
    limits.done()
    assert limits.admit(0).retry_after_ms is None


async def _post(url: str, n: int) -> list[tuple[int, dict[str, str]]]:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    out = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            async with http.post(url, data=body) as resp:
                out.append((resp.status, dict(resp.headers)))
    return out


def test_mock_sends_rate_headers_on_every_answer_and_429_past_the_limit(make_mock):
    # two a minute, a bucket of a minute's worth: the third is refused whatever the timing
    server = make_mock(limit_rpm=2, limit_window_s=60)
    answers = asyncio.run(_post(server.base_url + "/v1/chat/completions", 3))
    assert [status for status, _ in answers] == [200, 200, 429]
    assert [h["x-ratelimit-remaining-requests"] for _, h in answers] == ["1", "0", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "2" for _, h in answers)
    refused = answers[2][1]
    assert int(refused["retry-after-ms"]) > 20_000 and int(refused["Retry-After"]) >= 20


def test_mock_without_headers_refuses_with_retry_after_alone(make_mock):
    server = make_mock(limit_rpm=2, limit_window_s=60, limit_headers="none")
    answers = asyncio.run(_post(server.base_url + "/v1/chat/completions", 3))
    assert [status for status, _ in answers] == [200, 200, 429]
    assert not [k for _, h in answers for k in h if k.lower().startswith("x-ratelimit")]
    assert "retry-after-ms" not in answers[2][1] and int(answers[2][1]["Retry-After"]) >= 20


# ---------------------------------------------------------------- pacing learned from refusals


def minute_headers(limit: float, remaining: float, reset: str, kind: str = "requests"):
    return CIMultiDict({f"x-ratelimit-limit-{kind}": f"{limit:g}",
                        f"x-ratelimit-remaining-{kind}": f"{remaining:g}",
                        f"x-ratelimit-reset-{kind}": reset})  # fmt: skip


def test_nothing_waits_while_no_budget_has_been_found_empty():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        for i in range(50):  # a per-minute allowance with plenty left, and answers without
            marks = await pacer.acquire(100)
            pacer.answered(minute_headers(9000, 8999 - i, "7ms"), marks, 100)
            pacer.answered(CIMultiDict(), await pacer.acquire(100), 100)
        return clock.slept, pacer.requests.rate

    assert asyncio.run(scenario()) == ([], 0.0)


def test_an_answer_saying_the_bucket_is_empty_paces_at_the_rate_it_states():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        marks = await pacer.acquire(1)
        # 10 used, refilled in 1 s, none left: 10 a second
        pacer.answered(minute_headers(10, 0, "1s"), marks, 1)
        sent = []
        for _ in range(4):
            await pacer.acquire(1)
            sent.append(clock.now)
        return sent

    assert asyncio.run(scenario()) == pytest.approx([(i + 1) / 10 for i in range(4)])


def simulate(limits: Limits, clock: FakeClock, n: int, rtt: float = 0.002) -> tuple[int, int]:
    """A client sending one request at a time (each taking `rtt` to be answered, plus what the
    pacer waits) until the server admitted n; returns (admitted, refused)."""

    async def run() -> tuple[int, int]:
        pacer, admitted, refused = Pacer(clock, clock.sleep), 0, 0
        while admitted < n:
            marks = await pacer.acquire(1)
            clock.now += rtt
            verdict = limits.admit(0)
            headers = CIMultiDict(verdict.headers)
            if verdict.retry_after_ms is None:
                admitted += 1
                pacer.answered(headers, marks, 1)
            else:
                refused += 1
                pacer.refused(headers, verdict.reason, marks, 1)
        return admitted, refused

    return asyncio.run(run())


@pytest.mark.parametrize("window", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("headers", ["openai", "window", "none"])
def test_pacing_finds_the_bucket_that_refuses_not_the_limit_it_states(window, headers):
    # 9,000 a minute served as 150 a second in buckets of 0.1, 1 or 10 s; the headers say the
    # per-minute allowance, the window's bucket, or nothing. Time passes only as the client
    # waits and as each answer takes its 2 ms (a demand of 500 a second): with the rate the
    # limit states (9000) or spent at once, most requests would be refused
    clock = FakeClock()
    limits = Limits(9000, 0, window, 0, 50, headers=headers, clock=clock)
    n = 4000
    admitted, refused = simulate(limits, clock, n)
    ideal = (n - 150 * window) / 150
    assert refused <= 0.03 * (admitted + refused)
    assert clock.now <= 1.05 * ideal


def test_pacing_learns_a_token_budget_from_429s_that_name_tokens():
    clock = FakeClock()
    limits = Limits(0, 60000, 1.0, 0, 50, headers="none", clock=clock)  # 1,000 tokens a second

    async def run() -> tuple[int, int]:
        pacer, admitted, refused = Pacer(clock, clock.sleep), 0, 0
        while admitted < 1000:  # requests of 20 tokens: 50 a second
            marks = await pacer.acquire(20)
            clock.now += 0.002
            verdict = limits.admit(20)
            if verdict.retry_after_ms is None:
                admitted += 1
                pacer.answered(CIMultiDict(verdict.headers), marks, 20)
            else:
                refused += 1
                pacer.refused(CIMultiDict(verdict.headers), verdict.reason, marks, 20)
        assert pacer.requests.rate == 0.0  # the requests budget was never the one refusing
        return admitted, refused

    admitted, refused = asyncio.run(run())
    assert refused <= 0.03 * (admitted + refused)
    assert clock.now <= 1.05 * (1000 * 20 - 1000) / 1000


def test_no_wait_a_server_causes_is_longer_than_max_wait():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep, max_wait_s=5.0)
        marks = await pacer.acquire(1)
        # a stated rate of 99 an hour (59 minutes to refill 100): one request each 36 s
        pacer.answered(minute_headers(100, 0, "59m"), marks, 1)
        for _ in range(3):
            await pacer.acquire(1)
        return clock.slept

    slept = asyncio.run(scenario())
    assert slept and max(slept) <= 5.0 and sum(slept) <= 15.0


# ---------------------------------------------------------------- the concurrency controller


async def _simulate(limit: AdaptiveLimit, caps: list[int]) -> list[tuple[int, int]]:
    """Rounds of one latency each against a server taking `cap` at once and refusing the
    rest at once; returns (accepted, refused) per round."""
    rounds = []
    for cap in caps:
        accepted, refused = [], 0
        while limit.in_flight < int(limit.limit):
            ticket = await limit.acquire()
            if len(accepted) < cap:
                accepted.append(ticket)
            else:
                refused += 1
                limit.release(ticket, overloaded=True)
        for ticket in accepted:
            limit.release(ticket, ok=True)
        rounds.append((len(accepted), refused))
    return rounds


def test_controller_settles_just_under_a_concurrency_limit():
    rounds = asyncio.run(_simulate(AdaptiveLimit(32), [20] * 200))
    # the 21st sent is refused: the limit drops to just under what was refused (at most by
    # BETA at once), so a refusal or two more and it sits at 20
    assert rounds[0][0] == 20 and rounds[0][1] <= 3
    settled = rounds[5:]
    assert sum(a for a, _ in settled) >= 0.97 * 20 * len(settled)  # the server kept busy
    assert sum(r for _, r in rounds) <= 1 + len(rounds) / 10  # a probe now and then, no more


def test_controller_finds_a_higher_limit_again():
    limit = AdaptiveLimit(64)
    rounds = asyncio.run(_simulate(limit, [10] * 50 + [40] * 150))
    assert all(a == 10 for a, _ in rounds[2:50])
    assert sum(a for a, _ in rounds[-50:]) >= 0.9 * 40 * 50  # it probed its way up to 40


def test_a_429_an_empty_budget_explains_paces_and_does_not_shrink_the_concurrency():
    client = TargetClient(Target("t", "openai-chat", "m", concurrency=32), False, lambda r: None)

    async def scenario():
        marks = await client.pacer.acquire(10)
        empty = ApiError(Kind.RATE_LIMIT, "rate limited", status=429, retryable=True)
        empty.headers = minute_headers(10, 0, "1s")
        client._failed(empty, await client.limit.acquire(), marks, 10)
        after_empty = client.limit.limit
        busy = ApiError(Kind.RATE_LIMIT, "too many", status=429, retryable=True)
        client._failed(busy, await client.limit.acquire(), marks, 10)
        return after_empty, client.limit.limit

    after_empty, after_busy = asyncio.run(scenario())
    assert after_empty == 32 and client.pacer.requests.rate == pytest.approx(10)
    assert after_busy < 32  # a 429 no budget explains may be too many in flight


SIX = "id: six\nturns: [a, b]\n"


def test_every_conversation_completes_against_a_concurrency_limited_server(tmp_path, make_mock):
    server = make_mock(limit_concurrency=2, latency_ms=20, retry_after_ms=5)
    played = play(tmp_path, SIX, "-c", "6", "--repeat", "6", "--max-retries", "40", server=server)
    assert played.result.exit_code == 0, played.result.output
    assert [t["status"] for t in played.transcripts] == ["ok"] * 6
    assert {u["status"] for u in played.usage} <= {200, 429}


def fake_time(monkeypatch, clock: FakeClock) -> None:
    """The runner's pacing and retry waits on `clock` (the server shares it)."""
    monkeypatch.setattr(
        runner.client.client,
        "Pacer",
        lambda max_wait_s, headers: Pacer(clock, clock.sleep, max_wait_s, headers),
    )
    monkeypatch.setattr(
        runner.client.client, "retrying", partial(runner.client.retry.retrying, sleep=clock.sleep)
    )


def test_the_client_learns_a_quantized_limit_from_its_first_refusal(
    tmp_path, make_mock, monkeypatch
):
    # 120 a minute stated, served as 2 a second in buckets of 2; the mock's bucket and the
    # client's waits share one fake clock: time passes only when the client waits, so any
    # request sent too early would be refused
    server = make_mock(limit_rpm=120, limit_window_s=1)
    clock = FakeClock()
    clock.now = start = time.monotonic()  # where the mock's buckets were stamped
    server.state.limits.clock = clock
    fake_time(monkeypatch, clock)
    played = play(tmp_path, "id: p\nturns: [a, b, c, d, e, f, g, h]\n", server=server,
                  models={"max_wait_s": 5})  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    # the third finds the bucket of two empty; from then on the rate `limit` and `reset`
    # imply (2 used in 1 s) paces the rest, each half a second after the last; as `remaining`
    # is rounded down that rate leans high, which may cost one refusal more
    statuses = [u["status"] for u in played.usage]
    assert statuses[:3] == [200, 200, 429] and statuses.count(200) == 8
    assert statuses.count(429) <= 2 and statuses[-4:] == [200] * 4
    assert 2.9 < clock.now - start < 3.3  # (8 - 2) requests at 2 a second


RAW_OK = json.dumps({"id": "c1", "object": "chat.completion", "choices": [{"index": 0,
    "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})  # fmt: skip
RAW_429 = json.dumps({"error": {"message": "Rate limit reached for requests", "type":
    "requests", "param": None, "code": "rate_limit_exceeded"}})  # fmt: skip


def openai_like(clock: Callable[[], float], per_minute: float, window_s: float, stated: bool):
    """A raw server answering as OpenAI documents: a per-minute limit enforced on a shorter
    window; 429 with the error envelope and `Retry-After` in whole seconds; with `stated`,
    x-ratelimit-* of the minute's allowance on every answer (Go durations)."""
    bucket = Limits(per_minute, 0, window_s, 0, 0, "openai", clock)
    lock = threading.Lock()

    def respond(request) -> bytes:
        with lock:
            verdict = bucket.admit(0)
        headers = dict(verdict.headers) if stated else {}
        if verdict.retry_after_ms is None:
            return raw_response(RAW_OK, headers=headers)
        headers["Retry-After"] = str(math.ceil(verdict.retry_after_ms / 1000))
        return raw_response(RAW_429, "429 Too Many Requests", headers)

    return respond


@pytest.mark.parametrize("stated", [True, False], ids=["x-ratelimit", "retry-after only"])
def test_a_raw_openai_server_at_its_limit_loses_nothing(tmp_path, raw_server, stated):
    # 600 a minute served as 10 a second in buckets of 1 (a 0.1 s window), real time; six
    # conversations of three turns at once: the five refused first share one Retry-After.
    # How many are refused depends on the machine's speed (the simulations above count them
    # on a fake clock); that none is lost does not
    server = raw_server(openai_like(time.monotonic, 600, 0.1, stated))
    played = play(tmp_path, "id: p\nturns: [a, b, c]\n", "-c", "6", "--repeat", "6",
                  server=server, models={"max_wait_s": 5})  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert [t["status"] for t in played.transcripts] == ["ok"] * 6
    assert {u["status"] for u in played.usage} == {200, 429}
    assert [u["status"] for u in played.usage].count(200) == 18


def test_controller_rides_out_refusals_that_are_noise():
    async def scenario():
        rng, limit, accepted = random.Random(1), AdaptiveLimit(32), 0
        for _ in range(400):  # 1 % of requests refused at random, whatever the load
            tickets = [await limit.acquire() for _ in range(int(limit.limit))]
            for ticket in tickets:
                refused = rng.random() < 0.01
                limit.release(ticket, overloaded=refused, ok=not refused)
                accepted += not refused
        return accepted / 400

    # halving on each burst kept about 12 of 32 in flight here; dropping to just under the
    # count refused, and probing sooner where the server took more, keeps more than 15
    assert asyncio.run(scenario()) > 15


def test_the_mock_charges_a_token_limit_what_openai_admits_a_request_at():
    # max(max_tokens asked, the request's characters / 4), known before any reply
    assert admission_tokens({"messages": []}, 101) == 26
    assert admission_tokens({"max_tokens": 500}, 101) == 500
    assert admission_tokens({"max_completion_tokens": 10, "max_tokens": 40}, 400) == 100
    assert admission_tokens({"generationConfig": {"maxOutputTokens": 300}}, 40) == 300
    assert admission_tokens([1, 2], 8) == 2  # not an object: its length alone
    # Anthropic counts output as it is generated (protocols.md §5): input alone
    assert admission_tokens({"max_tokens": 4096}, 101, "anthropic") == 26


def test_an_anthropic_request_reserves_no_max_tokens():
    from runner.client.providers import PROVIDERS
    from runner.client.providers.base import Request

    request = Request("http://x/v1/messages", {}, b"x" * 400, False)
    chat = PROVIDERS["openai-chat"]("http://x/v1", "m", "k")
    anthropic = PROVIDERS["anthropic"]("http://x", "m", "k")
    assert chat.admission_tokens(request, {"max_tokens": 4096}) == 4096
    assert anthropic.admission_tokens(request, {"max_tokens": 4096}) == 100


def test_a_run_is_charged_the_max_tokens_of_each_request(tmp_path, make_mock):
    # through the real client: three requests asking for 700 tokens each (more than their
    # characters / 4) are charged 700 each, what the runner's pacer reserves for them too
    server = make_mock(limit_tpm=60_000, limit_window_s=60)
    played = play(tmp_path, "id: p\nturns: [a, b, c]\n", server=server,
                  models={"params": {"max_tokens": 700}})  # fmt: skip
    assert played.result.exit_code == 0, played.result.output
    assert server.state.limits.tokens_admitted == 3 * 700


def test_a_burst_decided_out_of_order_measures_no_rate_from_its_refusals():
    # 20 sent at once to a server that takes 10 a second in a bucket of 10: it decided them
    # in another order than sent (a network's), taking every other one; the refusals come
    # back a millisecond apart, and each taken one's next turn goes out as it is answered,
    # into an empty bucket. Counted in the order they came back, the refusals measured
    # thousands a second; nothing was admitted between them but the burst itself
    async def scenario() -> Pacer:
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        burst = [await pacer.acquire(1) for _ in range(20)]
        rate_limited = CIMultiDict({"retry-after": "1"})
        for i in [19, 1, 17, 3, 15, 5, 13, 7, 11, 9, 18, 0, 16, 2, 14, 4, 12, 6, 10, 8]:
            clock.now += 0.001
            if i % 2:
                pacer.refused(rate_limited, "rate limited", burst[i], 1)
            else:
                pacer.answered(CIMultiDict(), burst[i], 1)
                nxt = await pacer.acquire(1)
                clock.now += 0.001
                pacer.refused(rate_limited, "rate limited", nxt, 1)
        return pacer

    pacer = asyncio.run(scenario())
    assert not pacer.requests.measured
    assert pacer.requests.rate < 50  # paced, not let through
