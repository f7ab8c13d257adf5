"""`python -m stages.select`: the training subset that best covers every dimension's score range,
split into train/val/test (gt.selection.select does the work; this file parses, prints and maps
errors to exit codes, stages/kit.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gt.selection.report import SPLIT_FORMATS
from gt.selection.select import TEST_FROM, RANDOM_SUBSETS, Result, SelectOptions, select
from gt.selection.strategies import STRATEGIES
from gt.core.errors import POSITIVE, SHARE, WHOLE_POSITIVE, Range
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser(
        "select",
        "Select the training subset that best covers every dimension's score range (an OR-Tools "
        "integer program over the labelled pool in gt.db), split it into train/val/test and write "
        "the splits, their dataset card README.md, selection_report.md and coverage_comparison.md (+ PNG).",
        epilog="Strategies:\n" + "\n".join(f"  {s.name:18} {s.goal}" for s in STRATEGIES.values())
               + "\n\nSelections are stored in gt.db by --name; the same name replaces the old selection in one "
                 "transaction unless a trained model refers to it (then the stage refuses).\n"
                 "Everything is validated and solved before anything is written; the files appear together.\n"
                 "Exit codes: 0 done; 1 the selection could not be made (one line says why: pool too small, "
                 "infeasible constraint, bad predictions); 2 bad flags or a broken filter package.",
        common=("db", "filter"))
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    kit.add_common(p, "oracle", help_oracle="whose labels to select from (default: the oracle with the most valid labels)")
    p.add_argument("--labeled-file", help="import this labelled JSONL (the spec's labeled_articles.jsonl shape) "
                                           "into gt.db first, then select")
    p.add_argument("--output-dir", help="where train/val/test.jsonl and the reports go (default: %(default)s)")
    p.add_argument("--target-size", type=kit.number(WHOLE_POSITIVE, keywords=("all",)),
                   help="articles to select, exactly, or all: every eligible article (default: %(default)s)")
    p.add_argument("--strategy", choices=list(STRATEGIES), help="quotas, values and tier bounds of the program (see below; default: %(default)s)")
    p.add_argument("--train-ratio", type=kit.number(SHARE), help="share of the selection in train.jsonl (default: %(default)s)")
    p.add_argument("--val-ratio", type=kit.number(SHARE), help="share in val.jsonl (default: %(default)s)")
    p.add_argument("--test-ratio", type=kit.number(SHARE), help="share in test.jsonl (default: %(default)s); the three sum to 1")
    p.add_argument("--test-from", choices=TEST_FROM,
                   help="pool (the default): the test split is a seeded uniform sample of the eligible pool, drawn "
                        "before the strategy picks train and val from the rest, so the student's test figures are "
                        "those of the articles it will meet; selection: the test split is a share of the strategy's "
                        "picks (the spec's behaviour). A --holdout-split is the test instead")
    p.add_argument("--exploration-share", type=kit.number(Range(low=0, high=1, high_open=True)),
                   help="draw this share of train+val uniformly from what the program leaves (default: %(default)s)")
    p.add_argument("--dimensions", help="comma list of the dimensions whose bins the selection covers (default: "
                                         "all); the JSONL labels always hold every dimension of the filter")
    p.add_argument("--filter-by-difficulty", choices=["hard", "easy"],
                    help="keep only the harder (or easier) half of the pool: disagreement between oracles or "
                         "repeats of the same article, and/or the student's error from --model-predictions")
    p.add_argument("--model-predictions", help="a predictions JSONL ({'id', 'predictions': {dim: x} or a list in "
                                                "dimension order} per line) or a model id in gt.db; drives "
                                                "active_learning and the difficulty filter")
    p.add_argument("--bins", help="lower bin edges of the score scale (default %(default)s: one bin per integer; "
                         "half points fall into the bin below)")
    p.add_argument("--max-per-source", type=kit.number(WHOLE_POSITIVE), help="at most this many articles from one source (default: no cap)")
    p.add_argument("--tier-shares", help="hard tier bounds replacing the strategy's, e.g. "
                                          "'impact=0.2:,not_uplifting=:0.5' (tier=min:max as shares of K)")
    p.add_argument("--name", help="the selection's name in gt.db (default: <strategy>-<size>-seed<seed>"
                                   "[-<difficulty>])")
    p.add_argument("--time-limit", type=kit.number(POSITIVE), help="seconds the solver may take to prove optimality (default: %(default)s); the best answer so "
                         "far and its gap are reported when it runs out")
    p.add_argument("--holdout-split", metavar="NAME",
                    help="never select the 'test' articles of this split scheme stored in gt.db (ingest "
                         "--split-column; e.g. official): `evaluate --split NAME` measures the student on them")
    p.add_argument("--format", choices=SPLIT_FORMATS, help="file format of the splits: jsonl (the default; what `make train` reads) or parquet (same "
                         "columns); the other format's split files of an earlier run in --output-dir are removed")
    p.add_argument("--extend", metavar="SELECTION",
                    help="add this run's picks to an existing selection's train split, keeping its val and test "
                         "splits as they are (its members and their near-duplicates are not picked again); saved "
                         "under a new name (default <SELECTION>+<strategy>-<size>-seed<seed>)")
    kit.add_common(p, "seed", help_seed="seed for ties, baselines and splits (default: %(default)s)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> SelectOptions:
    return kit.options(build_parser(), SelectOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(o: SelectOptions) -> int:
        print(summary_line(select(o), o.db, o.format))
        return 0
    return kit.run(lambda: parse_options(argv), work)


def summary_line(r: Result, db: str, fmt: str) -> str:
    """The line `main` prints: the answer, its bound, the baselines and the files."""
    s = r.solution
    greedy = f"{100 * r.greedy_objective / s.objective:.1f}%" if r.greedy_objective is not None and s.objective else "—"
    rand = f"{100 * r.random_objective / s.objective:.1f}%" if s.objective else "—"
    return (f"{r.imported or ''}Selected {r.size} of {r.pool_size} eligible articles ({r.oracle} labels) as selection "
            f"'{r.name}' (id {r.selection_id}) in {db}: objective {s.objective:,}, bound {s.bound:,}, gap "
            f"{100 * s.gap:.2f}%, {s.status}{' (' + s.proven_by + ')' if s.proven_by else ''} in {s.seconds:.2f} s; "
            f"of that objective {RANDOM_SUBSETS} random subsets reach {rand} (mean), the greedy baseline {greedy}. "
            f"Wrote train/val/test.{fmt} ({r.split_counts['train']}/{r.split_counts['val']}/"
            f"{r.split_counts['test']}), README.md (dataset card), selection_report.md and coverage_comparison.md "
            f"(+ PNG) to {r.output_dir}/"
            + (f"; removed the earlier {', '.join(r.removed)}" if r.removed else "")
            + (". `make train` expects the .jsonl splits: pass --format jsonl, or train from gt.db with "
               f"`python -m stages.train --selection {r.name}`." if fmt == "parquet" else "."))


if __name__ == "__main__":
    sys.exit(main())
