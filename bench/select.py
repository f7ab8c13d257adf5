"""Benchmark of the selection program: pool -> target for 20k->2k, 100k->10k and 1M->50k.

Synthetic skewed scores (8 correlated dimensions, most scores 0-3, about 1.5% at 7-10), tiers from
the uplifting weights and thresholds, 300 sources, 2% of articles in near-duplicate clusters.
They are generated with numpy straight into the solver's input (gt.selection.solver.Pool); `--e2e`
adds one run of the whole stage (python -m stages.select) on a 20k gt.db built here.

Prints, per size: solve time, peak memory (RSS of the process that solved that size; each size
runs in its own child process so one size's peak does not hide another's), objective, bound, gap,
groups, and the random (mean of 5 seeds) and greedy objectives as a share of the optimum.

    .venv/bin/python bench/select.py                 # all three sizes
    .venv/bin/python bench/select.py --sizes 20k     # one size
    .venv/bin/python bench/select.py --e2e           # plus the end-to-end 20k run through gt.db
Targets: 20k->2k proven optimal (gap < 0.1%) under 3 s; 100k->10k under 20 s; 1M->50k under 2 min and 4 GB.
"""
from __future__ import annotations

import os
import sys

# this file is named like the standard library's `select`: keep its folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = {"20k": (20_000, 2_000), "100k": (100_000, 10_000), "1m": (1_000_000, 50_000)}
WEIGHTS = np.array([0.14, 0.19, 0.38, 0.10, 0.08, 0.04, 0.02, 0.05])  # uplifting/v1


def synthetic_scores(n: int, seed: int) -> np.ndarray:
    """(n, 8) integer scores 0-10: a shared skewed latent 'how uplifting' plus per-dimension noise."""
    rng = np.random.default_rng(seed)
    latent = rng.gamma(shape=1.3, scale=1.25, size=(n, 1))
    noise = rng.normal(0.0, 1.1, size=(n, 8))
    return np.clip(np.rint(latent + noise), 0, 10).astype(np.int64)


def tiers_of(scores: np.ndarray) -> np.ndarray:
    overall = scores @ WEIGHTS
    overall = np.where(scores[:, 2] < 3, np.minimum(overall, 3.0), overall)  # the gatekeeper
    return np.where(overall >= 7, 0, np.where(overall >= 4, 1, 2))          # impact, connection, not_uplifting


def synthetic_pool(n: int, seed: int):
    from gt.selection.program import Pool

    rng = np.random.default_rng(seed + 1)
    scores = synthetic_scores(n, seed)
    source = np.minimum(rng.zipf(1.6, size=n), 300) - 1
    cluster = np.full(n, -1, dtype=np.int64)
    clustered = rng.random(n) < 0.02
    cluster[clustered] = rng.integers(0, max(1, int(clustered.sum() / 2.5)), size=int(clustered.sum()))
    return scores, Pool(bins=scores, tier=tiers_of(scores), source=source, cluster=cluster)


