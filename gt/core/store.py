"""gt.db: open it (WAL, foreign keys), apply the numbered migrations in sql/, register filters
(and their wide score views), and the few typed helpers more than one stage needs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, Sequence

from gt import PROJECT_ROOT
from gt.core.filters import Filter, sql_identifier, sql_literal

SQL_DIR = PROJECT_ROOT / "sql"
_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class StoreError(Exception):
    pass


class FilterMismatch(StoreError):
    """gt.db registered a filter under this name and version whose prompt, answer schema or
    dimension list differs from the package's: labels of the two could be mixed, so the edited
    package needs a new version. The message is one line saying what differs and what to do."""


class DatabaseTrouble(StoreError):
    """Raised by connect(): the database could not be opened or migrated (missing, read-only,
    locked, corrupt, newer schema...). Its message is already the one line describe_db_error makes."""


QUERIES_DIR = SQL_DIR / "queries"


def query_text(name: str) -> str:
    """The text of sql/queries/<name>.sql: the named queries stages run."""
    return (QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8")


def run_script(conn: sqlite3.Connection, name: str, params: "dict | None" = None) -> None:
    """Run every statement of sql/queries/<name>.sql with named parameters (executescript takes none)."""
    buffer = ""
    for line in query_text(name).splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            used = {k: v for k, v in (params or {}).items() if f":{k}" in statement}
            conn.execute(statement, used)
    if buffer.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()):
        raise ValueError(f"sql/queries/{name}.sql ends with an incomplete statement")


IN_CHUNK = 900   # values per `IN (...)`: under SQLite's oldest default limit of 999 host parameters


def in_chunks(values: Sequence) -> Iterator[tuple[list, str]]:
    """(chunk, "?,?,...") pieces of `values` for a query `... IN ({placeholders})` of any length."""
    values = list(values)
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start:start + IN_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def article_texts(conn: sqlite3.Connection, article_ids) -> dict[str, tuple[str, str]]:
    """{id: (title, text)} of these articles (the one article-text query; ids not in gt.db are absent)."""
    out: dict[str, tuple[str, str]] = {}
    for chunk, marks in in_chunks(dict.fromkeys(article_ids)):
        for r in conn.execute(f"SELECT id, title, text FROM articles WHERE id IN ({marks})", chunk):
            out[r[0]] = (r[1] or "", r[2] or "")
    return out


def default_db_path() -> str:
    return os.environ.get("GT_DB") or "gt.db"


def migrations() -> list[tuple[int, Path]]:
    """(number, file) of every sql/NNN_*.sql, in order. Two files with one number would leave the
    second unapplied forever on every database past it: refused, loudly."""
    found: dict[int, Path] = {}
    for p in sorted(SQL_DIR.glob("*.sql")):
        m = _MIGRATION.match(p.name)
        if m:
            n = int(m.group(1))
            if n in found:
                raise StoreError(f"two migrations numbered {n:03d} in {SQL_DIR}: {found[n].name} and {p.name} "
                                 f"(renumber the newer one)")
            found[n] = p
    return sorted(found.items())


def schema_version() -> int:
    return max(v for v, _ in migrations())


DEFAULT_BUSY_TIMEOUT_S = 30.0


def busy_timeout_s() -> float:
    """Seconds a connection waits for another process's write lock before 'database is locked':
    $GT_DB_BUSY_TIMEOUT when set (tests use a fraction of a second), else 30."""
    raw = os.environ.get("GT_DB_BUSY_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_BUSY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise StoreError(f"GT_DB_BUSY_TIMEOUT={raw!r} is not a number of seconds (unset it, or set e.g. 30)")
    return value


def connect(path: str | os.PathLike | None = None, *, readonly: bool = False, create: bool = True,
            busy_timeout: float | None = None) -> sqlite3.Connection:
    """Open gt.db and apply pending migrations. Autocommit mode: use `transaction(conn)` for
    anything that must be all-or-nothing.

    create=True (the default) creates a missing file and its folder; create=False, and
    readonly=True (opened with mode=ro, nothing migrated), never create anything: a missing
    database raises DatabaseTrouble. busy_timeout is how many seconds to wait for another process's
    lock (default: busy_timeout_s(), i.e. $GT_DB_BUSY_TIMEOUT or 30). Any trouble opening or
    migrating (missing, folder, read-only, locked, corrupt, newer schema) raises DatabaseTrouble (a
    StoreError) whose message is one line naming the path and what to do (describe_db_error)."""
    path = str(path or default_db_path())
    memory = path == ":memory:"
    timeout = busy_timeout_s() if busy_timeout is None else float(busy_timeout)
    if not memory:
        if os.path.isdir(path):
            raise DatabaseTrouble(_folder_line(path))
        if (readonly or not create) and not os.path.exists(path):
            raise DatabaseTrouble(_missing_line(path))
    conn = None
    try:
        if memory:
            conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        elif readonly or not create:  # mode=ro / mode=rw: SQLite itself never creates the file
            uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + ("?mode=ro" if readonly else "?mode=rw")
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if readonly:
            _check_version(conn)  # reads the header: a corrupt or foreign file fails here, not mid-stage
        else:
            if not memory:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
    except (sqlite3.Error, OSError, StoreError) as e:
        if conn is not None:
            conn.close()
        raise DatabaseTrouble(describe_db_error(e, path, busy_timeout=timeout)) from e
    return conn


def _database_file(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return row[2] or ":memory:"
    return "gt.db"


def _check_version(conn: sqlite3.Connection) -> int:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = schema_version()
    if current > latest:
        raise StoreError(
            f"database {_database_file(conn)} has schema version {current}, newer than this code knows ({latest}): "
            f"update the project (git pull), or pass --db <a gt.db made by this version>"
        )
    return current


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every sql/NNN_*.sql above the db's user_version, each in its own transaction."""
    current = _check_version(conn)
    for version, path in migrations():
        if version <= current:
            continue
        script = path.read_text(encoding="utf-8")
        # BEGIN ... COMMIT inside one script: a failed migration leaves the db as it was
        try:
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"migration {path.name} failed: {e}") from e
        current = version
    return current


