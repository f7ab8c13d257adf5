"""The house rules (ARCHITECTURE.md), read from the folders: the library (gt/) never imports a
command (stages/); a command never imports another command (the kit is shared); each room of the
library imports only the rooms ARCHITECTURE.md's table lets it (oracles: themselves and core, never
the store); commands are thin, library files and functions short (exceptions named in
ARCHITECTURE.md with the reason); migrations have distinct numbers; ARCHITECTURE.md names every
module. Each rule is also run against a planted violation, so the check itself can fail."""
from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from gt.core import store

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
KIT = "kit"                  # stages/kit.py: the command kit, the one module of stages/ that is not a command
MAX_COMMAND_LINES = 200      # a command parses, calls the library, prints: it stays small
MAX_LIBRARY_LINES = 650      # "about 600"
MAX_FUNCTION_LINES = 90      # "about 80"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top level and inside functions), as dotted names; `from a import b`
    counts as a and a.b, since b may be a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def room_of(module: str, rooms: list[str]) -> str | None:
    """gt.<room>... -> room; gt itself (PROJECT_ROOT) -> ''; not the library -> None."""
    parts = module.split(".")
    if parts[0] != "gt":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in rooms else ""


def library_rooms(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "gt").iterdir() if (p / "__init__.py").exists())


def allowed_imports(root: Path) -> dict[str, set[str]]:
    """ARCHITECTURE.md's table '| room | may import |': room -> the rooms it may import."""
    text = (root / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`gt/(\w+)/`\s*\|([^|]*)\|", line)
        if m:
            table[m.group(1)] = set(re.findall(r"`gt/(\w+)/`", m.group(2)))
    return table


def violations(root: Path) -> list[str]:
    out = []
    allowed = allowed_imports(root)
    rooms = library_rooms(root)
    for room in rooms:
        if room not in allowed:
            out.append(f"gt/{room}/ is not in ARCHITECTURE.md's 'Who may import whom' table")
    for path in sorted((root / "gt").rglob("*.py")):
        rel = path.relative_to(root)
        room = rel.parts[1] if len(rel.parts) > 2 else ""
        seen = set()    # one line per (file, what it reaches): `from a import b` names a and a.b
        for mod in sorted(imported_modules(path)):
            if mod == "stages" or mod.startswith("stages."):
                if "stages" not in seen:
                    out.append(f"{rel} (the library) imports the command package {mod}")
                seen.add("stages")
                continue
            target = room_of(mod, rooms)
            if target is None or target in ("", room):
                continue
            if room == "oracles" and mod.startswith("gt.core.store"):
                out.append(f"{rel} (an oracle module) imports {mod}: providers never touch the store")
            elif room and target not in allowed.get(room, set()) and target not in seen:
                seen.add(target)
                out.append(f"{rel} (room {room}) imports {mod}: ARCHITECTURE.md does not let {room} import {target}")
    for path in sorted((root / "stages").glob("*.py")):
        me = path.stem
        for mod in sorted(imported_modules(path)):
            parts = mod.split(".")
            if parts[0] == "stages" and len(parts) > 1 and parts[1] not in (me, KIT, "__init__") \
                    and (root / "stages" / f"{parts[1]}.py").exists():
                out.append(f"stages/{me}.py (a command) imports another command, {mod}")
    return out


def copy_tree(tmp_path: Path) -> Path:
    for folder in ("gt", "stages"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ARCHITECTURE, tmp_path / "ARCHITECTURE.md")
    return tmp_path


def test_the_import_rules_hold():
    assert violations(ROOT) == []


@pytest.mark.parametrize("file, source, words", [
    ("gt/selection/program.py", "from stages.select import main\n", "(the library) imports the command package"),
    ("gt/core/text.py", "import stages\n", "(the library) imports the command package stages"),
    ("stages/coverage.py", "from stages import label\n", "(a command) imports another command, stages.label"),
    ("gt/oracles/gemini.py", "import gt.core.store\n", "providers never touch the store"),
    ("gt/oracles/gemini.py", "from gt.labelling import ledger\n", "does not let oracles import labelling"),
    ("gt/core/stats.py", "from gt.selection.program import Pool\n", "does not let core import selection"),
    ("gt/student/probe.py", "from gt.labelling.picking import METHODS\n", "does not let student import labelling"),
])
def test_a_planted_violation_is_caught(tmp_path, file, source, words):
    root = copy_tree(tmp_path)
    with open(root / file, "a", encoding="utf-8") as f:
        f.write("\n\ndef _planted():\n    " + source.strip().replace("\n", "\n    ") + "\n")
    found = violations(root)
    assert len(found) == 1 and words in found[0], found


def test_a_new_room_must_be_placed_in_the_table(tmp_path):
    root = copy_tree(tmp_path)
    (root / "gt" / "serving").mkdir()
    (root / "gt" / "serving" / "__init__.py").write_text("", encoding="utf-8")
    assert violations(root) == ["gt/serving/ is not in ARCHITECTURE.md's 'Who may import whom' table"]


def test_stages_holds_only_commands_and_the_kit():
    """Every module of stages/ but the kit is a command: it has main() and runs as `python -m`."""
    for path in sorted((ROOT / "stages").glob("*.py")):
        if path.stem in ("__init__", KIT):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"main", "build_parser"} <= names, f"stages/{path.name} is not a command (no main/build_parser)"
        assert 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"), path.name


