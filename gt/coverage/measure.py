"""Step 3 of the workflow: how the ground truth is distributed, before selecting from it.

For one filter and one label set (oracle, prompt version, repeat; by default the oracle with the
most valid labels), per dimension: the histogram over every score bin 0-10 (empty bins included),
missing and sparse bins, mean, sd, median, IQR, skew, the share in the 4-7 band and the counts at
the tails; the tier distribution computed from the filter's config; the correlation matrix
between dimensions; labels per source; and the coverage gaps in words. Writes a JSON file with
every figure, reports/<filter>_v<N>_coverage.md (leading with the gaps) and two PNG plots.

    python -m stages.coverage --db gt.db --filter filters/uplifting/v1
    python -m stages.coverage --labeled-file labeled_articles.jsonl --output coverage_report.json

Binning: a score s falls in bin floor(s), so 6.5 counts in bin 6 and bin 10 holds only 10.0.
Bands (gt/core/bands.py): low tail = bins 0-3 (s < 4), middle = bins 4-7 (4 <= s < 8), high tail =
bins 8-10 (s >= 8).

Speed: the label set is materialised once in SQL, then each label's scores come back packed into
one integer (sql/queries/coverage_packed_scores.sql), so 1M labels (8M score rows) cost one pass
over label_scores and 1M fetched rows instead of 8M; the statistics are numpy/scipy on that matrix.
A large set is gathered by two read-only connections in threads (label id ranges), one per core.
"""
from __future__ import annotations

import math
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from gt.core.report import REPORTS_DIR
from gt.core import bands, errors, report, store
from gt.coverage.report import (BINS, HIGH, LOW, MIDDLE, band_definitions, band_key, gap_sentences, render_markdown,
                                    warning_sentences, write_plots)
from gt.core.filters import DEFAULT_FILTER, Filter, load_filter

HALF_POINTS = [k / 2 for k in range(21)]
PACK_BASE = 22          # digit = round(2 x score) + 1 in 1..21; 0 means the label has no score there
PACK_CHUNK = 14         # 22^14 < 2^63: at most 14 dimensions per packed integer
DEFAULT_SPARSE_SHARE = 0.02
PARALLEL_MIN_LABELS = 200_000  # below this one connection is as fast as two


class CoverageError(Exception):
    """The coverage could not be computed; the message is one line for the user."""


# ---- the label set ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelSet:
    filter_id: str
    oracle: str
    prompt_sha256: str
    repeat: int


ALL_IDS = (0, 2 ** 63 - 1)


def materialise_label_set(conn: sqlite3.Connection, label_set: LabelSet, ids: tuple[int, int] = ALL_IDS) -> int:
    """Create the temp table coverage_labels on this connection with the labels of the set whose
    id is in [ids[0], ids[1]); returns its number of labels."""
    conn.execute("DROP TABLE IF EXISTS temp.coverage_labels")
    store.run_script(conn, "coverage_label_set", {
        "filter_id": label_set.filter_id, "oracle": label_set.oracle,
        "prompt_sha256": label_set.prompt_sha256, "repeat": label_set.repeat, "id_from": ids[0], "id_to": ids[1],
    })
    return conn.execute("SELECT COUNT(*) FROM temp.coverage_labels").fetchone()[0]


