"""Regexes with {{var}} templates, filled with each of a scenario's var combinations at load
time: a combination that breaks one is a problem at its turn, before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from runner.spec.expects import regex_problem
from runner.spec.rows import RowsFile
from runner.spec.variables import TEMPLATE, Vars, fill, var_combinations, var_names
from runner.spec.yamlnodes import Reader, show


class Scenario(Protocol):
    """What is read here of a scenario (runner.spec.schema.Scenario)."""

    @property
    def turns(self) -> Sequence[Any]: ...
    @property
    def vars(self) -> Vars: ...
    @property
    def vars_file(self) -> RowsFile | None: ...


def check_filled(r: Reader, scenario: Scenario) -> None:
    """A regex with {{var}} templates must still be one when filled with each of the
    scenario's var combinations: else the problem is reported at its turn, with the values
    of the first combination that breaks it, before anything is sent. A vars_file's rows are
    read once more for all the regexes that name its columns together."""
    templated = [
        (turn.line, pattern, sorted(set(TEMPLATE.findall(pattern))))
        for turn in scenario.turns
        for pattern in [turn.expect.regex if turn.expect else None]
        if pattern is not None and "{{" in pattern
    ]
    own = var_names(scenario.vars)
    found: dict[int, str] = {}
    for from_file in (False, True):  # the file is read only for regexes that need it
        group = [
            i for i, (_, _, names) in enumerate(templated) if bool(set(names) - own) == from_file
        ]
        found.update(_first_problems(scenario, templated, group))
    for i, (line, _, _) in enumerate(templated):
        if i in found:
            r.report(line, found[i])


def _first_problems(
    scenario: Scenario, templated: list[tuple[int, str, list[str]]], group: list[int]
) -> dict[int, str]:
    """Index -> problem of the regexes of GROUP (indexes into TEMPLATED) that some var
    combination breaks, found in one pass over the combinations of the names they use."""
    found: dict[int, str] = {}
    last: dict[int, str] = {}  # each regex's last filling: not compiled twice in a row
    names = {n for i in group for n in templated[i][2]}
    for values in _combinations_of(scenario, names) if group else ():
        for i in group:
            _, pattern, used = templated[i]
            filled = fill(pattern, values)
            if i in found or last.get(i) == filled:
                continue
            last[i] = filled
            problem = regex_problem(filled)
            if problem:
                given = ", ".join(f"{n}={show(values[n])}" for n in used)
                found[i] = f"regex {show(pattern)} filled with {given}: {problem}"
        if len(found) == len(group):
            break
    return found


def _combinations_of(scenario: Scenario, names: set[str]) -> Iterator[dict[str, Any]]:
    """The combinations of the values of NAMES only (a vars_file's rows when it gives any)."""
    own = scenario.vars
    if isinstance(own, dict):
        used: Vars = {n: v for n, v in own.items() if n in names}
    else:
        used = tuple({n: v for n, v in row.items() if n in names} for row in own)
    from_file = scenario.vars_file if names - var_names(own) else None
    return var_combinations(used, from_file)
