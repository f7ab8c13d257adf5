"""What every command shares (stages/kit.py): the same broken filter package gives the same exit code
and the same line shape in every command; every command's --help works; the options classes hold the
defaults (a parser that writes its own is refused); a bad flag is one line."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from gt.core import store
from gt.core.errors import WHOLE_POSITIVE
from stages import kit
from tests.conftest import ROOT

COMMANDS = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem not in ("__init__", "kit"))
NEEDS = {   # the flags a command needs before it reads --filter
    "ingest": ["--source", "data/sample/*.jsonl"],
    "calibrate": ["--models", "local-embed,local-llm"],
    "train": ["--train-file", "t.jsonl", "--val-file", "v.jsonl"],
    "score": ["--source", "feed.jsonl", "--output", "scores.jsonl"],
}
NO_NUMBERS = {"export"}   # commands with no numeric flag


def takes_filter(verb: str) -> bool:
    parser = importlib.import_module(f"stages.{verb}").build_parser()
    return any("--filter" in a.option_strings for a in parser._actions)


def test_every_command_is_a_step_of_the_makefile():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert COMMANDS and all(f"stages.{verb}" in makefile for verb in COMMANDS)


@pytest.mark.parametrize("verb", [v for v in COMMANDS if takes_filter(v)])
def test_a_broken_filter_package_is_the_same_exit_code_and_lines_in_every_command(verb, tmp_path):
    db = tmp_path / "gt.db"
    store.connect(db).close()
    broken = tmp_path / "filters" / "broken" / "v1"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("filter: {name: broken, version: '1'}\ndimensions: nope\n", encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", f"stages.{verb}", "--db", str(db), "--filter", str(broken),
                          *NEEDS.get(verb, [])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (verb, res.stderr)
    assert lines and all(line.startswith(f"error: {broken}: ") for line in lines), (verb, lines)
    assert any("prompt.md" in line for line in lines), lines        # every problem, one line each
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("verb", COMMANDS)
def test_help_works_and_options_come_from_the_library(verb, capsys):
    module = importlib.import_module(f"stages.{verb}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0 and f"python -m stages.{verb}" in capsys.readouterr().out


def test_db_defaults_to_gt_db_env_in_every_options_class(monkeypatch):
    monkeypatch.setenv("GT_DB", "/somewhere/else.db")
    from gt.labelling.label import LabelOptions
    from gt.selection.select import SelectOptions
    assert LabelOptions().db == SelectOptions().db == "/somewhere/else.db"
    assert kit.options(importlib.import_module("stages.label").build_parser(), LabelOptions, []).db == \
        "/somewhere/else.db"


def test_a_default_written_in_the_parser_too_is_refused():
    @dataclasses.dataclass
    class Opts:
        size: int = 3

    parser = kit.parser("demo", "a parser that restates a default")
    parser.add_argument("--size", type=kit.number(WHOLE_POSITIVE), default=3)
    with pytest.raises(TypeError, match="--size writes a default of its own"):
        kit.options(parser, Opts, [])
    fine = kit.parser("demo", "the default from the options class")
    fine.add_argument("--size", type=kit.number(WHOLE_POSITIVE), help="(default: %(default)s)")
    assert kit.options(fine, Opts, []).size == 3 and kit.options(fine, Opts, ["--size", "5"]).size == 5


def test_a_bad_flag_is_one_line_and_exit_2(capsys):
    parser = kit.parser("demo", "x")
    parser.add_argument("--n", type=kit.number(WHOLE_POSITIVE))
    assert kit.run(lambda: parser.parse_args(["--n", "many"]), lambda o: 0) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --n: must be a whole number >= 1, got 'many'")


def test_the_error_table_maps_each_kind_once(capsys):
    from gt.core.errors import StageError, UsageError
    from gt.core.filters import FilterError
    from gt.oracles.registry import MissingKey, UnknownOracle
    cases = [(UsageError("bad"), 2), (StageError("could not"), 1), (MissingKey("set KEY"), 1),
             (UnknownOracle("no such oracle"), 2), (store.FilterMismatch("edited"), 2),
             (store.StoreError("locked"), 1), (FilterError(Path("f/v1"), ["a", "b"]), 2)]
    for error, code in cases:
        assert kit.run(lambda: argparse.Namespace(db="gt.db"), lambda o, e=error: (_ for _ in ()).throw(e)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("error: ") for line in err) and err[-2:] == ["error: f/v1: a", "error: f/v1: b"]


def numeric_flags():
    for verb in COMMANDS:
        for action in importlib.import_module(f"stages.{verb}").build_parser()._actions:
            if getattr(action.type, "range", None) is not None:
                yield verb, action.option_strings[0], action.type.range


def test_every_numeric_flag_has_a_range():
    found = list(numeric_flags())
    assert len(found) >= 50 and {v for v, _, _ in found} == set(COMMANDS) - NO_NUMBERS
    bare = [(v, a.option_strings) for v in COMMANDS for a in importlib.import_module(f"stages.{v}").build_parser()._actions
            if a.type in (int, float)]
    assert bare == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
@pytest.mark.parametrize("verb, flag, rng", list(numeric_flags()))
def test_every_numeric_flag_refuses_what_its_range_does_not_admit(verb, flag, rng, value, capsys):
    """NaN, infinity, a negative number and zero to every numeric flag of every command: exit 2 with one
    line naming the flag and the range, unless the range admits the value (then it parses as given)."""
    module = importlib.import_module(f"stages.{verb}")
    argv = [*NEEDS.get(verb, []), flag, value]
    if rng.admits(float(value)):
        try:
            opts = module.parse_options(argv)
        except Exception as e:   # an admitted value may still break a rule between flags: a usage error
            assert getattr(e, "exit_code", None) == 2, (verb, flag, value, e)
        else:
            assert float(value) in [v for v in vars(opts).values() if isinstance(v, (int, float))]
        return
    assert module.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, (verb, flag, value, err)
    assert err[0].startswith(f"error: argument {flag}") and f"must be {rng.words()}" in err[0]


def test_a_bare_numeric_flag_is_refused():
    @dataclasses.dataclass
    class Opts:
        size: int = 3

    parser = kit.parser("demo", "a numeric flag without a range")
    parser.add_argument("--size", type=int)
    with pytest.raises(TypeError, match="kit.number"):
        kit.options(parser, Opts, [])
