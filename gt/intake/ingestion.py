"""Ingesting articles into gt.db, as a piece every stage that takes `--source` shares (ingest,
label, calibrate, and the labelled-file import): read the files (gt/intake/reading.py: JSONL, CSV,
Parquet, .gz, globs, standard input; field names; cleaning), de-duplicate, cluster near-duplicates, import carried labels. The ingest stage
(stages/ingest.py, with gt/intake/ingest.py) is its command; what happens to each record is told in gt/intake/ingest.py.
"""
from __future__ import annotations

import sqlite3
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from gt.core import store
from gt.core.filters import Filter
from gt.intake.human_labels import HumanImportCounts, HumanLabelImporter, HumanLabelSpec, read_values
from gt.intake.labeled_file import ANALYSIS_SUFFIX, LabelImporter
from gt.intake.reading import (Problem, clean_article, decode_record, derived_id, expand_sources, file_items,
                               map_fields)
from gt.core.text import (NearDuplicateIndex, content_hash_of_words, minhash_signature,
                         signature_from_bytes, signature_to_bytes, words)

DEFAULT_MIN_CHARS = 300
DEFAULT_MAX_CHARS = 200_000
BATCH_SIZE = 2000
CHUNK_SIZE = 250  # records per worker task
MAX_PRINTED_PROBLEMS = 20


@dataclass
class IngestSummary:
    files: int = 0
    records: int = 0
    inserted: int = 0           # new rows in articles (duplicate rows included)
    already_present: int = 0    # records whose id and text were already in gt.db
    duplicates: int = 0         # new rows that are exact duplicates (dup_of set)
    near_dup_clusters: int = 0  # clusters holding at least one article of this ingest
    near_dup_articles: int = 0  # articles of this ingest placed in a cluster
    too_short: int = 0          # new rows flagged too_short
    rejected: int = 0           # records not ingested (each has a problem line)
    imported_labels: int = 0    # valid labels imported
    invalid_labels: int = 0     # imported analyses stored as status 'invalid'
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_runs: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    human: HumanImportCounts | None = None   # --labels: what the import of label columns did
    label_rows: int = 0         # --labels: rows without text, read as labels of articles already in gt.db
    splits_stored: int = 0      # --split-column: new rows in article_splits

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Options:
    min_chars: int
    max_chars: int
    analysis_suffix: str = ANALYSIS_SUFFIX
    labels: HumanLabelSpec | None = None
    split_column: str | None = None


@dataclass
class _Prepared:
    origin: str
    line: int
    id: str | None
    title: str
    text: str
    source: str | None
    url: str | None
    published_at: str | None
    language: str | None
    content_hash: str
    chars: int
    too_short: bool
    signature: bytes | None
    analyses: dict[str, Any]
    human: Any = None           # --labels: (scores, rater) or the row's problem as a string
    split: Any = None           # --split-column: the raw value


@dataclass
class _LabelRow:
    """With --labels, a row without text: labels for an article that must already be in gt.db."""
    origin: str
    line: int
    id: str
    human: Any


# ---- preparing ----------------------------------------------------------------------------------

def _prepare(origin: str, line: int, payload: Any, opts: _Options) -> _Prepared | Problem:
    """Decode, parse, map, clean, hash: everything about one record that needs no database."""
    where = lambda message: Problem(origin, line, message)  # noqa: E731
    record = decode_record(origin, line, payload)
    if isinstance(record, Problem):
        return record
    fields = map_fields(record)
    raw_text = fields["text"]
    if raw_text is None and opts.labels is not None:
        ident = _str_or_none(fields["id"])
        if ident is None:
            return where("neither an article id nor a text (a label row names its article in an 'id' column)")
        return _LabelRow(origin, line, ident, read_values(record, opts.labels))
    cleaned = clean_article(fields, opts.max_chars)
    if isinstance(cleaned, str):
        return where(cleaned)
    title, text = cleaned
    ws = words(f"{title}\n{text}")  # shared by the exact-duplicate hash and the MinHash
    ident = fields["id"]
    ident = str(ident).strip() if ident is not None and str(ident).strip() else None
    # an id already in gt.db is never inserted again (same text: skipped; other text: rejected)
    sig = None if ident in _ids_in_db else minhash_signature(ws)
    analyses = {k: v for k, v in record.items() if isinstance(k, str) and k.endswith(opts.analysis_suffix)}
    return _Prepared(
        origin=origin, line=line, id=ident,
        title=title, text=text, source=_str_or_none(fields["source"]), url=_str_or_none(fields["url"]),
        published_at=_str_or_none(fields["published_at"]), language=_str_or_none(fields["language"]),
        content_hash=content_hash_of_words(ws), chars=len(text), too_short=len(text) < opts.min_chars,
        signature=signature_to_bytes(sig) if sig is not None else None, analyses=analyses,
        human=read_values(record, opts.labels) if opts.labels is not None else None,
        split=_column(record, opts.split_column) if opts.split_column else None,
    )


