"""Which articles to buy labels for next (`label --pick`, `make loop`): aim the oracle at the gaps.

    random     the seeded random sample (the label stage's default; no scorer, nothing recorded here)
    gaps       a cheap scorer predicts every unlabelled article's scores, and the picks are the
               articles whose predicted profiles best fill the (dimension, score bin) cells the labels
               so far leave short: the selection program (gt/selection/program.py, OR-Tools) with each
               cell's quota the shortfall of the labels bought so far against an even share of the
               enlarged set, a bonus for a cell no label reaches yet, and one article per
               near-duplicate cluster. A stated share of the picks (--explore-share, default 20%)
               is a seeded uniform sample of the rest, so a wrong scorer cannot starve a region, and
               it measures what random buying would have found.
    uncertain  where the scorer's ensemble (bootstrap refits of the probe) disagrees most, plus the
               same exploration share
    ids        exactly the articles listed in a file

The scorer (`fit_scorer`) is the latest student's predictions when one trained on this oracle's
labels has predicted every candidate (stored by `evaluate --all`), else a probe: a ridge head
(gt/student/probe.py) on frozen MiniLM embeddings (gt/student/embeddings.py, cached per text) fitted on the
valid labels bought so far from this oracle and prompt. It never sees another oracle's labels or
imported ones. A ridge head shrinks toward the mean, so its predictions are used by rank: each
dimension's predicted ranks are mapped onto the score distribution of this oracle's labels that
were not aimed (random and explore picks), which puts the articles most likely to be extreme into
the outer bins in the proportion the pool holds them.

Every pick round is recorded in gt.db (pick_rounds, label_picks: why each article was picked, its
predicted scores, the cell it was meant to fill), before anything is paid; a run that stops early
resumes the round's unlabelled picks instead of picking again.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gt.selection import bins, program as solver, strategies
from gt.core import store
from gt.core.filters import Filter

METHODS = ("random", "gaps", "uncertain", "ids")
AIMED_REASONS = ("gap", "uncertain", "listed")     # picks that were not a uniform sample
DEFAULT_EXPLORE_SHARE = 0.2
MIN_LABELS_TO_AIM = 30          # fewer valid labels than this and no scorer can be fitted
MIN_REFERENCE = 50              # unaimed labels needed to use them (not all labels) as the score reference
ENSEMBLE = 5                    # bootstrap refits of the probe for `uncertain`
PICK_TIME_LIMIT = 20.0          # seconds CP-SAT may polish the gap program
EXTREMENESS_LEVELS = 10         # an article's extremeness weight is 0..9, a short cell worth 10 x the skill


class PickError(Exception):
    """Picking cannot go on; the message says what is wrong and what to do."""


@dataclass
class LabelKey:
    filter_id: str
    oracle: str
    prompt_sha256: str


@dataclass
class Scorer:
    description: str
    labels_seen: int
    predicted: np.ndarray                  # (candidates, D) on 0-10, used by rank
    uncertainty: np.ndarray | None = None  # (candidates,) ensemble spread in label standard deviations
    seconds: dict = field(default_factory=dict)
    skill: np.ndarray | None = None        # (D,) leave-one-out R^2 of the probe per dimension (None: unknown)


@dataclass
class Picks:
    method: str
    article_ids: list[str]                 # in the order the label run takes them
    reasons: list[str]
    cells: list[str | None]
    predicted: np.ndarray | None = None    # (picks, D) the scorer's scores (mapped), None for ids/random
    uncertainty: np.ndarray | None = None
    scorer: str | None = None
    labels_seen: int = 0
    explore_share: float = 0.0
    params: dict = field(default_factory=dict)
    round_id: int | None = None
    resumed: bool = False
    candidates: int = 0


# ---- what is labelled, what is not -----------------------------------------------------------------

def labelled(conn: sqlite3.Connection, filt: Filter, key: LabelKey) -> pd.DataFrame:
    """This oracle's valid repeat-0 labels under this prompt: article_id and one column per dimension."""
    dims = filt.dimension_names
    frame = pd.read_sql_query(
        """SELECT l.article_id, s.dimension, s.score FROM labels l JOIN label_scores s ON s.label_id = l.id
           WHERE l.filter_id = ? AND l.oracle = ? AND l.prompt_sha256 = ? AND l.status = 'ok' AND l."repeat" = 0""",
        conn, params=(key.filter_id, key.oracle, key.prompt_sha256))
    if frame.empty:
        return pd.DataFrame(columns=["article_id", *dims])
    wide = frame.pivot(index="article_id", columns="dimension", values="score").reset_index()
    return wide.dropna(subset=dims)[["article_id", *dims]].sort_values("article_id").reset_index(drop=True)


