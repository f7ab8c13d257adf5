"""Browse gt.db in Datasette, read-only, on this machine only.

    python -m stages.browse --db gt.db --port 8001      # then open http://127.0.0.1:8001/

Serves the database with datasette/metadata.yaml: titled tables with column descriptions, and
canned queries (coverage by dimension, most disagreeing articles, labels of one article across
oracles, cost per run) that use only the schema's tables, so they work on any gt.db. At start-up
the metadata is keyed by the database's name and gains a description of each registered filter's
score view (scores_<name>_v<N>); that version is written to a temporary file for Datasette.

Read-only and WAL-safe: Datasette opens the file with mode=ro for every query and nothing here
writes. Immutable mode (-i) is not used because it ignores the write-ahead log, so labels a
running stage wrote but SQLite has not yet checkpointed would be invisible; --nolock is not used
because reading without locks while a stage writes can return torn results.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gt import PROJECT_ROOT
from gt.core import errors, store
from gt.core.filters import view_name

METADATA = PROJECT_ROOT / "datasette" / "metadata.yaml"
TEMPLATE_DATABASE = "gt"  # the key metadata.yaml uses for the database
DEFAULT_PORT = 8001
SQL_TIME_LIMIT_MS = 120_000  # canned queries aggregate whole tables: coverage_by_dimension took 39 s on 1M labels (loaded machine)


class BrowseError(errors.StageError):
    """gt.db cannot be served (exit 1)."""


def database_name(db: str | Path) -> str:
    """The name Datasette gives a database file (its file name without the extension)."""
    return Path(db).stem


def registered_views(db: Path) -> list[dict]:
    """Score views of the registered filters that exist in this gt.db, with their dimensions."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise BrowseError(f"cannot open the database ({e})") from None
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        try:
            rows = conn.execute("SELECT id, name, version, dimensions_json FROM filters ORDER BY id").fetchall()
        except sqlite3.OperationalError as e:
            raise BrowseError(f"not a gt.db made by this project ({e})") from None
    except sqlite3.DatabaseError as e:
        raise BrowseError(f"cannot read the database ({e})") from None
    finally:
        conn.close()
    views = []
    for filter_id, name, version, dimensions_json in rows:
        view = view_name(name, version)
        if view in names:
            views.append({"view": view, "filter": filter_id, "dimensions": json.loads(dimensions_json)})
    return views


def build_metadata(db: Path, template: Path = METADATA) -> dict:
    """datasette/metadata.yaml keyed by this database's name, plus one entry per score view."""
    metadata = yaml.safe_load(template.read_text(encoding="utf-8"))
    databases = metadata.setdefault("databases", {})
    entry = databases.pop(TEMPLATE_DATABASE, {})
    entry["description"] = f"{db} - " + entry.get("description", "")
    tables = entry.setdefault("tables", {})
    for v in registered_views(db):
        columns = {
            "article_id": "The article.", "label_id": "The label (see labels).", "oracle": "Oracle name.",
            "prompt_sha256": "Prompt version.", "repeat": "Repeat number (0 = first answer).",
            "content_type": "Content type the oracle chose.",
            "overall": "Weighted overall score after gatekeeper and content-type caps, from the filter's current config.",
            "tier": "Tier from the overall score and the config's thresholds.",
        }
        columns.update({d: f"Score of {d} (0-10)." for d in v["dimensions"]})
        tables[v["view"]] = {
            "title": f"Scores of {v['filter']} (one row per valid label)",
            "description": f"Valid labels of {v['filter']}, one column per dimension ({', '.join(v['dimensions'])}), "
                           "overall score and tier computed from the filter's config at read time.",
            "columns": columns,
        }
    databases[database_name(db)] = entry
    return metadata


def datasette_command(db: Path, metadata_path: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "datasette", "serve", str(db), "--metadata", str(metadata_path),
            "--host", host, "--port", str(port), "--setting", "sql_time_limit_ms", str(SQL_TIME_LIMIT_MS),
            "--setting", "default_page_size", "100"]


def databases_here(root: Path, limit: int = 200) -> list[Path]:
    """gt.db files below `root` (not in hidden folders or the venv), newest first, as relative paths."""
    found = []
    for path in root.rglob("*.db"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts[:-1]) or not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    continue
        except OSError:
            continue
        found.append((path.stat().st_mtime, rel))
        if len(found) >= limit:
            break
    return [rel for _, rel in sorted(found, key=lambda x: (-x[0], str(x[1])))]


@dataclass
class BrowseOptions:
    """What to serve and where (the flags of `python -m stages.browse`)."""
    db: str = field(default_factory=store.default_db_path)
    port: int = DEFAULT_PORT
    metadata_out: str | None = None

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise errors.UsageError(f"--port must be between 1 and 65535 (got {self.port})")


def prepare(opts: BrowseOptions) -> str:
    """Check that gt.db can be read (never creating it) and build the metadata to serve it with, as
    JSON text (also written to --metadata-out). Raises BrowseError, or StoreError/sqlite3.Error."""
    db = Path(opts.db)
    if not db.exists():
        found = databases_here(Path.cwd())
        if found:
            newest = found[0]
            others = f" (also: {', '.join(str(f) for f in found[1:4])})" if len(found) > 1 else ""
            raise BrowseError(f"no database at {db}; the newest gt.db under {Path.cwd()} is {newest}{others}: "
                              f"make browse DB={newest}")
    store.connect(db, readonly=True).close()  # missing, unreadable, locked or corrupt: one line, not Datasette's
    try:
        metadata = build_metadata(db)
    except (BrowseError, OSError, yaml.YAMLError) as e:
        raise BrowseError(f"{e}, {db} (pass --db with a gt.db made by this project)") from None
    text = json.dumps(metadata, indent=2)
    if opts.metadata_out:
        from gt.core.report import write_text_atomic
        write_text_atomic(opts.metadata_out, text)
    return text


def serve(db: Path, metadata_text: str, port: int) -> int:
    """Run Datasette on 127.0.0.1:`port` until it exits, this process gets SIGTERM (passed on) or
    Ctrl-C; returns Datasette's exit code. The metadata lives in a temporary file meanwhile."""
    with tempfile.TemporaryDirectory(prefix="gt-browse-") as tmp:
        metadata_path = Path(tmp) / "metadata.json"
        metadata_path.write_text(metadata_text, encoding="utf-8")
        child = subprocess.Popen(datasette_command(db, metadata_path, port))

        def stop(signum, frame):  # pass a terminate on to Datasette, then clean up the temp metadata
            child.terminate()
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            child.terminate()
            rc = child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if child.poll() is None:
                child.kill()
                child.wait()
    return rc
