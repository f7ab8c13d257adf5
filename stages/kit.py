"""The command kit: what every command (`python -m stages.<verb>`) shares.

A command builds its parser with `parser(verb, ..., common=(...))` and `add_common()` (the common
flags, each declared once here; every numeric flag takes `number(range)`), turns the flags into the
library's typed options with `options()` (the defaults are the options class's fields, written once:
the parser takes them from there), calls the library inside `run()`, prints the summary and returns
the exit code. `run()` is the one table from error to exit
code and line shape:

| error                                   | exit | line on stderr                             |
|-----------------------------------------|------|--------------------------------------------|
| UsageError (bad flags), a bad flag      | 2    | error: <what, where, what to do>           |
| FileProblems (a broken filter package or oracles.yaml) | 2 | error: <file>: <problem> (one per problem) |
| FilterMismatch, an unknown oracle       | 2    | error: <what>                              |
| MissingKey (an API key not set)         | 1    | error: <which variable to set>             |
| StoreError, sqlite3.Error (gt.db)       | 1    | error: <database line: missing, locked...> |
| StageError (the work could not be done) | 1    | error: <what>                              |
| Ctrl-C                                  | 130  | interrupted: <what is kept>                |
"""
from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import sys
from typing import Any, Callable, Sequence, TypeVar

from gt.core import store
from gt.core.errors import POSITIVE, WHOLE_NONNEGATIVE, FileProblems, Range, StageError, UsageError, one_line
from gt.oracles import registry

O = TypeVar("O")

INTERRUPTED = "interrupted: what was stored is kept; run the same command to continue"


