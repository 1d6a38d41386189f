"""`export`: openai, sharegpt, mtbench and jsonl, exact shapes, filters, newest record per
conversation; HuggingFace `datasets` loads the chat exports (runner/results/export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Played, cli, play, read_jsonl

RUN = """\
scenarios:
  - id: chat
    system: Be brief.
    turns:
      - 你好
      - assistant: a scripted answer
      - user: second question
        expect: {contains: ["mock:"]}
  - id: greeting-first
    turns:
      - assistant: Hello! How can I help?
      - user: hi
        expect: {contains: ["nope"]}
  - id: blocked
    turns:
      - first question
      - "[[block]] second question"
"""
TARGETS = ("chat", "gemini")


@pytest.fixture
def run(tmp_path: Path, mock_server) -> Played:
    played = play(tmp_path, RUN, server=mock_server, targets=TARGETS)
    assert played.result.exit_code == 3, played.result.output  # blocked fails (kind empty)
    return played


def export(played: Played, fmt: str, *args: str) -> tuple[Path, list[dict]]:
    out = played.run_dir.parent / f"export-{fmt}.jsonl"
    result = cli("export", played.run_dir, "--format", fmt, "-o", out, *args)
    assert result.exit_code == 0, result.output
    return out, read_jsonl(out)


def assert_alternates(roles: list[str]) -> None:
    body = roles[1:] if roles[0] == "system" else roles
    assert "system" not in body
    assert all(a != b for a, b in zip(body, body[1:], strict=False))
    assert body[-1] == "assistant"


def test_openai_export_is_the_chat_fine_tuning_format(run: Played) -> None:
    _, rows = export(run, "openai")

    assert len(rows) == 6  # 3 scenarios x 2 targets; blocked keeps its first exchange
    for row in rows:
        assert list(row) == ["messages"]
        assert all(list(m) == ["role", "content"] for m in row["messages"])
        assert all(isinstance(m["content"], str) for m in row["messages"])
        assert_alternates([m["role"] for m in row["messages"]])
    chat = [r["messages"] for r in rows if r["messages"][0]["role"] == "system"]
    assert len(chat) == 2
    assert [m["role"] for m in chat[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert chat[0][1]["content"] == "你好"
    assert chat[0][2]["content"].endswith("\n\na scripted answer")  # joined to the reply
    blocked = [r["messages"] for r in rows if r["messages"][0]["content"] == "first question"]
    assert [len(m) for m in blocked] == [2, 2]


def test_sharegpt_export_maps_roles_to_from_and_value(run: Played) -> None:
    _, rows = export(run, "sharegpt")
    _, chat_rows = export(run, "openai")

    assert len(rows) == 6
    for row, chat in zip(rows, chat_rows, strict=True):
        assert list(row) == ["conversations"]
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        assert row["conversations"] == [
            {"from": names[m["role"]], "value": m["content"]} for m in chat["messages"]
        ]


def test_filters_only_ok_only_passed_and_target(run: Played) -> None:
    assert len(export(run, "openai", "--only-ok")[1]) == 4
    passed = export(run, "jsonl", "--only-passed")[1]
    assert {(r["scenario_id"], r["target"]) for r in passed} == {("chat", t) for t in TARGETS}
    gemini = export(run, "jsonl", "--target", "gemini")[1]
    assert len(gemini) == 3 and {r["target"] for r in gemini} == {"gemini"}
    result = cli("export", run.run_dir, "--format", "openai", "-o", "x", "--target", "nope")
    assert result.exit_code == 2
    assert "not a target" in result.output and "chat, gemini" in result.output
    result = cli("export", run.run_dir, "--format", "openai", "-o", run.run_dir)
    assert result.exit_code == 2 and "is a folder" in result.output


def test_jsonl_export_holds_the_newest_record_of_each_conversation(run: Played) -> None:
    again = run.resume("--retry-failed")
    assert again.result.exit_code == 3
    records = run.transcripts
    assert len(records) == 8  # the two blocked conversations were recorded twice

    _, rows = export(run, "jsonl")
    assert len(rows) == 6
    assert {r["conversation_id"] for r in rows} == {r["conversation_id"] for r in records}
    newest = {r["conversation_id"]: r for r in records}  # later lines are newer
    assert rows == [newest[r["conversation_id"]] for r in rows]
    assert rows == [r for r in records if newest[r["conversation_id"]] is r]  # file order


def test_hugging_face_datasets_loads_the_chat_exports(
    run: Played, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf-cache")

    openai_file, openai_rows = export(run, "openai")
    loaded = datasets.load_dataset("json", data_files=str(openai_file), cache_dir=cache)["train"]
    assert loaded.num_rows == 6 and loaded.column_names == ["messages"]
    assert loaded[0]["messages"] == openai_rows[0]["messages"]

    sharegpt_file, sharegpt_rows = export(run, "sharegpt")
    loaded = datasets.load_dataset("json", data_files=str(sharegpt_file), cache_dir=cache)["train"]
    assert loaded.num_rows == 6 and loaded.column_names == ["conversations"]
    assert loaded[5]["conversations"] == sharegpt_rows[5]["conversations"]
    assert {t["from"] for row in loaded for t in row["conversations"]} == {"system", "human", "gpt"}


def test_mtbench_export_writes_an_answer_file_per_target(tmp_path: Path, mock_server) -> None:
    scenario = """\