# ---- database trouble as one line ------------------------------------------------------------

def _missing_line(path: str) -> str:
    return f"no database at {path} (run `make ingest` first, or pass --db <existing file>)"


def _folder_line(path: str) -> str:
    return f"database {path} is a folder, not a file (pass --db <folder>/gt.db)"


def _trouble(e: BaseException, path: str) -> str | None:
    """What kind of database trouble an exception is: missing, folder, notdir, readonly, locked,
    corrupt, full, io; None for anything else."""
    import errno

    if isinstance(e, OSError):
        if isinstance(e, FileNotFoundError):
            return "missing"
        if isinstance(e, IsADirectoryError):
            return "folder"
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            return "readonly"
        if isinstance(e, (FileExistsError, NotADirectoryError)):  # making its folder: a file is in the way
            return "notdir"
        if e.errno == errno.ENOSPC:
            return "full"
        return None
    if not isinstance(e, sqlite3.Error):
        return None
    name = getattr(e, "sqlite_errorname", "") or ""
    msg = str(e).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in msg:
        return "locked"
    if name.startswith("SQLITE_READONLY") or "readonly database" in msg or name == "SQLITE_PERM":
        return "readonly"
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in msg or "malformed" in msg:
        return "corrupt"
    if name.startswith("SQLITE_FULL") or "disk is full" in msg:
        return "full"
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database file" in msg:
        if path != ":memory:" and not os.path.exists(path):
            return "missing"
        return "folder" if os.path.isdir(path) else "readonly"
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in msg:
        return "io"
    return None


