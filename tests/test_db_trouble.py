"""Database trouble (missing, locked, read-only, corrupt) in every stage: the real
`python -m stages.<stage>` against a real failing gt.db gives one line on stderr (what, where,
what to do), a non-zero exit and no traceback; read stages never create a database."""
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gt.core import store
from gt.core.filters import load_filter
from tests.conftest import ROOT

SAMPLE = ROOT / "data" / "sample" / "articles.jsonl"
UPLIFTING = ROOT / "filters" / "uplifting" / "v1"
BUSY_S = "0.5"


def stage_args(stage: str, db: Path, work: Path, out: Path) -> list[str]:
    return {
        "ingest": ["--db", str(db), "--source", str(work / "more.jsonl")],  # articles not in good.db yet
        "calibrate": ["--db", str(db), "--models", "local-embed,local-llm", "--quiet", "--output", str(out / "cal.md")],
        "coverage": ["--db", str(db), "--report-dir", str(out), "--no-plots"],
        "select": ["--db", str(db), "--output-dir", str(out), "--target-size", "6", "--time-limit", "5"],
        "browse": ["--db", str(db), "--port", "1"],  # every case here fails before Datasette starts
        "train": ["--db", str(db), "--selection", "cover-6", "--device", "cpu"],
        "evaluate": ["--db", str(db), "--model-dir", str(work / "model")],
    }[stage]


