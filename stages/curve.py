"""`python -m stages.curve`: learning curves of every selection strategy against random, at several
budgets and seeds (gt.student.curve does the work; this file parses, prints and maps errors to exit
codes, stages/kit.py)."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from gt.selection.bins import DEFAULT_BINS
from gt.student import curve as library
from gt.student import curve_report
from gt.student.curve import DEFAULT_BUDGETS, DEFAULT_TEST_SHARE, STRATEGY_NAMES, CurveOptions, curve
from gt.core.errors import POSITIVE, Range, WHOLE_POSITIVE
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser("curve", library.__doc__, common=("db", "filter"))
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    kit.add_common(p, "oracle", help_oracle="whose labels are the truth (default: the oracle with the most valid "
                                            "labels, as select; for EmoBank pass human-mean)")
    p.add_argument("--dimensions", help="comma list of dimensions to select on and measure (default: all)")
    p.add_argument("--budgets", help=f"training-set sizes (default {DEFAULT_BUDGETS})")
    p.add_argument("--strategies", help=f"comma list of {', '.join(STRATEGY_NAMES)} (default all; random is always run)")
    p.add_argument("--seeds", type=kit.number(WHOLE_POSITIVE), help="runs per (strategy, budget): seeds --seed, --seed+1, ... "
                                             "(default: %(default)s)")
    kit.add_common(p, "seed", help_seed="first seed; also the held-out test share's seed (default: %(default)s)")
    p.add_argument("--split-name", help="test set = the 'test' articles of this split scheme in gt.db (default: "
                                        "'official' where gt.db has it, else a held-out share)")
    p.add_argument("--test-share", type=kit.number(Range(low=0, high=1, low_open=True, high_open=True)), help=f"test set = a seeded held-out share of the pool, clusters kept "
                                                    f"whole (default {DEFAULT_TEST_SHARE} when gt.db has no split)")
    p.add_argument("--bins", help=f"selection bins, lower edges (default {DEFAULT_BINS})")
    p.add_argument("--time-limit", type=kit.number(POSITIVE), help="seconds per selection solve (default: %(default)s; select's is 60)")
    p.add_argument("--exploration-share", type=kit.number(Range(low=0, high=1, high_open=True)),
                   help="share of each strategy's budget filled by a seeded uniform sample after the program "
                        "picks the rest (default %(default)s: exactly the select stage's selection; for studying the "
                        "tail/overall trade-off)")
    p.add_argument("--student", choices=["head", "full", "lora"],
                   help="head: ridge on cached frozen MiniLM embeddings (fast, default); full or lora: the real "
                        "student, a full fine-tune or LoRA (slow on a CPU)")
    p.add_argument("--cache", help="embedding cache file, shared by every gt.db (default: data/cache/embeddings.db "
                                   "in the project; 'none' to compute without caching)")
    lora = p.add_argument_group("--student full|lora (defaults: train.py's for the device)")
    lora.add_argument("--model", help="base model (default: the MiniLM on a CPU, Qwen/Qwen2.5-7B-Instruct on a GPU)")
    lora.add_argument("--device", choices=["auto", "cpu", "cuda"])
    lora.add_argument("--epochs", type=kit.number(POSITIVE))
    lora.add_argument("--lr", type=kit.number(POSITIVE))
    lora.add_argument("--batch-size", type=kit.number(WHOLE_POSITIVE))
    lora.add_argument("--max-length", type=kit.number(WHOLE_POSITIVE))
    p.add_argument("--output-dir", help="where curve.md/json/png go (default: reports/<filter>_v<N>_curve)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> CurveOptions:
    return kit.options(build_parser(), CurveOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)

    def work(opts: CurveOptions) -> int:
        result = curve(opts)
        print(curve_report.console_table(result["summary"]))
        print()
        print(result["verdict"])
        print(f"Curves of {len(result['runs'])} runs ({result['student_kind']} student, {result['pool']['n']:,} pool "
              f"/ {result['test']['n']:,} test articles of {result['params']['filter']}, "
              f"{result['params']['oracle']}) in {result['seconds']['total']:.0f} s; wrote "
              f"{', '.join(result['files'])} to {result['output_dir']}/.")
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
