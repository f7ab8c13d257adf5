"""gt.db: open it (WAL, foreign keys), apply the numbered migrations in sql/, register filters
(and their wide score views), and the few typed helpers more than one stage needs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Iterator

from stages.filters import Filter

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class StoreError(Exception):
    pass


def default_db_path() -> str:
    return os.environ.get("GT_DB") or "gt.db"


def migrations() -> list[tuple[int, Path]]:
    found = []
    for p in sorted(SQL_DIR.glob("*.sql")):
        m = _MIGRATION.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return found


def schema_version() -> int:
    return max(v for v, _ in migrations())


def connect(path: str | os.PathLike | None = None, *, readonly: bool = False) -> sqlite3.Connection:
    """Open gt.db, creating it and applying pending migrations. Autocommit mode: use
    `transaction(conn)` for anything that must be all-or-nothing."""
    path = str(path or default_db_path())
    if path != ":memory:":
        parent = Path(path).parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    if not readonly:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every sql/NNN_*.sql above the db's user_version, each in its own transaction."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = schema_version()
    if current > latest:
        raise StoreError(
            f"gt.db schema version {current} is newer than this code knows ({latest}): update the project"
        )
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


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def register_filter(conn: sqlite3.Connection, filt: Filter) -> None:
    """Record the filter as it is now and (re)create its wide score view. Tiers and overall are
    computed in the view from the current config, so editing thresholds needs no relabelling."""
    with transaction(conn):
        conn.execute(
            """INSERT INTO filters (id, name, version, config_json, prompt_sha256, dimensions_json)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT(id) DO UPDATE SET config_json = excluded.config_json,
                   prompt_sha256 = excluded.prompt_sha256, dimensions_json = excluded.dimensions_json""",
            (filt.id, filt.name, filt.version, json.dumps(filt.config, sort_keys=True, default=str),
             filt.prompt_sha256, json.dumps(filt.dimension_names)),
        )
        conn.execute(f'DROP VIEW IF EXISTS "{filt.view_name}"')
        conn.execute(view_sql(filt))


def view_sql(filt: Filter) -> str:
    pivot = ",\n       ".join(
        f"MAX(CASE WHEN s.dimension = '{n}' THEN s.score END) AS \"{n}\"" for n in filt.dimension_names
    )
    return f"""CREATE VIEW "{filt.view_name}" AS
SELECT article_id, label_id, oracle, prompt_sha256, repeat, content_type,
       {", ".join(f'"{n}"' for n in filt.dimension_names)}, overall, {filt.tier_sql("overall")} AS tier
FROM (
  SELECT *, {filt.overall_sql()} AS overall
  FROM (
    SELECT l.article_id, l.id AS label_id, l.oracle, l.prompt_sha256, l.repeat, l.content_type,
       {pivot}
    FROM labels l JOIN label_scores s ON s.label_id = l.id
    WHERE l.filter_id = '{filt.id}' AND l.status = 'ok'
    GROUP BY l.id
  )
)"""


def start_run(conn: sqlite3.Connection, *, purpose: str, filt: Filter, oracle: str, provider: str | None,
              model: str | None, mode: str = "sync", params: dict | None = None, seed: int | None = None) -> int:
    cur = conn.execute(
        """INSERT INTO label_runs (purpose, filter_id, oracle, provider, model, prompt_sha256, mode, params_json, seed)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (purpose, filt.id, oracle, provider, model, filt.prompt_sha256, mode,
         json.dumps(params or {}, sort_keys=True), seed),
    )
    return int(cur.lastrowid)


def finish_run(conn: sqlite3.Connection, run_id: int, status: str = "done") -> None:
    """Close a run and roll its labels' cost and tokens up into it."""
    conn.execute(
        """UPDATE label_runs SET status = ?, finished_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now'),
               cost_usd = (SELECT COALESCE(SUM(cost_usd), 0) FROM labels WHERE run_id = ?),
               input_tokens = (SELECT COALESCE(SUM(input_tokens), 0) FROM labels WHERE run_id = ?),
               output_tokens = (SELECT COALESCE(SUM(output_tokens), 0) FROM labels WHERE run_id = ?)
           WHERE id = ?""",
        (status, run_id, run_id, run_id, run_id),
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


def oracle_with_most_labels(conn: sqlite3.Connection, filt: Filter) -> str | None:
    row = conn.execute(
        """SELECT oracle, COUNT(*) AS n FROM labels WHERE filter_id = ? AND status = 'ok'
           GROUP BY oracle ORDER BY n DESC, oracle LIMIT 1""",
        (filt.id,),
    ).fetchone()
    return row["oracle"] if row else None


def choose_label_set(conn: sqlite3.Connection, filt: Filter, oracle: str | None = None) -> tuple[str, str]:
    """The (oracle, prompt_sha256) whose valid labels a read stage (coverage, select) uses: the
    given oracle, or the one with the most valid labels; within it the prompt version with the most
    labels. Raises StoreError with a hint when there are none."""
    args: list = [filt.id]
    extra = ""
    if oracle:
        extra = " AND oracle = ?"
        args.append(oracle)
    row = conn.execute(
        f"""SELECT oracle, prompt_sha256, COUNT(*) AS n FROM labels
            WHERE filter_id = ? AND status = 'ok'{extra}
            GROUP BY oracle, prompt_sha256 ORDER BY n DESC, oracle, prompt_sha256 LIMIT 1""",
        args,
    ).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute(
            "SELECT DISTINCT oracle FROM labels WHERE filter_id = ? AND status = 'ok'", (filt.id,))]
        if oracle and known:
            raise StoreError(f"no valid labels of {filt.id} by oracle '{oracle}'; oracles with labels: {', '.join(known)}")
        raise StoreError(f"no valid labels of {filt.id} in the database: run `make label` (or import a labelled file) first")
    return row["oracle"], row["prompt_sha256"]
