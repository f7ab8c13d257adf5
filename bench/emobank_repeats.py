"""Repeats or new sentences? EmoBank's individual ratings at a fixed budget of ratings.

    .venv/bin/python bench/emobank_repeats.py [--budget 1200] [--repeats 1,2,3,5] [--seeds 2] [ARGS for stages.train ...]

A user with money for B oracle answers can buy one answer on B articles or k answers (label
--repeats k, averaged into one target by store.target_frame) on B/k. EmoBank's raters stand in for
the oracle's repeats: every sentence of the official train split was rated by 5-7 people, integers
1-5 (mapped onto 0-10). For each k in --repeats and each seed, B/k train sentences (a seeded
sample, nested: the 3-rating sentences are among the 2-rating ones) each get the mean of k of their
ratings (a seeded choice) as the target, and `python -m stages.train` trains the student with its
defaults (plus ARGS) on them; val is --val sentences of the official dev split with their human-mean
labels, the same for every arm, so only the training targets differ. Measured on the official test split against
human-mean (emobank.csv): MAE, Pearson r and Spearman rho per dimension (valence, arousal,
dominance), and their means over the seeds. Prints one JSON line per run, then a summary table.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DIMS = ["valence", "arousal", "dominance"]


def to_scale(values) -> list[float]:
    """EmoBank's 1-5 ratings on the 0-10 scale, as `make emobank` imports them (--label-scale 1-5)."""
    from gt.intake.human_labels import Scale
    return [Scale.parse("1-5").rescale(float(v)) for v in values]


def main() -> None:
    from scipy.stats import pearsonr, spearmanr

    from gt.student import train
    from gt.student.model import Student
    from stages import train as train_command

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=1200, help="ratings bought per arm (default 1200)")
    ap.add_argument("--repeats", default="1,2,3,5", help="ratings per sentence, one arm each (default 1,2,3,5)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 42, 43, ... (default 2)")
    ap.add_argument("--val", type=int, default=500, help="val sentences: the first of the official dev split by id "
                                                           "(default 500)")
    args, train_args = ap.parse_known_args()
    arms = [int(k) for k in args.repeats.split(",")]

    rows = {r["id"]: r for r in csv.DictReader(gzip.open(ROOT / "data/emobank/emobank.csv.gz", "rt", encoding="utf-8"))}
    ratings: dict[str, list[list[float]]] = defaultdict(list)
    for r in csv.DictReader(gzip.open(ROOT / "data/emobank/individual_reader_ratings.csv.gz", "rt", encoding="utf-8")):
        ratings[r["id"]].append(to_scale((r["V"], r["A"], r["D"])))
    pool = sorted(i for i, r in rows.items() if r["split"] == "train" and len(ratings.get(i, ())) >= max(arms))
    dev = sorted((r for r in rows.values() if r["split"] == "dev"), key=lambda r: r["id"])[:args.val]
    test = [r for r in rows.values() if r["split"] == "test"]
    truth = np.array([to_scale((r["V"], r["A"], r["D"])) for r in test])
    for k in arms:
        if args.budget // k > len(pool):
            sys.exit(f"error: --budget {args.budget} needs {args.budget // k} sentences at {k} ratings; the pool has {len(pool)}")

    def line(sid: str, labels, repeats: int) -> str:
        return json.dumps({"id": sid, "title": "", "text": rows[sid]["text"], "labels": labels,
                           "dimension_names": DIMS, "repeats": repeats}) + "\n"

    results = []
    for seed in range(42, 42 + args.seeds):
        rng = np.random.default_rng(seed)
        order = [pool[i] for i in rng.permutation(len(pool))]
        rating_order = {sid: rng.permutation(len(ratings[sid])) for sid in pool}
        for k in arms:
            chosen = order[:args.budget // k]
            with tempfile.TemporaryDirectory(prefix="bench-repeats-") as work:
                work = Path(work)
                (work / "train.jsonl").write_text("".join(line(
                    sid, np.mean([ratings[sid][j] for j in rating_order[sid][:k]], axis=0).round(4).tolist(), k)
                    for sid in chosen), encoding="utf-8")
                (work / "val.jsonl").write_text("".join(line(r["id"], to_scale((r["V"], r["A"], r["D"])), 1)
                                                        for r in dev), encoding="utf-8")
                opts = train_command.parse_options([
                    "--db", str(work / "gt.db"), "--filter", str(ROOT / "filters" / "emobank_vad" / "v1"),
                    "--train-file", str(work / "train.jsonl"), "--val-file", str(work / "val.jsonl"),
                    "--output", str(work / "model"), "--device", "cpu", "--seed", str(seed), *train_args])
                started = time.time()
                train.train(opts, progress=False)
                seconds = time.time() - started
                pred = Student.load(work / "model").predict([("", r["text"]) for r in test])
            run = {"seed": seed, "repeats": k, "sentences": len(chosen), "ratings": len(chosen) * k,
                   "train_seconds": round(seconds),
                   "mae": [round(float(np.abs(pred[:, j] - truth[:, j]).mean()), 4) for j in range(3)],
                   "pearson": [round(float(pearsonr(pred[:, j], truth[:, j])[0]), 4) for j in range(3)],
                   "spearman": [round(float(spearmanr(pred[:, j], truth[:, j])[0]), 4) for j in range(3)]}
            results.append(run)
            print(json.dumps(run), flush=True)

    print(f"\nbudget {args.budget} ratings, {args.seeds} seed(s), official test split vs human-mean "
          f"(valence / arousal / dominance; means over seeds)")
    print("| ratings per sentence | sentences | MAE | Pearson r | Spearman rho |")
    print("|---|---|---|---|---|")
    for k in arms:
        mine = [r for r in results if r["repeats"] == k]

        def mean(key):
            return " / ".join(f"{v:.3f}" for v in np.mean([r[key] for r in mine], axis=0))
        print(f"| {k} | {mine[0]['sentences']:,} | {mean('mae')} | {mean('pearson')} | {mean('spearman')} |")


if __name__ == "__main__":
    main()
