"""What 20,000 uplifting labels cost at list prices, per oracle in oracles.yaml: sync vs batch vs
batch + prompt cache (and sync + cache), with the expected completion time of each.

Token counts come from our real prompt: filters/uplifting/v1 rendered (Filter.prompt_parts, the
label stage's own truncation) for every eligible article of the shipped sample
(data/sample/articles.jsonl, cleaned as ingest cleans it), counted with tiktoken's o200k_base
encoding. o200k_base is OpenAI's tokenizer (gpt-4o family); for Gemini and Claude it is an
estimate, since their tokenizers are not public. The o200k_base table is not downloadable here: it is
read from the bpe-openai package, which ships it, and tiktoken checks it against the sha256 that
tiktoken itself pins for o200k_base.

Per request: input = rubric + article part (+ the answer schema for Anthropic, whose tool
definition is billed as input; Anthropic's own tool-use system prompt is not counted); output = a typical valid answer (8 scores, a content type and one
~120-character evidence sentence per dimension, taken from the article), also counted with
o200k_base. 20,000 labels = 20,000 x the sample's mean. Cache: the static prefix (rubric; for
Anthropic the tool definition and the rubric) is read from cache by every request but the first,
only if it reaches the model's minimum cacheable length (options.cache_min_tokens in oracles.yaml);
this is the best case (warm cache all along), not a guarantee.

    .venv/bin/python bench/batch_cost.py [--labels 20000] [--filter filters/uplifting/v1]
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import gzip
import hashlib
import importlib.resources
import json
import os
import re
import statistics
import tempfile

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def o200k_base():
    """tiktoken's o200k_base, offline: the table shipped in bpe-openai is put where tiktoken's own
    cache looks for it, and tiktoken verifies its pinned sha256 before using it."""
    import tiktoken
    cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
    data = gzip.decompress((importlib.resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz").read_bytes())
    (cache / hashlib.sha1(O200K_URL.encode()).hexdigest()).write_bytes(data)
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("o200k_base")
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


def typical_answer(filt, text: str) -> str:
    """A valid answer of typical length: mid-range scores and one evidence sentence per dimension
    (sentences of the article, cut at 120 characters, as the rubric asks for one short sentence)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 30] or [text[:120]]
    evidence = {d: sentences[i % len(sentences)][:120] for i, d in enumerate(filt.dimension_names)}
    scores = {d: 5.5 for d in filt.dimension_names}
    return json.dumps({"scores": scores, "content_type": filt.content_types[0], "evidence": evidence})


def measure(filt, enc, sample: Path) -> dict:
    from stages.text import clean_text
    rubric_tokens = None
    article_tokens, answer_tokens, chars = [], [], []
    for line in sample.read_text(encoding="utf-8").splitlines():
        a = json.loads(line)
        title, text = clean_text(a.get("title") or ""), clean_text(a.get("text") or "")
        if len(text) < filt.min_chars or filt.prefilter_reason(title, text):
            continue
        rubric, article = filt.prompt_parts(title, text)
        if rubric_tokens is None:
            rubric_tokens = len(enc.encode(rubric))
        article_tokens.append(len(enc.encode(article)))
        answer_tokens.append(len(enc.encode(typical_answer(filt, text))))
        chars.append(len(rubric) + len(article))
    schema_tokens = len(enc.encode(json.dumps(filt.answer_schema())))
    return {"articles": len(article_tokens), "rubric": rubric_tokens, "schema": schema_tokens,
            "article_mean": statistics.fmean(article_tokens), "article_median": statistics.median(article_tokens),
            "answer_mean": statistics.fmean(answer_tokens), "chars_mean": statistics.fmean(chars)}


