"""Cost: prices per part of the usage, --max-cost stopping a run and a resume finishing it."""

from __future__ import annotations

import json

import pytest
from conftest import play

from runner.cost import cost

DOLLAR_A_TOKEN = {"input_per_mtok": 1e6, "output_per_mtok": 1e6}
FOUR = "id: s\nturns: [hi, again]\nvars: {n: [1, 2, 3, 4]}\n"


def test_each_part_of_the_usage_has_its_own_price():
    tokens = {
        "input_tokens": 1000,
        "cached_tokens": 400,
        "output_tokens": 300,
        "reasoning_tokens": 100,
    }
    price = {
        "input_per_mtok": 2.0,
        "cached_input_per_mtok": 0.5,
        "output_per_mtok": 8.0,
        "reasoning_per_mtok": 16.0,
    }
    assert cost(tokens, price) == pytest.approx((600 * 2 + 400 * 0.5 + 200 * 8 + 100 * 16) / 1e6)
    # without their own price, cached input costs as input and reasoning as output
    plain = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
    assert cost(tokens, plain) == pytest.approx((1000 * 2 + 300 * 8) / 1e6)
    assert cost(tokens, None) is None


def test_max_cost_stops_the_run_with_exit_3_and_a_resume_with_a_higher_cap_finishes_it(
    tmp_path, mock_server
):
    played = play(
        tmp_path, FOUR, "--max-cost", "0.5", "-c", "1", server=mock_server,
        models={"price": DOLLAR_A_TOKEN},
    )  # fmt: skip
    result = played.result
    assert result.exit_code == 3, result.output
    assert "3 conversations were not run" in result.stderr
    assert "passed --max-cost $0.5" in result.stderr and "--resume" in result.stderr
    assert len(played.transcripts) == 1  # the rest are not written: resume runs them
    manifest = played.manifest
    assert manifest["status"] == "over_budget" and manifest["counts"]["not_run"] == 3
    spent = manifest["cost_usd"]
    assert spent == sum(u["total_tokens"] for u in played.usage) > 0.5
    (record,) = played.transcripts
    assert record["cost_usd"] == record["usage"]["total_tokens"]  # a dollar a token

    resumed = played.resume("--max-cost", "1000000")
    assert resumed.result.exit_code == 0, resumed.result.output
    ids = [r["conversation_id"] for r in resumed.transcripts]
    assert len(ids) == len(set(ids)) == 4
    manifest = resumed.manifest
    assert manifest["status"] == "finished" and manifest["counts"]["not_run"] == 0
    assert manifest["cost_usd"] == sum(u["total_tokens"] for u in resumed.usage) > spent
    assert manifest["cost_by_target"] == {"chat": manifest["cost_usd"]}


def test_a_resume_keeps_the_cap_and_counts_what_was_spent_before(tmp_path, mock_server):
    played = play(
        tmp_path, FOUR, "--max-cost", "0.5", "-c", "1", server=mock_server,
        models={"price": DOLLAR_A_TOKEN},
    )  # fmt: skip
    again = played.resume()  # the same cap, already passed: nothing more starts
    assert again.result.exit_code == 3
    assert len(again.transcripts) == 1 and "3 conversations were not run" in again.result.stderr


def test_max_cost_needs_a_price_for_every_target_and_sends_nothing(tmp_path, mock_server):
    played = play(
        tmp_path, FOUR, "--max-cost", "1", server=mock_server, targets=("chat", "mock"),
        models={"price": DOLLAR_A_TOKEN},
    )  # fmt: skip
    assert played.result.exit_code == 2
    assert "--max-cost needs a price for every target; mock has none" in played.result.stderr
    assert mock_server.requests == []


@pytest.mark.parametrize(
    ("price", "problem"),
    [
        ({"input_per_mtok": 1, "output": 2}, "unknown price key output"),
        ({"input_per_mtok": -1}, "price 'input_per_mtok' must be a number >= 0"),
        ({"reasoning_per_mtok": "cheap"}, "price 'reasoning_per_mtok' must be a number >= 0"),
    ],
)
def test_a_bad_price_is_an_input_error(tmp_path, mock_server, price, problem):
    text = json.dumps(
        {"targets": {"x": {"provider": "openai-chat", "model": "m", "price": price,
                           "base_url": mock_server.base_url, "api_key_env": "TEST_API_KEY"}}}
    )  # fmt: skip
    played = play(tmp_path, "id: a\nturns: [hi]\n", models=text, targets=("x",))
    assert played.result.exit_code == 2
    assert "models.yaml:1: target 'x': " + problem in played.result.stderr
    assert mock_server.requests == []
