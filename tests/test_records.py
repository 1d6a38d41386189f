"""Records on disk: the encoding (with and without orjson), torn lines, newest record wins."""

from __future__ import annotations

import json

import pytest

from runner import encoding
from runner.results.reader import latest_transcripts
from runner.results.store import JsonlWriter, repair_torn_tail, scan_jsonl

RECORD = {
    "conversation_id": "memory-zh[ab]@mock",
    "messages": [{"role": "user", "content": '我叫小李 "quoted" \n tab\t'}],
    "usage": {"input_tokens": 12, "latency_ms": 12.25, "raw": None, "ok": True},
    "big": 2**70,  # beyond orjson's 64-bit integers: the standard library takes over
}


@pytest.mark.parametrize("fast", [True, False])
def test_encoding_is_compact_utf8_with_non_ascii_as_is(monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(encoding, "orjson", None)
    elif encoding.orjson is None:
        pytest.skip("orjson is not installed")
    data = encoding.to_json(RECORD)
    assert data == json.dumps(RECORD, ensure_ascii=False, separators=(",", ":")).encode()
    assert encoding.from_json(data) == RECORD
    with pytest.raises(ValueError):
        encoding.from_json(b'{"cut": ')


def test_torn_tail_is_cut_and_readers_skip_it(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = JsonlWriter(path)
    for i in range(3):
        writer.write({"conversation_id": f"c{i}", "status": "ok"})
    writer.close()
    with open(path, "ab") as fh:
        fh.write(b'{"conversation_id": "c3", "sta')  # a kill in mid-write
    assert [r["conversation_id"] for _, r in scan_jsonl(path)] == ["c0", "c1", "c2"]
    repair_torn_tail(path)
    assert path.read_bytes().endswith(b'"ok"}\n') and len(list(scan_jsonl(path))) == 3
    path.write_bytes(b'{"no newline at all')
    repair_torn_tail(path)
    assert path.read_bytes() == b""


def test_the_newest_record_per_id_wins(tmp_path):
    (tmp_path / "run.json").write_text('{"run_id": "r", "targets": [{"name": "t"}]}')
    writer = JsonlWriter(tmp_path / "transcripts.jsonl")
    shape = {"scenario_id": "s", "target": "t", "sample": 0, "vars": {}, "messages": []}
    shape |= {"turns": [], "ended_at": "2026-11-22T10:00:00+00:00"}
    writer.write({**shape, "conversation_id": "a", "status": "failed"})
    writer.write({**shape, "conversation_id": "b", "status": "ok"})
    writer.write({**shape, "conversation_id": "a", "status": "ok"})
    writer.close()
    latest = latest_transcripts(tmp_path)
    assert {cid: r["status"] for cid, r in latest.items()} == {"a": "ok", "b": "ok"}
