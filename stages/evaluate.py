"""`python -m stages.evaluate`: the trained student measured on a test split, against the mean
predictor and the inter-oracle floor (gt.student.evaluate does the work; this file parses, prints
and maps errors to exit codes, stages/kit.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gt.core import report
from gt.student import evaluate as library
from gt.student.engine import MAX_TOKENS_HELP
from gt.student.evaluate import EvaluateOptions, Evaluation, check_inputs, evaluate, evaluation_table
from gt.core.errors import WHOLE_POSITIVE
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser("evaluate", library.__doc__, common=("db",))
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model-dir", help="a folder written by `make train` (default: %(default)s)")
    p.add_argument("--test-file", help="test.jsonl from `make select`: the articles the metrics are measured on")
    p.add_argument("--split", metavar="NAME",
                   help="instead of --test-file: the 'test' articles of this split scheme in gt.db (ingest "
                        "--split-column; e.g. official), truth from --oracle's labels; articles the student "
                        "trained or validated on are left out")
    kit.add_common(p, "oracle", help_oracle="whose labels are the truth (default: the oracle and prompt of the "
                                            "student's training selection, else the label set with the most labels)")
    p.add_argument("--all", action="store_true", help="also predict every article in gt.db (labelled or not, "
                                                      "duplicates excluded) for active learning")
    p.add_argument("--calibration", help="calibration JSON written by `make calibrate` (default: the newest "
                                         "reports/*calibration*.json of the model's filter, else computed from gt.db)")
    p.add_argument("--output", help="predictions JSONL (default: <model-dir>/predictions.jsonl)")
    p.add_argument("--max-tokens", type=kit.number(WHOLE_POSITIVE),
                   help=MAX_TOKENS_HELP)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to run the model (default %(default)s: cuda when a GPU is visible)")
    return p


def summary_line(result: Evaluation, db: str) -> str:
    """The line `main` prints at the end."""
    measured = ""
    if result.metrics:
        worse = library.worse_than_mean(result.metrics, result.baseline)
        measured = (f"Test MAE {result.metrics['mae']:.2f} on {result.metrics['n']} articles of {result.test_name}"
                    + (f" (mean predictor {result.baseline['mae']:.2f}, " if result.baseline else " (")
                    + (f"{library.floor_kind(result.floor)} floor {result.floor['mae']:.2f})" if result.floor
                       else "no inter-oracle floor in gt.db)")
                    + (f"; WORSE THAN THE MEAN PREDICTOR on {', '.join(worse)}" if worse else "")
                    + f"; report {result.report}. ")
    skipped = f" ({result.not_in_db} test articles are not in gt.db: in the JSONL only)" if result.not_in_db else ""
    return (f"{measured}Predicted {result.predicted:,} articles with {result.model_id}: {result.stored:,} stored in "
            f"{db} (predictions, model_id '{result.model_id}'){skipped}, all in {result.jsonl}.")


def parse_options(argv: Sequence[str] | None = None) -> EvaluateOptions:
    return kit.options(build_parser(), EvaluateOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(o: EvaluateOptions) -> int:
        check_inputs(o)
        result = evaluate(o)
        if result.metrics:
            dims = list(result.metrics["per_dimension"])
            headers, rows = evaluation_table(result.metrics, result.floor, dims, result.baseline)
            print(report.md_table(headers, rows))
            print()
        print(summary_line(result, o.db))
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
