"""The labelled pool as the selection program sees it: valid labels of one label set joined with
their articles (duplicates and too-short texts excluded), and the program's input built from it
(score bins, tiers, sources, near-duplicate clusters, active-learning weights). Shared by the select
stage and the learning curves (gt/student/curve.py), so both select from the same pool the same way.
Also what can narrow a pool: a student's predictions (from a JSONL or a model in gt.db) and its
error per article, and the disagreement between the labels of one article (the difficulty filter).
"""
from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from gt.selection import bins, program as solver, strategies
from gt.core import store
from gt.core.errors import StageError
from gt.core.text import jsonl_records


class PoolError(StageError):
    """The pool cannot be built or narrowed as asked (bad predictions, no difficulty measure): exit 1."""


def load_pool(conn: sqlite3.Connection, filt, oracle: str, prompt_sha256: str) -> tuple[pd.DataFrame, dict]:
    """One row per article labelled validly by one oracle and prompt (each dimension the mean of its
    valid repeats: store.target_frame) joined with its article, and the counts of what was excluded
    before the program sees it."""
    frame = store.target_frame(conn, filt, oracle, prompt_sha256)
    articles = pd.read_sql_query(
        "SELECT id AS article_id, source, near_dup_cluster, too_short, dup_of FROM articles", conn)
    frame = frame.merge(articles, on="article_id", how="left")
    invalid = conn.execute(
        """SELECT COUNT(DISTINCT article_id) FROM labels l WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?
           AND status != 'ok' AND NOT EXISTS (SELECT 1 FROM labels k WHERE k.article_id = l.article_id
           AND k.filter_id = l.filter_id AND k.oracle = l.oracle AND k.prompt_sha256 = l.prompt_sha256
           AND k.status = 'ok')""", (filt.id, oracle, prompt_sha256)).fetchone()[0]
    dup = frame["dup_of"].notna()
    short = (frame["too_short"].fillna(0).astype(int) == 1) & ~dup
    excluded = {"no valid label (every repeat invalid or failed)": int(invalid), "duplicates (dup_of set)": int(dup.sum()),
                "too short": int(short.sum())}
    frame = frame[~dup & ~short].reset_index(drop=True)
    return frame, excluded


def student_error(pool: pd.DataFrame, predictions: pd.DataFrame, dims: list[str]) -> pd.Series:
    """Mean absolute error over `dims` per pool article (NaN where there is no prediction)."""
    merged = pool[["article_id", *dims]].merge(predictions[["article_id", *dims]], on="article_id", how="left",
                                                suffixes=("", "_pred"))
    err = np.abs(merged[dims].to_numpy() - merged[[f"{d}_pred" for d in dims]].to_numpy()).mean(axis=1)
    return pd.Series(err, index=pool.index)


def program_pool(frame: pd.DataFrame, dims: list[str], edges: np.ndarray, tier_names: list[str],
                 error: pd.Series | None = None) -> tuple[solver.Pool, list[str]]:
    """The selection program's view of a pool frame (from load_pool): one row per article with its
    bins over `dims`, tier, source and near-duplicate cluster codes; with `error` (the student's
    error per article, NaN where unknown) the active-learning weights and priorities. Returns the
    Pool and the source names its codes index."""
    tier_index = {t: i for i, t in enumerate(tier_names)}
    scores = frame[dims].to_numpy(dtype=float)
    source_codes, source_names = pd.factorize(frame["source"].fillna("(unknown)"), sort=True)
    cluster_codes = pd.factorize(frame["near_dup_cluster"])[0]  # NaN -> -1
    weight, priority = (None, None) if error is None else strategies.active_learning_weights(error, len(dims))
    pool = solver.Pool(bins=bins.to_bins(scores, edges), tier=frame["tier"].map(tier_index).to_numpy(),
                    source=source_codes, cluster=cluster_codes, weight=weight, priority=priority)
    return pool, list(source_names)


