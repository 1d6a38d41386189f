"""Retry loop, backoff, limits and classification, with injected waits and clocks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from runner.client.limits import AdaptiveLimit, TokenBucket
from runner.client.providers.base import Reply, classify, retry_after, whole_second_wait
from runner.client.providers.gemini import Gemini
from runner.client.providers.openai_chat import openai_error
from runner.client.retry import RetryPolicy, retrying
from runner.errors import ApiError


def run(coro):
    return asyncio.run(coro)


class Script:
    """An attempt function that fails with the given errors, then succeeds."""

    def __init__(self, *errors: ApiError):
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, attempt: int) -> Reply:
        assert attempt == self.calls
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Reply("ok", "stop")


def recorder():
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return waits, sleep


def test_retry_after_is_honoured_and_spread_by_up_to_a_tenth():
    waits, sleep = recorder()
    script = Script(classify(429, "slow down", retry_after=1.5), classify(503, "busy", 0.25))
    reply, attempts = run(retrying(script, RetryPolicy(max_retries=5), sleep, rand=lambda: 0.9))
    assert reply.text == "ok" and script.calls == 3 and attempts == 3
    # never sooner than said; later by a share of the hint (or of the backoff, if shorter:
    # 0.5 s at the first attempt), so one Retry-After given to many does not bring them back
    # together
    assert waits == [1.5 + 0.9 * 0.5 / 10, 0.25 + 0.9 * 0.25 / 10]
    waits.clear()
    script = Script(classify(429, "slow down", retry_after=1.5))
    run(retrying(script, RetryPolicy(max_retries=5), sleep, rand=lambda: 0.0))
    assert waits == [1.5]


def test_full_jitter_backoff_grows_and_is_capped():
    waits, sleep = recorder()
    script = Script(*[classify(500, "boom") for _ in range(6)])
    policy = RetryPolicy(max_retries=6, base_s=0.5, max_wait_s=4.0)
    run(retrying(script, policy, sleep, rand=lambda: 1.0))
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    waits.clear()
    run(retrying(Script(classify(500, "boom")), policy, sleep, rand=lambda: 0.0))
    assert waits == [0.0]  # full jitter: anywhere from zero


def test_server_wait_is_capped_by_max_wait():
    waits, sleep = recorder()
    run(retrying(Script(classify(429, "x", retry_after=3600)), RetryPolicy(max_wait_s=30), sleep))
    assert waits == [30]


def test_gives_up_after_max_retries_with_the_last_error():
    waits, sleep = recorder()
    script = Script(*[classify(502, f"bad {i}") for i in range(10)])
    with pytest.raises(ApiError, match="bad 3"):
        run(retrying(script, RetryPolicy(max_retries=3), sleep))
    assert script.calls == 4 and len(waits) == 3


@pytest.mark.parametrize(
    ("status", "retryable", "kind"),
    [(400, False, "http"), (401, False, "auth"), (403, False, "auth"), (404, False, "http"),
     (408, True, "http"), (409, True, "http"), (422, False, "http"), (429, True, "rate_limit"),
     (500, True, "http"), (503, True, "http"), (504, True, "http")],
)  # fmt: skip
def test_status_classification(status, retryable, kind):
    err = classify(status, "m")
    assert (err.retryable, err.kind) == (retryable, kind)
    waits, sleep = recorder()
    script = Script(err)
    if retryable:
        run(retrying(script, RetryPolicy(), sleep))
        assert script.calls == 2
    else:
        with pytest.raises(ApiError):
            run(retrying(script, RetryPolicy(), sleep))
        assert script.calls == 1


def test_openai_quota_429_is_final_and_rate_limit_429_is_not():
    quota = '{"error":{"message":"You exceeded your quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}'  # noqa: E501
    limit = '{"error":{"message":"Rate limit","type":"requests","param":null,"code":"rate_limit_exceeded"}}'  # noqa: E501
    headers = CIMultiDict({"retry-after-ms": "250", "retry-after": "3"})
    err = openai_error(429, headers, quota)
    assert (err.kind, err.retryable) == ("quota", False)
    err = openai_error(429, headers, limit)
    assert (err.kind, err.retryable, err.retry_after, err.message) == (
        "rate_limit",
        True,
        0.25,
        "Rate limit",
    )


def test_retry_after_header_forms():
    assert retry_after(CIMultiDict({"retry-after-ms": "1500", "Retry-After": "9"})) == 1.5
    assert retry_after(CIMultiDict({"Retry-After": "7"})) == 7.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after(CIMultiDict({"Retry-After": when})) <= 30
    assert retry_after(CIMultiDict({"Retry-After": "soon"})) is None
    assert retry_after(CIMultiDict()) is None


def test_a_wait_said_in_whole_seconds_alone_is_known_as_such():
    assert whole_second_wait(CIMultiDict({"Retry-After": "1"}), 1.0)
    assert not whole_second_wait(CIMultiDict({"retry-after-ms": "1000", "Retry-After": "1"}), 1.0)
    assert not whole_second_wait(CIMultiDict({"Retry-After": "1.5"}), 1.5)
    assert not whole_second_wait(CIMultiDict({"Retry-After": "2"}), 0.5)  # the body said 0.5 s
    assert not whole_second_wait(None, 1.0)


def test_gemini_retry_info_delay():
    body = (
        '{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED",'
        '"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37.5s"}]}}'
    )
    err = Gemini("http://x", "m", "k").error(429, CIMultiDict(), body)
    assert (err.kind, err.retryable, err.retry_after) == ("rate_limit", True, 37.5)
    assert "RESOURCE_EXHAUSTED" in err.message


def test_adaptive_limit_drops_once_per_burst_and_grows_back():
    async def scenario():
        limit = AdaptiveLimit(8)
        tickets = [await limit.acquire() for _ in range(8)]
        for t in tickets[:4]:  # four refusals from the same generation: one drop
            limit.release(t, overloaded=True)
        # the first refusal was sent with 1 in flight: not a concurrency of 0, so the drop
        # is at most BETA (another client's load, say)
        assert limit.limit == pytest.approx(8 * AdaptiveLimit.BETA) and limit.in_flight == 4
        for t in tickets[4:]:
            limit.release(t, ok=True)
        assert 5.6 < limit.limit < 8.0
        for _ in range(2000):
            limit.release(await limit.acquire(), ok=True)
        assert limit.limit == 8.0  # never above the configured concurrency

    run(scenario())


def test_adaptive_limit_blocks_beyond_the_limit():
    async def scenario():
        limit = AdaptiveLimit(2)
        g = [await limit.acquire(), await limit.acquire()]
        waiter = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        limit.release(g[0], ok=True)
        await asyncio.sleep(0)
        assert waiter.done()

    run(scenario())


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rpm_bucket_holds_over_any_window():
    clock = FakeClock()

    async def scenario():
        bucket = TokenBucket(120, clock=clock, sleep=clock.sleep)  # 2 per second
        stamps = []
        for _ in range(600):
            await bucket.acquire()
            stamps.append(clock.now)
        return stamps

    stamps = run(scenario())
    assert stamps[-1] >= 298  # 600 requests at 120/min take about 5 minutes
    for i, start in enumerate(stamps):  # any 60 s window: at most rpm + one second of burst
        in_window = sum(1 for t in stamps[i:] if t < start + 60)
        assert in_window <= 122


def test_a_tpm_bucket_lets_a_large_request_overdraw_and_the_next_waits_for_it():
    clock = FakeClock()

    async def scenario():
        bucket = TokenBucket(6000, clock=clock, sleep=clock.sleep)  # 100 tokens/s
        await bucket.acquire(100)
        await bucket.acquire(500)  # more than the bucket holds: it waits for a full bucket
        await bucket.acquire(100)
        return clock.now

    assert run(scenario()) == pytest.approx(1.0 + 5.0)  # 100 to refill, then 400 of debt + 100


def test_a_first_attempt_that_succeeds_is_one_attempt_and_no_wait():
    waits, sleep = recorder()
    reply, attempts = run(retrying(Script(), RetryPolicy(max_retries=2), sleep))
    assert (reply.text, attempts, waits) == ("ok", 1, [])
    script = Script(classify(401, "bad key"))
    with pytest.raises(ApiError, match="bad key"):
        run(retrying(script, RetryPolicy(max_retries=2), sleep))
    assert script.calls == 1 and waits == []  # a final error is not retried
    with pytest.raises(ApiError, match="busy"):
        run(retrying(Script(classify(503, "busy")), RetryPolicy(max_retries=0), sleep))
