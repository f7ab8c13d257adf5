"""`python -m stages.score`: a trained student scores new articles, in input order, resumable,
sharded across machines (gt.student.score does the work; this file parses, prints and maps errors
to exit codes, stages/kit.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gt.core.errors import WHOLE_POSITIVE
from gt.student import score as library
from gt.student.engine import MAX_TOKENS_HELP
from gt.student.score import FORMATS, ScoreOptions, ScoreResult, score
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser("score", library.__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model-dir", help="a folder written by `make train` (default: %(default)s)")
    p.add_argument("--source", nargs="+", metavar="FILE|GLOB|-",
                   help="articles to score: JSONL, CSV, TSV, Parquet, .gz, globs; - reads JSON lines from standard input")
    p.add_argument("--output", help="where the scores go (its journal, <output>.partial, sits beside it until done)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: %(default)s)")
    p.add_argument("--filter", help="filter package whose weights, gatekeepers and tiers give overall and tier "
                                    "(default: the one the student was trained with)")
    p.add_argument("--db", help="also store each prediction of an article that is in this gt.db (table predictions); "
                                "articles it already holds predictions of by this model are not scored again")
    p.add_argument("--shard", metavar="I/N", help="score only the articles whose id hashes to shard I of N (from 0)")
    p.add_argument("--merge", nargs="+", metavar="SHARD_FILE",
                   help="instead of scoring: join shard outputs into --output, in input order")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to run the model (default %(default)s: cuda when a GPU is visible)")
    p.add_argument("--max-tokens", type=kit.number(WHOLE_POSITIVE), help=MAX_TOKENS_HELP)
    p.add_argument("--max-chars", type=kit.number(WHOLE_POSITIVE),
                   help="an article longer than this (characters, once cleaned) is a bad record, as in ingest "
                        "(default: %(default)s)")
    p.add_argument("--chunk", type=kit.number(WHOLE_POSITIVE),
                   help="articles read before they are sorted by length and scored (default: %(default)s)")
    return p


def summary_line(r: ScoreResult) -> str:
    if not r.model_id and not r.written:
        return f"Merged nothing into {r.output}."
    what = (f"Wrote {r.written:,} lines to {r.output} ({r.model_id}, {r.filter_id})" if r.scored or r.reused
            else f"Merged {r.written:,} lines into {r.output} ({r.model_id}, {r.filter_id})")
    parts = []
    if r.scored or r.reused:
        sources = ["earlier duplicates"] + (["the journal of the stopped run"] if r.resumed else []) + (
            ["gt.db"] if r.db else [])
        parts.append(f"{r.scored:,} texts scored by the model, {r.reused:,} reused ({', '.join(sources)})")
    if r.skipped_other_shards:
        parts.append(f"{r.skipped_other_shards:,} left to the other shards")
    if r.stored:
        parts.append(f"{r.stored:,} new predictions stored in gt.db")
    if r.problems:
        parts.append(f"{len(r.problems):,} records could not be read (listed above; the rest were scored)")
    return what + (": " + "; ".join(parts) if parts else "") + "."


def parse_options(argv: Sequence[str] | None = None) -> ScoreOptions:
    return kit.options(build_parser(), ScoreOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(o: ScoreOptions) -> int:
        result = score(o)
        for problem in result.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(summary_line(result))
        return 1 if result.problems else 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
