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

    .venv/bin/python bench/batch_cost.py [--labels 20000] [--filter filters/uplifting/v1] [--fake-n 2000]

`--fake-n N` also measures the batch machinery itself (plan, split, submit, poll, collect, store)
for N labels per provider against the loopback fake server's batch endpoints.
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
    from gt.core.text import clean_text
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
    from gt.oracles.batch import TURNAROUND, cache_min_tokens
    from gt.oracles.ratelimit import RateLimiter
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


SERVER_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.fakes.server import FakeProviderServer
srv = FakeProviderServer(keep_log=False).start()
srv.batches.configure(polls_to_finish=1)
print(srv.url, flush=True)
sys.stdin.read()   # runs until the benchmark closes our stdin
"""


def fake_run(n: int, oracle: str, seed: int) -> dict:
    """The batch path end to end (plan, split, submit, poll, collect, store) for n labels against the
    fake server's batch endpoints, the server in its own process: wall time, our CPU, our peak RSS."""
    import dataclasses
    import importlib.util
    import resource
    import subprocess
    import time
    from gt.core import store
    from gt.core.filters import load_filter
    from gt.oracles import registry
    from gt.labelling.batch import BatchOptions, run_batch
    spec_file = importlib.util.spec_from_file_location("bench_label", ROOT / "bench" / "label.py")
    bench_label = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(bench_label)   # its synthesise(): articles from the sample's paragraphs
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT.format(root=str(ROOT))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    try:
        os.environ.update({"GEMINI_BASE_URL": url, "ANTHROPIC_BASE_URL": url, "OPENAI_BASE_URL": f"{url}/v1",
                           "GEMINI_API_KEY": "fake", "ANTHROPIC_API_KEY": "fake", "OPENAI_API_KEY": "fake"})
        with tempfile.TemporaryDirectory() as tmp:
            conn = store.connect(Path(tmp) / "gt.db")
            filt = load_filter(ROOT / "filters" / "uplifting" / "v1")
            store.register_filter(conn, filt)
            ids = bench_label.synthesise(conn, n, seed)
            spec = dataclasses.replace(registry.resolve(oracle, registry.load_registry()), rpm=None, tpm=None)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            c0, t0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
            summary = run_batch(conn, filt, spec, ids, BatchOptions(poll_s=0.2, max_poll_s=1.0, progress=False))
            wall = time.perf_counter() - t0
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime - c0
            return {"oracle": oracle, "labels": n, "ok": summary.ok, "jobs": summary.jobs_submitted, "wall_s": wall,
                    "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, "polls": summary.polls}
    finally:
        proc.stdin.close()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=int, default=20000, help="labels to price (default: %(default)s)")
    p.add_argument("--filter", default=str(ROOT / "filters" / "uplifting" / "v1"), help="filter package")
    p.add_argument("--sample", default=str(ROOT / "data" / "sample" / "articles.jsonl"), help="articles (JSONL)")
    p.add_argument("--fake-n", type=int, default=0,
                   help="also run this many labels through the batch path against the fake server, per provider, "
                        "and print wall time, CPU and peak memory (default: 0, skip)")
    p.add_argument("--seed", type=int, default=42, help="seed of the synthesised articles for --fake-n")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args(argv)

    from gt.core.filters import load_filter
    from gt.oracles.registry import load_registry
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
    if args.fake_n:
        print()
        print(f"The batch path against the loopback fake server ({args.fake_n:,} synthesised articles per provider; "
              f"the server in its own process; jobs finish at the first poll; shared 2-core machine, noisy):")
        print("| oracle | labels ok | jobs | wall s | our CPU s | CPU ms per label | our peak RSS MB (process, so far) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for oracle in ("gemini-flash", "claude-haiku", "gpt-4o-mini"):
            r = fake_run(args.fake_n, oracle, args.seed)
            print(f"| {oracle} | {r['ok']:,} | {r['jobs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                  f"{1000 * r['cpu_s'] / max(r['labels'], 1):.2f} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