def run_stage(stage: str, db: Path, work: Path, *extra: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    out = db.parent.parent / f"{db.parent.name}-out"  # outside db's folder (which a test may make read-only)
    env = {k: v for k, v in os.environ.items() if k != "GT_DB"}
    env.update(HF_HUB_OFFLINE="1", GT_DB_BUSY_TIMEOUT=BUSY_S, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([*prefix, sys.executable, "-m", f"stages.{stage}", *stage_args(stage, db, work, out),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed stage (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with two small article files, a fake model folder for evaluate, and a real gt.db
    to copy: the first file ingested, the filter registered, synthetic labels of every article."""
    folder = tmp_path_factory.mktemp("trouble")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(True)
    (folder / "articles.jsonl").write_text("".join(lines[:20]), encoding="utf-8")
    (folder / "more.jsonl").write_text("".join(lines[20:30]), encoding="utf-8")
    (folder / "model").mkdir()
    (folder / "model" / "training_config.json").write_text("{}", encoding="utf-8")
    from gt.intake.ingestion import ingest_files

    good = folder / "good.db"
    conn = store.connect(good)
    filt = load_filter(UPLIFTING)
    store.register_filter(conn, filt)
    ingest_files(conn, [str(folder / "articles.jsonl")], filt)
    rng = random.Random(3)
    run = store.start_run(conn, purpose="label", filt=filt, oracle="synthetic", provider=None, model=None)
    for (article_id,) in conn.execute("SELECT id FROM articles WHERE dup_of IS NULL").fetchall():
        store.insert_label(conn, run_id=run, article_id=article_id, filt=filt, oracle="synthetic", status="ok",
                           scores={d: float(rng.randint(0, 10)) for d in filt.dimension_names})
    store.finish_run(conn, run)
    conn.close()  # the last connection checkpoints: no -wal or -shm left beside it
    assert not Path(f"{good}-wal").exists()
    return folder


def fresh_db(work: Path, tmp_path: Path, name: str = "gt.db") -> Path:
    db = tmp_path / name
    shutil.copyfile(work / "good.db", db)
    return db


# ---- missing: one line, nothing created ----------------------------------------------------------

@pytest.mark.parametrize("stage", ["coverage", "select", "browse", "calibrate", "evaluate", "train"])
def test_missing_database_is_one_line_and_is_not_created(stage, work, tmp_path):
    db = tmp_path / "no" / "gt.db"
    line = error_line(run_stage(stage, db, work))
    assert str(db) in line and ("no database" in line or "no gt.db" in line)
    assert not (tmp_path / "no").exists(), "a read stage created the database or its folder"


def test_ingest_where_the_database_cannot_be_made_is_one_line(work, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = blocker / "gt.db"  # its folder would have to be a regular file
    line = error_line(run_stage("ingest", db, work))
    assert line == f"error: database {db} cannot be created: {blocker} is a file, not a folder (pass --db with a " \
                   "path inside a folder)"


# ---- corrupt -----------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["ingest", "coverage", "select", "browse", "calibrate"])
def test_corrupt_database_is_one_line(stage, work, tmp_path):
    db = tmp_path / "gt.db"
    db.write_bytes(os.urandom(8192))
    before = db.read_bytes()
    line = error_line(run_stage(stage, db, work))
    assert f"database {db} is not a readable SQLite database" in line and "restore it from a backup" in line
    assert db.read_bytes() == before


# ---- locked by another process -----------------------------------------------------------------

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":  # blocks readers too, even in WAL mode
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
else:                           # a writer mid-transaction, like a label run committing
    conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO filters (id, name, version, config_json, prompt_sha256, dimensions_json) "
             "VALUES ('held/v1', 'held', 1, '{}', 'x', '[]')")
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hold_lock():
    holders = []

    def hold(db: Path, mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in holders:
        proc.stdin.close()
        proc.wait(timeout=10)


@pytest.mark.parametrize("stage,mode", [("ingest", "immediate"), ("select", "immediate"), ("calibrate", "immediate"),
                                        ("coverage", "exclusive"), ("browse", "exclusive")])
def test_locked_database_is_one_line_naming_the_holder(stage, mode, work, tmp_path, hold_lock):
    """ingest, select and calibrate --source read fine next to a writer and meet the lock at their
    first write (select after solving); a holder in exclusive locking mode blocks readers too."""
    db = fresh_db(work, tmp_path)
    holder = hold_lock(db, mode)
    started = time.monotonic()
    extra = ("--source", str(work / "more.jsonl")) if stage == "calibrate" else ()
    line = error_line(run_stage(stage, db, work, *extra))
    assert f"database {db} is locked by another process (held longer than {BUSY_S} s" in line
    assert f"open in pid {holder.pid} (python -c import sqlite3" in line and "run the same command again" in line
    assert time.monotonic() - started < 30
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}-out/*.jsonl"))  # select renames its files last


# ---- read-only: a real permission failure (root drops the capability that ignores modes) --------

def unprivileged() -> tuple[str, ...]:
    """Command prefix under which file modes are enforced: none for a normal user; for root,
    setpriv dropping every capability (CAP_DAC_OVERRIDE lets root write anything)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced here")
    probe = subprocess.run([setpriv, "--inh-caps=-all", "--bounding-set=-all", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode(errors='replace').strip()}")
    return (setpriv, "--inh-caps=-all", "--bounding-set=-all")


@pytest.fixture
def read_only(tmp_path):
    """Make a path read-only for the test, restoring its mode afterwards."""
    changed = []

    def make(path: Path) -> None:
        changed.append((path, stat.S_IMODE(path.stat().st_mode)))
        path.chmod(0o555 if path.is_dir() else 0o444)

    yield make
    for path, mode in reversed(changed):
        path.chmod(mode)


@pytest.mark.parametrize("stage", ["ingest", "select", "calibrate"])
def test_read_only_file_is_one_line_at_the_first_write(stage, work, tmp_path, read_only):
    prefix = unprivileged()
    db = fresh_db(work, tmp_path)
    read_only(db)
    before = db.read_bytes()
    extra = ("--source", str(work / "more.jsonl")) if stage == "calibrate" else ()
    line = error_line(run_stage(stage, db, work, *extra, prefix=prefix))
    assert f"database {db} is read-only" in line and "copy it somewhere writable" in line
    assert db.read_bytes() == before


@pytest.mark.parametrize("stage", ["ingest", "coverage", "select", "browse"])
def test_read_only_folder_is_one_line(stage, work, tmp_path, read_only):
    """In a folder it may not write, SQLite cannot create gt.db-wal/-shm: even reading fails."""
    prefix = unprivileged()
    folder = tmp_path / "ro"
    folder.mkdir()
    db = fresh_db(work, folder)
    read_only(folder)
    line = error_line(run_stage(stage, db, work, prefix=prefix))
    assert f"database {db} is read-only (its folder is not writable)" in line
    assert sorted(p.name for p in folder.iterdir()) == ["gt.db"]


# ---- the store API itself ----------------------------------------------------------------------

def test_connect_without_create_makes_nothing(tmp_path):
    for kwargs in ({"create": False}, {"readonly": True}):
        with pytest.raises(store.DatabaseTrouble, match="no database at .*pass --db <existing file>"):
            store.connect(tmp_path / "new" / "gt.db", **kwargs)
        assert not (tmp_path / "new").exists()
    with pytest.raises(store.StoreError, match="is a folder"):
        store.connect(tmp_path, create=False)
    conn = store.connect(tmp_path / "made" / "gt.db")  # the default still creates
    conn.close()
    store.connect(tmp_path / "made" / "gt.db", create=False).close()


def test_describe_db_error_classifies_real_sqlite_errors(work, tmp_path):
    db = fresh_db(work, tmp_path)
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("DELETE FROM articles")
    ro.close()
    assert store.describe_db_error(e.value, db).startswith(f"database {db} is read-only (attempt to write a readonly")

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(store.DatabaseTrouble) as locked:
        # the schema is current, so connect itself only reads: the lock shows at the first write
        conn = store.connect(db, busy_timeout=0.05)
        try:
            with store.transaction(conn):
                pass
        except sqlite3.Error as err:
            raise store.DatabaseTrouble(store.describe_db_error(err, db, busy_timeout=0.05)) from err
        finally:
            conn.close()
    holder.execute("ROLLBACK")
    holder.close()
    line = str(locked.value)
    assert line.startswith(f"database {db} is locked by another process (held longer than 0.05 s)")
    assert "open in pid" not in line  # the holder is this process: never named

    wrapped = store.StoreError("migration 002_x.sql failed: database is locked")
    wrapped.__cause__ = sqlite3.OperationalError("database is locked")
    assert "is locked by another process" in store.describe_db_error(wrapped, db)
    assert store.describe_db_error(store.StoreError("no valid labels of x"), db) == "no valid labels of x"
    assert store.describe_db_error(sqlite3.OperationalError("no such table: foo"), db) == \
        f"database {db}: no such table: foo"


def test_newer_schema_names_the_file(tmp_path):
    db = tmp_path / "gt.db"
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {store.schema_version() + 1}")
    raw.close()
    for kwargs in ({}, {"readonly": True}):
        with pytest.raises(store.DatabaseTrouble, match=f"database .*{db.name} has schema version .* newer"):
            store.connect(db, **kwargs)


def test_who_has_open_names_other_processes_only(work, tmp_path, hold_lock):
    db = fresh_db(work, tmp_path)
    conn = store.connect(db)
    assert store.who_has_open(db) == []  # this process holds it: not listed
    holder = hold_lock(db, "immediate")
    found = store.who_has_open(db)
    assert len(found) == 1 and found[0].startswith(f"pid {holder.pid} (python") and len(found[0]) < 100
    conn.close()


def test_busy_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("GT_DB_BUSY_TIMEOUT", "0.25")
    assert store.busy_timeout_s() == 0.25
    monkeypatch.setenv("GT_DB_BUSY_TIMEOUT", "soon")
    with pytest.raises(store.StoreError, match="GT_DB_BUSY_TIMEOUT"):
        store.busy_timeout_s()
    monkeypatch.delenv("GT_DB_BUSY_TIMEOUT")
    assert store.busy_timeout_s() == store.DEFAULT_BUSY_TIMEOUT_S
