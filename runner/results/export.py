"""Exports of a run's transcripts to what fine-tuning and evaluation tools read.

- openai:   {"messages": [...]}, the chat fine-tuning format (system first, then user and
            assistant in turn, string contents, no other keys); with tools, assistant
            `tool_calls`, `tool` messages (`tool_call_id`) and the `tools` list
- sharegpt: {"conversations": [{"from": "system" | "human" | "gpt", "value": ...}]}; with
            tools, `function_call` and `observation` turns and `tools` (JSON text)
- mtbench:  FastChat's model-answer files, one `<model_id>.jsonl` per target in a folder
- jsonl:    the transcript records themselves

Only the newest record of each conversation is exported. Records are streamed: what is
held is each conversation's byte offset in transcripts.jsonl (runner/results/store.py), and for
mtbench a small key per conversation, to sort the answers by question.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import Any

from runner.encoding import from_json, to_json
from runner.errors import InputError
from runner.outfile import is_stdout
from runner.results.reader import RunRecords, Skipped
from runner.results.records import message_text
from runner.results.store import TRANSCRIPTS, read_at, read_manifest, write_jsonl

FORMATS = ("openai", "sharegpt", "mtbench", "jsonl")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


@dataclass
class Filters:
    """Which conversations to export: --only-ok, --only-passed, --target NAME."""

    only_ok: bool = False
    only_passed: bool = False
    targets: tuple[str, ...] = ()

    def keep(self, record: dict[str, Any]) -> bool:
        if self.only_ok and record["status"] != "ok":
            return False
        if self.only_passed and record.get("passed") is not True:
            return False
        return not self.targets or record["target"] in self.targets


@dataclass(frozen=True)
class Split:
    """--split NAME=FRACTION: that share of the conversations goes to a second file, picked
    by a hash of the conversation id (the same conversation lands on the same side in every
    export); the rest is `train`."""

    name: str
    fraction: float

    def side(self, record: dict[str, Any]) -> str:
        digest = hashlib.sha256(record["conversation_id"].encode("utf-8")).digest()
        return self.name if int.from_bytes(digest[:8]) / 2**64 < self.fraction else "train"

    def path(self, out: Path, side: str) -> Path:
        """data.jsonl -> data.train.jsonl, data.validation.jsonl."""
        return out.with_name(f"{out.stem}.{side}{out.suffix}")


def parse_split(text: str | None) -> Split | None:
    """NAME=FRACTION (0 < FRACTION < 1, NAME not train); InputError otherwise."""
    if text is None:
        return None
    name, sep, value = text.partition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not sep or not name.isidentifier() or name == "train" or not 0 < fraction < 1:
        raise InputError(
            f"--split must be NAME=FRACTION with 0 < FRACTION < 1 and NAME not 'train' "
            f"(validation=0.1), got {text!r}"
        )
    return Split(name, fraction)


@dataclass
class Exported:
    """What an export wrote: conversations, files, and how many were left out and why."""

    written: int = 0
    files: list[Path] = field(default_factory=list)
    filtered: int = 0  # by --only-ok, --only-passed, --target
    unusable: int = 0  # no complete exchange (openai, sharegpt) or failed (mtbench)
    skipped: Skipped = field(default_factory=Skipped)  # lines that are not the run's records

    def line(self) -> str:
        out = f"{self.written} conversations -> {', '.join(map(str, self.files)) or '(none)'}"
        left = [f"{self.filtered} filtered out"] if self.filtered else []
        left += [f"{self.unusable} without a usable reply"] if self.unusable else []
        out += f" ({', '.join(left)})" if left else ""
        return out + (f"\n{self.skipped.note()}" if self.skipped.count else "")


def export(
    run_dir: Path,
    fmt: str,
    out: Path,
    filters: Filters,
    split: Split | None = None,
    with_ids: bool = False,
) -> Exported:
    """Write the run's conversations in format FMT to OUT (a folder for mtbench); SPLIT:
    into two files beside OUT; WITH_IDS: each line carries its conversation id."""
    manifest = read_manifest(run_dir)
    known = [t["name"] for t in manifest.get("targets", [])]
    unknown = [t for t in filters.targets if t not in known]
    if unknown:
        raise InputError(
            f"--target {', '.join(unknown)}: not a target of {run_dir} "
            f"(its targets: {', '.join(known) or 'none'})"
        )
    if fmt != "mtbench" and out.is_dir():
        raise InputError(f"-o {out} is a folder; --format {fmt} writes one file")
    if split is not None and (fmt == "mtbench" or is_stdout(out)):
        raise InputError("--split writes two files beside -o: not with -o - or --format mtbench")
    done = Exported()
    try:
        if fmt == "mtbench":
            _mtbench(run_dir, _kept(RunRecords(run_dir, manifest), filters, done), out, done)
            return done
        convert = {"openai": _openai, "sharegpt": _sharegpt, "jsonl": lambda r: r}[fmt]
        _ready(out.parent)
        for side in ("train", split.name) if split is not None else ("",):
            path = split.path(out, side) if split is not None else out
            kept = _kept(RunRecords(run_dir, manifest), filters, done, split, side)
            done.written += write_jsonl(path, _converted(kept, convert, done, with_ids))
            done.files.append(path)
    except BrokenPipeError:  # the reader of stdout went away: the CLI ends quietly
        raise
    except OSError as exc:  # the export's own file: a full disk, a folder without rights
        raise InputError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    return done


def _kept(
    records: RunRecords,
    filters: Filters,
    done: Exported,
    split: Split | None = None,
    side: str = "",
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records FILTERS keep; with SPLIT, of SIDE alone (each side's pass counts its own)."""
    for offset, record in records.newest():
        if split is not None and split.side(record) != side:
            continue
        if filters.keep(record):
            yield offset, record
        else:
            done.filtered += 1
    done.skipped = records.skipped