def describe_db_error(e: BaseException, path: str | os.PathLike, *, busy_timeout: float | None = None) -> str:
    """One line (no newline) for an error met opening or using the database at `path`: what went
    wrong, where, and what to do. Classifies sqlite3 errors and OSErrors (missing, a folder, a file
    where its folder should be, read-only, locked, corrupt, disk full, I/O); a StoreError keeps its own message unless it wraps one of
    those; anything else becomes 'database <path>: <error>'. busy_timeout is only quoted in the
    'locked' line (default: busy_timeout_s())."""
    path = str(path)
    if isinstance(e, StoreError):
        cause = e.__cause__
        if isinstance(e, DatabaseTrouble) or cause is None or _trouble(cause, path) is None:
            return " ".join(str(e).split())
        e = cause
    kind = _trouble(e, path)
    detail = " ".join(str(e).split())
    if kind == "missing":
        return _missing_line(path)
    if kind == "folder":
        return _folder_line(path)
    if kind == "notdir":
        return (f"database {path} cannot be created: {getattr(e, 'filename', None) or Path(path).parent} is a file, "
                f"not a folder (pass --db with a path inside a folder)")
    if kind == "readonly":
        why = {"SQLITE_READONLY_DIRECTORY": "its folder is not writable",
               "SQLITE_CANTOPEN": "it cannot be opened for writing"}.get(getattr(e, "sqlite_errorname", ""), detail)
        name = os.path.basename(path)
        return (f"database {path} is read-only ({why}): check its permissions and those of its folder (SQLite "
                f"writes {name}-wal and {name}-shm beside it), or copy it somewhere writable")
    if kind == "locked":
        if busy_timeout is None:
            try:
                busy_timeout = busy_timeout_s()
            except StoreError:
                busy_timeout = DEFAULT_BUSY_TIMEOUT_S
        holders = who_has_open(path) if path != ":memory:" else []
        shown = "; open in " + ", ".join(holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "") \
            if holders else ""
        return (f"database {path} is locked by another process (held longer than {busy_timeout:g} s{shown}): "
                f"wait for it to finish or stop it, then run the same command again")
    if kind == "corrupt":
        return (f"database {path} is not a readable SQLite database (corrupt or another kind of file: {detail}): "
                f"restore it from a backup or pass --db <another file>")
    if kind == "full":
        return f"database {path} cannot grow: the disk is full (free space on its disk, then run the same command again)"
    if kind == "io":
        return (f"database {path} could not be read or written ({detail}): check the disk it is on, then run the "
                f"same command again")
    return f"database {path}: {detail}" if detail else f"database {path}: {type(e).__name__}"


def who_has_open(path: str | os.PathLike) -> list[str]:
    """Other processes that have the database (or its -wal file) open, each as
    'pid N (command line, shortened)', from /proc/<pid>/fd on Linux. This process and its forked
    copies (workers that inherited its descriptors: same parent, same command line) are left out;
    [] where /proc is absent or unreadable."""
    try:
        target = os.path.realpath(path)
    except (OSError, ValueError):
        return []
    names = {target, target + "-wal"}
    me = os.getpid()
    found: list[str] = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list(os.scandir(f"/proc/{entry.name}/fd"))
        except OSError:
            continue
        hit = False
        for fd in fds:
            try:
                if os.readlink(fd.path) in names:
                    hit = True
                    break
            except OSError:
                continue
        if not hit or (_parent_pid(entry.name) == me and _argv(entry.name) == _argv(str(me))):
            continue
        found.append(f"pid {entry.name} ({_command_line(entry.name)})")
    return found


def _parent_pid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _argv(pid: str) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def _command_line(pid: str, limit: int = 80) -> str:
    argv = _argv(pid)
    if not argv:
        return "?"
    argv[0] = os.path.basename(argv[0])
    line = " ".join(" ".join(argv).split())  # one line, whatever a `python -c` script holds
    return line if len(line) <= limit else line[:limit - 3] + "..."


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """All or nothing. Inside an open transaction (the label stage's writer commits many small
    pieces of work together) this is a savepoint, so the piece is still all or nothing."""
    if conn.in_transaction:
        name = f"sp{id(conn) % 10_000}_{_next_savepoint()}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


_savepoints = iter(range(1, 1 << 62))


def _next_savepoint() -> int:
    return next(_savepoints)


