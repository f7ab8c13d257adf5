"""Benchmark of the coverage stage on a large synthetic gt.db.

Builds (once, cached) a gt.db holding 1,000,000 valid labels of filters/uplifting/v1 by one oracle
(8,000,000 label_scores rows, one synthetic article per label, 50 sources) plus 10,000 labels by a
second oracle and 5,000 invalid answers, so the stage must pick its label set out of a larger
table. Rows have realistic sizes (article texts of 1,500-4,500 characters, which spill onto
overflow pages as real news does; evidence and raw answers of ~1 KB per label), because the
cost of reading an article's source depends on it. Scores are synthetic: a shared latent factor plus per-dimension noise, rounded to half
points and clipped to 0-10, skewed low like real news (so the top bins are thin), seeded.

Then runs `python -m stages.coverage` on it in a subprocess, as a user would, and prints the
wall time and peak memory of that process (target: under 10 s on 2 cores).

    .venv/bin/python bench/coverage.py                # build if missing, then time the stage
    .venv/bin/python bench/coverage.py --labels 100000 --db /tmp/small.db
"""
from __future__ import annotations

import sys
from pathlib import Path

# run as `python bench/coverage.py`, bench/ is first on sys.path and bench/select.py would shadow
# the standard library's `select` (which subprocess imports): keep only the project root
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gt.core import store  # noqa: E402
from gt.core.filters import load_filter  # noqa: E402

FILTER_DIR = ROOT / "filters" / "uplifting" / "v1"
MAIN_ORACLE, OTHER_ORACLE = "gemini-pro", "gemini-flash"
CHUNK = 100_000


