"""The score step: a trained student over new articles, no gt.db needed.

    python -m stages.score --model-dir models/student --source 'feed/*.jsonl' --output scores.jsonl
    python -m stages.score ... --shard 0/4 --output scores.part0     # one of four machines or GPUs
    python -m stages.score --merge scores.part0 scores.part1 scores.part2 scores.part3 --output scores.jsonl

Reads JSONL, CSV, TSV, Parquet, .gz, globs and `-` (JSON lines on standard input) with ingest's
field names and cleaning (gt/intake/reading.py), cuts each article as training did (the oracle's
character cut, then head+tail on tokens: gt.student.model.Encoder) and scores it with the inference
engine (gt/student/engine.py: LoRA merged at load, token-budget batches). Writes one line per input
record, in input order, exact duplicates included (same input text, same scores, scored once):
`id`, each dimension's score, `overall` and `tier` by the filter package's own weights, gatekeepers
and tiers (Filter.overall and Filter.tier_index; no content-type cap, since the student predicts no
content type), `model`, `filter`, and `position` (the record's index among the input's articles,
what --merge orders shards by). A record that cannot be read is one problem line (`file:line: what`),
the rest are scored, and the run ends with exit 1.

Resumable: scores go into a journal (`<output>.partial`, SQLite) one batch at a time; rerunning the
same command after Ctrl-C or `kill -9` scores only what the journal lacks, so a kill loses at most
the batch in flight. The output is written whole at the end (a temporary file renamed over it),
never half, and the journal is removed. `--shard I/N` keeps the records whose id hashes to I of N,
so N machines, a Slurm array or N GPUs split a corpus with no coordinator. With `--db`, every
prediction of an article that is in gt.db goes into its `predictions` table as it is made, and
articles already predicted there by this model are not scored again.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from gt import PROJECT_ROOT
from gt.core import report, store
from gt.core.errors import UsageError
from gt.core.filters import Filter, load_filter
from gt.intake.ingestion import DEFAULT_MAX_CHARS
from gt.intake.reading import STDIN, Article, Problem, matched_files, read_articles
from gt.student.engine import default_max_tokens, token_batches
from gt.student.model import StudentError, article_text, read_model_folder, resolve_device

FORMATS = ("jsonl", "parquet")
JOURNAL_SUFFIX = ".partial"
WRITE_BLOCK = 10_000   # output rows computed (overall, tier) and written at a time


@dataclass
class ScoreOptions:
    """What to score with which student and where the scores go (the flags of `python -m stages.score`)."""
    model_dir: str = "models/student"
    source: list[str] = field(default_factory=list)
    output: str | None = None
    format: str = "jsonl"
    filter: str | None = None        # default: the package the student was trained with
    db: str | None = None
    shard: str | None = None         # "I/N"
    merge: list[str] = field(default_factory=list)
    device: str = "auto"
    max_tokens: int | None = None    # padded tokens per batch (None: the engine's default for the device)
    max_chars: int = DEFAULT_MAX_CHARS
    chunk: int = 2048                # articles read, then sorted by length and scored

    def check(self) -> None:
        if not self.output:
            raise UsageError("pass --output FILE (where the scores go; the journal of a resumable run sits beside it)")
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format}: choose {' or '.join(FORMATS)}")
        if self.merge and (self.source or self.shard):
            raise UsageError("--merge joins shard outputs: it takes no --source or --shard")
        if not self.merge and not self.source:
            raise UsageError("pass --source FILE|GLOB|- (the articles to score), or --merge SHARD_FILES")
        parse_shard(self.shard)


@dataclass
class ScoreResult:
    output: Path
    model_id: str = ""
    filter_id: str = ""
    written: int = 0          # lines in the output
    scored: int = 0           # distinct input texts the model ran on in this run
    reused: int = 0           # articles whose scores came from the journal, gt.db or an earlier duplicate
    skipped_other_shards: int = 0
    stored: int = 0           # --db: predictions of new articles stored in gt.db
    problems: list[str] = field(default_factory=list)
    resumed: bool = False
    db: bool = False


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' as (I, N), 0 <= I < N; None as (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: expected I/N, e.g. 0/4 (shard I of N, from 0)") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard {text}: I must be 0 to N-1 and N at least 1")
    return i, n


def shard_of(article_id: str, shards: int) -> int:
    """Which of `shards` shards an article id falls in: a hash, the same on every machine."""
    return int.from_bytes(hashlib.sha256(article_id.encode("utf-8")).digest()[:8], "big") % shards


def model_filter(o: ScoreOptions, config: dict, dims: list[str], given: Filter | None = None) -> Filter:
    """--filter (`given`, loaded), else the package the student was trained with; its dimensions
    must be the model's."""
    path = o.filter or config.get("filter_path")
    if not path:
        raise UsageError(f"{o.model_dir} names no filter package: pass --filter filters/<name>/v<N>")
    folder = Path(path)
    if not folder.is_dir() and not folder.is_absolute() and (PROJECT_ROOT / folder).is_dir():
        folder = PROJECT_ROOT / folder
    if not folder.is_dir():
        raise UsageError(f"filter package {path} of {o.model_dir} not found: pass --filter filters/<name>/v<N>")
    filt = given or load_filter(folder)
    if filt.dimension_names != dims:
        raise store.FilterMismatch(f"{filt.id} at {folder} has dimensions {', '.join(filt.dimension_names)}; the student "
                                   f"in {o.model_dir} predicts {', '.join(dims)} (pass the package it was trained with)")
    return filt


