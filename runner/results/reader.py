"""A run folder's records as every reader (resume, report, export, JUnit, diff, compare,
merge) takes them: lines that are not this run's records are left out, counted and named
(runner/results/records.py says what a record holds; runner/results/store.py reads the lines)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.hashset import HashSet, hash64
from runner.results.records import attempt_problem, transcript_problem
from runner.results.store import TRANSCRIPTS, USAGE, lines_of, read_manifest, scan_jsonl


def latest_transcripts(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest transcript record per conversation id, all held (for readers that need
    every record at once; newest_transcripts streams them)."""
    return {r["conversation_id"]: r for _, r in newest_transcripts(run_dir)}


def newest_transcripts(
    run_dir: Path, skipped: Skipped | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, record) of the newest record per conversation of this run, in file order,
    streamed (RunRecords.newest); lines that are not records of the run go to `skipped`."""
    records = RunRecords(run_dir)
    yield from records.newest()
    if skipped is not None:
        skipped.take(records.skipped)


class Skipped:
    """Lines of a run's record files that readers left out: the count, and the first few."""

    SHOWN = 5

    def __init__(self) -> None:
        self.count = 0
        self.shown: list[str] = []

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.shown) < self.SHOWN:
            self.shown.append(f"{where}: {why}")

    def take(self, other: Skipped) -> None:
        self.count += other.count
        self.shown = (self.shown + other.shown)[: self.SHOWN]

    def note(self) -> str:
        """One line for people ("" when nothing was skipped)."""
        if not self.count:
            return ""
        more = f"; and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
        return (
            f"skipped {self.count} line(s) that are not records of this run (left as they "
            f"are, not counted): {'; '.join(self.shown)}{more}"
        )


class RunRecords:
    """A run folder's records as every reader takes them. A line is left out (and counted in
    `skipped`) unless it is a whole record of the shape the runner writes (records.py), of
    this run (its run_id, or one of the runs merged into it; older records have none), of
    one of the run's targets, and of a conversation the run still plans (a --force resume
    over a changed plan lists the others in the manifest's `unplanned`)."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any] | None = None):
        manifest = read_manifest(run_dir) if manifest is None else manifest
        self.run_dir = run_dir
        merged = manifest.get("merged_from") or ()
        self.runs = {manifest.get("run_id")} | {m.get("run_id") for m in merged}
        self.targets = {t.get("name") for t in manifest.get("targets") or ()}
        self.unplanned = frozenset(manifest.get("unplanned") or ())
        self.skipped = Skipped()

    def lines(self, count: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, record) of every transcript record of the run, in file order; the lines
        left out are counted in `skipped` (unless COUNT is false: a second pass)."""
        for number, offset, record in lines_of(self.run_dir / TRANSCRIPTS):
            why = self._why(record, transcript_problem)
            if why is None and record["conversation_id"] in self.unplanned:  # type: ignore[index]
                why = "a conversation the run no longer plans"
            if why is None:
                yield offset, record  # type: ignore[misc]
            elif count:
                self.skipped.add(f"{TRANSCRIPTS} line {number}", why)

    def newest(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, record) of the newest record per conversation, in file order, streamed.

        Two passes over the file. The first keeps a 64-bit hash of each id in a flat table
        (16 to 32 bytes a conversation) and, for the few ids seen twice (retried, resumed),
        the offset of the newest; the second yields each record unless a newer one of its
        id follows. Records appended between the passes (a run still going) are left for
        the next read."""
        seen, newest, end, skipped = HashSet(), {}, -1, self.skipped.count
        for offset, record in self.lines():
            key, end = hash64(record["conversation_id"]), offset
            if seen.add(key):
                newest[key] = offset
        # every line was the run's own (the usual case): no need to check them twice
        clean = self.skipped.count == skipped
        again = scan_jsonl(self.run_dir / TRANSCRIPTS) if clean else self.lines(count=False)
        for offset, record in again:
            if offset > end:
                return
            if not newest or newest.get(hash64(record["conversation_id"]), offset) == offset:
                yield offset, record

    def attempts(self) -> Iterator[dict[str, Any]]:
        """Every usage record of the run (one per HTTP attempt), in file order."""
        for number, _, record in lines_of(self.run_dir / USAGE):
            why = self._why(record, attempt_problem)
            if why is None:
                yield record  # type: ignore[misc]
            else:
                self.skipped.add(f"{USAGE} line {number}", why)

    def _why(self, record: dict[str, Any] | None, problem: Any) -> str | None:
        """Why a line is not one of the run's records (None when it is)."""
        if record is None:
            return "not a JSON object"
        why = problem(record)
        if why is not None:
            return str(why)
        run = record.get("run_id")
        if run is not None and run not in self.runs:
            return f"a record of another run ({str(run)[:40]!r})"
        if record["target"] not in self.targets and not _helper(record):
            return f"target {record['target'][:40]!r} is not one of the run's"
        return None


def _helper(record: dict[str, Any]) -> bool:
    """A usage record of a target the run asks beside its own: a judge, a simulated user."""
    return bool(record.get("judge")) or record.get("role") == "simulated_user"