def finally_labelled(conn: sqlite3.Connection, key: LabelKey) -> set[str]:
    """Articles with a final (ok or invalid) repeat-0 label of this key: never bought again."""
    return {r[0] for r in conn.execute(
        """SELECT article_id FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND "repeat" = 0
           AND status IN ('ok', 'invalid')""", (key.filter_id, key.oracle, key.prompt_sha256))}


def candidates(conn: sqlite3.Connection, filt: Filter, key: LabelKey, eligible: Sequence[str]) -> list[str]:
    """Eligible articles (in sample order) with no final (ok or invalid) repeat-0 label of this key,
    and none the filter's keyword prefilter skips (a label run would never send those: picked, they
    would come back every round unlabelled)."""
    done = finally_labelled(conn, key)
    todo = [a for a in eligible if a not in done]
    if not filt.prefilter:
        return todo
    texts = store.article_texts(conn, todo)
    return [a for a in todo if not filt.prefilter_reason(*texts[a])]


def has_pick_tables(conn: sqlite3.Connection) -> bool:
    """False on a database opened read-only before its schema reached version 5."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_picks'").fetchone() is not None


def aimed_articles(conn: sqlite3.Connection, key: LabelKey) -> set[str]:
    if not has_pick_tables(conn):
        return set()
    return {r[0] for r in conn.execute(
        f"""SELECT p.article_id FROM label_picks p JOIN pick_rounds r ON r.id = p.round_id
            WHERE r.filter_id = ? AND r.oracle = ? AND r.prompt_sha256 = ?
            AND p.reason IN ({','.join('?' * len(AIMED_REASONS))})""",
        (key.filter_id, key.oracle, key.prompt_sha256, *AIMED_REASONS))}


# ---- the scorer ------------------------------------------------------------------------------------

def spread_like(pred: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each column's predictions by rank, mapped onto the reference scores' distribution (quantile
    mapping): the k-th highest prediction gets the reference's matching quantile."""
    from scipy.stats import rankdata

    out = np.empty_like(pred, dtype=float)
    n = len(pred)
    for j in range(pred.shape[1]):
        q = (rankdata(pred[:, j], method="average") - 0.5) / max(n, 1)
        out[:, j] = np.quantile(reference[:, j], q)
    return out


def student_scorer(conn: sqlite3.Connection, filt: Filter, key: LabelKey, ids: Sequence[str]) -> Scorer | None:
    """The newest student trained on a selection of this oracle's labels whose stored predictions
    cover every candidate; None when there is none."""
    dims = filt.dimension_names
    for m in conn.execute(
            """SELECT m.id, m.created_at FROM models m JOIN selections s ON s.id = m.selection_id
               WHERE m.filter_id = ? AND s.oracle = ? ORDER BY m.created_at DESC, m.rowid DESC""",
            (key.filter_id, key.oracle)).fetchall():
        n = conn.execute("SELECT COUNT(DISTINCT article_id) FROM predictions WHERE model_id = ?", (m[0],)).fetchone()[0]
        if n < len(ids):
            continue
        frame = pd.read_sql_query("SELECT article_id, dimension, score FROM predictions WHERE model_id = ?", conn,
                                  params=(m[0],)).pivot(index="article_id", columns="dimension", values="score")
        if not set(dims) <= set(frame.columns):
            continue
        frame = frame.reindex(list(ids))[dims]
        if frame.isna().any().any():
            continue
        trained = conn.execute("""SELECT COUNT(*) FROM selection_members sm JOIN models m ON m.selection_id = sm.selection_id
                                  WHERE m.id = ? AND sm.split = 'train'""", (m[0],)).fetchone()[0]
        return Scorer(f"student '{m[0]}' (its stored predictions, evaluate --all)", int(trained), frame.to_numpy(float))
    return None


