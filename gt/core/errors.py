"""The errors a step of the library raises for its command to report (see stages/kit.py for the
table from error to exit code and line shape).

StageError: the work could not be done (exit 1); UsageError: bad flags or arguments (exit 2). The
message is the one line the user reads: what is wrong, where, and what to do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class Range:
    """The values a number the user sets may take (a flag, a price in oracles.yaml, a threshold in a
    filter package): always finite; a whole number where `whole`; at least `low` (more than it where
    `low_open`) and at most `high` (less than it where `high_open`). The one check every such number
    goes through (`problem`), so NaN, infinity and out-of-range values never reach the work."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False

    def words(self) -> str:
        kind = "a whole number" if self.whole else "a finite number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return kind + (" " + " and ".join(bounds) if bounds else "")

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.whole and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def problem(self, setting: str, value: Any) -> str | None:
        """None when `value` is admitted, else one line naming the setting and the allowed range."""
        return None if self.admits(value) else f"{setting} must be {self.words()}, got {value!r}"


# the ranges most settings share
WHOLE_POSITIVE = Range(low=1, whole=True)       # counts of things: articles, rounds, workers, requests
WHOLE_NONNEGATIVE = Range(low=0, whole=True)    # where 0 has a stated meaning (off, none)
POSITIVE = Range(low=0, low_open=True)          # dollars of a budget, seconds, learning rates
NONNEGATIVE = Range(low=0)                      # prices
SHARE = Range(low=0, high=1)                    # shares and rates


def check_number(setting: str, value: Any, rng: Range) -> Any:
    """`value` when `rng` admits it, else UsageError (exit 2) naming the setting and the range."""
    problem = rng.problem(setting, value)
    if problem:
        raise UsageError(problem)
    return value


def one_line(message: str) -> str:
    """A message as one line, whatever a provider or library put in it."""
    return " ".join(str(message).split())
