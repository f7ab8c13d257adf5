"""The house rules (ARCHITECTURE.md), read from the code: nouns never import verbs, a stage never
imports another stage, the oracles never import the store; stage files and functions stay short
(exceptions are named in ARCHITECTURE.md with the reason); migrations have distinct numbers.
Each rule is also run against a planted violation, so the check itself can fail."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gt.core import store

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
# the stage files (verbs): `python -m stages.<verb>`; the label stage's room is label.py and its batch engine
VERBS = {"ingest", "label", "label_batch", "calibrate", "coverage", "select", "train", "evaluate", "curve",
         "browse", "loop"}
ROOMS = [{"label", "label_batch"}]
MAX_STAGE_LINES = 650        # "about 600"
MAX_FUNCTION_LINES = 90      # "about 80"


def imported_stages(path: Path) -> set[str]:
    """The stages.* modules a file imports (top level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stages.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "stages":
                found |= {f"stages.{a.name}" for a in node.names}
            elif node.module.startswith("stages."):
                found.add(node.module)
    return found


def same_room(a: str, b: str) -> bool:
    return a == b or any(a in room and b in room for room in ROOMS)


def violations(root: Path) -> list[str]:
    out = []
    for path in sorted((root / "stages").rglob("*.py")):
        rel = path.relative_to(root / "stages").with_suffix("")
        me = ".".join(rel.parts)
        in_oracles = rel.parts[0] == "oracles"
        for mod in imported_stages(path):
            parts = mod.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if in_oracles and (target == "store" or target in VERBS):
                out.append(f"stages/{rel}.py (an oracle module) imports {mod}: providers never touch the store or a stage")
            elif target in VERBS and me not in VERBS:
                out.append(f"stages/{rel}.py (a noun) imports the stage {mod}")
            elif target in VERBS and me in VERBS and not same_room(me, target):
                out.append(f"stages/{rel}.py (a stage) imports another stage, {mod}")
    return out


def excused(path_text: str) -> bool:
    """ARCHITECTURE.md names the file or function (in backticks) in its section on long files."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Long files and functions", 1)[-1]
    return f"`{path_text}`" in section


def long_stage_files(root: Path) -> list[str]:
    out = []
    for verb in sorted(VERBS):
        path = root / "stages" / f"{verb}.py"
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_STAGE_LINES:
            out.append(f"stages/{verb}.py has {n} lines")
    return out


def long_functions(root: Path) -> list[str]:
    out = []
    for path in sorted((root / "stages").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"stages/{path.relative_to(root / 'stages')}:{node.name} has {n} lines")
    return out


def test_the_import_rules_hold():
    assert violations(ROOT) == []


@pytest.mark.parametrize("file, source, words", [
    ("gt/selection/program.py", "from gt.selection.select import main\n", "(a noun) imports the stage stages.select"),
    ("stages/coverage.py", "from stages import label\n", "(a stage) imports another stage, stages.label"),
    ("gt/oracles/gemini.py", "import gt.core.store\n", "providers never touch the store"),
])
def test_a_planted_violation_is_caught(tmp_path, file, source, words):
    for path in (ROOT / "stages").rglob("*.py"):
        rel = path.relative_to(ROOT)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    with open(tmp_path / file, "a", encoding="utf-8") as f:
        f.write("\n\ndef _planted():\n    " + source.strip().replace("\n", "\n    ") + "\n")
    found = violations(tmp_path)
    assert len(found) == 1 and words in found[0], found


def test_stage_files_and_functions_are_short_or_excused():
    problems = [p for p in long_stage_files(ROOT) if not excused(p.split(" has ")[0])]
    problems += [p for p in long_functions(ROOT) if not excused(p.split(" has ")[0])]
    assert problems == [], "shorten these or say why in ARCHITECTURE.md's 'Long files and functions'"


def test_the_length_check_sees_a_long_function(tmp_path):
    (tmp_path / "stages").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 5))
    (tmp_path / "stages" / "noun.py").write_text(f"def long_one():\n{body}\n", encoding="utf-8")
    assert long_functions(tmp_path) == [f"stages/noun.py:long_one has {MAX_FUNCTION_LINES + 6} lines"]


def test_tests_take_helpers_from_conftest_only():
    """A test module imports shared helpers from conftest, never from another test module."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.test_"):
                found.append(f"{path.name} imports {node.module}")
    assert found == []


def test_migrations_have_distinct_numbers_and_a_duplicate_is_refused(tmp_path, monkeypatch):
    numbers = [n for n, _ in store.migrations()]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    for p in store.SQL_DIR.glob("*.sql"):
        (tmp_path / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    last = max(numbers)
    (tmp_path / f"{last:03d}_another_change.sql").write_text("CREATE TABLE x (a);\n", encoding="utf-8")
    monkeypatch.setattr(store, "SQL_DIR", tmp_path)
    with pytest.raises(store.StoreError, match=rf"two migrations numbered {last:03d}"):
        store.migrations()


def test_architecture_names_every_module_of_stages():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [p.stem for p in (ROOT / "stages").glob("*.py")
               if p.stem != "__init__" and not re.search(rf"\b{re.escape(p.stem)}(\.py)?\b", text)]
    assert missing == [], "ARCHITECTURE.md should say which room these modules belong to"
