"""`python -m stages.coverage`: what the labelled ground truth covers, per dimension and overall
(gt.coverage.measure computes and writes; this file parses, prints and maps errors to exit codes,
stages/kit.py)."""
from __future__ import annotations

import sys
import time
from typing import Sequence

from gt.coverage.measure import PARALLEL_MIN_LABELS, CoverageOptions, run
from gt.core.errors import Range, WHOLE_NONNEGATIVE, WHOLE_POSITIVE
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser(
        "coverage",
        "Analyse the coverage of the ground truth in gt.db: per-dimension score histograms "
        "(bins 0-10, floor binning: 6.5 -> bin 6), missing and sparse bins, mean, sd, median, IQR, "
        "skew, 4-7 share, extremes, tiers, correlations, sources and the gaps in words. Writes a JSON "
        "file, a markdown report and two PNG plots.", common=("db", "filter"))
    p.add_argument("--labeled-file", help="a labelled JSONL file (the spec's labeled_articles.jsonl shape) to "
                   "import into gt.db first; its labels are then the ones analysed unless --oracle says otherwise")
    kit.add_common(p, "oracle")
    p.add_argument("--repeat", type=kit.number(WHOLE_NONNEGATIVE), help="which repeat of repeated labelling to analyse (default: %(default)s)")
    p.add_argument("--sparse-share", type=kit.number(Range(low=0, high=1, high_open=True)),
                   help="a non-empty bin holding under this share of the labels is reported as sparse "
                        "(default: %(default)s)")
    p.add_argument("--report-dir", help="where the markdown report and plots go (default: the "
                   "folder of --output, else reports/; files <name>.md, <name>_heatmap.png, <name>_histograms.png "
                   "beside <name>.json)")
    p.add_argument("--output", help="JSON file with every figure; the report and plots go beside it under the same "
                   "name (default: <report-dir>/<filter>_v<N>_coverage.json)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--workers", type=kit.number(WHOLE_POSITIVE), help="read-only connections (threads) that gather a large "
                   f"label set in parallel (default: %(default)s; sets under {PARALLEL_MIN_LABELS:,} labels use one)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> CoverageOptions:
    return kit.options(build_parser(), CoverageOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()

    def work(o: CoverageOptions) -> int:
        w = run(o)
        for note in w.notes:
            print(note)
        gaps, c = w.coverage["gaps"], w.coverage
        print(f"{len(gaps)} coverage gap{'s' if len(gaps) != 1 else ''}" + (":" if gaps else "."))
        for g in gaps[:12]:
            print(f"  - {g}")
        if len(gaps) > 12:
            print(f"  ... {len(gaps) - 12} more in the report")
        print(f"Read {c['labels']:,} valid labels of {c['filter']} by {c['oracle']} (prompt "
              f"{c['prompt_sha256'][:12]}, repeat {c['repeat']}) from {o.db}; wrote the figures to {w.output}, the "
              f"report to {w.report}" + (f" and plots to {w.report_dir}/" if w.images else "")
              + f" in {time.perf_counter() - started:.1f} s.")
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
