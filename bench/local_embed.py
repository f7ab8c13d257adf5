"""How fast the offline `local-embed` oracle labels the sample, and how its scores spread.

    .venv/bin/python bench/local_embed.py [--limit N] [--concurrency 16]

Prints model-load seconds, labelling wall/CPU seconds and articles per second, peak memory, the
machine's load average (other processes share the cores: figures are noisy), and for each
dimension how many articles fall in each score band (local-embed is NOT a real LLM; this only
checks that its zero-shot scores use the range)."""
from __future__ import annotations

import sys
from pathlib import Path

# run as `python bench/local_embed.py`, bench/ is first on sys.path and bench/select.py would shadow
# the standard library's select
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gt.core.filters import load_filter  # noqa: E402
from gt.oracles import registry  # noqa: E402
from gt.oracles.base import OracleRequest  # noqa: E402
from gt.oracles.local_embed import load_model  # noqa: E402

BANDS = ((0, 2.5), (2.5, 4.5), (4.5, 6.5), (6.5, 8.5), (8.5, 10.01))


async def label(oracle, filt, articles, concurrency):
    gate = asyncio.Semaphore(concurrency)

    async def one(a):
        async with gate:
            rubric, part = filt.prompt_parts(a["title"], a["text"])
            return await oracle.complete(OracleRequest(rubric, part, filt.answer_schema(), title=a["title"],
                                                       text=a["text"], filter=filt))
    return await asyncio.gather(*[one(a) for a in articles])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(ROOT / "data" / "sample" / "articles.jsonl"), help="JSONL articles")
    ap.add_argument("--filter", default=str(ROOT / "filters" / "uplifting" / "v1"), help="filter package")
    ap.add_argument("--limit", type=int, default=0, help="label only the first N articles (0: all)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight (they are batched)")
    args = ap.parse_args()
    filt = load_filter(args.filter)
    articles = [json.loads(line) for line in open(args.source, encoding="utf-8")]
    articles = articles[: args.limit] if args.limit else articles
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    t = time.perf_counter()
    load_model()
    print(f"model load: {time.perf_counter() - t:.1f} s")
    oracle = registry.make_oracle(registry.resolve("local-embed", registry.load_registry()))
    cpu0, t0 = time.process_time(), time.perf_counter()
    completions = asyncio.run(label(oracle, filt, articles, args.concurrency))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"labelled {len(completions)} articles in {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({len(completions) / wall:.1f} articles/s), peak RSS {peak_mb:.0f} MB, "
          f"load average after: {os.getloadavg()[0]:.2f}")
    answers = [filt.parse_answer(c.text) for c in completions]
    print("score bands        " + " ".join(f"{lo:>4g}-{min(hi, 10):<4g}" for lo, hi in BANDS))
    for name in filt.dimension_names:
        counts = [sum(lo <= a[0][name] < hi for a in answers) for lo, hi in BANDS]
        print(f"{name:18} " + " ".join(f"{c:>9d}" for c in counts))
    print("content types:", dict(Counter(a[1] for a in answers).most_common()))


if __name__ == "__main__":
    main()