def fit_scorer(conn: sqlite3.Connection, filt: Filter, key: LabelKey, ids: Sequence[str], *, cache: Path | None,
               seed: int, ensemble: int = 0, use_student: bool = True, progress: bool = False,
               lab: pd.DataFrame | None = None) -> Scorer:
    """Predicted scores of `ids` from this oracle's labels only (see the module docstring); `lab` is
    `labelled(conn, filt, key)` when the caller has read it already."""
    from gt.student.embeddings import Embedder, article_vectors
    from gt.student.probe import RidgeHead

    if use_student and not ensemble:
        found = student_scorer(conn, filt, key, ids)
        if found is not None:
            return found
    lab = labelled(conn, filt, key) if lab is None else lab
    if len(lab) < MIN_LABELS_TO_AIM:
        raise PickError(f"{key.oracle} has {len(lab)} valid label(s) of {filt.id} under this prompt; a scorer needs "
                        f"at least {MIN_LABELS_TO_AIM}: buy a random start first (make label LLM={key.oracle} "
                        f"TARGET={max(10 * MIN_LABELS_TO_AIM, 300)})")
    t0 = time.perf_counter()
    embedder = Embedder()
    lab_ids = list(lab["article_id"])
    x, stats = article_vectors(conn, lab_ids + list(ids), filt.max_article_chars, cache, embedder, progress=progress)
    x_lab, x_cand = x[:len(lab_ids)], x[len(lab_ids):]
    t1 = time.perf_counter()
    y = lab[filt.dimension_names].to_numpy(float)
    head = RidgeHead.fit(x_lab, y)
    pred = head.predict(x_cand)
    uncertainty = None
    if ensemble:
        rng = np.random.default_rng(seed)
        preds = []
        for _ in range(ensemble):
            rows = rng.integers(0, len(y), len(y))
            preds.append(RidgeHead.fit(x_lab[rows], y[rows], alphas=head.alpha.tolist()).predict(x_cand))
        spread = np.std(np.stack(preds), axis=0) / np.where(y.std(axis=0) > 1e-9, y.std(axis=0), 1.0)
        uncertainty = spread.mean(axis=1)
    desc = (f"probe: ridge head on frozen MiniLM embeddings, fitted on {len(lab)} valid labels of {key.oracle}"
            + (f", {ensemble} bootstrap refits for the spread" if ensemble else ""))
    return Scorer(desc, len(lab), pred, uncertainty,
                  {"embed": round(t1 - t0, 2), "fit_predict": round(time.perf_counter() - t1, 2),
                   "embedded": stats["computed"], "cached": stats["cached"]},
                  skill=np.clip(1.0 - head.loo_mse, 0.0, 1.0))


# ---- the picks -------------------------------------------------------------------------------------

def cell_counts(cells: np.ndarray, n_bins: int) -> np.ndarray:
    """(D, B) labels per (dimension, bin)."""
    d = cells.shape[1] if cells.ndim == 2 else 0
    return np.stack([np.bincount(cells[:, j], minlength=n_bins) for j in range(d)]) if len(cells) else \
        np.zeros((d, n_bins), dtype=np.int64)


def fill(counts: np.ndarray, quota: int) -> int:
    """The coverage objective of a labelled set: sum over cells of min(count, quota)."""
    return int(np.minimum(counts, quota).sum())


def even_quota(n_labels: int, n_bins: int) -> int:
    return max(1, math.ceil(n_labels / n_bins))