def synthetic_scores(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """n x dims half-point scores: correlated through a latent 'uplift' factor, mostly low."""
    latent = rng.gamma(shape=2.0, scale=1.2, size=(n, 1))
    noise = rng.normal(0.0, 1.1, size=(n, dims))
    offset = np.linspace(-0.6, 0.8, dims)  # dimensions differ in how easily they score
    raw = latent + noise + offset
    return np.clip(np.round(raw * 2) / 2, 0.0, 10.0)


def text_pool(rng: np.random.Generator, size: int = 400_000) -> str:
    """Word salad to cut article texts from (synthetic: no news text is added to the project)."""
    words = np.array("the a of to and in on for with community council water school clinic project river "
                     "solar farm workers families rescue repair vaccine court ruling library volunteers city "
                     "village grant study researchers found improved reported said new local after years".split())
    return " ".join(words[rng.integers(0, len(words), size=size // 6)].tolist())[:size]


def build(db: Path, n_labels: int, seed: int) -> dict:
    filt = load_filter(FILTER_DIR)
    if db.exists():
        db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    conn = store.connect(db)
    store.register_filter(conn, filt)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -400000")
    rng = np.random.default_rng(seed)
    dims = filt.dimension_names
    sources = [f"source-{i:02d}" for i in range(50)]
    ctypes = list(filt.content_types)
    n_other, n_invalid = 10_000, 5_000
    n_articles = n_labels + n_invalid
    pool = text_pool(rng)
    lengths = rng.integers(1500, 4500, size=n_labels + 5_000)
    offsets = rng.integers(0, len(pool) - 4500, size=n_labels + 5_000)
    evidence = json.dumps({d: f"The article reports what {d} looks like here, in one sentence of evidence."
                           for d in dims})
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    run_main = store.start_run(conn, purpose="label", filt=filt, oracle=MAIN_ORACLE, provider="gemini",
                               model="gemini-pro", seed=seed)
    run_other = store.start_run(conn, purpose="calibrate", filt=filt, oracle=OTHER_ORACLE, provider="gemini",
                                model="gemini-flash", seed=seed)
    conn.executemany(
        "INSERT INTO articles (id, title, text, source, content_hash, chars) VALUES (?, ?, ?, ?, ?, ?)",
        ((f"a{i:07d}", f"synthetic {i}", pool[offsets[i]:offsets[i] + lengths[i]], sources[i % len(sources)],
          f"h{i:07d}", int(lengths[i])) for i in range(n_articles)),
    )
    label_id = 0
    for kind, run_id, oracle, start, count in (
        ("main", run_main, MAIN_ORACLE, 0, n_labels),
        ("other", run_other, OTHER_ORACLE, 0, n_other),
    ):
        for lo in range(start, start + count, CHUNK):
            hi = min(lo + CHUNK, start + count)
            scores = synthetic_scores(rng, hi - lo, len(dims))
            ct = rng.integers(0, len(ctypes), size=hi - lo)
            ids = range(label_id + 1, label_id + 1 + hi - lo)
            conn.executemany(
                """INSERT INTO labels (id, run_id, article_id, filter_id, oracle, prompt_sha256, repeat, status,
                       content_type, evidence_json, raw_response, cost_usd, input_tokens, output_tokens)
                   VALUES (?, ?, ?, ?, ?, ?, 0, 'ok', ?, ?, ?, 0.00018, 900, 200)""",
                ((lid, run_id, f"a{i:07d}", filt.id, oracle, filt.prompt_sha256, ctypes[c], evidence,
                  json.dumps({"scores": dict(zip(dims, row)), "content_type": ctypes[c]}) + evidence)
                 for lid, i, c, row in zip(ids, range(lo, hi), ct.tolist(), scores.tolist())),
            )
            conn.executemany(
                "INSERT INTO label_scores (label_id, dimension, score) VALUES (?, ?, ?)",
                ((lid, d, s) for lid, row in zip(ids, scores.tolist()) for d, s in zip(dims, row)),
            )
            label_id += hi - lo
    conn.executemany(
        """INSERT INTO labels (id, run_id, article_id, filter_id, oracle, prompt_sha256, repeat, status, raw_response,
               error) VALUES (?, ?, ?, ?, ?, ?, 0, 'invalid', '{}', 'scores: missing agency')""",
        ((label_id + 1 + k, run_main, f"a{n_labels + k:07d}", filt.id, MAIN_ORACLE, filt.prompt_sha256)
         for k in range(n_invalid)),
    )
    conn.execute("COMMIT")
    store.finish_run(conn, run_main)
    store.finish_run(conn, run_other)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    return {"seconds": time.perf_counter() - t0, "labels": n_labels + n_other + n_invalid,
            "score_rows": (n_labels + n_other) * len(dims)}


def plain_sql_baseline(db: Path) -> tuple[float, float]:
    """The straightforward way, for comparison: histograms by GROUP BY dimension, score over
    labels joined to label_scores, tiers and correlation sums through the filter's score view.
    Returns (wall seconds, CPU seconds of this process)."""
    filt = load_filter(FILTER_DIR)
    conn = store.connect(db, readonly=True)
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -262144")
    dims = filt.dimension_names
    products = ", ".join(f'SUM("{a}" * "{b}")' for i, a in enumerate(dims) for b in dims[i + 1:])
    where = "oracle = ? AND prompt_sha256 = ? AND \"repeat\" = 0"
    args = (MAIN_ORACLE, filt.prompt_sha256)
    wall, cpu = time.perf_counter(), time.process_time()
    conn.execute(
        f"""SELECT s.dimension, s.score, COUNT(*) FROM labels l JOIN label_scores s ON s.label_id = l.id
            JOIN articles a ON a.id = l.article_id
            WHERE l.filter_id = ? AND l.{where.replace('"repeat"', 'l."repeat"')} AND l.status = 'ok'
              AND a.dup_of IS NULL GROUP BY 1, 2""", (filt.id, *args)).fetchall()
    conn.execute(f'SELECT tier, COUNT(*) FROM "{filt.view_name}" WHERE {where} GROUP BY tier', args).fetchall()
    conn.execute(f'SELECT COUNT(*), {products} FROM "{filt.view_name}" WHERE {where}', args).fetchall()
    result = time.perf_counter() - wall, time.process_time() - cpu
    conn.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=str(ROOT / "data" / "bench" / "coverage_gt.db"),
                        help="where the synthetic gt.db lives (built when missing or with --rebuild)")
    parser.add_argument("--labels", type=int, default=1_000_000, help="valid labels of the analysed oracle")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the synthetic gt.db even if it exists")
    parser.add_argument("--seed", type=int, default=42, help="seed of the synthetic scores")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the stage (the best and all are printed)")
    parser.add_argument("--baseline", action="store_true", help="also time the plain-SQL way (GROUP BY over "
                        "label_scores, tiers and correlations through the score view) on the same database")
    args = parser.parse_args()

    db = Path(args.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    stamp = db.with_suffix(".labels")
    if args.rebuild or not db.exists() or not stamp.exists() or stamp.read_text().strip() != str(args.labels):
        stamp.unlink(missing_ok=True)
        print(f"building {db} with {args.labels:,} labels ...", flush=True)
        info = build(db, args.labels, args.seed)
        stamp.write_text(str(args.labels))
        print(f"built: {info['labels']:,} label rows, {info['score_rows']:,} label_scores rows "
              f"in {info['seconds']:.1f} s ({db.stat().st_size / 2**20:.0f} MiB)", flush=True)
    else:
        print(f"reusing {db} ({args.labels:,} labels of {MAIN_ORACLE})")

    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "stages.coverage", "--db", str(db), "--filter", str(FILTER_DIR),
               "--output", os.path.join(out, "coverage.json"), "--report-dir", out]
        times, cpus = [], []
        for _ in range(args.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr)
                print(f"coverage stage failed with exit code {proc.returncode}")
                return 1
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
    load = os.getloadavg()[0]
    print(f"coverage stage on {args.labels:,} labels ({args.labels * 8:,} score rows), {os.cpu_count()} cores, "
          f"load average {load:.1f}: wall best {min(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)} s), "
          f"CPU best {min(cpus):.2f} s (runs {', '.join(f'{t:.2f}' for t in cpus)} s); whole process incl. Python "
          f"start-up, imports, report and plots; target < 10 s; peak RSS {peak_mib:.0f} MiB")
    if args.baseline:
        wall, cpu = plain_sql_baseline(db)
        print(f"plain-SQL baseline (histogram GROUP BY + tiers and correlation sums through the score view), "
              f"queries only: wall {wall:.2f} s, CPU {cpu:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
