"""YAML scenario files -> validated Scenario objects, with file:line errors.

The public surface of scenarios. The types and how they are read from YAML nodes are in
runner.spec.schema, vars and {{name}} templates in runner.spec.variables, and the node reader
shared with the models file in runner.spec.yamlnodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from runner.spec.expects import Expect, Judge
from runner.spec.schema import (
    Context,
    Full,
    Scenario,
    Server,
    Turn,
    Window,
    read_document,
)
from runner.spec.variables import ScenarioReader, fill
from runner.spec.yamlnodes import Problems, read_documents

__all__ = [
    "Context",
    "Expect",
    "Full",
    "Judge",
    "Scenario",
    "Server",
    "Turn",
    "Window",
    "fill",
    "load_file",
    "load_paths",
]


def load_paths(paths: list[str]) -> list[Scenario]:
    """Load every scenario under PATHS (files, or folders of *.yaml/*.yml).

    Raises one InputError listing every problem found in every file."""
    run = _Run()
    return run.finish([s for path in paths for s in run.load_path(os.fspath(path))])


def load_file(path: str) -> list[Scenario]:
    """Load the scenarios of one YAML file; raise InputError listing every problem."""
    run = _Run()
    return run.finish(run.load_file(os.fspath(path)))


def _yaml_files(root: str) -> Iterator[Path]:
    """The *.yaml / *.yml files below ROOT, leaving out hidden folders (.git, .github, .venv)
    and virtual environments (a folder holding pyvenv.cfg or conda-meta). Linked folders
    are followed, each real folder once."""
    seen = {os.path.realpath(root)}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = [d for d in subfolders if _walked(os.path.join(folder, d), seen)]
        for name in files:
            if name.endswith((".yaml", ".yml")) and os.path.isfile(os.path.join(folder, name)):
                yield Path(folder, name)


def _walked(folder: str, seen: set[str]) -> bool:
    """Whether to walk into FOLDER: not hidden, not a virtual environment, not seen yet."""
    if os.path.basename(folder).startswith(".") or any(
        os.path.exists(os.path.join(folder, marker)) for marker in ("pyvenv.cfg", "conda-meta")
    ):
        return False
    real = os.path.realpath(folder)
    if real in seen:
        return False
    seen.add(real)
    return True


class _Run:
    """Problems, scenario ids and files read, across all files of one load."""

    def __init__(self) -> None:
        self.problems = Problems()
        self.ids: dict[str, str] = {}  # id -> "file:line" where it was first defined
        self.files: set[str] = set()

    def finish(self, scenarios: list[Scenario]) -> list[Scenario]:
        """Raise the problems (each once, by file then line) if any; else return SCENARIOS."""
        self.problems.raise_any()
        return scenarios

    def load_path(self, path: str) -> list[Scenario]:
        """A file, or every *.yaml / *.yml below a folder, in sorted order (hidden folders
        and virtual environments below it are skipped)."""
        if not os.path.isdir(path):
            return self.load_file(path)
        found = sorted(str(p) for p in _yaml_files(path))
        if not found:
            self.problems.report(path, None, "no *.yaml or *.yml files in this folder")
        return [s for file in found for s in self.load_file(file)]

    def load_file(self, path: str) -> list[Scenario]:
        """Every scenario of one file (a file reached twice is read once)."""
        real = os.path.realpath(path)
        if real in self.files:
            return []
        self.files.add(real)
        before = len(self.problems)
        nodes = read_documents(path, self.problems)
        if not nodes and len(self.problems) == before:
            self.problems.report(path, None, "no scenarios: the file is empty or only comments")
        return [s for node in nodes for s in read_document(self._reader(path), node)]

    def _reader(self, path: str) -> ScenarioReader:
        return ScenarioReader(self.problems, path, self.ids)
