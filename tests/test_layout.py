"""The layout shows the flow: every import of the runner goes down the stage order below
(type-only imports under TYPE_CHECKING and imports inside functions included), no two
modules import each other in a circle, modules and functions stay small, and README's
Layout and "Adding a protocol" sections name the files that are there.

The stages, lowest first; a module may import its own stage and the stages before it:

  base       runner/*.py: errors, encoding, messages, usage, finish, cost, outfile, hashset; the
             shapes and helpers every stage shares
  providers  runner/client/providers/: one file per protocol and what each declares
  spec       runner/spec/: scenarios, targets (reading the providers' declarations), the plan
  results    runner/results/: the records and their store, and everything that reads them;
             they read records only: no client, no engine
  client     runner/client/: one target's client, limits, pacing, retries, the reply cache
  engine     runner/engine/: the run folder, the pool, the turn loop, checks, judges
  cli        runner/cli.py, cli_options.py, cli_results.py, examples.py, __main__.py

The data flows spec -> engine -> client -> providers, and the engine writes records that
results read; the mock (runner/mock/) stands apart: it imports nothing of the runner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "runner"
STAGES = ("base", "providers", "spec", "results", "client", "engine", "cli")
PACKAGES = {  # module prefix -> stage (the longest prefix wins)
    "runner.client.providers": "providers",
    "runner.spec": "spec",
    "runner.results": "results",
    "runner.client": "client",
    "runner.engine": "engine",
}
TOP = {  # modules at the top of runner/: each named, so a new one is placed on purpose
    "runner": "base",
    "runner.errors": "base",
    "runner.encoding": "base",
    "runner.messages": "base",
    "runner.usage": "base",
    "runner.finish": "base",
    "runner.cost": "base",
    "runner.outfile": "base",
    "runner.hashset": "base",
    "runner.cli": "cli",
    "runner.cli_results": "cli",
    "runner.cli_options": "cli",
    "runner.examples": "cli",
    "runner.__main__": "cli",
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(RUNNER.rglob("*.py")):
        parts = path.relative_to(RUNNER.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def stage(module: str) -> str:
    """The stage of a module of the runner; the mock is its own."""
    if module == "runner.mock" or module.startswith("runner.mock."):
        return "mock"
    if module in TOP:
        return TOP[module]
    for prefix in sorted(PACKAGES, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return PACKAGES[prefix]
    raise AssertionError(f"{module} is in no stage: name it in tests/test_layout.py")


def imports(path: Path) -> set[tuple[str, int]]:
    """(module, line) of every import of the runner in the file, wherever it stands; `from
    runner.x import y` counts as runner.x.y when y is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "runner"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            base = node.module or ""
            if base.split(".")[0] != "runner":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add((sub if sub in MODULES else base, node.lineno))
    return found


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_every_module_is_in_a_stage_and_every_import_names_a_module():
    for name, found in GRAPH.items():
        stage(name)
        for target, line in found:
            assert target in MODULES, f"{MODULES[name]}:{line}: imports {target}, no module"


def test_imports_go_down_the_stages_and_the_mock_imports_nothing_of_the_runner():
    against = []
    for name, found in GRAPH.items():
        for target, line in sorted(found):
            mine, theirs = stage(name), stage(target)
            if mine == "mock" or theirs == "mock":
                if mine == "mock" and theirs != "mock":
                    against.append(f"{MODULES[name]}:{line}: the mock imports {target}")
                continue
            if STAGES.index(theirs) > STAGES.index(mine):
                against.append(f"{MODULES[name]}:{line}: {mine} imports {target} ({theirs})")
    assert not against, "imports against the flow:\n" + "\n".join(against)


def test_no_modules_import_each_other_in_a_circle():
    edges = {name: {t for t, _ in found if t != name} for name, found in GRAPH.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circle = path[path.index(name) :] + [name]
            pytest.fail("an import circle: " + " -> ".join(circle))
        if name in done:
            return
        for target in sorted(edges.get(name, ())):
            if not _package_of(target, name):  # a package's __init__ importing its own parts
                visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def _package_of(package: str, module: str) -> bool:
    """Whether PACKAGE is a package holding MODULE: importing runner.x.y runs runner/x/
    __init__.py first, which is not an import of runner.x by runner.x.y's author."""
    return module.startswith(package + ".")


def test_modules_and_functions_are_small():
    too_long = []
    for path in MODULES.values():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path}:{node.lineno}: {node.name} has {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_checks_see_what_they_look_for(tmp_path):
    """The walker finds a type-only import inside TYPE_CHECKING and one inside a function,
    and the stage order refuses a result that imports the engine."""
    path = tmp_path / "bad.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from runner.engine.pool import RunPlan\n"
        "def f():\n"
        "    from runner.client import retry\n"
    )
    assert imports(path) == {("runner.engine.pool", 3), ("runner.client.retry", 5)}
    assert STAGES.index(stage("runner.engine.pool")) > STAGES.index(stage("runner.results.stats"))
    assert stage("runner.client.providers.anthropic") == "providers"
    assert stage("runner.mock.server") == "mock"


README = RUNNER.parent / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_the_readme_layout_lists_every_module_and_only_modules_that_are():
    block = _section("Layout").split("```\n")[1]
    listed, folders = set(), []  # folders: (indent, path) of the entries that end in /
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 20):
            continue  # a blank line or a description's continuation
        indent, name = len(line) - len(line.lstrip()), line.split()[0]
        folders = [(i, f) for i, f in folders if i < indent]
        path = (folders[-1][1] if folders else "") + name
        if name.endswith("/"):
            folders.append((indent, path))
        listed.add(path)
    root = RUNNER.parent
    missing = [p for p in sorted(listed) if not (root / p).exists()]
    assert not missing, f"README's Layout lists what is not there: {missing}"
    modules = {
        str(path.relative_to(root))
        for path in MODULES.values()
        if path.name != "__init__.py" or path.parent.name == "providers"
    }
    unlisted = sorted(m for m in modules if m not in listed and not m.startswith("runner/mock/"))
    assert not unlisted, f"README's Layout does not list: {unlisted}"


def test_the_readme_adding_a_protocol_names_files_that_are_there():
    section = _section("Adding a protocol")
    named = {w.strip("`(),.:") for w in section.split() if w.strip("`(").startswith("runner/")}
    named = {p.replace("NAME", "anthropic") for p in named}
    missing = sorted(p for p in named if not (RUNNER.parent / p).exists())
    assert named and not missing, f"README's 'Adding a protocol' names what is not there: {missing}"