# ---- the journal: what a killed run had done ------------------------------------------------------

class Journal:
    """`<output>.partial`: the input's articles (position, id, key of the input text) and the scores
    of each key, committed one batch at a time. A journal of another run (other model, filter,
    sources, shard) is discarded."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.resumed = path.exists()
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript("""
                CREATE TABLE IF NOT EXISTS meta (json TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS rows (position INTEGER PRIMARY KEY, id TEXT NOT NULL, key TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS scored (key TEXT PRIMARY KEY, scores TEXT NOT NULL) WITHOUT ROWID;""")
            found = self.conn.execute("SELECT json FROM meta").fetchone()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise StudentError(f"{path}: not a score journal ({e}): delete it and run again") from None
        wanted = json.dumps(meta, sort_keys=True)
        if found is None or found[0] != wanted:
            self.resumed = False
            with self.conn:
                self.conn.execute("BEGIN")
                for table in ("meta", "rows", "scored"):
                    self.conn.execute(f"DELETE FROM {table}")
                self.conn.execute("INSERT INTO meta (json) VALUES (?)", (wanted,))
                self.conn.execute("COMMIT")

    def known(self, positions: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk, marks in store.in_chunks(list(positions)):
            out.update(self.conn.execute(f"SELECT position, key FROM rows WHERE position IN ({marks})", chunk).fetchall())
        return out

    def scores(self, keys: Sequence[str]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for chunk, marks in store.in_chunks(sorted(set(keys))):
            for k, s in self.conn.execute(f"SELECT key, scores FROM scored WHERE key IN ({marks})", chunk):
                out[k] = json.loads(s)
        return out

    def add(self, rows: Sequence[tuple[int, str, str]], scored: dict[str, list[float]]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO rows (position, id, key) VALUES (?, ?, ?)", rows)
        self.conn.executemany("INSERT OR REPLACE INTO scored (key, scores) VALUES (?, ?)",
                              [(k, json.dumps(v)) for k, v in scored.items()])
        self.conn.execute("COMMIT")

    def ordered(self, end: int) -> Iterator[tuple[int, str, list[float]]]:
        for position, ident, scores in self.conn.execute(
                "SELECT r.position, r.id, s.scores FROM rows r JOIN scored s ON s.key = r.key "
                "WHERE r.position < ? ORDER BY r.position", (end,)):
            yield position, ident, json.loads(scores)

    def remove(self) -> None:
        self.conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)


# ---- scoring ----------------------------------------------------------------------------------------

class _Run:
    """One scoring pass: reads the articles, scores what neither the journal nor gt.db holds."""

    def __init__(self, o: ScoreOptions, config: dict, dims: list[str], filt: Filter, journal: Journal,
                 result: ScoreResult, device: str):
        self.o, self.config, self.dims, self.filt, self.journal, self.result = o, config, dims, filt, journal, result
        self.device = device
        self.student = None
        self.db = store.connect(o.db, create=False) if o.db else None
        if self.db is not None:
            from gt.student.evaluate import ensure_registered

            with store.transaction(self.db):
                ensure_registered(self.db, config["name"], config, Path(o.model_dir))

    def _model(self):
        if self.student is None:
            from gt.student.evaluate import load_student

            self.student = load_student(Path(self.o.model_dir), self.device)
        return self.student

    def chunk(self, articles: list[tuple[int, Article]]) -> None:
        """Score one chunk of (position, article): the keys the journal lacks, in token batches, each
        committed with the chunk's rows it completes."""
        cut = self.config.get("max_article_chars")
        texts = {p: article_text(a.title, a.text, cut) for p, a in articles}
        keys = {p: hashlib.sha256(t.encode("utf-8")).hexdigest() for p, t in texts.items()}
        ids = {p: a.id for p, a in articles}
        known = self.journal.known(list(keys))
        have = self.journal.scores(list(keys.values()))
        have.update(self._from_db({p: ids[p] for p in keys if keys[p] not in have}, keys))
        missing: dict[str, int] = {}
        for p, k in keys.items():
            if k not in have and k not in missing:
                missing[k] = p
        self.result.reused += len(keys) - len(missing)
        waiting: dict[str, list[int]] = {k: [] for k in missing}   # the positions each text to score fills
        for p, k in keys.items():
            if k in waiting:
                waiting[k].append(p)
        done_rows = [(p, ids[p], keys[p]) for p in keys if keys[p] in have and known.get(p) != keys[p]]
        self.journal.add(done_rows, {k: have[k] for k in {r[2] for r in done_rows}})
        if not missing:
            return
        student = self._model()
        order = list(missing)
        encoded = student.encoder.encode_many([("", texts[missing[k]]) for k in order])
        max_tokens = self.o.max_tokens or default_max_tokens(self.device)
        for batch in token_batches([len(e) for e in encoded], max_tokens):
            scores = student.predict_encoded([encoded[i] for i in batch], max_tokens=max_tokens)
            fresh = {order[i]: [float(x) for x in row] for i, row in zip(batch, scores)}
            rows = [(p, ids[p], k) for k in fresh for p in waiting[k]]
            self.journal.add(rows, fresh)
            self._to_db(rows, fresh)
            self.result.scored += len(fresh)

    def _from_db(self, wanted: dict[int, str], keys: dict[int, str]) -> dict[str, list[float]]:
        """--db: the stored predictions of this model for these articles (key -> scores)."""
        if self.db is None or not wanted:
            return {}
        stored: dict[str, dict[str, float]] = {}
        for chunk, marks in store.in_chunks(sorted(set(wanted.values()))):
            for aid, dim, score in self.db.execute(
                    f"SELECT article_id, dimension, score FROM predictions WHERE model_id = ? AND article_id IN ({marks})",
                    [self.config["name"], *chunk]):
                stored.setdefault(aid, {})[dim] = score
        out = {}
        for p, aid in wanted.items():
            if aid in stored and all(d in stored[aid] for d in self.dims):
                out[keys[p]] = [stored[aid][d] for d in self.dims]
        return out

    def _to_db(self, rows: list[tuple[int, str, str]], fresh: dict[str, list[float]]) -> None:
        if self.db is None:
            return
        ids = sorted({aid for _, aid, _ in rows})
        known: set[str] = set()
        for chunk, marks in store.in_chunks(ids):
            known.update(r[0] for r in self.db.execute(f"SELECT id FROM articles WHERE id IN ({marks})", chunk))
        values = {(aid, k) for _, aid, k in rows if aid in known}
        with store.transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO predictions (model_id, article_id, dimension, score) "
                                "VALUES (?, ?, ?, ?)", [(self.config["name"], aid, d, float(fresh[k][j]))
                                                        for aid, k in values for j, d in enumerate(self.dims)])
        self.result.stored += len({aid for aid, _ in values})

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def score(o: ScoreOptions, *, progress: bool = True) -> ScoreResult:
    """Score --source into --output (or join --merge's shard files). Prints nothing but the
    progress bar on stderr; problems are in the result."""
    o.check()
    output = Path(o.output)
    if o.merge:
        return merge_shards(o.merge, output, o.format)
    given = load_filter(o.filter) if o.filter else None   # a broken package is told first, as in every command
    try:
        config, dims = read_model_folder(Path(o.model_dir))
    except StudentError as e:   # not a student folder: the command line names the wrong thing
        raise UsageError(str(e)) from None
    filt = model_filter(o, config, dims, given)
    device = resolve_device(o.device)
    shard, shards = parse_shard(o.shard)
    result = ScoreResult(output=output, model_id=config["name"], filter_id=filt.id)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": config["name"], "model_dir": str(Path(o.model_dir).resolve()), "filter": filt.id,
            "sources": list(o.source), "shard": [shard, shards], "max_chars": o.max_chars,
            "weights": _file_sha(Path(o.model_dir) / "adapter_model.safetensors")
            or _file_sha(Path(o.model_dir) / "model.safetensors")}
    journal = Journal(Path(str(output) + JOURNAL_SUFFIX), meta)
    result.resumed, result.db = journal.resumed, bool(o.db)
    run = _Run(o, config, dims, filt, journal, result, device)
    bar = _progress_bar(o.source, progress)
    position = 0
    try:
        pending: list[tuple[int, Article]] = []
        for item in read_articles(o.source, o.max_chars):
            if isinstance(item, Problem):
                result.problems.append(str(item))
                continue
            if bar is not None:
                bar.update(1)
            if shards > 1 and shard_of(item.id, shards) != shard:
                result.skipped_other_shards += 1
            else:
                pending.append((position, item))
            position += 1
            if len(pending) >= o.chunk:
                run.chunk(pending)
                pending = []
        if pending:
            run.chunk(pending)
    finally:
        run.close()
        if bar is not None:
            bar.close()
    result.written = write_output(journal.ordered(position), output, o.format, dims, filt, config["name"])
    journal.remove()
    return result


