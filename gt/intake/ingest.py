"""Ingest articles into gt.db: JSONL or CSV files (globs, .gz), cleaned, de-duplicated, clustered.

    python -m stages.ingest --db gt.db --source 'data/raw/*.jsonl' [--source more.csv.gz]

What happens to each record:
- fields are mapped from common names (text/content/body/article, title/headline,
  id/article_id/guid, url/link, source/publisher, published_date/date/published_at, language);
- the text is cleaned (HTML, mojibake, whitespace: gt.core.text.clean_text);
- a record without an id gets one from its content: the first 16 hex digits of its content hash
  (an exact duplicate without an id gets that id plus '-2', '-3', ... by order of appearance);
- an exact duplicate (same normalised title+text as an article already in gt.db or earlier in the
  input) is stored as a row with `dup_of` = the kept article, so users see what was dropped;
- near-duplicates (MinHash of 5-word shingles, estimated Jaccard >= 0.8) share
  `near_dup_cluster` = the id of the cluster's first article; signatures are kept in
  `article_minhash`, so a later ingest clusters new articles against old ones;
- texts shorter than the filter's min_chars (300) are kept and flagged `too_short`;
- records carrying `<filter>_analysis` labels are imported as a label run (gt.intake.labeled_file);
- with --labels, label columns (e.g. human ratings on a 1-5 scale) are imported as an oracle's label
  set, rescaled to 0-10 (gt.intake.human_labels); rows without text name an article already in gt.db;
- with --split-column, the dataset's own split (train/dev/test) is kept in `article_splits`.

Rejected (one line `file:line: what (what to do)` each, all counted, exit code 1): malformed
JSON, records without text, lines that are not UTF-8, empty files, globs matching nothing, texts
longer than --max-chars (default 200,000), and a record whose id is already used by an article
with different text (the first one stays; ids are never silently renamed, since labels and
selections refer to them). An imported analysis that is broken (a missing dimension, a score out
of 0-10) is stored as an invalid label and also reported. With --labels, a row whose label value is
not a number or lies outside --label-scale, or that names an article not in gt.db, is rejected (its
article, when the row carries one, still goes in). Re-ingesting the same files inserts nothing. Rows are written in
batches, each in one transaction: a killed ingest leaves whole batches and a rerun completes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from gt.core import errors, store
from gt.core.filters import DEFAULT_FILTER, Filter, load_filter
from gt.intake.human_labels import HumanLabelSpec, Scale, check_oracle_name, parse_label_columns
from gt.intake.ingestion import (BATCH_SIZE, DEFAULT_MAX_CHARS, IngestSummary,
                              ingest_files)


# ---- command line ---------------------------------------------------------------------------------


@dataclass
class IngestOptions:
    """What to ingest and how (the flags of `python -m stages.ingest`); the label flags are checked
    against the filter by label_spec."""
    sources: list[str] = field(default_factory=list)
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    min_chars: int | None = None   # None: the filter's min_chars
    max_chars: int = DEFAULT_MAX_CHARS
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    batch_size: int = BATCH_SIZE
    labels: str | None = None
    label_scale: str = "0-10"
    oracle: str | None = None
    rater_column: str | None = None
    skip_unknown_ids: bool = False
    split_column: str | None = None
    split_name: str = store.DEFAULT_SPLIT_NAME

    def check(self) -> None:
        """A bad number or name raises errors.UsageError (exit 2)."""
        if self.max_chars <= 0 or self.workers <= 0 or self.batch_size <= 0 or (
                self.min_chars is not None and self.min_chars < 0):
            raise errors.UsageError("--max-chars, --workers and --batch-size must be positive (check the flags)")
        if self.split_column is not None and not self.split_column.strip() or not self.split_name.strip():
            raise errors.UsageError("--split-column and --split-name need a name (e.g. --split-column split)")


class NothingToIngest(errors.StageError):
    """No input file could be read (exit 1); `problems` says why, one line per file or glob."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("nothing to ingest (pass --source with a path or quoted glob that matches files)")
        self.problems = list(problems)


@dataclass
class IngestResult:
    summary: IngestSummary
    min_chars: int                 # the short-text threshold used
    total: int                     # articles in gt.db afterwards ...
    unique: int                    # ... of which not exact duplicates


def ingest(opts: IngestOptions, *, progress: bool = True) -> IngestResult:
    """Ingest the sources into gt.db (created if need be). A broken filter raises FilterError before
    gt.db is touched; bad label flags raise errors.UsageError; gt.db trouble raises StoreError/sqlite3.Error."""
    filt = load_filter(opts.filter)
    try:
        labels = label_spec(opts, filt)
    except ValueError as e:
        raise errors.UsageError(str(e)) from None
    conn = store.connect(opts.db)  # ingesting may create gt.db
    try:
        summary = ingest_files(conn, opts.sources, filt, min_chars=opts.min_chars, max_chars=opts.max_chars,
                               workers=opts.workers, batch_size=opts.batch_size, progress=progress, labels=labels,
                               split_column=opts.split_column, split_name=opts.split_name)
        if summary.files == 0:
            raise NothingToIngest(summary.problems)
        total, unique = conn.execute("SELECT COUNT(*), COUNT(*) - COUNT(dup_of) FROM articles").fetchone()
    finally:
        conn.close()
    return IngestResult(summary, opts.min_chars if opts.min_chars is not None else filt.min_chars, total, unique)


def label_spec(args: IngestOptions, filt: Filter) -> HumanLabelSpec | None:
    """--labels and its companions as a HumanLabelSpec (None without --labels); ValueError for bad flags."""
    companions = [f for f, v in (("--oracle", args.oracle), ("--rater-column", args.rater_column),
                                 ("--skip-unknown-ids", args.skip_unknown_ids),
                                 ("--label-scale", args.label_scale != "0-10")) if v]
    if not args.labels:
        if companions:
            raise ValueError(f"{companions[0]} goes with --labels COLUMN=DIMENSION,... (which columns to import)")
        return None
    if not args.oracle:
        raise ValueError("--labels needs --oracle NAME: the name of the label set (e.g. human-mean)")
    from gt.oracles.registry import OracleConfigError, load_registry
    try:
        registry = load_registry()
    except OracleConfigError:  # a broken oracles.yaml is the label stage's problem, not this import's
        registry = {}
    if args.oracle in registry:
        raise ValueError(f"--oracle {args.oracle} is an oracle of oracles.yaml: name human labels after who made "
                         "them (e.g. human-mean)")
    return HumanLabelSpec(oracle=check_oracle_name(args.oracle), columns=parse_label_columns(args.labels, filt),
                          scale=Scale.parse(args.label_scale), rater_column=args.rater_column,
                          skip_unknown_ids=args.skip_unknown_ids)
