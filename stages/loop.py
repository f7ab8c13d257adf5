"""`python -m stages.loop`: buy labels in rounds, the scorer refitted on everything bought so far
between them (gt.labelling.loop does the work; this file parses, prints and maps errors to exit
codes, stages/kit.py)."""
from __future__ import annotations

import sys
from typing import Sequence

from gt.labelling import picking
from gt.labelling.loop import LoopOptions, loop
from gt.core.errors import POSITIVE, SHARE, WHOLE_POSITIVE
from stages import kit

AIMED = tuple(m for m in picking.METHODS if m != "ids")   # a loop picks each round itself


def build_parser() -> kit.Parser:
    p = kit.parser("loop", "Buy labels in rounds: each round picks articles (label --pick), records the picks in "
                           "gt.db and labels them through the sync engine; the scorer is refitted on everything "
                           "bought so far before the next round. A rerun after a stop resumes the open round. "
                           "Writes reports/loop_<filter>_<oracle>.md/.json.", common=("db", "filter"))
    p.add_argument("--llm", help="oracle name from oracles.yaml (default: %(default)s)")
    kit.add_common(p, "oracles_file")
    p.add_argument("--rounds", type=kit.number(WHOLE_POSITIVE), help="rounds (default: %(default)s)")
    p.add_argument("--per-round", type=kit.number(WHOLE_POSITIVE), help="articles picked per round (default: %(default)s)")
    p.add_argument("--pick", choices=AIMED, help="how each round picks (label --pick; default: %(default)s)")
    p.add_argument("--explore-share", type=kit.number(SHARE), metavar="S",
                   help=f"random share of each aimed round (default {picking.DEFAULT_EXPLORE_SHARE:g})")
    p.add_argument("--name", help="the loop's name in gt.db (default: <pick>-<per round>x<rounds>-seed<seed>)")
    kit.add_common(p, "seed")
    p.add_argument("--concurrency", type=kit.number(WHOLE_POSITIVE), help="requests in flight (default: %(default)s)")
    p.add_argument("--max-cost", type=kit.number(POSITIVE), metavar="USD", help="this invocation's budget, all rounds")
    p.add_argument("--mode", choices=("sync", "batch"),
                   help="sync: requests as you go; batch: each round's picks through the provider's batch service "
                        "(half price, hours per round; a stopped round's jobs are polled again, never resent; "
                        "default: %(default)s)")
    kit.add_common(p, "batch_poll", "batch_max_poll")
    p.add_argument("--replay-price", metavar="IN,OUT",
                   help="with --llm replay/<oracle>: USD per 1M input and output tokens")
    p.add_argument("--embed-cache", metavar="PATH", help="embedding cache (default data/cache/embeddings.db)")
    p.add_argument("--output-dir", help="where the loop report goes (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_options(argv: Sequence[str] | None = None) -> LoopOptions:
    return kit.options(build_parser(), LoopOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(opts: LoopOptions) -> int:
        result = loop(opts)
        for r in result.rounds:
            print(f"round {r['round']} ({r['method']}): {r['labels']} labels, ${r['cost_usd']:.4f}, "
                  f"{r['outer']} in the outer bins (random: {r['outer_at_random']}), coverage {r['fill']} of "
                  f"{r['fill_max']}")
        if result.stopped:
            print(result.stopped)
        print(f"report: {result.report}")
        return result.code
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
