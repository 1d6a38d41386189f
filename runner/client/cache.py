"""Replies from a cache (`run --cache DIR`, `--cache-only`, or `cache:` in the models file).

Each request is keyed by a hash of the provider, the model, the base URL's host, the sample
and the exact body the provider would send unstreamed (a streamed request and a plain one
ask the same). A hit is replayed without a request; a miss is sent and its reply stored
(`--cache-only` fails it instead, kind cache_miss). The folder holds one append-only JSONL
file per provider and model, an entry a line, each appended in one O_APPEND write: safe
for two processes at once, and a line torn by a kill is skipped when read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from runner.client.providers import Call, Provider, Reply
from runner.encoding import to_json
from runner.errors import ApiError, InputError, Kind
from runner.messages import ToolCall
from runner.results.records import attempt_record, utc_now
from runner.results.store import open_own, read_at, scan_jsonl, write_error
from runner.spec.targets import Target
from runner.usage import NEWER_KEYS, TOKEN_KEYS, Usage

VERSION = 1  # of the entries and of the key: a new one misses every older entry
ONLY_NEEDS = "--cache-only needs a cache folder: --cache DIR, or cache: in the models file"


def reply_cache(given: str | None, only: bool, models: str | None) -> Cache | None:
    """The run's cache: GIVEN (--cache DIR; "" with --no-cache: none), else the models
    file's `cache:` (MODELS, already relative to the models file). --cache-only needs a
    folder that exists (a typo would fail every conversation)."""
    folder = models if given is None else given or None
    if only and folder is None:
        raise InputError(ONLY_NEEDS + ("; not with --no-cache" if given == "" else ""))
    if folder is None:
        return None
    if only and not Path(folder).is_dir():
        raise InputError(f"--cache-only: the cache folder {folder} does not exist")
    return Cache(Path(folder), only)


class Cache:
    """One cache folder: an index of each file (read on first use) and its appends."""

    def __init__(self, folder: Path, only: bool = False):
        self.folder = folder
        self.only = only
        self._index: dict[Path, dict[bytes, int]] = {}  # file -> key -> offset of its entry
        self._fds: dict[Path, int] = {}

    def lookup(self, provider: Provider, call: Call, sample: int) -> Lookup:
        """The request's entry: its reply when cached; a miss with --cache-only is an
        ApiError of kind cache_miss (final: nothing is sent)."""
        host = urlsplit(provider.base_url).hostname or ""
        unstreamed = dataclasses.replace(call, stream=False) if call.stream else call
        body = provider.build(unstreamed).body
        head = to_json([VERSION, provider.name, provider.model, host.lower(), sample])
        key = hashlib.sha256(head + b"\n" + body).digest()
        path = self.folder / (_safe(f"{provider.name}--{provider.model}") + ".jsonl")
        offset = self._entries(path).get(key)
        reply = _reply(next(read_at(path, [offset]))) if offset is not None else None
        if reply is None and self.only:
            raise ApiError(
                Kind.CACHE_MISS,
                f"no cached reply for this request (--cache-only sends nothing) in {self.folder}",
            )
        return Lookup(self, path, key, reply, {"host": host, "sample": sample})

    def _entries(self, path: Path) -> dict[bytes, int]:
        """Key -> offset of the file's whole entries (the last of a key wins)."""
        if path not in self._index:
            index: dict[bytes, int] = {}
            for offset, entry in scan_jsonl(path):
                key = entry.get("key")
                if entry.get("version") == VERSION and isinstance(key, str) and _reply(entry):
                    index[bytes.fromhex(key)] = offset
            self._index[path] = index
        return self._index[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def append(self, path: Path, key: bytes, entry: dict[str, Any]) -> None:
        """One entry, one O_APPEND write; a file that ends in a torn line (a kill) gets a
        newline first, so that the torn line stays apart and is skipped. WriteError when
        the folder or file cannot be written (the run stops, as for its own records)."""
        line = to_json(entry) + b"\n"
        try:
            fd = self._fds.get(path)
            if fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = self._fds[path] = open_own(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
            written = os.write(fd, line)
        except OSError as exc:
            raise write_error(path, exc) from None
        if written == len(line):
            self._entries(path)[key] = os.lseek(fd, 0, os.SEEK_CUR) - len(line.lstrip(b"\n"))


@dataclasses.dataclass
class Lookup:
    """A request looked up: its reply when cached; store() keeps a reply that was sent."""

    cache: Cache
    path: Path
    key: bytes
    reply: Reply | None
    about: dict[str, Any]

    def store(self, reply: Reply, provider: Provider) -> None:
        """Keep a reply that was sent (not an empty one: a failure, better asked again)."""
        if not reply.text and not reply.tool_calls:
            return
        kept: dict[str, Any] = {
            "text": reply.text, "finish_reason_raw": reply.finish_reason_raw,
            "usage": reply.usage, "raw_usage": reply.raw_usage,
            "response_id": reply.response_id, "latency_ms": round(reply.latency_ms, 2),
            "ttft_ms": round(reply.ttft_ms, 2) if reply.ttft_ms is not None else None,
        }  # fmt: skip
        if reply.tool_calls:
            kept["tool_calls"] = [dataclasses.astuple(call) for call in reply.tool_calls]
        entry = {
            "version": VERSION, "key": self.key.hex(), "provider": provider.name,
            "model": provider.model, **self.about, "reply": kept, "stored_at": utc_now(),
        }  # fmt: skip
        self.cache.append(self.path, self.key, entry)

    def usage_record(
        self, cid: str, turn: int | tuple[int, int], target: Target, judge: bool
    ) -> dict[str, Any]:
        """The usage record of a replayed reply: no tokens spent (cost 0), not a request;
        latency and TTFT are those measured when it was sent, marked `cached_reply`."""
        assert self.reply is not None
        name, model = target.name, target.model
        record = attempt_record(cid, turn, 1, name, model, 200, None, self.reply.latency_ms)
        ttft = self.reply.ttft_ms
        record.update(ttft_ms=round(ttft, 2) if ttft is not None else None, cached_reply=True)
        if judge:
            record["judge"] = True
        return record


def _reply(entry: dict[str, Any]) -> Reply | None:
    """The Reply an entry holds, as the provider gave it; None for an entry of another
    shape (an edited line)."""
    kept = entry.get("reply")
    if not isinstance(kept, dict) or not isinstance(kept.get("text"), str):
        return None
    calls = _calls(kept.get("tool_calls", []))
    if calls is None or not (kept["text"] or calls):
        return None
    usage = kept.get("usage")
    if not isinstance(usage, dict) or any(
        type(usage.get(k, 0 if k in NEWER_KEYS else None)) is not int for k in TOKEN_KEYS
    ):
        return None
    latency, ttft = kept.get("latency_ms"), kept.get("ttft_ms")
    if not _number(latency) or not (ttft is None or _number(ttft)):
        return None
    finish, raw, rid = kept.get("finish_reason_raw"), kept.get("raw_usage"), kept.get("response_id")
    if not (_text(finish) and (raw is None or isinstance(raw, dict)) and _text(rid)):
        return None
    tokens = cast(Usage, {k: usage.get(k, 0) for k in TOKEN_KEYS})  # older entries: 0
    latency = float(kept["latency_ms"])
    return Reply(kept["text"], finish, tokens, raw, rid, latency, ttft, tool_calls=calls)


def _calls(kept: Any) -> tuple[ToolCall, ...] | None:
    """The tool calls an entry holds ([id, name, arguments, wire_id, signature] each)."""
    shape: tuple[Any, ...] = (str, str, str, bool, (str, type(None)))
    if not isinstance(kept, list) or not all(
        isinstance(c, list)
        and len(c) == 5
        and all(isinstance(v, t) for v, t in zip(c, shape, strict=True))
        for c in kept
    ):
        return None
    return tuple(ToolCall(*c) for c in kept)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _safe(name: str) -> str:
    """A file name for a provider and model (`deepseek-ai/DeepSeek-V3` has a slash)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:200]