def load_predictions(conn: sqlite3.Connection, spec: str, dimension_names: list[str]) -> tuple[pd.DataFrame, str]:
    """Predictions as a frame (article_id + one column per dimension) from a JSONL file or from a
    model id in gt.db. Predictions for articles gt.db does not know are an error."""
    path = Path(spec)
    if path.is_file():
        rows = []
        for n, obj in jsonl_records(path, lambda message: PoolError(f"--model-predictions: {message}")):
            aid = obj.get("id", obj.get("article_id")) if isinstance(obj, dict) else None
            values = (obj.get("predictions", obj.get("scores")) if isinstance(obj, dict) else None)
            if aid is None or values is None:
                raise PoolError(f"--model-predictions: a line needs 'id' (or 'article_id') and 'predictions' "
                                  f"(or 'scores'), {path}:{n}")
            if isinstance(values, list):
                if len(values) != len(dimension_names):
                    raise PoolError(f"--model-predictions: {len(values)} predictions for "
                                      f"{len(dimension_names)} dimensions, {path}:{n} (a list follows the "
                                      f"filter's dimension order)")
                values = dict(zip(dimension_names, values))
            if not isinstance(values, dict):
                raise PoolError(f"--model-predictions: predictions must be an object or a list, {path}:{n}")
            missing = [d for d in dimension_names if d not in values]
            if missing:
                raise PoolError(f"--model-predictions: no prediction for {', '.join(missing)}, {path}:{n}")
            try:
                rows.append({"article_id": str(aid), **{d: float(values[d]) for d in dimension_names}})
            except (TypeError, ValueError):
                raise PoolError(f"--model-predictions: a prediction is not a number, {path}:{n}") from None
        frame = pd.DataFrame(rows, columns=["article_id", *dimension_names])
        where = str(path)
    else:
        if conn.execute("SELECT 1 FROM models WHERE id = ?", (spec,)).fetchone() is None:
            raise PoolError(f"--model-predictions '{spec}': no such file and no model with that id in gt.db "
                              f"(pass a predictions JSONL or a model id from `make evaluate`)")
        long = pd.read_sql_query("SELECT article_id, dimension, score FROM predictions WHERE model_id = ?",
                                 conn, params=(spec,))
        frame = long.pivot_table(index="article_id", columns="dimension", values="score").reset_index()
        missing = [d for d in dimension_names if d not in frame.columns]
        if long.empty or missing:
            raise PoolError(f"--model-predictions '{spec}': the model has no predictions"
                              + (f" for {', '.join(missing)}" if missing and not long.empty else "")
                              + " in gt.db (run `make evaluate` with predictions)")
        frame = frame[["article_id", *dimension_names]].dropna()
        where = f"model {spec} in gt.db"
    if frame["article_id"].duplicated().any():
        dup = frame.loc[frame["article_id"].duplicated(), "article_id"].iloc[0]
        raise PoolError(f"--model-predictions: article '{dup}' appears twice, {where}")
    known = pd.read_sql_query("SELECT id FROM articles", conn)["id"]
    unknown = frame.loc[~frame["article_id"].isin(known), "article_id"]
    if len(unknown):
        raise PoolError(f"--model-predictions: {len(unknown)} predictions for articles not in gt.db "
                          f"(first: '{unknown.iloc[0]}'), {where} (predict on articles of this database)")
    return frame, where


def disagreement(conn: sqlite3.Connection, filt, pool: pd.DataFrame, oracle: str, prompt_sha256: str,
                 dims: list[str]) -> pd.Series:
    """Mean absolute difference between the chosen label and every other valid label of the same
    article (other oracles, other repeats), over `dims`; NaN where there is none."""
    others = store.scores_frame(conn, filt, None, None, repeat=None)
    others = others[~((others["oracle"] == oracle) & (others["prompt_sha256"] == prompt_sha256)
                      & (others["repeat"] == 0))]
    if others.empty:
        return pd.Series(np.nan, index=pool.index)
    merged = others[["article_id", *dims]].merge(pool[["article_id", *dims]], on="article_id", suffixes=("", "_own"))
    merged["diff"] = np.abs(merged[dims].to_numpy() - merged[[f"{d}_own" for d in dims]].to_numpy()).mean(axis=1)
    per_article = merged.groupby("article_id")["diff"].mean()
    return pool["article_id"].map(per_article)


def difficulty_filter(pool: pd.DataFrame, difficulty: pd.Series, which: str) -> np.ndarray:
    """Mask of the harder (or easier) half of the articles that have a difficulty measure; ties by id."""
    has = difficulty.notna().to_numpy()
    if not has.any():
        raise PoolError("--filter-by-difficulty needs labels of the same articles by a second oracle or repeat "
                          "(make calibrate / make label --repeats), or --model-predictions")
    idx = np.flatnonzero(has)
    values = difficulty.to_numpy()[idx]
    ids = pool["article_id"].to_numpy()[idx]
    order = np.lexsort((ids, -values if which == "hard" else values))
    keep = np.zeros(len(pool), dtype=bool)
    keep[idx[order[: math.ceil(len(idx) / 2)]]] = True
    return keep


def drop_with_cluster_mates(pool_df: pd.DataFrame, ids: set[str], excluded: dict, why: str) -> pd.DataFrame:
    """The pool without these articles and their near-duplicate cluster mates (counted under `why`)."""
    clusters = set(pool_df.loc[pool_df["article_id"].isin(ids), "near_dup_cluster"].dropna())
    drop = pool_df["article_id"].isin(ids) | pool_df["near_dup_cluster"].isin(clusters)
    excluded[why] = int(drop.sum())
    return pool_df[~drop].reset_index(drop=True)
