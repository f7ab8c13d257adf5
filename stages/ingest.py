"""`python -m stages.ingest`: articles (JSONL or CSV, globs, .gz) into gt.db, cleaned, de-duplicated,
clustered; labels carried by the records and human label columns imported too. The work is
gt.intake.ingest's; this file parses, prints and maps errors to exit codes (stages/kit.py).
"""
from __future__ import annotations

import sys
from typing import Sequence

from gt.intake.ingest import IngestOptions, IngestResult, NothingToIngest, ingest
from gt.intake.ingestion import MAX_PRINTED_PROBLEMS
from gt.core.errors import WHOLE_NONNEGATIVE, WHOLE_POSITIVE
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser(
        "ingest",
        "Ingest news articles (JSONL or CSV, globs, .gz) into gt.db: clean, de-duplicate, "
        "cluster near-duplicates, flag short texts, import labels already in the records.",
        epilog="Records without an id get one from their content hash. Exact duplicates stay as rows with "
               "dup_of set; near-duplicates share near_dup_cluster; a record whose id is already used by "
               "different text is rejected (ids are never renamed). Re-running on the same files adds nothing. "
               "Exit status: 0 all records ingested; 1 some input was rejected (each problem printed as "
               "file:line) or nothing could be read; 2 bad usage or a broken filter package.",
        common=("db",))
    p.add_argument("--source", dest="sources", action="extend", nargs="+", required=True, metavar="GLOB",
                   help="input files or quoted globs (*.jsonl, *.csv, .gz too); repeat or list several")
    kit.add_common(p, "filter", help_filter="filter package whose min_chars flags short texts and whose "
                                            "'<name>_analysis' labels are imported (default: %(default)s)")
    p.add_argument("--min-chars", type=kit.number(WHOLE_NONNEGATIVE),
                   help="flag texts shorter than this as too_short (default: the filter's min_chars, 300)")
    p.add_argument("--max-chars", type=kit.number(WHOLE_POSITIVE),
                   help="reject articles longer than this many characters after cleaning (default: %(default)s)")
    p.add_argument("--workers", type=kit.number(WHOLE_POSITIVE),
                   help="processes that parse, clean and hash records (default: CPU count, at most 4)")
    p.add_argument("--batch-size", type=kit.number(WHOLE_POSITIVE), help="records written per transaction (default: %(default)s)")
    lab = p.add_argument_group(
        "label columns (human labels, a gold set)",
        "Import columns of the rows as one oracle's labels of the filter, rescaled to 0-10. A row with a text is "
        "an article and its labels; a row without one labels an article already in gt.db (by its id). Several "
        "rows for one article are several raters: repeat 0, 1, 2, ... of the oracle (see gt/intake/human_labels.py). "
        "Labels get prompt_sha256 'human:' + sha256('human:<oracle>'), never mixed with a prompt we ran.")
    lab.add_argument("--labels", metavar="COLUMN=DIMENSION,...",
                     help="which column holds which dimension, every dimension of the filter once, "
                          "e.g. V=valence,A=arousal,D=dominance")
    lab.add_argument("--label-scale", metavar="LOW-HIGH",
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
    spl.add_argument("--split-name",
                     help="name of that split scheme in article_splits (default: %(default)s)")
    return p


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


def parse_options(argv: Sequence[str] | None = None) -> IngestOptions:
    return kit.options(build_parser(), IngestOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(opts: IngestOptions) -> int:
        try:
            result = ingest(opts)
        except NothingToIngest as e:
            for line in e.problems:
                kit.fail(line)
            raise
        print_summary(result, opts.db, opts.split_name if opts.split_column else None)
        return 1 if result.summary.problems else 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
