"""Turn checks through the CLI: each kind passing and failing on the mock's known reply."""

from __future__ import annotations

import json

import pytest
from conftest import play

from runner.mock import reply_text

ASKED = "I like Tea."
REPLY = reply_text([("user", ASKED)])  # what the mock answers a conversation of that one turn

# scenario id -> (its expect block, whether each check passes)
CASES = {
    "hits": (
        {"contains_any": ["coffee", "Tea"], "not_contains": ["coffee", "TEA"], "equals": REPLY},
        {"contains_any": True, "not_contains": True, "equals": True},
    ),
    "misses": (
        {"contains_any": ["coffee", "TEA"], "not_contains": ["coffee", "Tea"], "equals": ASKED},
        {"contains_any": False, "not_contains": False, "equals": False},
    ),
    "folded-hits": (
        {"contains_any": ["TEA"], "not_contains": ["COFFEE"], "equals": f"  {REPLY.upper()}\n"},
        {"contains_any": True, "not_contains": True, "equals": True},
    ),
    "folded-misses": (
        {"contains_any": ["COFFEE"], "not_contains": ["tEA"], "equals": REPLY + "!"},
        {"contains_any": False, "not_contains": False, "equals": False},
    ),
}


def scenarios() -> str:
    lines = ["scenarios:"]
    for sid, (expect, _) in CASES.items():
        expect = {**expect, "ignore_case": sid.startswith("folded")}
        turn = {"user": ASKED, "expect": expect}
        lines.append(f"  - {{id: {sid}, turns: [{json.dumps(turn)}]}}")  # JSON is YAML
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("target", ["chat", "responses", "gemini", "anthropic"])
def test_contains_any_not_contains_equals_and_ignore_case(tmp_path, mock_server, target):
    played = play(tmp_path, scenarios(), server=mock_server, targets=(target,))
    assert played.result.exit_code == 1, played.result.output  # checks failed, nothing else
    records = {r["scenario_id"]: r for r in played.transcripts}
    assert set(records) == set(CASES)
    for sid, (_, passes) in CASES.items():
        (turn,) = records[sid]["turns"]
        assert turn["assistant"] == REPLY
        checks = {c["kind"]: c for c in turn["checks"]}
        assert {kind: c["passed"] for kind, c in checks.items()} == passes, sid
        assert records[sid]["status"] == "ok"
        assert records[sid]["passed"] is all(passes.values())
    misses = {c["kind"]: c["reason"] for c in records["misses"]["turns"][0]["checks"]}
    assert "coffee" in misses["contains_any"] and "TEA" in misses["contains_any"]
    assert "Tea" in misses["not_contains"] and "coffee" not in misses["not_contains"]
    assert ASKED in misses["equals"]
    (row,) = json.loads(played.report("json").output)
    assert (row["checks_passed"], row["checks_failed"]) == (6, 6)
    assert played.manifest["counts"]["checks_failed"] == 2
