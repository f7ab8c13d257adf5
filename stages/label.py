"""`python -m stages.label`: buy labels of the articles in gt.db from an LLM oracle (sync or the
provider's batch service), every answer stored with its cost; re-running resumes. The work is
gt.labelling.label's (and the engines it runs); this file parses, prints and maps errors to exit
codes (stages/kit.py; 130 after Ctrl-C).
"""
from __future__ import annotations

import sys
from typing import Sequence

from gt.labelling import picking
from gt.labelling.label import Interrupted, LabelOptions, resume_command, run_label
from gt.core.errors import POSITIVE, SHARE, WHOLE_NONNEGATIVE, WHOLE_POSITIVE
from stages import kit


def build_parser() -> kit.Parser:
    p = kit.parser(
        "label",
        "Label articles of gt.db with an LLM oracle and store every answer in gt.db: a seeded random sample, "
        "or the articles a scorer says fill the coverage gaps (--pick). Re-running the same command resumes: only "
        "labels missing for (filter, oracle, prompt hash) are requested.", common=("db", "filter"))
    kit.add_common(p, "source")
    p.add_argument("--output-dir", help="also export DIR/<filter name>/labeled_articles.jsonl (valid labels, the spec's shape)")
    p.add_argument("--llm", help="oracle name from oracles.yaml (gemini-flash, gemini-pro, claude-sonnet, claude-haiku, "
                        "gpt-4o-mini, deepseek, ollama/<model>, local-embed, local-llm; default: %(default)s)")
    kit.add_common(p, "oracles_file")
    p.add_argument("--target-count", type=kit.number(WHOLE_POSITIVE), help="label until this many articles have a valid label for (filter, oracle, prompt hash); "
                        "default: every eligible article")
    p.add_argument("--random-sample", action="store_true",
                   help="take articles in a seeded random order (sha256 of seed and id) instead of ingest order")
    kit.add_common(p, "seed", help_seed="seed of the random sample and of every pick (default: %(default)s)")
    p.add_argument("--concurrency", type=kit.number(WHOLE_POSITIVE), help="requests in flight at once (default: %(default)s)")
    p.add_argument("--max-cost", type=kit.number(POSITIVE), metavar="USD",
                   help="this invocation's budget: never start a request that could take this command's spend past "
                        "it (the next command has its own)")
    p.add_argument("--max-total-cost", type=kit.number(POSITIVE), metavar="USD",
                   help="a cap on all spend gt.db records for this filter and oracle, every earlier run included")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expected requests, tokens, cost and time at the rate limit, and call nothing "
                        "(needs no API key; writes nothing, --source is not ingested)")
    p.add_argument("--repeats", type=kit.number(WHOLE_POSITIVE), help="label each article this many times (self-consistency), stored as repeats 0..N-1")
    p.add_argument("--mode", choices=("sync", "batch"), help="sync: requests as you go; batch: the provider's batch service (cheaper, hours)")
    p.add_argument("--timeout", type=kit.number(POSITIVE), help="seconds to wait for one answer (default: the oracle's timeout_s in oracles.yaml)")
    p.add_argument("--max-attempts", type=kit.number(WHOLE_POSITIVE), help="attempts per request on 5xx, timeouts and dropped connections, with exponential "
                        "backoff and jitter, before the label is stored as 'error' (default: %(default)s)")
    p.add_argument("--max-wait", type=kit.number(POSITIVE), metavar="SECONDS",
                   help="stop the run when no call has been answered for this long (a 429 storm, a provider down); "
                        "the same command resumes (default: %(default)s)")
    p.add_argument("--breaker-window", type=kit.number(WHOLE_NONNEGATIVE), metavar="N",
                   help="circuit breaker: stop when more than half of the last N answers are invalid or failed "
                        "(default: %(default)s; 0 turns it off)")
    p.add_argument("--db-patience", type=kit.number(POSITIVE), metavar="SECONDS",
                   help="how long answers wait in memory while another process holds gt.db's write lock before the "
                        "run stops (default: %(default)s)")
    p.add_argument("--pick", choices=picking.METHODS, help="which articles to buy: random (the seeded sample, default); gaps (a scorer fitted on this "
                        "oracle's labels so far predicts the unlabelled articles, and the picks fill the (dimension, "
                        "score bin) cells the labels leave short, with --explore-share of them random); uncertain "
                        "(where the scorer's ensemble disagrees most); ids (exactly the articles in --ids-file). "
                        "Every pick is recorded in gt.db with why (tables pick_rounds, label_picks)")
    p.add_argument("--pick-count", type=kit.number(WHOLE_POSITIVE), metavar="N",
                   help="with --pick gaps|uncertain: how many articles to pick (default: --target-count minus the "
                        "valid labels this oracle already has)")
    p.add_argument("--explore-share", type=kit.number(SHARE), metavar="S",
                   help=f"share of a gaps/uncertain pick taken uniformly at random (default "
                        f"{picking.DEFAULT_EXPLORE_SHARE:g}): keeps a wrong scorer from starving a region, and "
                        f"measures what random buying finds")
    p.add_argument("--ids-file", metavar="FILE",
                   help="with --pick ids: the article ids to label, one per line (or JSONL with an id field)")
    p.add_argument("--no-student", action="store_true",
                   help="with --pick gaps: always fit the probe, even when a student's predictions cover the pool")
    p.add_argument("--embed-cache", metavar="PATH",
                   help="the probe's embedding cache (default data/cache/embeddings.db; 'none' for no cache)")
    p.add_argument("--replay-price", metavar="IN,OUT",
                   help="with --llm replay/<oracle>: USD per 1M input and output tokens (default: oracles.yaml's "
                        "replay/<model> entry)")
    p.add_argument("--status", action="store_true",
                   help="show spend per run, per oracle and in total, each run's state and open batch jobs, then exit")
    add_batch_arguments(p)
    return p


def add_batch_arguments(p: kit.Parser) -> None:
    g = p.add_argument_group("batch mode (--mode batch)")
    g.add_argument("--batch-retry", choices=("batch", "sync", "none"), help="what to do with items that failed or expired in a batch: send them in a new batch "
                        "(default: %(default)s), as sync requests, or leave them as 'error' labels for the next run")
    g.add_argument("--batch-rounds", type=kit.number(WHOLE_POSITIVE), help="batch rounds at most, the first included, with --batch-retry batch (default: %(default)s)")
    kit.add_common(g, "batch_poll", "batch_max_poll")
    g.add_argument("--batch-no-wait", action="store_true",
                   help="submit the jobs, record them in gt.db and exit; run the same command later to collect")


def parse_options(argv: Sequence[str] | None = None) -> LabelOptions:
    return kit.options(build_parser(), LabelOptions, argv)


def main(argv: Sequence[str] | None = None) -> int:
    def work(options: LabelOptions) -> int:
        result = run_label(options, resume_command(argv))
        if result.lines:
            print("\n".join(result.lines))
        if isinstance(result.error, Interrupted):
            print(str(result.error), file=sys.stderr)
            return result.error.exit_code
        if result.error is not None:
            raise result.error
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
