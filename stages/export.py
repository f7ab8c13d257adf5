"""`python -m stages.export`: a trained student as a standalone Hugging Face model folder (merged
weights, tokenizer, regression config, model card), optionally pushed to the Hub (gt.student.export
does the work; this file parses, prints and maps errors to exit codes, stages/kit.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gt.student import export as library
from gt.student.export import ExportOptions, export
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser("export", library.__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model-dir", help="a folder written by `make train` (default: %(default)s)")
    p.add_argument("--output", help="the folder to write (replaced whole if it exists)")
    p.add_argument("--db", help="gt.db the student was trained from: names its oracle and prompt in the model card")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hugging Face Hub repo "
                                                         "(token from HF_TOKEN; endpoint from HF_ENDPOINT)")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    return p


def parse_options(argv: Sequence[str] | None = None) -> ExportOptions:
    return kit.options(build_parser(), ExportOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(o: ExportOptions) -> int:
        result = export(o)
        outputs = "0-10 scores (clip to 0-10)" if result.scores_folded else "standardised outputs (see gt_student.score_scaling)"
        print(f"Exported {result.model_id} to {result.output}: merged weights, tokenizer, regression config "
              f"({outputs}), model card README.md."
              + (f" Pushed to {result.pushed_to}." if result.pushed_to else ""))
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