def register_filter(conn: sqlite3.Connection, filt: Filter) -> str | None:
    """Record the filter as it is now and make sure its wide score view follows it.

    Tiers and overall are computed in the view from the current config, so editing weights, caps,
    gatekeepers or tier thresholds needs no relabelling: such an edit updates the registered config,
    recreates the view and returns a one-line note saying what changed. Anything that shapes the
    oracle's answer (prompt_sha256: prompt, answer schema, content types, score_step; or the
    dimension list) must not change under the same name and version: FilterMismatch, and nothing
    is written. Returns None when nothing changed (then nothing is written either, unless the view
    is missing or was made by other code)."""
    config_json = json.dumps(filt.config, sort_keys=True, default=str)
    dimensions_json = json.dumps(filt.dimension_names)
    view = view_sql(filt)
    # the usual case, every stage every run: registered as is, view in place; a read, no write lock
    row = _registered_filter(conn, filt.id)
    if row is not None and _check_registered(filt, row, config_json, dimensions_json) is None \
            and _view_text(conn, filt.view_name) == view:
        return None
    with transaction(conn):
        row = _registered_filter(conn, filt.id)  # again, under the write lock
        note = None
        if row is None:
            conn.execute(
                """INSERT INTO filters (id, name, version, config_json, prompt_sha256, dimensions_json)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (filt.id, filt.name, filt.version, config_json, filt.prompt_sha256, dimensions_json),
            )
        else:
            note = _check_registered(filt, row, config_json, dimensions_json)  # raises FilterMismatch
            if note is not None:
                conn.execute("UPDATE filters SET config_json = ? WHERE id = ?", (config_json, filt.id))
        if _view_text(conn, filt.view_name) != view:
            conn.execute(f"DROP VIEW IF EXISTS {sql_identifier(filt.view_name)}")
            conn.execute(view)
    return note


def check_filter(conn: sqlite3.Connection, filt: Filter) -> str | None:
    """What register_filter would say, writing nothing (for dry runs): raises FilterMismatch, or
    returns the note about changed downstream settings, or None."""
    row = _registered_filter(conn, filt.id)
    if row is None:
        return None
    return _check_registered(filt, row, json.dumps(filt.config, sort_keys=True, default=str),
                             json.dumps(filt.dimension_names))


def _registered_filter(conn: sqlite3.Connection, filter_id: str) -> tuple | None:
    return conn.execute("SELECT config_json, prompt_sha256, dimensions_json FROM filters WHERE id = ?",
                        (filter_id,)).fetchone()


def _view_text(conn: sqlite3.Connection, view_name: str) -> str | None:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?", (view_name,)).fetchone()
    return row[0] if row else None


def _check_registered(filt: Filter, row: tuple, config_json: str, dimensions_json: str) -> str | None:
    """Compare the package with its registered row: raise FilterMismatch when what shapes the
    oracle's answer differs, return a note naming the downstream keys that differ, else None."""
    old_config_json, old_sha, old_dimensions_json = row[0], row[1], row[2]
    try:
        old_cfg = json.loads(old_config_json)
    except json.JSONDecodeError:
        old_cfg = {}
    old_cfg = old_cfg if isinstance(old_cfg, dict) else {}
    new_cfg = json.loads(config_json)
    if old_sha != filt.prompt_sha256 or old_dimensions_json != dimensions_json:
        what = []
        if old_dimensions_json != dimensions_json:
            what.append("the dimension list")
        for key, words in (("content_types", "the content types"), ("score_step", "score_step")):
            if old_cfg.get(key) != new_cfg.get(key):
                what.append(words)
        if not what:
            what.append("prompt.md")
        raise FilterMismatch(
            f"filter {filt.id} differs from the one gt.db registered under that name and version "
            f"({', '.join(what)} changed; prompt_sha256 {old_sha[:12]} -> {filt.prompt_sha256[:12]}): "
            f"bump `version` in {filt.path}/config.yaml to register the edited filter "
            "(labels stay with the version that made them)"
        )
    if old_config_json == config_json:
        return None
    changed = _changed_config_keys(old_cfg, new_cfg) or ["config.yaml"]
    return (f"filter {filt.id}: {', '.join(changed)} changed since it was registered; "
            f"the score view {filt.view_name} now follows the current config.yaml")


_DIMENSION_FIELDS = {"weight": "weights", "description": "dimension descriptions", "low": "dimension 'low' rules",
                     "anchors": "dimension anchors"}


def _changed_config_keys(old: dict, new: dict) -> list[str]:
    """Readable names of what differs between two registered configs (same dimension list)."""
    changed: list[str] = []
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) == new.get(key):
            continue
        if key == "dimensions" and isinstance(old.get(key), list) and isinstance(new.get(key), list):
            pairs = [(a, b) for a, b in zip(old[key], new[key]) if isinstance(a, dict) and isinstance(b, dict)]
            named = [words for field, words in _DIMENSION_FIELDS.items()
                     if any(a.get(field) != b.get(field) for a, b in pairs)]
            changed.extend(named or ["dimensions"])
        else:
            changed.append(key)
    return list(dict.fromkeys(changed))