def cost_rows(specs, m: dict, n: int) -> list[dict]:
    from stages.oracles.batch import TURNAROUND, cache_min_tokens
    from stages.oracles.ratelimit import RateLimiter
    rows = []
    for spec in specs:
        anthropic = spec.provider == "anthropic"
        per_input = m["rubric"] + m["article_mean"] + (m["schema"] if anthropic else 0)
        prefix = m["rubric"] + (m["schema"] if anthropic else 0)
        tin, tout = round(per_input * n), round(m["answer_mean"] * n)
        minimum = cache_min_tokens(spec)
        cacheable = spec.cache_read_per_m is not None and (minimum is None or prefix >= minimum)
        cached = prefix * (n - 1) if cacheable else 0
        write = prefix if cacheable and spec.cache_write_per_m is not None else 0
        has_batch = spec.batch_input_per_m is not None
        limiter = RateLimiter(spec.rpm, spec.tpm, headroom=1.0)
        sync_h = limiter.seconds_for(n, tin + tout) / 3600 if limiter.limited else None
        rows.append({
            "oracle": spec.name, "provider": spec.provider, "input_tokens": tin, "output_tokens": tout,
            "prefix": prefix, "cache_min": minimum, "cacheable": cacheable,
            "sync": spec.cost(tin, tout),
            "sync_cache": spec.cost(tin, tout, cached, cache_write_tokens=write),
            "batch": spec.cost(tin, tout, batch=True) if has_batch else None,
            "batch_cache": spec.cost(tin, tout, cached, batch=True, cache_write_tokens=write) if has_batch else None,
            # the same, had the prefix been long enough to cache (what a longer rubric would pay)
            "batch_cache_if_cacheable": spec.cost(tin, tout, prefix * (n - 1), batch=True,
                                                  cache_write_tokens=prefix if spec.cache_write_per_m is not None else 0)
            if has_batch and spec.cache_read_per_m is not None else None,
            "sync_hours": sync_h,
            "batch_time": TURNAROUND.get(spec.provider, "") if has_batch else "no batch mode",
        })
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=int, default=20000, help="labels to price (default: %(default)s)")
    p.add_argument("--filter", default=str(ROOT / "filters" / "uplifting" / "v1"), help="filter package")
    p.add_argument("--sample", default=str(ROOT / "data" / "sample" / "articles.jsonl"), help="articles (JSONL)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args()

    from stages.filters import load_filter
    from stages.oracles.registry import load_registry
    filt = load_filter(args.filter)
    enc = o200k_base()
    m = measure(filt, enc, Path(args.sample))
    specs = [s for s in load_registry().values() if s.provider in ("gemini", "anthropic", "openai")
             and "<model>" not in s.name and (s.input_per_m or s.output_per_m)]
    rows = cost_rows(specs, m, args.labels)

    n = args.labels
    print(f"{n:,} labels of {filt.id}, token counts from {m['articles']} sample articles with tiktoken o200k_base "
          f"(exact for OpenAI, an estimate for Gemini and Claude):")
    print(f"  per request: rubric {m['rubric']} tokens + article part {m['article_mean']:.0f} on average "
          f"(median {m['article_median']:.0f}) = {m['rubric'] + m['article_mean']:.0f} input tokens "
          f"(+{m['schema']} for Anthropic's tool definition); typical answer {m['answer_mean']:.0f} output tokens")
    print(f"  (the label stage's own estimate, characters / 4, gives {m['chars_mean'] / 4:.0f} input tokens per request)")
    print()
    print("| oracle | input tokens | output tokens | sync | sync + cache | batch | batch + cache | best vs sync "
          "| cacheable prefix | sync time at oracles.yaml limits | batch time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        batch = f"${r['batch']:,.2f}" if r["batch"] is not None else "-"
        batch_cache = f"${r['batch_cache']:,.2f}" if r["batch_cache"] is not None else "-"
        best = min(v for v in (r["sync"], r["sync_cache"], r["batch"], r["batch_cache"]) if v is not None)
        saves = f"{1 - best / r['sync']:.0%}" if r["sync"] else "-"
        prefix = (f"{r['prefix']} tok, {'cached' if r['cacheable'] else 'below'} min {r['cache_min']}"
                  if r["cache_min"] else f"{r['prefix']} tok")
        sync_time = f"{r['sync_hours']:.1f} h" if r["sync_hours"] is not None else "no limit set"
        print(f"| {r['oracle']} | {r['input_tokens']:,} | {r['output_tokens']:,} | ${r['sync']:,.2f} | "
              f"${r['sync_cache']:,.2f} | {batch} | {batch_cache} | {saves} | {prefix} | {sync_time} | "
              f"{r['batch_time']} |")
    print()
    missed = [r for r in rows if r["batch_cache_if_cacheable"] is not None and not r["cacheable"]]
    if missed:
        print(f"The rubric ({m['rubric']} tokens) is shorter than these models' minimum cacheable prefix, so their "
              f"cache discount is zero; with a prefix long enough to cache, batch + cache would cost: "
              + ", ".join(f"{r['oracle']} ${r['batch_cache_if_cacheable']:,.2f}" for r in missed) + ".")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