scenarios:
  - {id: q-b, turns: [one, two], repeat: 2}
  - {id: q-a, turns: ["{{x}}"], vars: {x: [p, q]}}
  - {id: q-c, turns: ["[[block]]"]}
"""
    played = play(tmp_path, scenario, server=mock_server, targets=("chat", "gemini"))
    out = tmp_path / "answers"
    result = cli("export", played.run_dir, "--format", "mtbench", "-o", out)

    assert result.exit_code == 0, result.output
    assert "2 without a usable reply" in result.output  # q-c failed on both targets
    assert sorted(p.name for p in out.iterdir()) == ["chat.jsonl", "gemini.jsonl"]
    answers = read_jsonl(out / "chat.jsonl")
    ids = [a["question_id"] for a in answers]
    assert ids == sorted(ids) and len(ids) == 3 and ids[2] == "q-b"
    assert ids[0].startswith("q-a[") and ids[1].startswith("q-a[")
    for answer in answers:
        assert list(answer) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
        assert answer["model_id"] == "chat" and isinstance(answer["tstamp"], float)
    q_b = answers[2]["choices"]
    assert [c["index"] for c in q_b] == [0, 1]
    assert all(len(c["turns"]) == 2 and c["turns"][0].startswith("mock:") for c in q_b)
    assert len({a["answer_id"] for a in answers}) == 3
    json.dumps(answers)  # plain JSON values only


def newest_peak(played: Played, n: int) -> tuple[int, list[int], int]:
    """A run of N conversations, one in 1,000 recorded twice (retried): how many newest
    records are found, the offsets of the retried ones, and the reader's peak memory."""
    import tracemalloc

    from runner.results.reader import RunRecords

    path = played.run_dir / "transcripts.jsonl"
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    record["turns"] = record["messages"] = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in [*range(n), *range(0, n, 1000)]:
            fh.write(json.dumps({**record, "conversation_id": f"c{i:08d}@chat"}) + "\n")
    retried = {f"c{i:08d}@chat" for i in range(0, n, 1000)}
    count, offsets = 0, []
    tracemalloc.start()
    try:
        for offset, found in RunRecords(played.run_dir).newest():
            count += 1
            if found["conversation_id"] in retried:
                offsets.append(offset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, offsets, peak


def test_finding_the_newest_records_holds_a_few_bytes_per_conversation(run: Played) -> None:
    # each id's text and offset took ~150 bytes (10^6 conversations: export at 162 MB); a
    # hash per id in a flat table takes 16 to 32 (46 MB)
    small, big = newest_peak(run, 10_000), newest_peak(run, 50_000)
    for (count, offsets, _), n in ((small, 10_000), (big, 50_000)):
        assert count == n and len(offsets) == n // 1000
        line = len(json.dumps({"conversation_id": "c00000000@chat"}))  # lower bound of a line
        assert all(offset > n * line for offset in offsets)  # each its second, newer, record
    assert (big[2] - small[2]) / 40_000 < 60  # bytes per conversation more


def test_split_is_by_conversation_id_the_same_in_every_export(tmp_path: Path) -> None:
    scenario = (
        "id: many\nmetadata: {source: unit}\nturns: ['{{n}}']\nvars: {n: ["
        + ", ".join(str(i) for i in range(200))
        + "]}\n"
    )
    played = play(tmp_path, scenario, targets=("mock",))
    out = tmp_path / "data.jsonl"
    args = ("export", played.run_dir, "--format", "sharegpt", "-o", out, "--with-ids")
    result = cli(*args, "--split", "validation=0.1")
    assert result.exit_code == 0, result.output
    train, held = (
        read_jsonl(tmp_path / "data.train.jsonl"),
        read_jsonl(tmp_path / "data.validation.jsonl"),
    )
    assert not out.exists()
    assert len(train) + len(held) == 200 and 5 <= len(held) <= 40  # about a tenth
    ids = {r["conversation_id"] for r in played.transcripts}
    assert {r["id"] for r in train} | {r["id"] for r in held} == ids
    assert all(list(r) == ["id", "conversations", "metadata"] for r in train + held)
    assert held[0]["metadata"] == {"source": "unit"}
    # the same conversation lands on the same side in another export, of another format
    openai = tmp_path / "chat.jsonl"
    cli("export", played.run_dir, "--format", "openai", "-o", openai, "--split",
        "validation=0.1", "--with-ids")  # fmt: skip
    assert [r["id"] for r in read_jsonl(tmp_path / "chat.validation.jsonl")] == [
        r["id"] for r in held
    ]
    assert list(read_jsonl(tmp_path / "chat.train.jsonl")[0]) == ["id", "messages"]
    for bad in ("validation", "train=0.1", "validation=1", "x=abc"):
        result = cli(*args, "--split", bad)
        assert result.exit_code == 2 and "--split must be NAME=FRACTION" in result.output
    result = cli("export", played.run_dir, "--format", "openai", "-o", "-", "--split", "v=0.5")
    assert result.exit_code == 2 and "not with -o -" in result.output
