"""The one exception for bad input or configuration (exit code 2)."""

from __future__ import annotations


class InputError(Exception):
    """Bad input or configuration, found before anything is sent.

    Holds one or more problems, each already phrased as "file:line: what is wrong".
    The CLI prints them and exits with code 2.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def at(file: str, line: int | None, message: str) -> str:
    """Phrase a problem as "file:line: message" (line is 1-based)."""
    return f"{file}:{line}: {message}" if line else f"{file}: {message}"
