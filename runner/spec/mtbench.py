"""`import mtbench`: FastChat's MT-Bench question file (question.jsonl) -> a scenario file.

One scenario per question: id `mt-bench-<question_id>`, the category as a tag, the
turns in order in one conversation, FastChat's temperature for the category, and
question_id, category and reference answers as metadata, carried into the records
(`export --format mtbench` takes question_id back from there).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from runner.encoding import from_json
from runner.errors import InputError, at
from runner.outfile import STDOUT, output_file
from runner.spec.scenarios import load_file
from runner.spec.variables import TEMPLATE

# fastchat/llm_judge/common.py temperature_config; other categories get DEFAULT
TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
PREFIX = "mt-bench-"


def import_mtbench(questions: Path, out: Path) -> int:
    """Write OUT (YAML; `-` is stdout) from a FastChat question file; the number of
    scenarios written.

    The text is loaded as any scenario file is before it is written, so it is known to be
    valid (from a temporary copy of the same name: OUT may be a FIFO or stdout)."""
    rows = read_questions(questions)
    header = (
        f"# MT-Bench questions from {questions.name}, by `dialogue-runner import mtbench`.\n"
        "# Temperatures by category as FastChat's answer generator sets them.\n"
    )
    document = {"scenarios": [scenario(q) for q in rows]}
    text = yaml.dump(document, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=100)
    data = (header + text).encode("utf-8")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / (out.name if out.name not in ("", STDOUT) else "mt_bench.yaml")
        copy.write_bytes(data)
        count = len(load_file(str(copy)))
    with output_file(out) as fh:
        fh.write(data)
    return count


def scenario(question: dict[str, Any]) -> dict[str, Any]:
    """One question as a scenario mapping."""
    category = question.get("category")
    metadata = {"question_id": question["question_id"], "category": category}
    if "reference" in question:
        metadata["reference"] = question["reference"]
    tags = ["mt-bench"] + ([category] if category else [])
    temperature = TEMPERATURES.get(category or "", DEFAULT_TEMPERATURE)
    return {
        "id": f"{PREFIX}{question['question_id']}",
        "tags": tags,
        "params": {"temperature": temperature},
        "turns": list(question["turns"]),
        "metadata": metadata,
    }


def read_questions(path: Path) -> list[dict[str, Any]]:
    """Every question of the file, checked; InputError naming file and line otherwise."""
    problems: list[str] = []
    questions: list[dict[str, Any]] = []
    lines: dict[Any, int] = {}  # question_id -> line, for duplicates
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(at(str(path), None, f"cannot read: {exc.strerror or exc}")) from None
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            question = _question(line)
            qid = question["question_id"]
            if qid in lines:
                raise ValueError(f"duplicate question_id {qid} (first at line {lines[qid]})")
            lines[qid] = number
            questions.append(question)
        except ValueError as exc:
            problems.append(at(str(path), number, str(exc)))
    if not questions and not problems:
        problems.append(at(str(path), None, "no questions: the file is empty"))
    if problems:
        raise InputError(problems)
    return questions


def _question(line: bytes) -> dict[str, Any]:
    """One line: {question_id, category, turns: [str, ...], reference?: [str, ...]}."""
    try:
        question = from_json(line)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(question, dict):
        raise ValueError("a question must be a JSON object")
    qid = question.get("question_id")
    if not isinstance(qid, int | str) or isinstance(qid, bool) or qid == "":
        raise ValueError("'question_id' must be a number or a string")
    turns = question.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"question {qid}: 'turns' must be a non-empty list of strings")
    for i, turn in enumerate(turns, 1):
        if TEMPLATE.search(turn):
            raise ValueError(f"question {qid}: turn {i} holds {{{{name}}}}, read as a template")
    if not isinstance(question.get("category", ""), str):
        raise ValueError(f"question {qid}: 'category' must be a string")
    return question


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so questions read as they were written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
