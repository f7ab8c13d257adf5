"""Ingest articles into gt.db: JSONL or CSV files (globs, .gz), cleaned, de-duplicated, clustered.

    python -m stages.ingest --db gt.db --source 'data/raw/*.jsonl' [--source more.csv.gz]

What happens to each record:
- fields are mapped from common names (text/content/body/article, title/headline,
  id/article_id/guid, url/link, source/publisher, published_date/date/published_at, language);
- the text is cleaned (HTML, mojibake, whitespace: stages.text.clean_text);
- a record without an id gets one from its content: the first 16 hex digits of its content hash
  (an exact duplicate without an id gets that id plus '-2', '-3', ... by order of appearance);
- an exact duplicate (same normalised title+text as an article already in gt.db or earlier in the
  input) is stored as a row with `dup_of` = the kept article, so users see what was dropped;
- near-duplicates (MinHash of 5-word shingles, estimated Jaccard >= 0.8) share
  `near_dup_cluster` = the id of the cluster's first article; signatures are kept in
  `article_minhash`, so a later ingest clusters new articles against old ones;
- texts shorter than the filter's min_chars (300) are kept and flagged `too_short`;
- records carrying `<filter>_analysis` labels are imported as a label run (stages.labeled_file);
- with --labels, label columns (e.g. human ratings on a 1-5 scale) are imported as an oracle's label
  set, rescaled to 0-10 (stages.human_labels); rows without text name an article already in gt.db;
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

import argparse
import os
import sqlite3
import sys
from dataclasses import dataclass
from typing import Sequence

from stages import cli, store
from stages.filters import Filter, FilterError, load_filter
from stages.human_labels import HumanLabelSpec, Scale, check_oracle_name, parse_label_columns
from stages.ingestion import (BATCH_SIZE, DEFAULT_FILTER, DEFAULT_MAX_CHARS, MAX_PRINTED_PROBLEMS, IngestSummary,
                              ingest_files)


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stages.ingest",
        description="Ingest news articles (JSONL or CSV, globs, .gz) into gt.db: clean, de-duplicate, "
                    "cluster near-duplicates, flag short texts, import labels already in the records.",
        epilog="Records without an id get one from their content hash. Exact duplicates stay as rows with "
               "dup_of set; near-duplicates share near_dup_cluster; a record whose id is already used by "
               "different text is rejected (ids are never renamed). Re-running on the same files adds nothing. "
               "Exit status: 0 all records ingested; 1 some input was rejected (each problem printed as "
               "file:line) or nothing could be read; 2 bad usage.")
    p.add_argument("--db", default=store.default_db_path(), help="gt.db path (default: $GT_DB, else gt.db)")
    p.add_argument("--source", action="extend", nargs="+", required=True, metavar="GLOB",
                   help="input files or quoted globs (*.jsonl, *.csv, .gz too); repeat or list several")
    p.add_argument("--filter", default=DEFAULT_FILTER,
                   help=f"filter package whose min_chars flags short texts and whose '<name>_analysis' labels "
                        f"are imported (default {DEFAULT_FILTER})")
    p.add_argument("--min-chars", type=int, default=None,
                   help="flag texts shorter than this as too_short (default: the filter's min_chars, 300)")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                   help=f"reject articles longer than this many characters after cleaning (default {DEFAULT_MAX_CHARS:,})")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes that parse, clean and hash records (default: CPU count, at most 4)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"records written per transaction (default {BATCH_SIZE})")
    lab = p.add_argument_group(
        "label columns (human labels, a gold set)",
        "Import columns of the rows as one oracle's labels of the filter, rescaled to 0-10. A row with a text is "
        "an article and its labels; a row without one labels an article already in gt.db (by its id). Several "
        "rows for one article are several raters: repeat 0, 1, 2, ... of the oracle (see stages/human_labels.py). "
        "Labels get prompt_sha256 'human:' + sha256('human:<oracle>'), never mixed with a prompt we ran.")
    lab.add_argument("--labels", metavar="COLUMN=DIMENSION,...",
                     help="which column holds which dimension, every dimension of the filter once, "
                          "e.g. V=valence,A=arousal,D=dominance")
    lab.add_argument("--label-scale", default="0-10", metavar="LOW-HIGH",
                     help="the columns' scale, rescaled linearly to 0-10: (x - LOW) / (HIGH - LOW) * 10; "
                          "values outside it are rejected (default 0-10; EmoBank: 1-5, i.e. (x - 1) * 2.5)")
    lab.add_argument("--oracle", help="the label set's name, required with --labels (e.g. human-mean, human-rater); "
                                      "coverage, select and calibrate find it by this name")
    lab.add_argument("--rater-column", metavar="COLUMN",
                     help="column holding a rater id: each rater keeps one repeat number across imports (default: "
                          "the order of the article's rows in this import)")
    lab.add_argument("--skip-unknown-ids", action="store_true",
                     help="rows naming an article gt.db does not hold are counted in one note instead of rejected "
                          "one line each (for rating files that cover more texts than were ingested)")
    spl = p.add_argument_group("the dataset's own split")
    spl.add_argument("--split-column", metavar="COLUMN",
                     help="column holding each article's split (train; dev/val/validation; test), kept in gt.db's "
                          "article_splits table under --split-name")
    spl.add_argument("--split-name", default=store.DEFAULT_SPLIT_NAME,
                     help="name of that split scheme in article_splits (default: %(default)s)")
    return p


@dataclass
class IngestOptions:
    """The stage's flags, checked (parse_options); the label flags are checked against the filter by label_spec."""
    db: str
    sources: list[str]
    filter: str
    min_chars: int | None          # None: the filter's min_chars
    max_chars: int
    workers: int
    batch_size: int
    labels: str | None
    label_scale: str
    oracle: str | None
    rater_column: str | None
    skip_unknown_ids: bool
    split_column: str | None
    split_name: str