def skill_values(skill: np.ndarray | None, d: int) -> np.ndarray:
    """(D,) integer value of filling one short cell of each dimension: the scorer's leave-one-out R^2
    in tenths (a prediction the probe cannot make is worth nothing to aim at), 1 each when unknown."""
    if skill is None:
        return np.ones(d, dtype=np.int64)
    return np.round(10 * np.clip(skill, 0.0, 1.0)).astype(np.int64)


def gap_choice(pred_bins: np.ndarray, current: np.ndarray, k: int, *, cluster: np.ndarray, priority: np.ndarray,
               seed: int, values: np.ndarray | None = None,
               time_limit: float = PICK_TIME_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """Mask of k candidates whose predicted bins best fill the shortfall of `current` (D, B) against
    an even share of the enlarged set, and each one's (D,) 'short cell' flags. A short cell of
    dimension j is worth values[j] per article (the scorer's skill there), and a cell no label
    reaches yet is covered first. Past the shortfall (or where the scorer cannot reach it), the
    picks go to the most extreme predictions: each article weighs its `priority` percentile in
    EXTREMENESS_LEVELS levels, less than one short cell is worth. Cells with no shortfall, and every
    cell of a dimension worth 0, are folded into one extra bin worth nothing, so candidates
    differing only there aggregate (the program stays small on a 100k pool)."""
    n, d = pred_bins.shape
    b = current.shape[1]
    values = np.ones(d, dtype=np.int64) if values is None else np.asarray(values, dtype=np.int64)
    quota = even_quota(int(current[0].sum()) + k, b)
    short = np.maximum(quota - current, 0) * (values[:, None] > 0)           # (D, B)
    hits = short[np.arange(d)[None, :], pred_bins] > 0                       # (n, D)
    bins = np.where(hits, pred_bins, b)
    quota_x = np.concatenate([short, np.zeros((d, 1), dtype=np.int64)], axis=1)
    value = (quota_x > 0) * values[:, None] * EXTREMENESS_LEVELS
    bonus = np.where((np.concatenate([current, np.ones((d, 1), dtype=np.int64)], axis=1) == 0) & (quota_x > 0),
                     int(values.sum()) * EXTREMENESS_LEVELS + 1, 0)
    pct = pd.Series(priority).rank(pct=True, method="average").to_numpy()
    weight = np.minimum(EXTREMENESS_LEVELS - 1, np.floor(pct * EXTREMENESS_LEVELS)).astype(np.int64)
    pool = solver.Pool(bins=bins, tier=np.zeros(n), source=np.zeros(n), cluster=cluster, weight=weight,
                    priority=priority)
    units = int((cluster < 0).sum()) + len(np.unique(cluster[cluster >= 0]))
    k = min(k, units)
    program = solver.Program(quota=quota_x, value=value, size=k, tier_names=["all"], tier_min=np.array([0]),
                          tier_max=np.array([k]), bonus=bonus)
    chosen, _, _ = solver.choose(pool, program, seed=seed, time_limit=time_limit)
    return chosen, hits


def _cluster_codes(conn: sqlite3.Connection, ids: Sequence[str]) -> np.ndarray:
    found: dict[str, str] = {}
    for chunk, marks in store.in_chunks(ids):
        for r in conn.execute(f"SELECT id, near_dup_cluster FROM articles WHERE id IN ({marks}) "
                              f"AND near_dup_cluster IS NOT NULL", chunk):
            found[r[0]] = r[1]
    return pd.factorize(pd.Series([found.get(a) for a in ids], dtype=object))[0].astype(np.int64)


def _interleave(first: list[int], second: list[int], seed: int) -> list[int]:
    """Both lists in one seeded random order, so a run cut short keeps the stated share."""
    both = first + second
    return [both[i] for i in np.random.default_rng(seed + 1).permutation(len(both))]


def plan_picks(conn: sqlite3.Connection, filt: Filter, key: LabelKey, method: str, eligible: Sequence[str], n: int, *,
               seed: int, explore_share: float = DEFAULT_EXPLORE_SHARE, edges: np.ndarray | None = None,
               cache: Path | None = None, ids_file: str | None = None, use_student: bool = True,
               progress: bool = False) -> Picks:
    """The next `n` articles to label by `method` (not recorded; see record_round)."""
    if method == "ids":
        return _listed(conn, filt, key, eligible, ids_file)
    pool = candidates(conn, filt, key, eligible)
    if not pool:
        return Picks(method, [], [], [], explore_share=explore_share)
    n = min(n, len(pool))
    if method == "random":
        return Picks(method, pool[:n], ["random"] * n, [None] * n, explore_share=1.0, candidates=len(pool))
    edges = bins.parse_bins(bins.DEFAULT_BINS) if edges is None else edges
    lab = labelled(conn, filt, key)
    scorer = fit_scorer(conn, filt, key, pool, cache=cache, seed=seed, use_student=use_student,
                        ensemble=ENSEMBLE if method == "uncertain" else 0, progress=progress, lab=lab)
    dims = filt.dimension_names
    unaimed = lab[~lab["article_id"].isin(aimed_articles(conn, key))]
    reference = (unaimed if len(unaimed) >= MIN_REFERENCE else lab)[dims].to_numpy(float)
    mapped = spread_like(scorer.predicted, reference)
    n_explore = int(round(n * explore_share))
    n_aim = n - n_explore
    rng = np.random.default_rng(seed)
    pred_bins = bins.to_bins(mapped, edges)
    current = cell_counts(bins.to_bins(lab[dims].to_numpy(float), edges), len(edges))
    hits = np.zeros_like(pred_bins, dtype=bool)
    if method == "gaps":
        values = skill_values(scorer.skill, len(dims))
        z = np.abs(mapped - reference.mean(axis=0)) / np.maximum(reference.std(axis=0), 1e-9) * values
        chosen, hits = gap_choice(pred_bins, current, n_aim, cluster=_cluster_codes(conn, pool), values=values,
                                  priority=z.max(axis=1) + 1e-6 * rng.random(len(pool)), seed=seed)
        aim = list(np.flatnonzero(chosen))
        reason = "gap"
    else:
        aim = list(np.argsort(-scorer.uncertainty, kind="stable")[:n_aim])
        reason = "uncertain"
    rest = np.setdiff1d(np.arange(len(pool)), aim)
    explore = list(rng.choice(rest, size=min(n_explore, len(rest)), replace=False)) if len(rest) else []
    order = _interleave([int(i) for i in aim], [int(i) for i in explore], seed)
    in_aim = set(int(i) for i in aim)
    labels = bins.bin_labels(edges)
    cells = []
    for i in order:
        if i in in_aim and method == "gaps" and hits[i].any():
            short_dims = np.flatnonzero(hits[i])
            j = int(short_dims[np.argmin(current[short_dims, pred_bins[i, short_dims]])])
            cells.append(f"{dims[j]}:{labels[pred_bins[i, j]]}")
        else:
            cells.append(None)
    picks = Picks(method, [pool[i] for i in order], [reason if i in in_aim else "explore" for i in order], cells,
                  predicted=mapped[order], scorer=scorer.description, labels_seen=scorer.labels_seen,
                  uncertainty=None if scorer.uncertainty is None else scorer.uncertainty[order],
                  explore_share=explore_share, candidates=len(pool))
    picks.params = {"bins": [float(e) for e in edges], "seconds": scorer.seconds,
                    "skill": None if scorer.skill is None else {d: round(float(v), 3) for d, v in zip(dims, scorer.skill)},
                    "predicted": predicted_gain(current, pred_bins, np.asarray(order, dtype=np.int64), mapped)}
    return picks


def predicted_gain(current: np.ndarray, pred_bins: np.ndarray, chosen: np.ndarray, mapped: np.ndarray) -> dict:
    """What the picks are predicted to add (their predicted bins counted as labels) against the same
    number of uniform random candidates (the candidates' predicted bin shares, scaled)."""
    k = len(chosen)
    b = current.shape[1]
    quota = even_quota(int(current[0].sum()) + k, b)
    picked = cell_counts(pred_bins[chosen], b)
    at_random = cell_counts(pred_bins, b) * (k / max(len(pred_bins), 1))
    outer = strategies.is_extreme(mapped).any(axis=1)
    return {"quota": quota, "fill_before": fill(current, quota), "fill_after": fill(current + picked, quota),
            "fill_random": round(float(np.minimum(current + at_random, quota).sum()), 1),
            "cells_short_before": int((current < quota).sum()), "cells_short_after": int((current + picked < quota).sum()),
            "outer_picked": int(outer[chosen].sum()), "outer_random": round(float(outer.mean() * k), 1)}


def read_ids_file(path: str) -> list[str]:
    """Article ids, one per line (blank lines and # comments skipped), or JSONL lines with an "id"."""
    p = Path(path)
    if not p.is_file():
        raise PickError(f"--ids-file {path}: no such file (one article id per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line_no = p.read_bytes()[:e.start].count(b"\n") + 1
        raise PickError(f"--ids-file {path} line {line_no}: not UTF-8 text (save the file as UTF-8, one article id "
                        f"per line)") from None
    except OSError as e:
        raise PickError(f"--ids-file {path}: cannot be read ({e.strerror or e})") from None
    out: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                raise PickError(f"--ids-file {path} line {n}: a JSON line without an \"id\" (one id per line, or "
                                f"JSONL with an id field)") from None
        out.append(line)
    if not out:
        raise PickError(f"--ids-file {path}: no article ids in it (one per line)")
    return list(dict.fromkeys(out))


def _listed(conn: sqlite3.Connection, filt: Filter, key: LabelKey, eligible: Sequence[str],
            ids_file: str | None) -> Picks:
    """Exactly the listed articles, under the pool's rules: an id gt.db lacks, an exact duplicate (its
    kept article is the one to list), a text under the filter's min_chars or one the keyword prefilter
    skips is refused, one line each, before anything is paid."""
    if not ids_file:
        raise PickError("--pick ids needs --ids-file FILE (one article id per line)")
    listed = read_ids_file(ids_file)
    rows = {r["id"]: r for r in conn.execute(
        "SELECT id, dup_of, too_short, chars FROM articles WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(listed),))}
    unknown = [a for a in listed if a not in rows]
    if unknown:
        raise PickError(f"--ids-file {ids_file}: {len(unknown)} id(s) not in gt.db, e.g. '{unknown[0]}' "
                        f"(ingest them first, or remove them from the file)")
    pool, texts = set(eligible), store.article_texts(conn, listed)
    refused = []
    for a in listed:
        r = rows[a]
        if r["dup_of"] is not None:
            refused.append(f"'{a}' is an exact duplicate of '{r['dup_of']}' (list that one)")
        elif a not in pool:
            refused.append(f"'{a}' is too short to label (under min_chars: flagged too_short)")
        elif filt.prefilter_reason(*texts[a]):
            refused.append(f"'{a}' is skipped by the filter's prefilter ({filt.prefilter_reason(*texts[a])})")
    if refused:
        raise PickError(f"--ids-file {ids_file}: {len(refused)} listed article(s) cannot be labelled: "
                        f"{'; '.join(refused[:5])}{' ...' if len(refused) > 5 else ''} (remove them from the file; "
                        f"nothing was sent)")
    done = finally_labelled(conn, key)
    todo = [a for a in listed if a not in done]
    return Picks("ids", todo, ["listed"] * len(todo), [None] * len(todo), candidates=len(listed),
                 params={"ids_file": str(ids_file), "listed": len(listed), "already_labelled": len(listed) - len(todo)})


# ---- rounds in gt.db ---------------------------------------------------------------------------------

def record_round(conn: sqlite3.Connection, key: LabelKey, picks: Picks, *, requested: int, seed: int,
                 loop_key: str | None = None, round_no: int | None = None) -> int:
    """Store the round and every pick with its reason, in one transaction; returns the round id."""
    dims = None
    if picks.predicted is not None:
        dims = [r[0] for r in conn.execute("SELECT value FROM json_each((SELECT dimensions_json FROM filters "
                                           "WHERE id = ?))", (key.filter_id,))]
    with store.transaction(conn):
        cur = conn.execute(
            """INSERT INTO pick_rounds (filter_id, oracle, prompt_sha256, method, loop_key, round_no, requested,
                                        explore_share, seed, scorer, labels_seen, params_json)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (key.filter_id, key.oracle, key.prompt_sha256, picks.method, loop_key, round_no, requested,
             picks.explore_share, seed, picks.scorer, picks.labels_seen, json.dumps(picks.params)))
        round_id = int(cur.lastrowid)
        conn.executemany(
            """INSERT INTO label_picks (round_id, article_id, rank, reason, cell, predicted_json, uncertainty)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [(round_id, a, i, picks.reasons[i], picks.cells[i],
              json.dumps({d: round(float(v), 3) for d, v in zip(dims, picks.predicted[i])}) if dims else None,
              None if picks.uncertainty is None else float(picks.uncertainty[i]))
             for i, a in enumerate(picks.article_ids)])
    picks.round_id = round_id
    return round_id


def open_round(conn: sqlite3.Connection, key: LabelKey, method: str, loop_key: str | None = None) -> Picks | None:
    """The newest round of this key, method and loop whose picks are not all asked yet (the run that
    picked them stopped first): its unasked picks, in order; None when there is no such round."""
    if not has_pick_tables(conn):
        return None
    row = conn.execute(
        """SELECT id FROM pick_rounds WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND method = ?
           AND loop_key IS ? ORDER BY id DESC LIMIT 1""",
        (key.filter_id, key.oracle, key.prompt_sha256, method, loop_key)).fetchone()
    if row is None:
        return None
    pending = pending_picks(conn, key, int(row[0]))
    return pending if pending.article_ids else None


def pending_picks(conn: sqlite3.Connection, key: LabelKey, round_id: int) -> Picks:
    """A recorded round's picks with no label row yet, in order. A pick whose call failed has an
    'error' label and is not pending (it stays a candidate for later picks)."""
    row = conn.execute("SELECT * FROM pick_rounds WHERE id = ?", (round_id,)).fetchone()
    rows = conn.execute(
        """SELECT p.article_id, p.reason, p.cell FROM label_picks p WHERE p.round_id = ? AND NOT EXISTS (
               SELECT 1 FROM labels l WHERE l.article_id = p.article_id AND l.filter_id = ? AND l.oracle = ?
               AND l.prompt_sha256 = ? AND l."repeat" = 0) ORDER BY p.rank""",
        (round_id, key.filter_id, key.oracle, key.prompt_sha256)).fetchall()
    return Picks(row["method"], [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], scorer=row["scorer"],
                 labels_seen=row["labels_seen"] or 0, explore_share=row["explore_share"],
                 params=json.loads(row["params_json"] or "{}"), round_id=round_id, resumed=True)


def describe(picks: Picks) -> str:
    """One line: what was picked and why."""
    if picks.resumed:
        return (f"resuming pick round {picks.round_id} ({picks.method}): {len(picks.article_ids)} picked article(s) "
                f"not asked yet; nothing is picked again")
    counts = pd.Series(picks.reasons, dtype=object).value_counts().to_dict() if picks.reasons else {}
    what = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    line = f"picked {len(picks.article_ids)} article(s) by --pick {picks.method} ({what or 'none'})"
    if picks.scorer:
        line += f"; scorer: {picks.scorer}"
    gain = picks.params.get("predicted")
    if gain:
        line += (f"; predicted coverage (cells filled up to an even quota of {gain['quota']}): {gain['fill_before']} "
                 f"now -> {gain['fill_after']} with these picks vs {gain['fill_random']} with as many random ones; "
                 f"articles predicted in the outer bins: {gain['outer_picked']} vs {gain['outer_random']} at random")
    if picks.round_id is not None:
        line += f"; recorded as pick round {picks.round_id}"
    return line
