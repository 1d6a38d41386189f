"""Provider limits: the mock's buckets and headers, the runner's pacing from those headers and
its concurrency controller, all on injected clocks (nothing sleeps for real)."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest
from multidict import CIMultiDict

import runner.client
from runner.client import TargetClient
from runner.errors import ApiError, Kind
from runner.limits import AdaptiveLimit, Pacer, reset_seconds
from runner.mock.limits import Limits, go_duration
from runner.targets import Target
from tests.conftest import play


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


def test_mock_request_bucket_admits_a_burst_then_says_when_to_retry():
    clock = FakeClock()
    limits = Limits(rps=10, burst=3, tps=0, concurrency=0, retry_after_ms=50, clock=clock)
    verdicts = [limits.admit(tokens=5) for _ in range(4)]
    assert [v.retry_after_ms for v in verdicts] == [None, None, None, 100]  # 1 request at 10/s
    assert [v.headers["x-ratelimit-remaining-requests"] for v in verdicts] == ["2", "1", "0", "0"]
    assert verdicts[0].headers["x-ratelimit-limit-requests"] == "3"
    assert verdicts[2].headers["x-ratelimit-reset-requests"] == "300ms"  # 3 requests at 10/s
    assert "requests" in verdicts[3].reason
    clock.now += 0.1  # one request's worth refilled
    assert limits.admit(tokens=5).retry_after_ms is None
    assert limits.admit(tokens=5).retry_after_ms == 100


def test_mock_token_bucket_charges_the_reply_tokens():
    clock = FakeClock()
    limits = Limits(rps=0, burst=0, tps=100, concurrency=0, retry_after_ms=50, clock=clock)
    first = limits.admit(tokens=60)
    assert first.retry_after_ms is None
    assert first.headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "600ms",
    }
    refused = limits.admit(tokens=60)
    assert refused.retry_after_ms == 200 and "tokens" in refused.reason  # 20 more at 100/s
    clock.now += 0.2
    assert limits.admit(tokens=60).retry_after_ms is None


def test_mock_concurrency_limit_refuses_past_it_until_one_is_done():
    limits = Limits(rps=0, burst=0, tps=0, concurrency=2, retry_after_ms=50, clock=FakeClock())
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
    # one request per hour after a burst of two: the third is refused whatever the timing
    server = make_mock(limit_rps=1 / 3600, limit_burst=2)
    answers = asyncio.run(_post(server.base_url + "/v1/chat/completions", 3))
    assert [status for status, _ in answers] == [200, 200, 429]
    assert [h["x-ratelimit-remaining-requests"] for _, h in answers] == ["1", "0", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "2" for _, h in answers)
    refused = answers[2][1]
    assert int(refused["retry-after-ms"]) > 3_000_000 and int(refused["Retry-After"]) >= 3000


# ---------------------------------------------------------------- pacing from headers

OPENAI_EMPTY = {
    "x-ratelimit-limit-requests": "10",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "1s",
}


def test_pacer_waits_for_nothing_until_a_server_states_a_budget():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        for _ in range(50):
            assert not pacer.paced()
            pacer.charge(100)
            pacer.observe(CIMultiDict(), pacer.mark(100), 100)  # answers without rate headers
        return clock.slept

    assert asyncio.run(scenario()) == []


def test_pacer_slows_down_before_the_bucket_is_empty():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        pacer.charge(1)
        mark = pacer.mark(1)
        # 10 requests a second (10 used in the 1 s the bucket takes to refill), none left
        assert pacer.observe(CIMultiDict(OPENAI_EMPTY), mark, 1) is True
        assert pacer.paced()
        sent = []
        for _ in range(5):
            await pacer.acquire(1)
            sent.append(clock.now)
            pacer.mark(1)
        return sent

    sent = asyncio.run(scenario())
    # `remaining` is rounded down, so the rate taken is the slower bound: 9 of the 10 used
    # refilled in 1 s. The first waits for one request plus the 2 % reserve, then one each
    # 1/9 s
    assert sent == pytest.approx([(1.2 + i) / 9 for i in range(5)])


def test_pacer_counts_what_was_sent_after_the_answer_it_syncs_to():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        marks = []
        for _ in range(4):  # four in flight before the first answer
            pacer.charge(1)
            marks.append(pacer.mark(1))
        clock.now = 0.05
        headers = {**OPENAI_EMPTY, "x-ratelimit-remaining-requests": "6",
                   "x-ratelimit-reset-requests": "400ms"}  # fmt: skip
        pacer.observe(CIMultiDict(headers), marks[0], 1)
        # 6 left after the first, refilled for 0.05 s at 3 (of the 4 used) per 0.4 s, and
        # the 3 sent after it charged
        return pacer.requests.level

    assert asyncio.run(scenario()) == pytest.approx(6 + 0.05 * 3 / 0.4 - 3)


def test_pacer_reserves_estimated_tokens_and_learns_from_the_real_count():
    async def scenario():
        clock = FakeClock()
        pacer = Pacer(clock, clock.sleep)
        pacer.charge(100)
        mark = pacer.mark(100)
        headers = {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "700",
                   "x-ratelimit-reset-tokens": "300ms"}  # fmt: skip
        # the server charged 300 for what was estimated at 100: its word replaces the guess
        pacer.observe(CIMultiDict(headers), mark, 100)
        assert pacer.tokens.rate == pytest.approx(299 / 0.3)
        await pacer.acquire(700)  # 700 of 700 left, but 20 are kept in reserve
        return clock.now

    assert asyncio.run(scenario()) == pytest.approx(20 / (299 / 0.3))


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


def test_an_empty_bucket_paces_and_does_not_shrink_the_concurrency():
    client = TargetClient(Target("t", "openai-chat", "m", concurrency=32), False, lambda r: None)

    async def scenario():
        mark = client.pacer.mark(10)
        empty = ApiError(Kind.RATE_LIMIT, "rate limited", status=429, retryable=True)
        empty.headers = CIMultiDict(OPENAI_EMPTY)
        client._failed(empty, await client.limit.acquire(), mark, 10)
        after_empty = client.limit.limit
        busy = ApiError(Kind.RATE_LIMIT, "too many", status=429, retryable=True)
        client._failed(busy, await client.limit.acquire(), mark, 10)
        return after_empty, client.limit.limit

    after_empty, after_busy = asyncio.run(scenario())
    assert after_empty == 32 and client.pacer.paced()
    assert after_busy < 32  # a 429 without an empty bucket: too many in flight


SIX = "id: six\nturns: [a, b]\n"


def test_every_conversation_completes_against_a_concurrency_limited_server(tmp_path, make_mock):
    server = make_mock(limit_concurrency=2, latency_ms=20, retry_after_ms=5)
    played = play(tmp_path, SIX, "-c", "6", "--repeat", "6", "--max-retries", "40", server=server)
    assert played.result.exit_code == 0, played.result.output
    assert [t["status"] for t in played.transcripts] == ["ok"] * 6
    assert {u["status"] for u in played.usage} <= {200, 429}


def test_the_client_paces_to_the_servers_headers_and_is_never_refused(
    tmp_path, make_mock, monkeypatch
):
    # the mock's bucket and the client's pacing share one fake clock: time passes only when
    # the client waits, so any request sent too early would be refused
    server = make_mock(limit_rps=2, limit_burst=2)
    clock = FakeClock()
    clock.now = start = time.monotonic()  # where the mock's buckets were stamped
    server.state.limits.clock = clock
    monkeypatch.setattr(runner.client, "Pacer", lambda: Pacer(clock, clock.sleep))
    played = play(tmp_path, "id: p\nturns: [a, b, c, d, e, f]\n", server=server)
    assert played.result.exit_code == 0, played.result.output
    assert [u["status"] for u in played.usage] == [200] * 6
    # two a second after a burst of two: the other four wait about half a second each
    assert 1.9 < clock.now - start < 2.3 and len(clock.slept) >= 4


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