def _file_sha(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _progress_bar(sources: Sequence[str], enabled: bool):
    """A bar over the articles read, with rate and ETA where the input's size is known (plain
    files: their line count; .gz and standard input: a rate only)."""
    if not enabled:
        return None
    from tqdm import tqdm

    files, _ = matched_files(sources)
    total = 0
    for path in files:
        if path == STDIN or path.endswith(".gz"):
            total = None
            break
        if path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq
            total += pq.ParquetFile(path).metadata.num_rows
            continue
        with open(path, "rb") as f:
            total += sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    return tqdm(total=total or None, desc="score", unit=" articles", file=sys.stderr, mininterval=1.0, smoothing=0.1)


# ---- the output -----------------------------------------------------------------------------------

def output_rows(block: list[tuple[int, str, list[float]]], dims: list[str], filt: Filter, model_id: str) -> list[dict]:
    """The output lines of a block of (position, id, scores): the scores, overall and tier."""
    matrix = np.array([s for _, _, s in block], dtype=float).reshape(len(block), len(dims))
    overall = filt.overall({d: matrix[:, j] for j, d in enumerate(dims)})
    tiers = filt.tier_index(np.asarray(overall))
    rows = []
    for i, (position, ident, _) in enumerate(block):
        row: dict = {"id": ident}
        row.update({d: round(float(matrix[i, j]), 6) for j, d in enumerate(dims)})
        row.update(overall=round(float(overall[i]), 6), tier=filt.tiers[int(tiers[i])].name, model=model_id,
                   filter=filt.id, position=position)
        rows.append(row)
    return rows


def write_output(ordered: Iterator[tuple[int, str, list[float]]], output: Path, fmt: str, dims: list[str],
                 filt: Filter, model_id: str) -> int:
    """The journal's rows, in input order, into `output` whole (a temporary file renamed over it)."""
    def blocks() -> Iterator[list[dict]]:
        block: list = []
        for item in ordered:
            block.append(item)
            if len(block) >= WRITE_BLOCK:
                yield output_rows(block, dims, filt, model_id)
                block = []
        if block:
            yield output_rows(block, dims, filt, model_id)
    return write_rows(blocks(), output, fmt)


def write_rows(blocks: Iterator[list[dict]], output: Path, fmt: str) -> int:
    written = 0
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            for block in blocks:
                table = pa.Table.from_pylist(block)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                written += len(block)
            if writer is None:
                pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp)
            else:
                writer.close()
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for block in blocks:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in block)
                    written += len(block)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~report.current_umask())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def _shard_lines(path: str) -> Iterator[dict]:
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=WRITE_BLOCK):
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise StudentError(f"{path}:{n}: not a line of `score` output ({e.msg}): score that shard again")