def parse_options(argv: Sequence[str] | None = None) -> IngestOptions:
    """The flags as IngestOptions; a bad one raises cli.UsageError (exit 2)."""
    a = build_parser().parse_args(argv)
    if a.max_chars <= 0 or a.workers <= 0 or a.batch_size <= 0 or (a.min_chars is not None and a.min_chars < 0):
        raise cli.UsageError("--max-chars, --workers and --batch-size must be positive (check the flags)")
    if a.split_column is not None and not a.split_column.strip() or not a.split_name.strip():
        raise cli.UsageError("--split-column and --split-name need a name (e.g. --split-column split)")
    return IngestOptions(db=a.db, sources=a.source, filter=a.filter, min_chars=a.min_chars, max_chars=a.max_chars,
                         workers=a.workers, batch_size=a.batch_size, labels=a.labels, label_scale=a.label_scale,
                         oracle=a.oracle, rater_column=a.rater_column, skip_unknown_ids=a.skip_unknown_ids,
                         split_column=a.split_column, split_name=a.split_name)


class NothingToIngest(cli.StageError):
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
    gt.db is touched; bad label flags raise cli.UsageError; gt.db trouble raises StoreError/sqlite3.Error."""
    filt = load_filter(opts.filter)
    try:
        labels = label_spec(opts, filt)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
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
    from stages.oracles.registry import OracleConfigError, load_registry
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


def print_summary(result: IngestResult, db: str, split_name: str | None = None) -> None:
    """The problems and notes on stderr, the counts table and the closing line on stdout."""
    summary, min_chars = result.summary, result.min_chars
    if summary.problems:
        for line in summary.problems[:MAX_PRINTED_PROBLEMS]:
            print(line, file=sys.stderr)
        if len(summary.problems) > MAX_PRINTED_PROBLEMS:
            print(f"... and {len(summary.problems) - MAX_PRINTED_PROBLEMS} more", file=sys.stderr)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    h = summary.human
    if h is not None and h.unknown_skipped:
        print(f"note: {h.unknown_skipped:,} label rows name articles gt.db does not hold (e.g. "
              f"{', '.join(h.unknown_examples)}): skipped, as --skip-unknown-ids asks", file=sys.stderr)
    rows = [
        ("files read", summary.files, ""),
        ("records read", summary.records, ""),
        ("new articles", summary.inserted, "rows added to articles"),
        ("already in gt.db", summary.already_present, "same id and text: skipped"),
        ("exact duplicates", summary.duplicates, "kept as rows with dup_of set"),
        ("near-dup clusters", summary.near_dup_clusters, f"{summary.near_dup_articles} articles in them"),
        ("too short", summary.too_short, f"under {min_chars} characters: flagged too_short"),
        ("rejected", summary.rejected, "see the lines above" if summary.rejected else ""),
        ("labels imported", summary.imported_labels,
         f"{summary.invalid_labels} invalid" if summary.invalid_labels else ""),
    ]
    if h is not None:
        rows += [
            ("label-only rows", summary.label_rows, "rows without text: labels of articles in gt.db"),
            ("human labels", h.imported, f"new labels of {len(h.articles):,} articles in {len(h.slots)} rater "
                                         f"slot(s) (repeat {min(h.slots)}-{max(h.slots)})" if h.slots else ""),
            ("  already there", h.already_present, "same article, slot and values: skipped"),
            ("  rows rejected", h.rejected, "see the lines above" if h.rejected else ""),
        ]
        if h.unknown_skipped:
            rows.append(("  unknown ids", h.unknown_skipped, "articles not in gt.db: skipped (--skip-unknown-ids)"))
    if split_name is not None:
        rows.append(("splits stored", summary.splits_stored, f"new rows of '{split_name}' in article_splits"))
    print("ingest summary")
    for name, value, comment in rows:
        print(f"  {name:<18} {value:>9,}  {comment}".rstrip())
    human = (f" and {h.imported:,} new {h.oracle} labels" if h is not None else "")
    print(f"Read {summary.records:,} records from {summary.files} file(s) ({', '.join(summary.sources)}); "
          f"wrote {summary.inserted:,} new articles{human} to {db}, which now holds {result.total:,} articles "
          f"({result.unique:,} unique).")


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_options(argv)
        result = ingest(opts)
    except FilterError as e:  # every problem of the filter package, one line each
        for problem in e.problems:
            cli.fail(f"{e.path}: {problem}")
        return 1
    except NothingToIngest as e:
        for line in e.problems:
            cli.fail(line)
        return cli.exit_code(e)
    except cli.StageError as e:
        return cli.exit_code(e)
    except (sqlite3.Error, store.StoreError) as e:  # missing folder, read-only, locked, corrupt, disk full...
        return cli.fail(store.describe_db_error(e, opts.db))
    print_summary(result, opts.db, opts.split_name if opts.split_column else None)
    return 1 if result.summary.problems else 0


if __name__ == "__main__":
    sys.exit(main())