def view_sql(filt: Filter) -> str:
    """CREATE VIEW of the filter's wide score view: one row per valid label, one column per
    dimension, overall and tier from the current config. Views take no bound parameters, so every
    name goes through sql_identifier / sql_literal (and numbers through sql_number)."""
    ident, lit = sql_identifier, sql_literal
    pivot = ",\n       ".join(
        f"MAX(CASE WHEN s.dimension = {lit(n)} THEN s.score END) AS {ident(n)}" for n in filt.dimension_names
    )
    return f"""CREATE VIEW {ident(filt.view_name)} AS
SELECT article_id, label_id, oracle, prompt_sha256, repeat, content_type,
       {", ".join(ident(n) for n in filt.dimension_names)}, overall, {filt.tier_sql("overall")} AS tier
FROM (
  SELECT *, {filt.overall_sql()} AS overall
  FROM (
    SELECT l.article_id, l.id AS label_id, l.oracle, l.prompt_sha256, l.repeat, l.content_type,
       {pivot}
    FROM labels l JOIN label_scores s ON s.label_id = l.id
    WHERE l.filter_id = {lit(filt.id)} AND l.status = {lit("ok")}
    GROUP BY l.id
  )
)"""


def start_run(conn: sqlite3.Connection, *, purpose: str, filt: Filter, oracle: str, provider: str | None,
              model: str | None, mode: str = "sync", params: dict | None = None, seed: int | None = None,
              owner: str | None = None) -> int:
    """Open a label run. `owner` (host:pid:start) lets `--status` tell a running run from a dead one."""
    cur = conn.execute(
        """INSERT INTO label_runs (purpose, filter_id, oracle, provider, model, prompt_sha256, mode, params_json, seed,
                                   owner, heartbeat_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (purpose, filt.id, oracle, provider, model, filt.prompt_sha256, mode,
         json.dumps(params or {}, sort_keys=True), seed, owner, time.time() if owner else None),
    )
    return int(cur.lastrowid)


def finish_run(conn: sqlite3.Connection, run_id: int, status: str = "done", reason: str | None = None) -> None:
    """Close a run. Its cost, tokens and calls are the ledger's (added as each answer was stored)
    and are never recomputed from its labels: a replaced 'error' label keeps its cost here."""
    conn.execute(
        """UPDATE label_runs SET status = ?, stopped_reason = ?, finished_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
           WHERE id = ?""",
        (status, reason, run_id),
    )


def add_to_ledger(conn: sqlite3.Connection, run_id: int, *, cost_usd: float, input_tokens: int = 0,
                  output_tokens: int = 0, cached_tokens: int = 0, calls: int = 0, unstored: int = 0) -> None:
    """Add billed responses to a run's ledger (call it in the transaction that stores what they brought)."""
    conn.execute(
        """UPDATE label_runs SET cost_usd = cost_usd + ?, input_tokens = input_tokens + ?,
               output_tokens = output_tokens + ?, cached_tokens = cached_tokens + ?, calls = calls + ?,
               unstored = unstored + ? WHERE id = ?""",
        (float(cost_usd or 0.0), int(input_tokens or 0), int(output_tokens or 0), int(cached_tokens or 0),
         int(calls or 0), int(unstored or 0), run_id),
    )


def insert_label(conn: sqlite3.Connection, *, run_id: int, article_id: str, filt: Filter, oracle: str,
                 status: str, repeat: int = 0, scores: dict[str, float] | None = None,
                 content_type: str | None = None, evidence: dict | None = None, raw_response: str | None = None,
                 error: str | None = None, input_tokens: int | None = None, output_tokens: int | None = None,
                 cached_tokens: int | None = None, cost_usd: float | None = None, latency_ms: float | None = None,
                 attempts: int = 1, prompt_sha256: str | None = None) -> int | None:
    """Insert one label and its scores atomically. Returns the label id, or None where a label for
    (article, filter, oracle, prompt, repeat) already exists (re-runs never duplicate rows).
    An 'ok' label must carry every dimension; other statuses carry no scores (never zeros)."""
    if status == "ok":
        missing = [n for n in filt.dimension_names if scores is None or scores.get(n) is None]
        if missing:
            raise ValueError(f"an ok label needs every dimension; missing {missing}")
    elif scores:
        raise ValueError("only ok labels carry scores")
    with transaction(conn):
        cur = conn.execute(
            """INSERT INTO labels (run_id, article_id, filter_id, oracle, prompt_sha256, repeat, status,
                   content_type, evidence_json, raw_response, error, input_tokens, output_tokens, cached_tokens,
                   cost_usd, latency_ms, attempts)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (article_id, filter_id, oracle, prompt_sha256, repeat) DO NOTHING""",
            (run_id, article_id, filt.id, oracle, prompt_sha256 or filt.prompt_sha256, repeat, status, content_type,
             json.dumps(evidence, ensure_ascii=False) if evidence is not None else None, raw_response, error,
             input_tokens, output_tokens, cached_tokens, cost_usd, latency_ms, attempts),
        )
        if cur.rowcount == 0:
            return None
        label_id = int(cur.lastrowid)
        if status == "ok":
            conn.executemany(
                "INSERT INTO label_scores (label_id, dimension, score) VALUES (?, ?, ?)",
                [(label_id, n, float(scores[n])) for n in filt.dimension_names],
            )
    return label_id


def replace_failed_label(conn: sqlite3.Connection, article_id: str, filt: Filter, oracle: str,
                         repeat: int = 0, prompt_sha256: str | None = None) -> None:
    """Delete an 'error' label so a retry can take its place (ok and invalid labels stay)."""
    conn.execute(
        """DELETE FROM labels WHERE article_id = ? AND filter_id = ? AND oracle = ? AND prompt_sha256 = ?
               AND repeat = ? AND status = 'error'""",
        (article_id, filt.id, oracle, prompt_sha256 or filt.prompt_sha256, repeat),
    )


def scores_frame(conn: sqlite3.Connection, filt: Filter, oracle: str | None = None,
                 prompt_sha256: str | None = None, repeat: int | None = 0):
    """Valid labels of one filter as a pandas DataFrame (one row per label, one column per
    dimension, plus overall and tier from the view)."""
    import pandas as pd

    where, args = [], []
    if oracle is not None:
        where.append("oracle = ?")
        args.append(oracle)
    if prompt_sha256 is not None:
        where.append("prompt_sha256 = ?")
        args.append(prompt_sha256)
    if repeat is not None:
        where.append('"repeat" = ?')
        args.append(repeat)
    sql = f'SELECT * FROM "{filt.view_name}"' + (" WHERE " + " AND ".join(where) if where else "")
    return pd.read_sql_query(sql + " ORDER BY article_id, oracle, repeat", conn, params=args)


def target_frame(conn: sqlite3.Connection, filt: Filter, oracle: str, prompt_sha256: str):
    """One row per article of one label set: each dimension the mean of the article's valid repeats
    (what a student learns from: paid repeats average out an oracle's noise), `repeats` how many,
    label_id, content_type and repeat of its first valid repeat (provenance), overall and tier
    recomputed from the means (Filter.overall, Filter.tier_index)."""
    import numpy as np

    frame = scores_frame(conn, filt, oracle, prompt_sha256, repeat=None)
    if frame.empty:
        frame["repeats"] = []
        return frame
    dims = filt.dimension_names
    first = frame.sort_values(["article_id", "repeat"]).groupby("article_id", sort=True).first()
    means = frame.groupby("article_id", sort=True)[dims].mean()
    out = first.drop(columns=dims).join(means)
    out["repeats"] = frame.groupby("article_id", sort=True).size()
    out["overall"] = filt.overall({d: out[d].to_numpy() for d in dims}, out["content_type"].to_numpy(dtype=object))
    out["tier"] = np.array(filt.tier_names, dtype=object)[filt.tier_index(out["overall"].to_numpy())]
    return out.reset_index()[list(frame.columns) + ["repeats"]]


def choose_label_set(conn: sqlite3.Connection, filt: Filter | str, oracle: str | None = None,
                     prompt_sha256: str | None = None) -> tuple[str, str]:
    """The (oracle, prompt_sha256) whose valid labels a reading step uses (coverage, select, train,
    curve, evaluate, calibrate, the labelled-file export): the given oracle, or the one with the most
    valid labels; within it the given prompt version, or the one with the most labels; ties by name.
    `filt` is a Filter or its id. Raises StoreError with a hint when there are none."""
    filter_id = filt if isinstance(filt, str) else filt.id
    args: list = [filter_id]
    extra = ""
    if oracle:
        extra = " AND oracle = ?"
        args.append(oracle)
    if prompt_sha256:
        extra += " AND prompt_sha256 = ?"
        args.append(prompt_sha256)
    row = conn.execute(
        f"""SELECT oracle, prompt_sha256, COUNT(*) AS n FROM labels
            WHERE filter_id = ? AND status = 'ok'{extra}
            GROUP BY oracle, prompt_sha256 ORDER BY n DESC, oracle, prompt_sha256 LIMIT 1""",
        args,
    ).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute(
            "SELECT DISTINCT oracle FROM labels WHERE filter_id = ? AND status = 'ok'", (filter_id,))]
        prompt = f" under prompt {prompt_sha256[:12]}" if prompt_sha256 else ""
        if oracle and known:
            raise StoreError(f"no valid labels of {filter_id} by oracle '{oracle}'{prompt}; oracles with labels: "
                             f"{', '.join(known)}")
        raise StoreError(f"no valid labels of {filter_id} in the database: run `make label` (or import a labelled "
                         f"file) first")
    return row["oracle"], row["prompt_sha256"]


