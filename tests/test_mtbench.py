"""`import mtbench`: the real MT-Bench question file (tests/data, from FastChat) to scenarios,
run against the mock and exported back to FastChat's answer format (runner/spec/mtbench.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, cli, play, read_jsonl

from runner.spec.scenarios import load_file

QUESTIONS = ROOT / "tests/data/mt_bench_question.jsonl"


def test_the_real_question_file_imports_runs_and_exports_back(tmp_path: Path, mock_server) -> None:
    questions = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines()]
    out = tmp_path / "mt_bench.yaml"
    result = cli("import", "mtbench", QUESTIONS, "-o", out)
    assert result.exit_code == 0, result.output
    assert "80 scenarios" in result.output

    scenarios = {s.id: s for s in load_file(str(out))}
    assert list(scenarios) == [f"mt-bench-{q['question_id']}" for q in questions]
    race = scenarios["mt-bench-101"]
    assert race.tags == ("mt-bench", "reasoning")
    assert race.params == {"temperature": 0.0}
    assert race.metadata["reference"] == ["You are in second place.", "Uncertain."]
    temperatures = {s.tags[1]: s.params["temperature"] for s in scenarios.values()}
    assert temperatures == {
        **dict.fromkeys(("writing", "roleplay"), 0.7),
        **dict.fromkeys(("extraction", "math", "coding", "reasoning"), 0.0),
        **dict.fromkeys(("stem", "humanities"), 0.1),
    }
    assert [t.content for t in scenarios["mt-bench-95"].turns] == questions[14]["turns"]

    played = play(tmp_path, out, server=mock_server)
    assert played.result.exit_code == 0, played.result.output
    assert len(mock_server.requests) == 160
    record = next(r for r in played.transcripts if r["scenario_id"] == "mt-bench-101")
    assert record["metadata"]["reference"] == ["You are in second place.", "Uncertain."]

    answers_dir = tmp_path / "model_answer"
    result = cli("export", played.run_dir, "--format", "mtbench", "-o", answers_dir)
    assert result.exit_code == 0, result.output
    answers = read_jsonl(answers_dir / "chat.jsonl")
    assert [a["question_id"] for a in answers] == sorted(q["question_id"] for q in questions)
    assert all(len(a["choices"]) == 1 and len(a["choices"][0]["turns"]) == 2 for a in answers)
    assert all(a["model_id"] == "chat" for a in answers)
    first = answers[0]["choices"][0]["turns"]
    assert first[1].startswith("mock: 3 messages")  # the second turn saw the first exchange


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (['{"question_id": 1, "turns": ["a"]}', "{bad"], 2, "not JSON"),
        (['{"question_id": 1, "turns": []}'], 1, "'turns' must be a non-empty list"),
        (['{"turns": ["a"]}'], 1, "'question_id' must be"),
        (
            ['{"question_id": 1, "turns": ["a"]}'] * 2,
            2,
            "duplicate question_id 1 (first at line 1)",
        ),
        (['{"question_id": 1, "turns": ["hi {{x}}"]}'], 1, "read as a template"),
        (['{"question_id": 1, "turns": ["a"], "category": 3}'], 1, "'category' must be"),
    ],
)
def test_a_bad_question_file_is_an_input_error_with_file_and_line(
    tmp_path: Path, lines: list[str], line: int, message: str
) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("import", "mtbench", source, "-o", tmp_path / "out.yaml")
    assert result.exit_code == 2
    assert f"{source}:{line}: " in result.output and message in result.output, result.output
    assert not (tmp_path / "out.yaml").exists()


def test_an_unknown_category_gets_fastchats_default_temperature(tmp_path: Path) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text('{"question_id": "x1", "category": "poetry", "turns": ["a\\nb"]}\n')
    assert cli("import", "mtbench", source, "-o", tmp_path / "o.yaml").exit_code == 0
    [scenario] = load_file(str(tmp_path / "o.yaml"))
    assert (scenario.id, scenario.params, scenario.turns[0].content) == (
        "mt-bench-x1",
        {"temperature": 0.7},
        "a\nb",
    )
    assert "turns:\n  - |-\n    a\n    b\n" in (tmp_path / "o.yaml").read_text()