def run_one(label: str, seed: int, time_limit: float) -> dict:
    from gt.selection import strategies as stage
    from gt.selection import program as solver

    n, k = SIZES[label]
    t0 = time.perf_counter()
    scores, pool = synthetic_pool(n, seed)
    t_gen = time.perf_counter() - t0
    strategy = stage.STRATEGIES["maximize_coverage"]
    edges = np.arange(11, dtype=float)
    t1 = time.perf_counter()
    program = stage.build_program(strategy, edges, k, ["impact", "connection", "not_uplifting"],
                                  pool, tier_shares=None, max_per_source=None)
    groups = solver.aggregate(pool, program)
    t_agg = time.perf_counter() - t1
    solution = solver.solve(groups, program, time_limit=time_limit, seed=seed)
    chosen = solver.pick_articles(pool, groups, solution.counts, seed)
    t_solve = time.perf_counter() - t1
    assert chosen.sum() == k
    randoms = [solver.objective_value(pool.bins, solver.random_subset(n, k, seed + r).astype(np.int64), pool.weight, program)
               for r in range(5)]
    t2 = time.perf_counter()
    greedy = solver.greedy_fill(groups, program, tiebreak=np.random.default_rng(seed).permutation(groups.count).astype(float))
    t_greedy = time.perf_counter() - t2
    greedy_obj = solver.objective_value(groups.bins, greedy, groups.weight, program) if greedy is not None else None
    high = float((scores >= 7).mean())
    return {
        "size": label, "pool": n, "target": k, "share_7_10": high, "groups": solution.groups,
        "free_groups_cpsat": solution.free_groups, "generate_s": t_gen, "aggregate_s": t_agg,
        "lp_s": solution.timings["lp"], "rounding_s": solution.timings["rounding"],
        "cpsat_s": solution.timings["cpsat"], "select_s": t_solve, "greedy_s": t_greedy,
        "objective": solution.objective, "bound": solution.bound, "gap": solution.gap, "status": solution.status,
        "proven_by": solution.proven_by, "random_mean": float(np.mean(randoms)), "greedy": greedy_obj,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_e2e(seed: int) -> dict:
    """The whole stage on a 20k gt.db: labels inserted in bulk here, then `python -m stages.select`."""
    from gt.core import store
    from gt.core.filters import load_filter

    filt = load_filter(ROOT / "filters" / "uplifting" / "v1")
    tmp = Path(tempfile.mkdtemp(prefix="bench-select-"))
    db = tmp / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, filt)
    scores = synthetic_scores(20_000, seed)
    names = filt.dimension_names
    with store.transaction(conn):
        conn.execute("INSERT INTO label_runs (purpose, filter_id, oracle, prompt_sha256, mode) VALUES "
                     "('import', ?, 'synthetic', ?, 'import')", (filt.id, filt.prompt_sha256))
        conn.executemany(
            "INSERT INTO articles (id, title, text, source, content_hash, chars) VALUES (?, ?, ?, ?, ?, ?)",
            [(f"a{i:06d}", f"Article {i}", "x" * 400, f"source{i % 300}", f"h{i}", 400) for i in range(20_000)])
        conn.executemany(
            "INSERT INTO labels (id, run_id, article_id, filter_id, oracle, prompt_sha256, status) VALUES "
            "(?, 1, ?, ?, 'synthetic', ?, 'ok')",
            [(i + 1, f"a{i:06d}", filt.id, filt.prompt_sha256) for i in range(20_000)])
        conn.executemany("INSERT INTO label_scores (label_id, dimension, score) VALUES (?, ?, ?)",
                         [(i + 1, names[d], float(scores[i, d])) for i in range(20_000) for d in range(8)])
    conn.close()
    cmd = [sys.executable, "-m", "stages.select", "--db", str(db), "--target-size", "2000",
           "--strategy", "maximize_coverage", "--output-dir", str(tmp / "training"), "--seed", str(seed)]
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = next((int(line.split()[-1]) / 1024 for line in proc.stderr.splitlines()
                 if "Maximum resident set size" in line), float("nan"))
    result = {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": peak,
              "stdout_tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout else [],
              "stderr_tail": [line for line in proc.stderr.splitlines() if line.startswith("error")][-1:]}
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20k,100k,1m", help="comma list of 20k, 100k, 1m (default: all)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the synthetic pool and the solver")
    ap.add_argument("--time-limit", type=float, default=110.0, help="solver time limit per size, seconds")
    ap.add_argument("--e2e", action="store_true", help="also run the whole stage on a 20k gt.db")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: run one size, print JSON
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.seed, args.time_limit)))
        return 0
    print(f"{'size':>6} {'groups':>7} {'time s':>7} {'(lp/round/cpsat)':>18} {'peak MB':>8} {'objective':>10} "
          f"{'bound':>10} {'gap':>7} {'status':>9} {'random':>7} {'greedy':>7}")
    for label in [s.strip().lower() for s in args.sizes.split(",") if s.strip()]:
        if label not in SIZES:
            print(f"error: unknown size '{label}' (choose from {', '.join(SIZES)})", file=sys.stderr)
            return 2
        proc = subprocess.run([sys.executable, __file__, "--one", label, "--seed", str(args.seed),
                               "--time-limit", str(args.time_limit)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        phases = f"{r['lp_s']:.1f}/{r['rounding_s']:.1f}/{r['cpsat_s']:.1f}"
        greedy = f"{100 * r['greedy'] / r['objective']:.1f}%" if r["greedy"] is not None else "—"
        print(f"{label:>6} {r['groups']:>7} {r['select_s']:>7.2f} {phases:>18} {r['peak_rss_mb']:>8.0f} "
              f"{r['objective']:>10} {r['bound']:>10} {100 * r['gap']:>6.3f}% {r['status']:>9} "
              f"{100 * r['random_mean'] / r['objective']:>6.1f}% {greedy:>7}")
        print(f"       pool {r['pool']:,} -> {r['target']:,}; scores at 7-10: {100 * r['share_7_10']:.2f}%; "
              f"aggregate {r['aggregate_s']:.2f} s (inside time); greedy baseline {r['greedy_s']:.2f} s; "
              f"proven by {r['proven_by'] or '—'}; CP-SAT groups after fixing: {r['free_groups_cpsat']}", flush=True)
    if args.e2e:
        r = run_e2e(args.seed)
        print(f"end-to-end 20k gt.db -> 2k (python -m stages.select): exit {r['returncode']}, "
              f"{r['wall_s']:.1f} s wall, peak {r['peak_rss_mb']:.0f} MB; {' '.join(r['stdout_tail'] + r['stderr_tail'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