def excused(path_text: str) -> bool:
    """ARCHITECTURE.md names the file or function (in backticks) in its section on long files."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Long files and functions", 1)[-1]
    return f"`{path_text}`" in section


def long_files(root: Path) -> list[str]:
    out = []
    for folder, limit in (("stages", MAX_COMMAND_LINES), ("gt", MAX_LIBRARY_LINES)):
        for path in sorted((root / folder).rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit and path.stem != KIT:
                out.append(f"{path.relative_to(root)} has {n} lines")
    return out


def long_functions(root: Path) -> list[str]:
    out = []
    for folder in ("stages", "gt"):
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        out.append(f"{path.relative_to(root)}:{node.name} has {n} lines")
    return out


def test_files_and_functions_are_short_or_excused():
    problems = [p for p in long_files(ROOT) + long_functions(ROOT) if not excused(p.split(" has ")[0])]
    assert problems == [], "shorten these or say why in ARCHITECTURE.md's 'Long files and functions'"


def test_the_length_checks_see_a_long_function_and_a_fat_command(tmp_path):
    (tmp_path / "gt" / "core").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 5))
    (tmp_path / "gt" / "core" / "noun.py").write_text(f"def long_one():\n{body}\n", encoding="utf-8")
    (tmp_path / "stages" / "fat.py").write_text("\n" * (MAX_COMMAND_LINES + 1), encoding="utf-8")
    assert long_functions(tmp_path) == [f"gt/core/noun.py:long_one has {MAX_FUNCTION_LINES + 6} lines"]
    assert long_files(tmp_path) == [f"stages/fat.py has {MAX_COMMAND_LINES + 1} lines"]


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


def unnamed_modules(root: Path, text: str) -> list[str]:
    """The modules of gt/ and stages/ that no row of ARCHITECTURE.md's room table names: a row
    starting with the folder (`gt/core/`, `stages/`) holding the module's name in backticks."""
    rows: dict[str, set[str]] = {}
    for m in re.finditer(r"^\|\s*`((?:gt/\w+|stages)/)`\s*\|(.*)$", text, re.M):
        rows.setdefault(m.group(1), set()).update(re.findall(r"`(\w+)`", m.group(2)))
    missing = []
    for path in sorted(list((root / "gt").rglob("*.py")) + list((root / "stages").glob("*.py"))):
        if path.stem == "__init__":
            continue
        folder = path.parent.relative_to(root).as_posix() + "/"
        if path.stem not in rows.get(folder, set()):
            missing.append(path.relative_to(root).as_posix())
    return missing


def test_architecture_names_every_module():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert unnamed_modules(ROOT, text) == [], "ARCHITECTURE.md should say which room these modules belong to"


def test_deleting_a_room_row_is_noticed():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    without = "\n".join(line for line in text.splitlines() if not line.startswith("| `gt/selection/`"))
    missing = unnamed_modules(ROOT, without)
    assert "gt/selection/program.py" in missing and "gt/selection/pool.py" in missing
