"""The labelled pool as the selection program sees it: valid labels of one label set joined with
their articles (duplicates and too-short texts excluded), and the program's input built from it
(score bins, tiers, sources, near-duplicate clusters, active-learning weights). Shared by the select
stage and the learning curves (stages/curve.py), so both select from the same pool the same way.
"""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from stages import selection as sel
from stages import store


def load_pool(conn: sqlite3.Connection, filt, oracle: str, prompt_sha256: str) -> tuple[pd.DataFrame, dict]:
    """Valid labels (repeat 0) of one oracle and prompt joined with their articles, and the counts
    of what was excluded before the program sees it."""
    frame = store.scores_frame(conn, filt, oracle, prompt_sha256, repeat=0)
    articles = pd.read_sql_query(
        "SELECT id AS article_id, source, near_dup_cluster, too_short, dup_of FROM articles", conn)
    frame = frame.merge(articles, on="article_id", how="left")
    invalid = conn.execute(
        """SELECT COUNT(*) FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND repeat = 0
           AND status != 'ok'""", (filt.id, oracle, prompt_sha256)).fetchone()[0]
    dup = frame["dup_of"].notna()
    short = (frame["too_short"].fillna(0).astype(int) == 1) & ~dup
    excluded = {"invalid or failed labels": int(invalid), "duplicates (dup_of set)": int(dup.sum()),
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
                 error: pd.Series | None = None) -> tuple[sel.Pool, list[str]]:
    """The selection program's view of a pool frame (from load_pool): one row per article with its
    bins over `dims`, tier, source and near-duplicate cluster codes; with `error` (the student's
    error per article, NaN where unknown) the active-learning weights and priorities. Returns the
    Pool and the source names its codes index."""
    tier_index = {t: i for i, t in enumerate(tier_names)}
    scores = frame[dims].to_numpy(dtype=float)
    source_codes, source_names = pd.factorize(frame["source"].fillna("(unknown)"), sort=True)
    cluster_codes = pd.factorize(frame["near_dup_cluster"])[0]  # NaN -> -1
    weight, priority = (None, None) if error is None else sel.active_learning_weights(error, len(dims))
    pool = sel.Pool(bins=sel.to_bins(scores, edges), tier=frame["tier"].map(tier_index).to_numpy(),
                    source=source_codes, cluster=cluster_codes, weight=weight, priority=priority)
    return pool, list(source_names)