def selection_label_set(conn: sqlite3.Connection, selection_id: int) -> tuple[str, str]:
    """The (oracle, prompt_sha256) a stored selection was built from (its params record the prompt;
    a selection from before they did takes choose_label_set's prompt for its oracle)."""
    row = conn.execute("SELECT filter_id, oracle, params_json FROM selections WHERE id = ?", (selection_id,)).fetchone()
    if row is None:
        raise StoreError(f"no selection with id {selection_id} in the database")
    prompt = json.loads(row["params_json"] or "{}").get("prompt_sha256")
    return choose_label_set(conn, row["filter_id"], row["oracle"], prompt)


# ---- the splits a dataset ships with (sql/004_article_splits.sql) -------------------------------

DEFAULT_SPLIT_NAME = "official"
_SPLIT_WORDS = {"train": "train", "training": "train", "dev": "val", "val": "val", "valid": "val",
                "validation": "val", "test": "test", "testing": "test"}


def normalise_split(word: object) -> str | None:
    """'train' | 'val' | 'test' for a source file's split word (dev and validation are 'val'), or None."""
    return _SPLIT_WORDS.get(str(word).strip().lower()) if word is not None else None


def article_splits(conn: sqlite3.Connection, split_name: str = DEFAULT_SPLIT_NAME) -> dict[str, str]:
    """article id -> 'train' | 'val' | 'test' in one split scheme ({} when gt.db has none by that name)."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT article_id, split FROM article_splits WHERE split_name = ?", (split_name,))}


def split_names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT split_name FROM article_splits ORDER BY split_name")]
