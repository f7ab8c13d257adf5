"""The command-line convention every stage keeps (a noun: no stage logic here).

A stage's `main(argv)` parses its flags into a typed options object, calls a function that neither
parses nor prints what it returns (it may show progress on stderr), prints the summary, and maps
errors to exit codes: 0 done; 1 the work could not be done (StageError); 2 bad usage (UsageError).
Every error is one line on stderr: what is wrong, where, and what to do.
"""
from __future__ import annotations

import sys


class StageError(Exception):
    """The work could not be done: exit 1, the message is the one line the user reads."""
    exit_code = 1


class UsageError(StageError):
    """Bad flags or arguments: exit 2."""
    exit_code = 2


def one_line(message: str) -> str:
    """A message as one line, whatever a provider or library put in it."""
    return " ".join(str(message).split())


def fail(message: str, code: int = 1) -> int:
    """Print `error: <message>` as one line on stderr and return the exit code."""
    print("error: " + one_line(message), file=sys.stderr)
    return code


def exit_code(error: StageError) -> int:
    """Print a stage error the one way and return its exit code."""
    return fail(str(error), error.exit_code)