def _column(record: dict, name: str) -> Any:
    if name in record:
        return record[name]
    lowered = name.lower()
    return next((v for k, v in record.items() if isinstance(k, str) and k.strip().lower() == lowered), None)


_ids_in_db: frozenset[str] = frozenset()  # set before records are prepared; forked workers inherit it


def _set_ids_in_db(ids: frozenset[str]) -> None:
    global _ids_in_db
    _ids_in_db = ids


def _str_or_none(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _prepare_chunk(chunk: list[tuple[str, int, Any]], opts: _Options) -> list[_Prepared | Problem]:
    return [_prepare(origin, line, payload, opts) for origin, line, payload in chunk]


def _chunks(items: Iterator[tuple[str, int, Any]], size: int) -> Iterator[list[tuple[str, int, Any]]]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prepared_stream(items: Iterator, opts: _Options, workers: int,
                     ids_in_db: frozenset[str]) -> Iterator[_Prepared | Problem]:
    """Prepare records in input order, on `workers` processes; at most a few chunks are in
    flight, so memory stays flat whatever the input size."""
    _set_ids_in_db(ids_in_db)
    if workers <= 1:
        for origin, line, payload in items:
            yield _prepare(origin, line, payload, opts)
        return
    import multiprocessing

    # fork: workers inherit the modules and ids_in_db without pickling them
    with multiprocessing.get_context("fork").Pool(workers, initializer=_set_ids_in_db, initargs=(ids_in_db,)) as pool:
        pending: deque = deque()
        for chunk in _chunks(items, CHUNK_SIZE):
            pending.append(pool.apply_async(_prepare_chunk, (chunk, opts)))
            if len(pending) >= 3 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


# ---- writing ------------------------------------------------------------------------------------

class _Ingester:
    """The database side: ids, exact duplicates, near-duplicate clusters, batched writes."""

    def __init__(self, conn: sqlite3.Connection, filt: Filter | None, summary: IngestSummary, source: str,
                 labels: HumanLabelSpec | None = None, split_name: str | None = None):
        self.conn = conn
        self.filt = filt
        self.summary = summary
        self.hash_of_id: dict[str, str] = {}
        self.kept_by_hash: dict[str, str] = {}
        for article_id, chash, dup_of in conn.execute("SELECT id, content_hash, dup_of FROM articles ORDER BY rowid"):
            self.hash_of_id[article_id] = chash
            if dup_of is None:
                self.kept_by_hash.setdefault(chash, article_id)
        self.derived_seen: dict[str, int] = {}
        self.index: NearDuplicateIndex | None = None  # loaded when the first new article needs it
        self.rank: dict[str, int] = {}
        self.cluster_of: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}
        self.new_ids: list[str] = []
        self.changed_old: set[str] = set()
        self.rows: list[tuple] = []
        self.signatures: list[tuple[str, bytes]] = []
        self.label_jobs: list[tuple[str, str, Any, str]] = []
        self.importer = LabelImporter(conn, filt, source) if filt is not None else None
        self.other_analyses: set[str] = set()
        self.human = HumanLabelImporter(conn, filt, labels, source) if labels is not None else None
        self.human_jobs: list[tuple[str, tuple, str]] = []   # (article id, (scores, rater), 'file:line')
        self.split_name = split_name
        self.split_of = store.article_splits(conn, split_name) if split_name else {}
        self.split_jobs: list[tuple[str, str]] = []

    def _load_index(self) -> None:
        self.index = NearDuplicateIndex()
        rows = self.conn.execute(
            """SELECT a.rowid, a.id, a.near_dup_cluster, m.signature FROM article_minhash m
               JOIN articles a ON a.id = m.article_id ORDER BY a.rowid""")
        for rowid, article_id, cluster, blob in rows:
            self.rank[article_id] = rowid
            self.index.add(article_id, signature_from_bytes(blob))
            if cluster is not None:
                self.cluster_of[article_id] = cluster
                self.members.setdefault(cluster, []).append(article_id)
        self.next_rank = (self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM articles").fetchone()[0]) + 1

    def add(self, rec: _Prepared) -> None:
        s = self.summary
        article_id = rec.id
        if article_id is None:
            article_id = derived_id(rec.content_hash, self.derived_seen)
        known_hash = self.hash_of_id.get(article_id)
        if known_hash is not None:
            if known_hash != rec.content_hash:
                s.rejected += 1
                s.problems.append(str(Problem(rec.origin, rec.line,
                    f"id '{article_id}' is already used by an article with different text "
                    "(give each record a unique id, or drop the id field so one is derived from the content)")))
                return
            s.already_present += 1
            self._queue_labels(rec, self.kept_by_hash.get(known_hash, article_id))
            self._queue_row(rec, article_id)
            return
        kept = self.kept_by_hash.get(rec.content_hash)
        if kept is None:
            self.kept_by_hash[rec.content_hash] = article_id
            if rec.signature is not None:
                self._cluster(article_id, rec.signature)
        self.hash_of_id[article_id] = rec.content_hash
        self.rows.append((article_id, rec.title, rec.text, rec.source, rec.url, rec.published_at, rec.language,
                          rec.content_hash, kept, rec.chars, int(rec.too_short), rec.origin))
        if rec.signature is not None and kept is None:
            self.signatures.append((article_id, rec.signature))
        self.new_ids.append(article_id)
        s.inserted += 1
        s.duplicates += kept is not None
        s.too_short += rec.too_short
        self._queue_labels(rec, kept or article_id)  # a duplicate's labels belong to the kept article
        self._queue_row(rec, article_id)  # label columns and split stay with the row's own id

    def _queue_row(self, rec: _Prepared, article_id: str) -> None:
        """--labels and --split-column of an article row."""
        where = f"{rec.origin}:{rec.line}"
        if self.human is not None:
            self._queue_human(article_id, rec.human, where)
        if self.split_name is not None:
            split = store.normalise_split(rec.split)
            if split is None:
                shown = "no value" if rec.split is None or not str(rec.split).strip() else repr(str(rec.split)[:20])
                self._problem(where, f"split column holds {shown}, not train, dev, val or test (fix the value; "
                                     "the article itself was ingested)")
            elif self.split_of.get(article_id, split) != split:
                self._problem(where, f"article '{article_id}' is in the {self.split_of[article_id]} split of "
                                     f"'{self.split_name}' already, this row says {split} (fix the file)")
            elif article_id not in self.split_of:
                self.split_of[article_id] = split
                self.split_jobs.append((article_id, split))

    def add_label_row(self, row: _LabelRow) -> None:
        self.summary.label_rows += 1
        self._queue_human(row.id, row.human, f"{row.origin}:{row.line}")

    def _queue_human(self, article_id: str, values: Any, where: str) -> None:
        counts = self.human.counts
        if isinstance(values, str):
            counts.rejected += 1
            self._problem(where, values)
        elif article_id not in self.hash_of_id:  # neither in gt.db nor earlier in this input
            if self.human.spec.skip_unknown_ids:
                counts.unknown_skipped += 1
                if len(counts.unknown_examples) < 3:
                    counts.unknown_examples.append(f"{where} '{article_id}'")
            else:
                counts.rejected += 1
                self._problem(where, f"article '{article_id}' is not in gt.db and the row has no text (ingest the "
                                     "article first, from this or an earlier file, or pass --skip-unknown-ids)")
        else:
            self.human_jobs.append((article_id, values, where))

    def _problem(self, where: str, message: str) -> None:
        self.summary.problems.append(f"{where}: {message}")

    def _cluster(self, article_id: str, blob: bytes) -> None:
        if self.index is None:
            self._load_index()
        sig = signature_from_bytes(blob)
        similar = self.index.similar(sig)
        self.rank[article_id] = self.next_rank
        self.next_rank += 1
        self.index.add(article_id, sig)
        if not similar:
            return
        # the clusters (or lone articles) this one joins; they merge under the earliest first article
        joined = {self.cluster_of.get(other, other) for other in similar}
        target = min(joined, key=lambda c: (self.rank.get(c, 0), c))
        if target not in self.members:  # a lone article becomes the first of a new cluster
            self.members[target] = [target]
            self.cluster_of[target] = target
            self.changed_old.add(target)
        for c in sorted(joined - {target}):
            for member in self.members.pop(c, None) or [c]:
                self.cluster_of[member] = target
                self.members[target].append(member)
                self.changed_old.add(member)
        self.cluster_of[article_id] = target
        self.members[target].append(article_id)

    def _queue_labels(self, rec: _Prepared, article_id: str) -> None:
        for key, analysis in rec.analyses.items():
            name = key[: -len(ANALYSIS_SUFFIX)]
            if self.filt is not None and name == self.filt.name:
                self.label_jobs.append((article_id, rec.origin, analysis, f"{rec.origin}:{rec.line}"))
            else:
                self.other_analyses.add(key)

    def flush(self) -> None:
        """Write the pending batch in one transaction, then its labels."""
        if self.rows or self.changed_old:
            pending = {r[0] for r in self.rows}
            rows = [r[:9] + (self.cluster_of.get(r[0]),) + r[9:] for r in self.rows]
            updates = [(self.cluster_of[a], a) for a in sorted(self.changed_old) if a not in pending]
            with store.transaction(self.conn):
                self.conn.executemany(
                    """INSERT INTO articles (id, title, text, source, url, published_at, language, content_hash,
                           dup_of, near_dup_cluster, chars, too_short, origin)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING""", rows)
                self.conn.executemany(
                    "INSERT INTO article_minhash (article_id, signature) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    self.signatures)
                self.conn.executemany("UPDATE articles SET near_dup_cluster = ? WHERE id = ?", updates)
            self.rows, self.signatures, self.changed_old = [], [], set()
        for article_id, origin, analysis, where in self.label_jobs:
            parsed = self.importer.add(article_id, analysis)
            if parsed is not None and parsed.status == "invalid":
                self.summary.problems.append(
                    f"{where}: {self.filt.name}{ANALYSIS_SUFFIX} is invalid: {parsed.error} "
                    "(stored as an invalid label with the raw analysis; fix the file and import it into a new gt.db)")
        self.label_jobs = []
        if self.split_jobs:
            with store.transaction(self.conn):
                cur = self.conn.executemany(
                    "INSERT INTO article_splits (split_name, article_id, split) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    [(self.split_name, a, sp) for a, sp in self.split_jobs])
            self.summary.splits_stored += max(cur.rowcount, 0)
            self.split_jobs = []
        if self.human_jobs:
            self._flush_human()

    def _flush_human(self) -> None:
        """The batch's label-column ratings, in one transaction (after its articles are written)."""
        counts = self.human.counts
        with store.transaction(self.conn):
            for article_id, (scores, rater), where in self.human_jobs:
                problem = self.human.add(article_id, scores, rater, where)
                if problem is not None:
                    counts.rejected += 1
                    self._problem(where, problem)
            self.human.sync()
        self.human_jobs = []

    def finish(self) -> None:
        self.flush()
        s = self.summary
        clusters = {self.cluster_of[a] for a in self.new_ids if a in self.cluster_of}
        s.near_dup_clusters = len(clusters)
        s.near_dup_articles = sum(1 for a in self.new_ids if a in self.cluster_of)
        if self.human is not None:
            self.human.finish()
            s.human = self.human.counts
        if self.importer is not None:
            self.importer.finish()
            s.imported_labels = self.importer.imported
            s.invalid_labels = self.importer.invalid
            s.label_runs = sorted(self.importer.runs.values())
        for key in sorted(self.other_analyses):
            name = key[: -len(ANALYSIS_SUFFIX)]
            s.notes.append(f"records carry '{key}' labels, not imported: pass --filter filters/{name}/v<N> to import them")


def ingest_files(conn: sqlite3.Connection, sources: list[str], filt: Filter | None = None, *,
                 min_chars: int | None = None, max_chars: int = DEFAULT_MAX_CHARS, workers: int = 1,
                 batch_size: int = BATCH_SIZE, progress: bool = False, labels: HumanLabelSpec | None = None,
                 split_column: str | None = None, split_name: str = store.DEFAULT_SPLIT_NAME) -> IngestSummary:
    """Ingest every file matched by `sources` (paths or globs) into gt.db; labels found in the
    records for `filt` are imported; with `labels`, label columns are imported as that oracle's
    labels (gt.intake.human_labels); with `split_column`, each article's split is stored under
    `split_name` in article_splits. Problems are collected in the summary, never raised."""
    if labels is not None and filt is None:
        raise ValueError("importing label columns needs the filter whose dimensions they are")
    summary = IngestSummary(sources=list(sources))
    files, summary.problems = expand_sources(sources)
    summary.files = len(files)
    opts = _Options(min_chars=min_chars if min_chars is not None else (filt.min_chars if filt else DEFAULT_MIN_CHARS),
                    max_chars=max_chars, labels=labels, split_column=split_column)
    ingester = _Ingester(conn, filt, summary, ", ".join(sources), labels=labels,
                         split_name=split_name if split_column else None)

    def items() -> Iterator[tuple[str, int, Any]]:
        for path in files:
            problems: list[Problem] = []
            yield from file_items(path, problems)
            summary.problems += [str(p) for p in problems]

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit=" records", desc="ingest", file=sys.stderr, disable=None, mininterval=1.0)
    try:
        for result in _prepared_stream(items(), opts, workers, frozenset(ingester.hash_of_id)):
            summary.records += 1
            if bar is not None:
                bar.update(1)
            if isinstance(result, Problem):
                summary.rejected += 1
                summary.problems.append(str(result))
                continue
            if isinstance(result, _LabelRow):
                ingester.add_label_row(result)
            else:
                ingester.add(result)
            if len(ingester.rows) >= batch_size or len(ingester.human_jobs) >= batch_size:
                ingester.flush()
        ingester.finish()
    finally:
        _set_ids_in_db(frozenset())
        if bar is not None:
            bar.close()
    return summary