class Parser(argparse.ArgumentParser):
    """argparse with the house's error shape: a bad flag is a UsageError, so run() prints it as one
    line `error: ...` and the command returns 2 (no usage block)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UsageError(f"{message} (see {self.prog} --help)")


def parser(verb: str, description: str, *, epilog: str | None = None, common: Sequence[str] = ()) -> Parser:
    """The parser of `python -m stages.<verb>` with the named common flags already declared."""
    p = Parser(prog=f"python -m stages.{verb}", description=description, epilog=epilog)
    add_common(p, *common)
    return p


def number(rng: Range, keywords: Sequence[str] = ()) -> Callable[[str], Any]:
    """The argparse type of a numeric flag: a whole number or a finite float inside `rng` (or one of
    `keywords`, returned as given, e.g. select's `--target-size all`), else one line
    `error: argument --flag: must be <range>, got <text>` and exit 2. Every numeric flag of every
    command takes one (kit.options refuses a bare type=int or type=float)."""
    def parse(text: str) -> Any:
        if text in keywords:
            return text
        try:
            value = int(text) if rng.whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rng.words()}" + "".join(f" or {k}" for k in keywords)
                                             + f", got {text!r}") from None
        if not rng.admits(value):
            raise argparse.ArgumentTypeError(f"must be {rng.words()}, got {text}")
        return value
    parse.range = rng  # type: ignore[attr-defined]
    parse.__name__ = "number"
    return parse


# The flags several commands share: declared once. Each command names the ones it takes; its options
# class holds the defaults (db's default is $GT_DB, else gt.db: store.default_db_path).
COMMON_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "db": (("--db",), dict(help="gt.db path (default: $GT_DB, else gt.db)")),
    "filter": (("--filter",), dict(help="filter package directory (default: %(default)s)")),
    "seed": (("--seed",), dict(type=number(WHOLE_NONNEGATIVE), help="seed of every random choice (default: %(default)s)")),
    "source": (("--source",), dict(action="append", metavar="GLOB",
                                   help="JSONL/CSV file(s) or quoted glob(s) to ingest into gt.db first (repeatable); "
                                        "without it, work on the articles gt.db already holds")),
    "oracle": (("--oracle",), dict(help="whose labels: an oracle or human label set in gt.db (default: the one with "
                                        "the most valid labels of the filter)")),
    "oracles_file": (("--oracles-file",), dict(help="oracle registry (default: oracles.yaml of the project)")),
    "batch_poll": (("--batch-poll",), dict(type=number(POSITIVE), metavar="SECONDS",
                                           help="batch mode: the first status poll interval; it grows x1.5 per poll "
                                                "up to --batch-max-poll (default: %(default)s)")),
    "batch_max_poll": (("--batch-max-poll",), dict(type=number(POSITIVE), metavar="SECONDS",
                                                   help="batch mode: the longest interval between status polls "
                                                        "(default: %(default)s)")),
}


def add_common(p: argparse.ArgumentParser, *names: str, **overrides: Any) -> None:
    """Declare the named common flags on p; `overrides` (e.g. help_oracle=...) replace one keyword."""
    for name in names:
        flags, kwargs = COMMON_FLAGS[name]
        kwargs = dict(kwargs)
        for key, value in overrides.items():
            what, _, flag = key.partition("_")
            if flag == name:
                kwargs[what] = value
        p.add_argument(*flags, **kwargs)


def field_defaults(cls: type) -> dict[str, Any]:
    """The defaults an options dataclass declares (the one place a default is written)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def options(p: argparse.ArgumentParser, cls: type[O], argv: Sequence[str] | None) -> O:
    """Parse argv into cls: the parser's defaults come from cls's fields (a parser that writes a
    default of its own for one of them, or a numeric flag without kit.number, is a programming
    error, refused here); cls.from_flags (when cls has one) converts the flags, and the options'
    check() (when they have one) raises UsageError for a bad value."""
    for action in p._actions:
        if action.type in (int, float):
            raise TypeError(f"{p.prog}: {'/'.join(action.option_strings)} takes type={action.type.__name__}; give it "
                            f"kit.number(<range>) so that NaN, infinity and out-of-range values are refused")
    if getattr(p, "_defaults_from", None) is not cls:   # a parser takes cls's defaults once
        defaults = field_defaults(cls)
        for action in p._actions:
            if action.dest in defaults and action.default not in (None, False, argparse.SUPPRESS):
                raise TypeError(f"{p.prog}: --{action.dest.replace('_', '-')} writes a default of its own; "
                                f"{cls.__name__} holds it")
        dests = {a.dest for a in p._actions}
        p.set_defaults(**{k: v for k, v in defaults.items() if k in dests})
        p._defaults_from = cls  # type: ignore[attr-defined]
    ns = vars(p.parse_args(argv))
    from_flags = getattr(cls, "from_flags", None)
    if from_flags is not None:
        opts = from_flags(ns)
    else:
        opts = cls(**{f.name: ns[f.name] for f in dataclasses.fields(cls) if f.name in ns})
    check = getattr(opts, "check", None)
    if check is not None:
        check()
    return opts


def fail(message: str, code: int = 1) -> int:
    """Print `error: <message>` as one line on stderr and return the exit code."""
    print("error: " + one_line(message), file=sys.stderr)
    return code


def exit_code(error: StageError) -> int:
    """Print a stage error the one way and return its exit code."""
    return fail(str(error), error.exit_code)


def report(error: BaseException, db: str | None) -> int:
    """Print one error the house's way (the table above) and return its exit code."""
    if isinstance(error, FileProblems):   # a broken filter package or oracles.yaml: every problem
        for problem in error.problems:
            fail(f"{error.path}: {problem}")
        return 2
    if isinstance(error, store.FilterMismatch):
        return fail(str(error), 2)
    if isinstance(error, registry.MissingKey):
        return fail(str(error), 1)
    if isinstance(error, registry.OracleConfigError):
        return fail(str(error).splitlines()[0], 2)
    if isinstance(error, (store.StoreError, sqlite3.Error)):
        return fail(store.describe_db_error(error, db or store.default_db_path()))
    if isinstance(error, StageError):
        return exit_code(error)
    raise error


HANDLED = (StageError, FileProblems, store.StoreError, sqlite3.Error, registry.OracleConfigError)


def run(parse: Callable[[], O], work: Callable[[O], int], *, interrupted: str = INTERRUPTED) -> int:
    """parse() then work(options), mapping every error of the table to its line and exit code."""
    opts = None
    try:
        opts = parse()
        return work(opts)
    except HANDLED as e:
        return report(e, getattr(opts, "db", None))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def main_of(fn: Callable[[Sequence[str] | None], int]) -> None:
    """`if __name__ == "__main__": kit.main_of(main)`."""
    sys.exit(fn(None))