def _tuples(conn: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor yielding plain tuples: sqlite3.Row objects cost a second per million rows."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor


def has_off_grid_scores(conn: sqlite3.Connection, dimensions: Sequence[str]) -> bool:
    """Whether label_scores holds any score of these dimensions that is not a whole or half point."""
    return any(conn.execute(store.query_text("coverage_off_grid_values"), {"dimension": d}).fetchone()[0]
               for d in dimensions)


def score_matrix(conn: sqlite3.Connection, dimensions: Sequence[str]) -> np.ndarray:
    """Scores of every label in coverage_labels as a (labels x dimensions) float array, rows in
    label_id order. Whole and half points travel packed; other values are read exactly."""
    n = conn.execute("SELECT COUNT(*) FROM temp.coverage_labels").fetchone()[0]
    matrix = np.empty((n, len(dimensions)), dtype=np.float64)
    conn.execute("DROP TABLE IF EXISTS temp.coverage_dimensions")
    conn.execute("""CREATE TEMP TABLE coverage_dimensions (
                        dimension TEXT PRIMARY KEY, chunk INTEGER NOT NULL, place INTEGER NOT NULL) WITHOUT ROWID""")
    chunks = [list(range(i, min(i + PACK_CHUNK, len(dimensions)))) for i in range(0, len(dimensions), PACK_CHUNK)]
    conn.executemany("INSERT INTO temp.coverage_dimensions VALUES (?, ?, ?)",
                     [(dimensions[k], c, PACK_BASE ** j) for c, ks in enumerate(chunks) for j, k in enumerate(ks)])
    for c, ks in enumerate(chunks):
        packed = np.fromiter((r[0] for r in _tuples(conn).execute(store.query_text("coverage_packed_scores"), {"chunk": c})),
                             dtype=np.int64)  # streamed: no list of a million tuples
        if len(packed) != n:
            # an ok label always carries every dimension (store.insert_label); anything else is a broken db
            raise CoverageError(f"{n - len(packed):,} labels of this set have no scores on "
                                f"{', '.join(dimensions[k] for k in ks)} (relabel them, or pick another set with --oracle)")
        for j, k in enumerate(ks):
            digits = (packed // PACK_BASE ** j) % PACK_BASE
            unscored = int((digits == 0).sum())
            if unscored:
                raise CoverageError(f"{unscored:,} labels of this set have no {dimensions[k]} score: they were made "
                                    "with another dimension list (relabel them, or pick another set with --oracle)")
            matrix[:, k] = (digits - 1) / 2.0
    if has_off_grid_scores(conn, dimensions):
        label_ids = np.fromiter((r[0] for r in _tuples(conn).execute(
            "SELECT label_id FROM temp.coverage_labels ORDER BY label_id")), dtype=np.int64, count=n)
        column = {d: k for k, d in enumerate(dimensions)}
        for label_id, dimension, score in _tuples(conn).execute(store.query_text("coverage_exact_scores")):
            if dimension in column:
                matrix[int(np.searchsorted(label_ids, label_id)), column[dimension]] = score
    return matrix


@dataclass
class Gathered:
    """The per-label data of a label set (or of one part of it), rows aligned."""
    matrix: np.ndarray          # labels x dimensions
    content_types: np.ndarray   # per label (object array; None where the oracle gave none)
    sources: Counter            # labels per source


def gather(conn: sqlite3.Connection, label_set: LabelSet, dimensions: Sequence[str],
           ids: tuple[int, int] = ALL_IDS) -> Gathered:
    """Everything the figures need from gt.db, in three queries over one materialised label set."""
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: one pass in index order gains nothing from more
    materialise_label_set(conn, label_set, ids)
    matrix = score_matrix(conn, dimensions)
    content_types = np.fromiter((r[0] for r in _tuples(conn).execute(store.query_text("coverage_label_facts"))), dtype=object)
    sources = Counter({r[0]: int(r[1]) for r in _tuples(conn).execute(store.query_text("coverage_sources"))})
    conn.execute("DROP TABLE IF EXISTS temp.coverage_labels")
    return Gathered(matrix, content_types, sources)


def _gather_on_own_connection(db_file: str, label_set: LabelSet, dimensions: Sequence[str],
                              ids: tuple[int, int]) -> Gathered:
    conn = store.connect(db_file, readonly=True)
    try:
        return gather(conn, label_set, dimensions, ids)
    finally:
        conn.close()


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind the connection's main database ('' for an in-memory one)."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return row[2] or ""
    return ""


def gather_label_set(conn: sqlite3.Connection, label_set: LabelSet, dimensions: Sequence[str], *,
                     workers: int = 1, parallel_min_labels: int = PARALLEL_MIN_LABELS) -> Gathered:
    """Gather a label set, split by label id ranges over `workers` read-only connections in
    threads when it is large (SQLite releases the GIL while it steps, so two connections use two
    cores). Rows come back in label id order whatever the split, so the figures are identical."""
    expected, lo, hi = conn.execute(
        """SELECT COUNT(*), MIN(id), MAX(id) FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?
               AND status = 'ok' AND "repeat" = ?""",
        (label_set.filter_id, label_set.oracle, label_set.prompt_sha256, label_set.repeat)).fetchone()
    db_file = database_file(conn)
    parts = workers if workers > 1 and db_file and expected >= max(parallel_min_labels, 1) else 1
    if parts == 1:
        return gather(conn, label_set, dimensions)
    bounds = [lo + (hi + 1 - lo) * k // parts for k in range(parts)] + [hi + 1]
    with ThreadPoolExecutor(max_workers=parts) as pool:
        pieces = list(pool.map(
            lambda k: _gather_on_own_connection(db_file, label_set, dimensions, (bounds[k], bounds[k + 1])),
            range(parts)))
    return Gathered(np.concatenate([p.matrix for p in pieces]),
                    np.concatenate([p.content_types for p in pieces]),
                    sum((p.sources for p in pieces), Counter()))


# ---- figures ----------------------------------------------------------------------------------

def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def dimension_figures(x: np.ndarray, sparse_share: float) -> dict:
    """Every figure of one dimension's scores."""
    from scipy import stats

    n = int(x.size)
    doubled = x * 2
    rounded = np.rint(doubled)
    on_grid = doubled == rounded
    all_on_grid = bool(on_grid.all())
    # whole and half points (the usual case) are counted once on the half-point grid; the bins
    # (floor) follow from it: bin b holds grid points 2b (b.0) and 2b+1 (b.5)
    grid = rounded if all_on_grid else rounded[on_grid]
    grid_counts = np.bincount(grid.astype(np.int64), minlength=21)
    histogram = grid_counts[0::2].copy()
    histogram[:10] += grid_counts[1::2]
    values = {f"{v:g}": int(c) for v, c in zip(HALF_POINTS, grid_counts)}
    if not all_on_grid:
        other = x[~on_grid]
        histogram += np.bincount(np.clip(np.floor(other), 0, 10).astype(np.int64), minlength=11)
        uniq, counts = np.unique(other, return_counts=True)
        values.update({repr(float(v)): int(c) for v, c in zip(uniq, counts)})
        values = dict(sorted(values.items(), key=lambda kv: float(kv[0])))
    sparse_limit = sparse_share * n
    if n:
        q1, median, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
        mean = float(x.mean())
        with np.errstate(all="ignore"):
            sd = float(x.std(ddof=1)) if n > 1 else math.nan
            # undefined for a constant column (scipy warns and returns nan; say so plainly)
            skew = float(stats.skew(x, bias=False)) if n > 2 and sd > 0 else math.nan
    else:
        q1 = median = q3 = mean = sd = skew = math.nan
    counts = {LOW: int(bands.is_low(x).sum()), MIDDLE: int(bands.in_middle(x).sum()), HIGH: int(bands.is_high(x).sum())}
    return {
        "n": n,
        "histogram": {str(b): int(histogram[b]) for b in BINS},
        "values": values,
        "half_point_scores": int(grid_counts[1::2].sum()),
        "other_scores": n - int(grid_counts.sum()),
        "missing_bins": [b for b in BINS if histogram[b] == 0],
        "sparse_bins": [b for b in BINS if 0 < histogram[b] < sparse_limit],
        "mean": _finite(mean), "sd": _finite(sd), "median": _finite(median),
        "q1": _finite(q1), "q3": _finite(q3), "iqr": _finite(q3 - q1), "skew": _finite(skew),
        "min": float(x.min()) if n else None, "max": float(x.max()) if n else None,
        **{f"count_{band_key(b)}": c for b, c in counts.items()},
        **{f"share_{band_key(b)}": c / n if n else None for b, c in counts.items()},
    }


def correlation_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    """Pearson correlations between dimensions (None where a dimension has no spread)."""
    if matrix.shape[0] < 2:
        return [[None] * matrix.shape[1] for _ in range(matrix.shape[1])]
    with np.errstate(all="ignore"):
        r = np.corrcoef(matrix, rowvar=False)
    r = np.atleast_2d(r)
    return [[_finite(float(v)) for v in row] for row in r]


def compute_coverage(conn: sqlite3.Connection, filt: Filter, *, oracle: str | None = None, repeat: int = 0,
                     sparse_share: float = DEFAULT_SPARSE_SHARE, workers: int = 1,
                     parallel_min_labels: int = PARALLEL_MIN_LABELS) -> dict:
    """Every coverage figure of one label set, as a JSON-ready dict. Raises store.StoreError when
    there are no valid labels to describe, CoverageError when the labels are inconsistent."""
    chosen_oracle, prompt_sha256 = store.choose_label_set(conn, filt, oracle)
    label_set = LabelSet(filt.id, chosen_oracle, prompt_sha256, repeat)
    dims = filt.dimension_names
    gathered = gather_label_set(conn, label_set, dims, workers=workers, parallel_min_labels=parallel_min_labels)
    matrix, content_types = gathered.matrix, gathered.content_types
    n = matrix.shape[0]
    if n == 0:
        repeats = [r[0] for r in conn.execute(
            """SELECT DISTINCT "repeat" FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?
               AND status = 'ok' ORDER BY 1""", (filt.id, chosen_oracle, prompt_sha256))]
        raise store.StoreError(f"no valid labels of {filt.id} by {chosen_oracle} with repeat {repeat} on articles "
                               f"that are not duplicates (repeats with labels: {', '.join(map(str, repeats)) or 'none'})")
    scores = {d: matrix[:, k] for k, d in enumerate(dims)}
    tier_counts = np.bincount(filt.tier_index(filt.overall(scores, np.asarray(content_types, dtype=object))),
                              minlength=len(filt.tiers))
    content_type_counts = Counter("(none)" if c is None else c for c in content_types)
    sources = dict(sorted(gathered.sources.items(), key=lambda kv: (-kv[1], kv[0])))
    coverage = {
        "filter": filt.id,
        "oracle": chosen_oracle,
        "prompt_sha256": prompt_sha256,
        "repeat": repeat,
        "labels": n,  # one label per article: (article, oracle, prompt, repeat) is unique in labels
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "binning": "a score s falls in bin floor(s): 6.5 counts in bin 6, bin 10 holds only 10",
        "bands": band_definitions(),
        "sparse_share": sparse_share,
        "sparse_rule": f"a bin is sparse when it holds at least one label but under {sparse_share:.1%} of them",
        "dimensions": {d: dimension_figures(scores[d], sparse_share) for d in dims},
        "tiers": {
            "thresholds": {t.name: t.min_overall for t in filt.tiers},
            "counts": {t.name: int(c) for t, c in zip(filt.tiers, tier_counts)},
            "shares": {t.name: int(c) / n for t, c in zip(filt.tiers, tier_counts)},
        },
        "correlation": {"method": "pearson", "dimensions": dims, "matrix": correlation_matrix(matrix)},
        "sources": sources,
        "content_types": dict(sorted(content_type_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    coverage["gaps"] = gap_sentences(coverage)
    coverage["warnings"] = warning_sentences(coverage)
    return coverage


# ---- the stage: options in, figures and files out ---------------------------------------------

@dataclass
class CoverageOptions:
    """The flags of `python -m stages.coverage`, typed (the names are argparse's)."""
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    labeled_file: str | None = None
    oracle: str | None = None
    repeat: int = 0
    sparse_share: float = DEFAULT_SPARSE_SHARE
    report_dir: str | None = None
    output: str | None = None
    no_plots: bool = False
    workers: int = 2

    def check(self) -> None:
        check_options(self)


@dataclass
class Written:
    """What a run computed and where it put it."""
    coverage: dict
    output: Path                 # the JSON
    report: Path                 # the markdown
    report_dir: Path
    images: dict[str, Path]
    notes: list[str]             # what importing --labeled-file or re-registering the filter did


def _import_libraries(plotting: bool) -> None:
    import scipy.stats  # noqa: F401

    if plotting:
        report.import_plotting()


def report_stem(filt: Filter) -> str:
    return filt.report_stem("coverage")


def run(o: CoverageOptions) -> Written:
    """Check the options, read the label set's figures from gt.db, write the JSON, the markdown and
    the plots. Prints nothing; raises errors.StageError (one line) or a database error."""
    check_options(o)
    # scipy and matplotlib take a second or two to import: do it while SQLite (which releases the GIL) works
    threading.Thread(target=_import_libraries, args=(not o.no_plots,), daemon=True).start()
    filt = load_filter(o.filter)
    if o.labeled_file and not Path(o.labeled_file).is_file():
        raise errors.StageError(f"no such labelled file, {o.labeled_file} (pass the path of a labeled_articles.jsonl)")
    coverage, notes = read_coverage(o, filt)
    coverage["db"] = str(o.db)
    return write_outputs(o, filt, coverage, notes)


def check_options(o: CoverageOptions) -> None:
    if not 0 <= o.sparse_share < 1:
        raise errors.UsageError("--sparse-share must be a share between 0 and 1, e.g. 0.02")
    if o.repeat < 0:
        raise errors.UsageError("--repeat must be 0 or more")
    if o.workers < 1:
        raise errors.UsageError("--workers must be 1 or more")


def read_coverage(o: CoverageOptions, filt: Filter) -> tuple[dict, list[str]]:
    """The figures of the label set (after importing --labeled-file, if given) and the notes."""
    db = Path(o.db)
    # read-only unless importing --labeled-file (which may create gt.db); never creates it otherwise
    conn = store.connect(db) if o.labeled_file else store.connect(db, readonly=True)
    try:
        try:
            notes = [] if o.labeled_file else _follow_filter_config(conn, db, filt)
        except store.FilterMismatch as e:
            raise errors.StageError(str(e)) from None
        return _label_set_figures(conn, o, filt, db, notes), notes
    finally:
        conn.close()


def _label_set_figures(conn: sqlite3.Connection, o: CoverageOptions, filt: Filter, db: Path, notes: list[str]) -> dict:
    try:
        oracle = o.oracle
        if o.labeled_file:
            imported_oracle, note = _import_labeled_file(conn, filt, Path(o.labeled_file))
            notes.append(note)
            oracle = o.oracle or imported_oracle
        return compute_coverage(conn, filt, oracle=oracle, repeat=o.repeat, sparse_share=o.sparse_share,
                                workers=o.workers)
    except store.DatabaseTrouble as e:  # a worker's own read-only connection failed to open
        raise errors.StageError(str(e)) from None
    except (store.StoreError, CoverageError) as e:
        raise errors.StageError(f"{e} (database {db})") from None
    except sqlite3.OperationalError as e:
        if "no such table" in str(e) or "no such column" in str(e):
            raise errors.StageError(f"cannot read the database ({e}), {db} (is it a gt.db made by this project?)") from None
        raise


def write_outputs(o: CoverageOptions, filt: Filter, coverage: dict, notes: list[str]) -> Written:
    """Every file goes where the user said: beside --output (same name), or in --report-dir."""
    if o.output:
        output = Path(o.output)
        report_dir = Path(o.report_dir) if o.report_dir else output.parent
        stem = report_dir / output.with_suffix("").name
    else:
        report_dir = Path(o.report_dir or REPORTS_DIR)
        stem = report_dir / report_stem(filt)
        output = stem.with_suffix(".json")
    md_path = stem.with_suffix(".md")
    try:
        images = {} if o.no_plots else write_plots(coverage, stem)
        report.write_text_atomic(md_path, render_markdown(coverage, {k: Path(p).name for k, p in images.items()}))
        coverage["report"] = str(md_path)
        coverage["plots"] = {k: str(p) for k, p in images.items()}
        report.write_json_atomic(output, coverage, sort_keys=False)  # bins 0..10 in order, not "0", "1", "10"
    except OSError as e:
        raise errors.StageError(f"cannot write the report ({e.strerror}), {e.filename} (pass --report-dir/--output "
                             "somewhere writable)") from None
    return Written(coverage, output, md_path, report_dir, images, notes)


# ---- command line -----------------------------------------------------------------------------


def _import_labeled_file(conn: sqlite3.Connection, filt: Filter, path: Path) -> tuple[str | None, str]:
    """Import the file; returns (oracle of the imported labels or None, a one-line note)."""
    from gt.intake.labeled_file import import_labeled_file

    summary = import_labeled_file(conn, filt, path)
    note = (f"imported {path}: {summary.records:,} records, {summary.imported_labels:,} new valid labels, "
            f"{summary.invalid_labels:,} invalid")
    if summary.problems:
        note += f", {len(summary.problems):,} records not imported (first: {summary.problems[0]})"
    if not summary.label_runs:
        return None, note
    marks = ",".join("?" * len(summary.label_runs))
    row = conn.execute(
        f"""SELECT oracle, COUNT(*) AS n FROM labels WHERE run_id IN ({marks}) AND status = 'ok'
            GROUP BY oracle ORDER BY n DESC, oracle LIMIT 1""", summary.label_runs).fetchone()
    return (row[0] if row else None), note


def _follow_filter_config(conn: sqlite3.Connection, db: Path, filt) -> list[str]:
    """The score view follows the current config.yaml whichever stage ran last: when weights, caps
    or tiers were edited since the filter was registered, re-register it (the one write coverage
    makes; FilterMismatch when the prompt changed under the same version)."""
    if store.check_filter(conn, filt) is None:
        return []
    try:
        rw = store.connect(db, create=False)
    except store.StoreError as e:
        return [f"the score view {filt.view_name} still follows the registered config ({e})"]
    try:
        note = store.register_filter(rw, filt)
    finally:
        rw.close()
    return [note] if note else []
