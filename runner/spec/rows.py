"""`vars_file:` a CSV or JSONL table of vars, one conversation per row, read lazily.

At load time the file is read once, row by row, to count its rows and check each of them
(every column a template uses is there, duplicates, a line that is not JSON); nothing but
one 64-bit hash per row is kept, in a flat table (HashSet), to find duplicates. Planning
reads the rows again, one at a time, as conversations are made.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.encoding import from_json
from runner.hashset import HashSet, hash64
from runner.spec.variables import VAR_TYPES
from runner.spec.yamlnodes import Reader, show

MAX_PROBLEMS = 10  # per file: a systematic problem is shown ten times, then counted
Report = Callable[[str, int | None, str], None]  # (file, line, message)


class BadRow(Exception):
    """A row (or the file) that cannot be read; line is 1-based, None for the whole file."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


@dataclass(frozen=True, slots=True)
class RowsFile:
    """A checked table of vars: its path and row count; iterating reads the rows again."""

    path: str
    count: int

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, _, row in _rows(self.path):
            yield row


def _rows(path: str) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(line, row number, row) for each row; BadRow for a row or file that cannot be read."""
    reader = _csv_rows if is_csv(path) else _jsonl_rows
    number = 0
    try:
        for line, row in reader(path):
            number += 1
            yield line, number, row
    except FileNotFoundError:
        raise BadRow(None, "no such file") from None
    except UnicodeDecodeError as e:
        raise BadRow(None, f"not UTF-8 text (after row {number}: {e.reason})") from None
    except OSError as e:
        raise BadRow(None, f"cannot read: {e.strerror or e}") from None


def _csv_rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The header names the columns; quoted fields may hold commas and newlines."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next((r for r in reader if r), None)
        if header is None:
            raise BadRow(None, "no header row: the file is empty")
        _check_header(header, reader.line_num)
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise BadRow(
                    reader.line_num,
                    f"{len(fields)} fields where the header has {len(header)} "
                    "(quote a field that holds a comma)",
                )
            yield reader.line_num, dict(zip(header, fields, strict=True))


def _check_header(header: list[str], line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if not name.strip():
            raise BadRow(line, "the header has an empty column name")
        if name in seen:
            raise BadRow(line, f"the header names column '{name}' twice")
        seen.add(name)


def _jsonl_rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """One JSON object a line; blank lines are skipped."""
    with open(path, "rb") as fh:
        for line, data in enumerate(fh, 1):
            if not data.strip():
                continue
            try:
                row = from_json(data)
            except ValueError as e:
                raise BadRow(line, f"not JSON: {e}") from None
            if not isinstance(row, dict):
                raise BadRow(line, f"a row must be a JSON object, got {type(row).__name__}")
            yield line, row


def scan(
    path: str, named_at: str, needed: dict[str, int], var_names: set[str], report: Report
) -> RowsFile:
    """Read the file once: count its rows and report each bad one (file, line, row).

    named_at: "scenario file:line" of the vars_file key, for problems of the whole file.
    needed: var name -> the scenario line of a template that uses it, found in no `vars`;
    every row must have it, as a string, number or boolean."""
    problems = _Capped(path, report)
    seen = HashSet()  # one hash per row: equal rows would plan the same conversation
    number = 0
    where = named_at.rsplit(":", 1)[0]
    used = {name: f"{where}:{line}" for name, line in needed.items()}
    try:
        for line, number, row in _rows(path):
            if number == 1 and is_csv(path):
                used = _header_problems(row, used, var_names, problems)
            for message in _row_problems(row, used, var_names):
                problems.add(line, f"row {number}: {message}")
            key = _row_hash(row, is_csv(path))
            if seen.add(key):
                repeats = _first(path, key) if problems.count < MAX_PROBLEMS else ""
                problems.add(line, f"row {number} repeats {repeats}")
    except BadRow as e:
        where = f" (vars_file of {named_at})" if e.line is None else ""
        problems.add(
            e.line, (e.message + where) if e.line is None else f"row {number + 1}: {e.message}"
        )
    if number == 0 and not problems.count:
        problems.add(None, f"no rows (vars_file of {named_at}): one conversation is made per row")
    problems.close()
    return RowsFile(path, number)


def _header_problems(
    row: dict[str, Any], needed: dict[str, str], var_names: set[str], problems: _Capped
) -> dict[str, str]:
    """A CSV's columns are its header's: a missing one is reported once, on line 1."""
    columns = list(row)
    for name, at in needed.items():
        if name not in row:
            close = difflib.get_close_matches(name, columns + sorted(var_names), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"columns: {', '.join(columns)}"
            problems.add(1, f"no column '{name}' (used in a template at {at}); {hint}")
    return {name: at for name, at in needed.items() if name in row}


def _row_problems(row: dict[str, Any], needed: dict[str, str], var_names: set[str]) -> list[str]:
    out = []
    for name, at in needed.items():
        if name not in row:
            out.append(f"no column '{name}' (used in a template at {at})")
        elif not isinstance(row[name], VAR_TYPES):
            out.append(f"'{name}' must be a string, number or boolean, got {json.dumps(row[name])}")
    clash = sorted(var_names & row.keys())
    if clash:
        out.append(f"column {', '.join(clash)} is also in the scenario's 'vars'")
    return out


def is_csv(path: str) -> bool:
    """A .csv file is CSV; anything else is read as JSONL."""
    return path.lower().endswith(".csv")


def _row_hash(row: dict[str, Any], csv_row: bool) -> int:
    """64 bits, never 0 (an empty slot of HashSet). A CSV row's keys are always the
    header, in its order; a JSONL row's may come in any order."""
    try:
        return hash64(tuple(row.values()) if csv_row else tuple(sorted(row.items())))
    except TypeError:  # a list or object in a column no template uses
        return hash64(json.dumps(row, sort_keys=True))


def _first(path: str, key: int) -> str:
    """Where the first row with this hash is (read again: only on the error path)."""
    for line, number, row in _rows(path):
        if _row_hash(row, is_csv(path)) == key:
            return f"row {number} (line {line})"
    return "an earlier row"  # unreachable while the file is unchanged


class _Capped:
    """Reports the first MAX_PROBLEMS problems of a file, then how many more there were."""

    def __init__(self, path: str, report: Report):
        self.path, self.report = path, report
        self.count, self.last_line = 0, 0

    def add(self, line: int | None, message: str) -> None:
        self.count += 1
        self.last_line = line or self.last_line
        if self.count <= MAX_PROBLEMS:
            self.report(self.path, line, message)

    def close(self) -> None:
        if self.count > MAX_PROBLEMS:
            more = self.count - MAX_PROBLEMS
            self.report(self.path, self.last_line, f"... and {more} more problems in this file")


def open_table(
    r: Reader, line: int, given: str, needed: dict[str, int], var_names: set[str]
) -> RowsFile:
    """The vars_file named at LINE of the scenario file R reads, checked (scan): its path
    is relative to that file."""
    path = Path(given).expanduser()
    if not path.is_absolute():
        path = Path(r.path).parent / path
    if not str(path).lower().endswith((".csv", ".jsonl")):
        r.report(line, f"'vars_file' must name a .csv or .jsonl file, got {show(given)}")
        return RowsFile(str(path), 0)
    return scan(str(path), f"{r.path}:{line}", needed, var_names, r.problems.report)
