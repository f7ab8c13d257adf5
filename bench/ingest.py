"""Benchmark: ingest 100,000 articles into a fresh gt.db and print articles/s and peak memory.

The articles are built from the shipped sample's paragraphs, recombined deterministically (--seed),
with some exact duplicates and lightly edited near-duplicates mixed in. The ingest runs as a
subprocess (`python -m stages.ingest`) so its peak memory (largest RSS among it and its worker
processes, from getrusage(RUSAGE_CHILDREN)) is measured apart from the generator's.
Target (issue 2): 100k in under 2 minutes on 2 cores, under 2 GB.

    .venv/bin/python bench/ingest.py [--articles 100000] [--workers 2] [--seed 42]
"""
from __future__ import annotations

import sys

# bench/select.py would shadow the standard library's `select` (needed by subprocess): drop bench/
if sys.path and sys.path[0] and __import__("os").path.samefile(sys.path[0], __import__("os").path.dirname(__file__) or "."):
    sys.path.pop(0)

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "articles.jsonl"


def build_articles(path: Path, n: int, seed: int, dup_share: float, near_share: float) -> dict[str, int]:
    rng = random.Random(seed)
    paragraphs, sources = [], []
    with SAMPLE.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            paragraphs.extend(p for p in rec["text"].split("\n\n") if len(p) > 40)
            sources.append(rec.get("source") or "sample")
    made: list[tuple[str, str]] = []  # (title, text) of recent originals, for duplicates
    counts = {"original": 0, "exact_duplicate": 0, "near_duplicate": 0}
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            r = rng.random()
            if made and r < dup_share:
                title, text = rng.choice(made)
                kind = "exact_duplicate"
            elif made and r < dup_share + near_share:
                title, text = rng.choice(made)
                tokens = text.split(" ")
                for _ in range(2):  # a light edit: two words replaced
                    tokens[rng.randrange(len(tokens))] = rng.choice(["notably", "reportedly", "also", "indeed"])
                text = " ".join(tokens)
                kind = "near_duplicate"
            else:
                parts = rng.sample(paragraphs, rng.randint(6, 14))
                title = " ".join(parts[0].split()[:9])
                text = "\n\n".join(parts)
                kind = "original"
                made.append((title, text))
                if len(made) > 5000:
                    made.pop(rng.randrange(len(made)))
            counts[kind] += 1
            out.write(json.dumps({"id": f"bench-{i:06d}", "title": title, "text": text,
                                  "source": rng.choice(sources), "published_date": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"})
                      + "\n")
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--articles", type=int, default=100_000, help="articles to build and ingest (default 100,000)")
    p.add_argument("--workers", type=int, default=2, help="ingest --workers (default 2: the target is 2 cores)")
    p.add_argument("--seed", type=int, default=42, help="seed of the article recombination (default 42)")
    p.add_argument("--dup-share", type=float, default=0.02, help="share of exact duplicates (default 0.02)")
    p.add_argument("--near-share", type=float, default=0.03, help="share of near-duplicates (default 0.03)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        src, db = Path(tmp) / "articles.jsonl", Path(tmp) / "gt.db"
        t0 = time.perf_counter()
        counts = build_articles(src, args.articles, args.seed, args.dup_share, args.near_share)
        print(f"built {args.articles:,} articles ({counts['exact_duplicate']:,} exact duplicates, "
              f"{counts['near_duplicate']:,} near-duplicates; {src.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")

        cmd = [sys.executable, "-m", "stages.ingest", "--db", str(db), "--source", str(src),
               "--workers", str(args.workers)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
        cpu_s = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        conn = sqlite3.connect(db)
        total, dups, clusters, clustered = conn.execute(
            "SELECT COUNT(*), COUNT(dup_of), COUNT(DISTINCT near_dup_cluster), COUNT(near_dup_cluster) FROM articles").fetchone()
        conn.close()

        t1 = time.perf_counter()
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        reingest_s = time.perf_counter() - t1
        print(f"ingest: {total:,} articles in {seconds:.1f} s = {total / seconds:,.0f} articles/s "
              f"(workers={args.workers}, {os.cpu_count()} CPUs)")
        print(f"CPU time of the ingest and its workers: {cpu_s:.1f} s = {cpu_s / total * 1000:.2f} ms per article; "
              f"load average during the run {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"peak memory (largest of the ingest process and its workers): {peak_mb:,.0f} MB")
        print(f"found: {dups:,} exact duplicates, {clusters:,} near-duplicate clusters holding {clustered:,} articles; "
              f"db {db.stat().st_size / 1e6:.0f} MB")
        print(f"re-ingest of the same file: {reingest_s:.1f} s, exit {again.returncode}, "
              f"articles still {sqlite3.connect(db).execute('SELECT COUNT(*) FROM articles').fetchone()[0]:,}")
        if args.articles == 100_000:
            target = "meets" if seconds < 120 and peak_mb < 2048 else "misses"
            print(f"target 100k < 120 s and < 2 GB: {target} (wall time is noisy where other work shares the machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