def _converted(
    records: Iterable[tuple[int, dict[str, Any]]], convert: Any, done: Exported, with_ids: bool
) -> Iterator[dict[str, Any]]:
    for _, record in records:
        row = convert(record)
        if row is None:
            done.unusable += 1
        elif with_ids and row is not record:
            yield _with_id(row, record)
        else:
            yield row


def _with_id(row: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """--with-ids: the conversation id first (ShareGPT's own `id`), and in ShareGPT, whose
    lines have room for it, the scenario's metadata when it has any."""
    out = {"id": record["conversation_id"], **row}
    if "conversations" in row and record.get("metadata"):
        out["metadata"] = record["metadata"]
    return out


def _ready(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {folder}: {exc}") from None


# ---------------------------------------------------------------- chat formats


def dialogue(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The conversation as role/content messages: system first, no two text messages of
    one role in a row (scripted turns of one role are joined), ending on a reply (not a
    tool call); None without one. Tool calls and results are kept as the record has them
    (a result without its `name`).

    A failed conversation keeps the exchanges it completed."""
    out: list[dict[str, Any]] = []
    for message in record["messages"]:
        role, content = message["role"], message.get("content")
        if role == "tool":
            out.append({k: message[k] for k in ("role", "tool_call_id", "content")})
        elif message.get("tool_calls"):
            out.append({"role": role, "content": content, "tool_calls": message["tool_calls"]})
        elif out and out[-1]["role"] == role and _joinable(out[-1]) and isinstance(content, str):
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    while out and (out[-1]["role"] != "assistant" or out[-1].get("tool_calls")):
        out.pop()
    return out if out else None


def _joinable(message: dict[str, Any]) -> bool:
    return isinstance(message["content"], str) and not message.get("tool_calls")


def _openai(record: dict[str, Any]) -> dict[str, Any] | None:
    messages = dialogue(record)
    if not messages:
        return None
    tools = record.get("tools")
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


def _sharegpt(record: dict[str, Any]) -> dict[str, Any] | None:
    messages = dialogue(record)
    if not messages:
        return None
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [_sharegpt_call(c) for c in m["tool_calls"]]
            value = calls[0] if len(calls) == 1 else calls
            turns.append({"from": "function_call", "value": to_json(value).decode()})
        elif m["role"] == "tool" and turns and turns[-1]["from"] == "observation":
            turns[-1]["value"] += "\n" + str(m["content"])  # parallel results: one turn
        elif m["role"] == "tool":
            turns.append({"from": "observation", "value": str(m["content"])})
        else:
            turns.append({"from": SHAREGPT_ROLES[m["role"]], "value": message_text(m)})
    out: dict[str, Any] = {"conversations": turns}
    if record.get("tools"):
        out["tools"] = to_json([t["function"] for t in record["tools"]]).decode()
    return out


def _sharegpt_call(call: dict[str, Any]) -> dict[str, Any]:
    """A call as LLaMA-Factory's ShareGPT takes it: {"name", "arguments": {...}}."""
    function = call["function"]
    try:
        arguments = from_json(function["arguments"])
    except ValueError:
        arguments = function["arguments"]
    return {"name": function["name"], "arguments": arguments}


# ---------------------------------------------------------------- FastChat model answers


def _mtbench(
    run_dir: Path, kept: Iterable[tuple[int, dict[str, Any]]], out: Path, done: Exported
) -> None:
    """One `<model_id>.jsonl` per target, one line per question sorted by question_id;
    the samples of a question are its choices (index = sample). Failed conversations are
    left out: FastChat's judge reads every turn of every answer."""
    if is_stdout(out) or (out.exists() and not out.is_dir()):
        raise InputError(f"-o {out}: mtbench writes a folder of <model_id>.jsonl files")
    keys = []  # (model_id, question sort key, question_id, sample, offset): small, per answer
    for offset, record in kept:
        if record["status"] != "ok":
            done.unusable += 1
            continue
        qid = question_id(record)
        keys.append((model_id(record["target"]), _sortable(qid), qid, record["sample"], offset))
    keys.sort(key=lambda k: (k[0], k[1], k[3]))
    _ready(out)
    path = run_dir / TRANSCRIPTS
    for model, answers in groupby(keys, key=lambda k: k[0]):
        target_file = out / f"{model}.jsonl"
        done.written += write_jsonl(target_file, _answers(path, model, list(answers)))
        done.files.append(target_file)


def _answers(path: Path, model: str, keys: list[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    """One answer per question: read its samples back by offset, one question at a time."""
    for (_, qid), group in groupby(keys, key=lambda k: (k[1], k[2])):
        records = list(read_at(path, [k[4] for k in group]))
        yield {
            "question_id": qid,
            "answer_id": _answer_id(model, records),
            "model_id": model,
            "choices": [
                {"index": r["sample"], "turns": [t["assistant"] for t in r["turns"]]}
                for r in records
            ],
            "tstamp": max(_epoch(r["ended_at"]) for r in records),
        }


def question_id(record: dict[str, Any]) -> Any:
    """MT-Bench's question_id when the scenario was imported, else the scenario id (with
    the vars digest when the scenario has vars: each combination is its own question)."""
    metadata = record.get("metadata") or {}
    if "question_id" in metadata and not record["vars"]:
        return metadata["question_id"]
    return record["conversation_id"].split("@")[0] if record["vars"] else record["scenario_id"]


def model_id(target: str) -> str:
    """The target's name as a file name: FastChat takes the model's name from it."""
    return target.replace("/", "_")


def _sortable(qid: Any) -> tuple[int, Any]:
    return (0, qid) if isinstance(qid, int) and not isinstance(qid, bool) else (1, str(qid))


def _answer_id(model: str, records: list[dict[str, Any]]) -> str:
    ids = ",".join(r["conversation_id"] for r in records)
    return hashlib.sha1(f"{model}:{ids}".encode()).hexdigest()[:22]


def _epoch(iso: str) -> float:
    return round(datetime.fromisoformat(iso).timestamp(), 3)