def merge_shards(paths: Sequence[str], output: Path, fmt: str) -> ScoreResult:
    """The shards' lines in input order (by `position`) into one output, checked: every shard
    from the same model and filter, no position twice."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UsageError(f"--merge: {missing[0]} not found (score every shard first)")
    result = ScoreResult(output=output)
    seen: dict[str, str] = {}
    last = [-1]

    def checked(line: dict, path: str) -> dict:
        for key in ("model", "filter"):
            if seen.setdefault(key, line.get(key)) != line.get(key):
                raise StudentError(f"--merge: {path} holds scores of {key} {line.get(key)}, another shard of "
                                   f"{seen[key]}: merge the shards of one run")
        if line["position"] <= last[0]:
            raise StudentError(f"--merge: position {line['position']} twice or out of order (in {path}): "
                               f"each shard must be merged once, from one run")
        last[0] = line["position"]
        return line

    merged = heapq.merge(*[((line["position"], i, line) for line in _shard_lines(p)) for i, p in enumerate(paths)])

    def blocks() -> Iterator[list[dict]]:
        block = []
        for _, i, line in merged:
            block.append(checked(line, paths[i]))
            if len(block) >= WRITE_BLOCK:
                yield block
                block = []
        if block:
            yield block
    output.parent.mkdir(parents=True, exist_ok=True)
    result.written = write_rows(blocks(), output, fmt)
    result.model_id, result.filter_id = seen.get("model") or "", seen.get("filter") or ""
    return result
