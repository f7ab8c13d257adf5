"""`make demo` reruns: its recipe first removes everything the demo writes, and writes nothing
anywhere else, so a second run starts from the same state as the first (same seed, same figures)
and never meets its own earlier selection or model. Read from `make -n demo` (what make would run),
so a new output added to the recipe outside the removed paths fails here. The full rerun itself
takes about 8 minutes on 2 cores: measured by hand, figures in the closing note, not in this suite."""
from __future__ import annotations

import fnmatch
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FLAGS = ("--db", "--output", "--output-dir")
# where a stage writes by default when the recipe passes no flag for it (the stages' own defaults)
DEFAULT_OUTPUTS = {"calibrate": "reports/uplifting_v1_calibration.md"}


def recipe() -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under make test
    out = subprocess.run(["make", "-n", "--no-print-directory", "demo"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env=env).stdout
    commands = []
    for line in out.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("echo"):
            commands.append(shlex.split(line))
    return commands


def written_paths(commands: list[list[str]]) -> list[str]:
    paths = []
    for words in commands:
        if "-m" not in words:
            continue
        stage = words[words.index("-m") + 1].split(".")[-1]
        given = [words[i + 1] for i, w in enumerate(words[:-1]) if w in OUTPUT_FLAGS]
        if stage == "train" and "--output" not in words:
            given.append("models/<name>")
        if stage == "evaluate":
            given.append(words[words.index("--model-dir") + 1])
        if stage in DEFAULT_OUTPUTS and "--output" not in words:
            given.append(DEFAULT_OUTPUTS[stage])
        paths += given
    return paths


def covered(path: str, removed: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") or fnmatch.fnmatch(path, r) for r in removed)


def test_the_demo_removes_everything_it_writes_before_it_writes():
    commands = recipe()
    first = commands[0]
    assert first[:2] == ["rm", "-rf"], "the demo must start over: its first command removes its outputs"
    removed = first[2:]
    paths = written_paths(commands)
    assert {"data/demo/gt.db", "data/demo/training", "models/uplifting_minilm_demo"} <= set(paths)
    assert [p for p in paths if not covered(p, removed)] == []


def test_the_check_sees_an_output_outside_the_removed_paths():
    commands = recipe() + [["python", "-m", "stages.select", "--db", "data/demo/gt.db", "--output-dir", "data/training"]]
    removed = commands[0][2:]
    assert [p for p in written_paths(commands) if not covered(p, removed)] == ["data/training"]
