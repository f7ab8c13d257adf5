"""`python -m stages.calibrate`: is this prompt and this oracle good enough? Labels a seeded sample
with several models and compares them (gt.calibration.calibrate decides, gt.calibration.report
writes; this file parses, prints and maps errors to exit codes, stages/kit.py)."""
from __future__ import annotations

import sys
from typing import Sequence

from gt.calibration.calibrate import CalibrateOptions, CalibrationRun, dry_run, run
from gt.calibration.report import OFFLINE_SENTENCE
from gt.core.errors import POSITIVE, Range, SHARE, WHOLE_NONNEGATIVE, WHOLE_POSITIVE
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser(
        "calibrate",
        "Label a seeded random sample with several models, compare them (per dimension and overall: "
        "distributions, Spearman/Pearson, MAE, bias, Krippendorff's alpha, ICC with bootstrap "
        "intervals, tiers, dimension redundancy, cost, latency, the 20k projection) and recommend the "
        "cheapest model that agrees with the strongest one. Labels are stored in gt.db and reused.",
        common=("db", "filter", "source"))
    p.add_argument("--models", required=True,
                   help="comma-separated oracle names from oracles.yaml, e.g. gemini-flash,gemini-pro (an oracle "
                        "that is not in oracles.yaml but has labels in gt.db, e.g. imported, is compared as is)")
    p.add_argument("--sample-size", type=kit.number(WHOLE_POSITIVE), help="articles in the sample (default: %(default)s)")
    kit.add_common(p, "seed", help_seed="seed of the sample and the bootstrap (default: %(default)s)")
    p.add_argument("--output", help="markdown report path (default: reports/<filter>_v<N>_calibration.md); the JSON with every "
                        "figure and the PNG plots are written next to it")
    p.add_argument("--repeats", type=kit.number(WHOLE_POSITIVE), help="label each article this many times per model and report each model's self-consistency")
    p.add_argument("--concurrency", type=kit.number(WHOLE_POSITIVE), help="requests in flight per model (default: %(default)s)")
    p.add_argument("--max-cost", type=kit.number(POSITIVE), metavar="USD",
                   help="budget for the whole calibration, all models together; never exceeded")
    p.add_argument("--strongest", help="the reference the others are compared with: a model name or 'consensus' (default: the "
                        "consensus with three or more models, else the model with the highest price per article)")
    kit.add_common(p, "oracles_file")
    p.add_argument("--no-label", action="store_true",
                   help="label nothing: compare only the labels already in gt.db (needs no API key)")
    p.add_argument("--timeout", type=kit.number(POSITIVE), help="seconds to wait for one answer (default: oracles.yaml)")
    p.add_argument("--bootstrap", type=kit.number(WHOLE_NONNEGATIVE), help="bootstrap resamples for the confidence intervals (0: none; default: %(default)s)")
    p.add_argument("--min-spearman", type=kit.number(Range(low=-1, high=1)), help="a model qualifies with at least this mean Spearman vs the reference (default: %(default)s)")
    p.add_argument("--max-mae", type=kit.number(Range(low=0, high=10)), help="... at most this mean absolute difference in points (default: %(default)s)")
    p.add_argument("--min-tier-agreement", type=kit.number(SHARE), help="... at least this share of articles in the same tier (default: %(default)s)")
    p.add_argument("--max-invalid-rate", type=kit.number(SHARE), help="... at most this share of invalid answers (default: %(default)s)")
    p.add_argument("--min-articles", type=kit.number(WHOLE_POSITIVE), help="... with at least this many articles scored by both (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (the report and JSON are complete "
                                                          "without them)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="print the sample and what labelling it would cost per model, and call nothing (needs no API "
                        "key; writes nothing)")
    return p


def print_summary(opts: CalibrateOptions, done: CalibrationRun) -> None:
    for note in done.notes:
        print(note)
    print(done.result["recommendation"]["verdict"])
    if any(r.offline for r in done.raters):
        print(OFFLINE_SENTENCE)
    s = done.result["sample"]
    paid = sum((r.cost_now for r in done.raters), 0.0)
    labelled = sum(r.labelled_now for r in done.raters)
    print(f"Calibrated {', '.join(opts.models)} on {s['used']} articles of {done.result['filter']} from {opts.db} "
          f"(seed {opts.seed}{'; ' + s['note'] if s.get('note') else ''}): {labelled} labels requested now for "
          f"${paid:.4f}, the rest reused from gt.db; report {done.report}, figures {done.figures}, "
          f"{len(done.plots)} plots next to it ({done.seconds:.0f} s).")



def parse_options(argv: Sequence[str] | None = None) -> CalibrateOptions:
    return kit.options(build_parser(), CalibrateOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(opts: CalibrateOptions) -> int:
        if opts.dry_run:
            print("\n".join(dry_run(opts)))
            return 0
        print_summary(opts, run(opts))
        return 0
    return kit.run(lambda: parse_options(argv), work,
                   interrupted="interrupted: labels stored so far are kept; run the same command to continue")


if __name__ == "__main__":
    sys.exit(main())
