"""Reading article files: which files a --source names, their formats (JSONL, CSV, TSV, Parquet,
.gz, `-` for JSON lines on standard input), the fields of a record under their common names, and the
cleaning every article gets. One implementation for every step that reads articles: ingest (gt.db)
and score (a student over a feed, no gt.db needed).
"""
from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from gt.core.text import clean_text, content_hash_of_words, words

STDIN = "-"
STDIN_NAME = "<stdin>"
FORMATS_HINT = "name the file .jsonl, .json, .ndjson, .csv, .tsv (optionally .gz) or .parquet"

# first present, non-empty field wins; keys are matched case-insensitively
FIELD_NAMES = {
    "id": ("id", "article_id", "guid", "uid", "doc_id"),
    "title": ("title", "headline"),
    "text": ("text", "content", "body", "article", "full_text", "article_text"),
    "url": ("url", "link"),
    "source": ("source", "publisher", "source_name", "domain"),
    "published_at": ("published_date", "date", "published_at", "publish_date", "pubdate", "published"),
    "language": ("language", "lang"),
}
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass
class Problem:
    origin: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.origin}:{self.line}" if self.line is not None else self.origin
        return f"{where}: {self.message}"


def expand_sources(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Files matched by the patterns (globs, `**` allowed; `-` is standard input), in a stable
    order, each once; and one problem line per pattern that matched nothing."""
    files, problems = matched_files(patterns)
    return files, [str(p) for p in problems]


def matched_files(patterns: Iterable[str]) -> tuple[list[str], list[Problem]]:
    """expand_sources, its problems as Problem records."""
    files: list[str] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for pattern in patterns:
        if pattern == STDIN:
            if STDIN not in seen:
                seen.add(STDIN)
                files.append(STDIN)
            continue
        matched = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matched:
            problems.append(Problem(pattern, None, "matches no file (check the path; quote globs so the shell passes "
                                                   "them whole)"))
        for p in matched:
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, problems


def file_format(path: str) -> str | None:
    """jsonl, csv, tsv or parquet by the file's name (.gz allowed but for Parquet); standard input is JSONL."""
    if path == STDIN:
        return "jsonl"
    if path.lower().endswith(".parquet"):
        return "parquet"
    name = path[:-3] if path.endswith(".gz") else path
    suffix = Path(name).suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    return None


def _open_binary(path: str):
    if path == STDIN:
        return contextlib.nullcontext(sys.stdin.buffer)
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_items(path: str, fmt: str) -> Iterator[tuple[str, int, Any]]:
    """(origin, line, payload): payload is the raw bytes of a JSONL line, a CSV or Parquet row as a
    dict, or a Problem. Lines are read one at a time (Parquet: a row group's batch at a time), so a
    huge file never sits in memory; a Parquet row's "line" is its row number, from 1."""
    origin = STDIN_NAME if path == STDIN else path
    if fmt == "parquet":
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield path, row, record
        return
    if fmt == "jsonl":
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    yield origin, lineno, raw
        return
    csv.field_size_limit(2**31 - 1)  # long articles are checked against --max-chars, not by csv
    with _open_binary(path) as fb:
        # surrogateescape keeps undecodable bytes visible, so the bad row (not the file) is rejected
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(text, delimiter="\t" if fmt == "tsv" else ",")
        try:
            names = [str(n).strip().lower() for n in (reader.fieldnames or [])]
        except csv.Error as e:
            yield path, 1, Problem(path, 1, f"unreadable CSV header: {e} (fix the first line)")
            return
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:   # DictReader would keep the last such column's values: the wrong data, silently
            yield path, 1, Problem(path, 1, f"the header names column {repeated[0]!r} {names.count(repeated[0])} "
                                             f"times: which one holds the data is ambiguous (rename or drop one; "
                                             f"nothing of this file was read)")
            return
        start = 2
        try:
            for row in reader:
                yield path, start, row
                start = reader.line_num + 1
        except csv.Error as e:
            yield path, reader.line_num, Problem(path, reader.line_num, f"unreadable CSV: {e} (fix the quoting of this row; the rest of the file was not read)")


def _pick(record: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        value = record.get(name)
        if value is not None and value != "":
            return value
    return None


def map_fields(record: dict) -> dict[str, Any]:
    """The article fields of a record, found under their common names."""
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    out = {key: _pick(lowered, names) for key, names in FIELD_NAMES.items()}
    if isinstance(out["source"], dict):
        out["source"] = out["source"].get("name") or out["source"].get("title")
    if isinstance(out["text"], list) and all(isinstance(p, str) for p in out["text"]):
        out["text"] = "\n\n".join(out["text"])
    return out


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s) if not s.isascii() else False

def decode_record(origin: str, line: int, payload: Any) -> dict | Problem:
    """The record a payload of read_items holds: a JSON line parsed (one object), a row's dict
    checked for undecodable bytes; else the Problem, one line saying what to do."""
    where = lambda message: Problem(origin, line, message)  # noqa: E731
    if isinstance(payload, Problem):
        return payload
    if isinstance(payload, bytes):
        try:
            decoded = payload.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as e:
            return where(f"not valid UTF-8 (byte 0x{payload[e.start]:02x} at column {e.start + 1}) "
                         "(re-encode the file as UTF-8, e.g. iconv -f cp1252 -t utf-8)")
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as e:
            return where(f"malformed JSON: {e.msg} at column {e.colno} (fix the line or delete it)")
        if not isinstance(record, dict):
            return where(f"a JSON {type(record).__name__} where an article object was expected (one object per line)")
        return record
    bad = next((k for k, v in payload.items() if isinstance(v, str) and _has_surrogates(v)), None)
    if bad is not None:
        return where(f"not valid UTF-8 in column '{bad}' (re-encode the file as UTF-8, e.g. iconv -f cp1252 -t utf-8)")
    return payload


def clean_article(fields: dict[str, Any], max_chars: int) -> tuple[str, str] | str:
    """(title, text) of a mapped record, cleaned (gt.core.text.clean_text); or what is wrong with it."""
    raw_text = fields["text"]
    if raw_text is None:
        return "no article text (give the record a 'text', 'content', 'body' or 'article' field)"
    if not isinstance(raw_text, str):
        return f"article text is a {type(raw_text).__name__}, expected a string"
    if len(raw_text) > 2 * max_chars:  # too long even before cleaning: skip the costly cleaning
        return (f"article text is {len(raw_text):,} characters, above --max-chars {max_chars:,} "
                "(split the article, or raise --max-chars)")
    text = clean_text(raw_text)
    if not text:
        return "article text is empty once markup is removed (check the text field)"
    if len(text) > max_chars:
        return (f"article text is {len(text):,} characters, above --max-chars {max_chars:,} "
                "(split the article, or raise --max-chars)")
    return (clean_text(str(fields["title"])) if fields["title"] is not None else ""), text


def derived_id(content_hash: str, seen: dict[str, int]) -> str:
    """The id of a record that has none: its content hash's first 16 characters, '-2', '-3', ...
    for the second and later record of the same content (`seen` counts them)."""
    n = seen.get(content_hash, 0) + 1
    seen[content_hash] = n
    return content_hash[:16] if n == 1 else f"{content_hash[:16]}-{n}"


@dataclass
class Article:
    """One article read from a file, cleaned, with its id (given, or derived from its content)."""
    origin: str
    line: int
    id: str
    title: str
    text: str


def read_articles(sources: Iterable[str], max_chars: int) -> Iterator[Article | Problem]:
    """Every record of the files `sources` names, in order: an Article, or the Problem of a record
    (or a pattern or file) that cannot be read. Ids and cleaning as ingest gives them."""
    files, problems = matched_files(sources)
    yield from problems
    seen: dict[str, int] = {}
    for path in files:
        problems = []
        for origin, line, payload in file_items(path, problems):
            record = decode_record(origin, line, payload)
            if isinstance(record, Problem):
                yield record
                continue
            fields = map_fields(record)
            cleaned = clean_article(fields, max_chars)
            if isinstance(cleaned, str):
                yield Problem(origin, line, cleaned)
                continue
            title, text = cleaned
            given = fields["id"]
            ident = str(given).strip() if given is not None and str(given).strip() else None
            if ident is None:
                ident = derived_id(content_hash_of_words(words(f"{title}\n{text}")), seen)
            yield Article(origin, line, ident, title, text)
        yield from problems


def file_items(path: str, problems: list[Problem]) -> Iterator[tuple[str, int, Any]]:
    """read_items of one file, with a file-level problem (unknown format, unreadable, empty) added to
    `problems` instead of raised."""
    fmt = file_format(path)
    if fmt is None:
        problems.append(Problem(path, None, f"unknown format ({FORMATS_HINT})"))
        return
    count = 0
    try:
        for item in read_items(path, fmt):
            count += 1
            yield item
    except (OSError, EOFError, zlib.error, ValueError) as e:
        problems.append(Problem(path, None, f"unreadable after {count} records: {(str(e) or type(e).__name__).splitlines()[0]} "
                                            "(check the file is complete)"))
    if count == 0 and (path == STDIN or os.path.exists(path)):
        problems.append(Problem(STDIN_NAME if path == STDIN else path, None,
                                "empty file, no records (check the export that produced it)"))
