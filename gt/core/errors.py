"""The errors a step of the library raises for its command to report (see stages/kit.py for the
table from error to exit code and line shape).

StageError: the work could not be done (exit 1); UsageError: bad flags or arguments (exit 2). The
message is the one line the user reads: what is wrong, where, and what to do.
"""
from __future__ import annotations


class StageError(Exception):
    """The work could not be done: exit 1, the message is the one line the user reads."""
    exit_code = 1


class UsageError(StageError):
    """Bad flags or arguments: exit 2."""
    exit_code = 2


class FileProblems(Exception):
    """A file the user wrote is malformed (a filter package, oracles.yaml): `problems` holds one line
    per problem, all of them, so one run shows everything to fix; a command prints each as
    `error: <path>: <problem>` and exits 2."""

    def __init__(self, path: object, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


def one_line(message: str) -> str:
    """A message as one line, whatever a provider or library put in it."""
    return " ".join(str(message).split())
