"""Text handling shared by every stage: cleaning, hashing, near-duplicate signatures, and the one
head+tail truncation.

The oracle prompt and the student model must see the same part of a long article, so both cut it
with `head_tail_truncate` (characters for the prompt, token ids for the student).
"""
from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, TypeVar

import ftfy
import numpy as np

if TYPE_CHECKING:  # datasketch imports scipy (~0.5 s): loaded only when near-duplicates are needed
    from datasketch import LeanMinHash

_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]{1,400}>", re.S | re.I)
_BLOCK_TAG = re.compile(r"</?(p|div|br|li|h[1-6]|tr|section|article|blockquote)\b[^>]*>", re.I)
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u3000]+")
_BLANKS = re.compile(r"\n\s*\n+")
_WORD = re.compile(r"\w+", re.U)

TRUNCATION_MARK = "\n[...]\n"


def clean_text(raw: str) -> str:
    """Repair mojibake, drop HTML markup, normalise whitespace; paragraphs stay blank-line separated."""
    if not raw:
        return ""
    text = _fix_mojibake(raw)
    if "<" in text and ">" in text:
        text = _BLOCK_TAG.sub("\n\n", text)
        text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_drop_control_chars(line) for line in text.split("\n"))
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def _fix_mojibake(text: str) -> str:
    """ftfy.fix_text(text, normalization="NFC"), segment by segment as ftfy itself does, skipping
    the plain-ASCII lines without '&' or escape codes it would return unchanged (ftfy is the
    slowest step of ingest; most lines of English news are such lines)."""
    config = ftfy.TextFixerConfig(explain=False, normalization="NFC")
    out = []
    pos = 0
    while pos < len(text):
        textbreak = text.find("\n", pos) + 1 or len(text)
        if textbreak - pos > config.max_decode_length:
            textbreak = pos + config.max_decode_length
        segment = text[pos:textbreak]
        if config.unescape_html == "auto" and "<" in segment:
            config = config._replace(unescape_html=False)
        if segment.isascii() and "&" not in segment and "\x1b" not in segment:
            out.append(segment)
        else:
            out.append(ftfy.fix_and_explain(segment, config)[0])
        pos = textbreak
    return "".join(out)


def _drop_control_chars(line: str) -> str:
    # isprintable() is a C-speed check that a line holds no control/format characters at all
    if line.isprintable():
        return line
    return "".join(ch for ch in line if ch == "\t" or unicodedata.category(ch)[0] != "C")


def normalise_for_hash(text: str) -> str:
    """Case- and whitespace-insensitive form used to spot exact duplicates."""
    return " ".join(_WORD.findall(text.lower()))


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(normalise_for_hash(f"{title}\n{text}").encode("utf-8")).hexdigest()


def content_hash_of_words(ws: list[str]) -> str:
    """content_hash(title, text) from words(f"{title}\n{text}"), for callers that have the words."""
    return hashlib.sha256(" ".join(ws).encode("utf-8")).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


T = TypeVar("T", str, Sequence)


HEAD_SHARE = 0.75   # the share of a truncation budget the head keeps (the rest goes to the tail)


def head_tail_truncate(seq: T, limit: int, head_share: float = HEAD_SHARE) -> T:
    """Keep the first `head_share` of `limit` items and the last rest: leads and conclusions carry
    most of a news article's substance. Works on strings (characters) and token-id lists."""
    if limit <= 0:
        raise ValueError("truncation limit must be positive")
    if len(seq) <= limit:
        return seq
    if isinstance(seq, str):
        budget = max(limit - len(TRUNCATION_MARK), 2)
        head = int(budget * head_share)
        tail = budget - head
        cut_head = seq[:head]
        # end the head at a word boundary where one is near, so no word is cut in half
        space = cut_head.rfind(" ", max(0, head - 40))
        if space > 0:
            cut_head = cut_head[:space]
        cut_tail = seq[len(seq) - tail:]
        space = cut_tail.find(" ", 0, 40)
        if space >= 0:
            cut_tail = cut_tail[space + 1:]
        return cut_head + TRUNCATION_MARK + cut_tail
    head = int(limit * head_share)
    tail = limit - head
    return list(seq[:head]) + (list(seq[len(seq) - tail:]) if tail else [])


# ---- near-duplicates ------------------------------------------------------------------------
# MinHash over word shingles (datasketch). Signatures are persisted in gt.db (article_minhash), so
# these constants are part of the stored format: changing them needs a re-hash of old articles.
SHINGLE_WORDS = 5
MINHASH_PERMUTATIONS = 64
MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"
NEAR_DUP_THRESHOLD = 0.8

_word_hashes: dict[str, int] = {}
_MASK32 = 0xFFFFFFFF


def _word_hash(word: str) -> int:
    h = zlib.crc32(word.encode("utf-8"))
    if len(_word_hashes) < 2_000_000:  # bounded: the vocabulary of news is far smaller
        _word_hashes[word] = h
    return h


def shingle_hashes(text: str | list[str], k: int = SHINGLE_WORDS) -> np.ndarray:
    """32-bit hashes of the text's k-word shingles (lower-cased words; punctuation ignored); the
    text may be given as its `words()`. A text of fewer than k words is one shingle; an empty text
    has none."""
    ws = words(text) if isinstance(text, str) else text
    if not ws:
        return np.zeros(0, dtype=np.uint32)
    cached = list(map(_word_hashes.get, ws))  # a C-speed lookup: most words are cached
    if None in cached:
        cached = [h if h is not None else _word_hash(w) for h, w in zip(cached, ws)]
    wh = np.array(cached, dtype=np.uint64)
    n = max(1, len(ws) - k + 1)
    acc = np.zeros(n, dtype=np.uint64)
    # polynomial rolling combination of k word hashes, wrapping mod 2^64, folded to 32 bits
    for j in range(min(k, len(ws))):
        acc = acc * np.uint64(1_000_003) + wh[j:j + n]
    return ((acc ^ (acc >> np.uint64(32))) & np.uint64(_MASK32)).astype(np.uint32)


def _identity(x: int) -> int:
    return x


_PERMUTATIONS = None


def minhash_signature(text: str | list[str]) -> LeanMinHash | None:
    """MinHash of the text's word shingles (text or its `words()`), or None for a text without words."""
    global _PERMUTATIONS
    from datasketch import LeanMinHash, MinHash

    hashes = shingle_hashes(text)
    if hashes.size == 0:
        return None
    if _PERMUTATIONS is None:
        _PERMUTATIONS = MinHash(num_perm=MINHASH_PERMUTATIONS, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations
    # identity hashfunc: the shingles are hashed already; datasketch pre-mixes them (fmix) itself
    m = MinHash(num_perm=MINHASH_PERMUTATIONS, seed=MINHASH_SEED, hashfunc=_identity,
                permutations=_PERMUTATIONS, scheme=MINHASH_SCHEME)
    m.update_batch(hashes.tolist())
    return LeanMinHash(m)


def signature_to_bytes(sig: LeanMinHash) -> bytes:
    buf = bytearray(sig.bytesize())
    sig.serialize(buf)
    return bytes(buf)


def signature_from_bytes(blob: bytes) -> LeanMinHash:
    from datasketch import LeanMinHash

    return LeanMinHash.deserialize(blob)


class NearDuplicateIndex:
    """Articles' MinHash signatures in an LSH index: `similar` finds the earlier articles whose
    estimated Jaccard similarity of shingles reaches the threshold (LSH candidates, verified)."""

    def __init__(self, threshold: float = NEAR_DUP_THRESHOLD, num_perm: int = MINHASH_PERMUTATIONS):
        from datasketch import MinHashLSH

        self.threshold = threshold
        # 10 bands of 6 rows: a pair at Jaccard 0.8 becomes a candidate 95% of the time, at 0.9
        # 99.9% (datasketch's default split finds only 36% and 85%); candidates are verified below
        # so the extra false positives cost a comparison, never a wrong cluster
        bands = 10 if num_perm == MINHASH_PERMUTATIONS else None
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm,
                               params=(bands, num_perm // bands) if bands else None)
        self._signatures: dict[str, LeanMinHash] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def __contains__(self, key: str) -> bool:
        return key in self._signatures

    def add(self, key: str, sig: LeanMinHash) -> None:
        if key in self._signatures:
            return
        self._lsh.insert(key, sig, check_duplication=False)
        self._signatures[key] = sig

    def similar(self, sig: LeanMinHash) -> list[str]:
        found = [k for k in self._lsh.query(sig) if sig.jaccard(self._signatures[k]) >= self.threshold]
        return sorted(found)


# ---- JSON lines ---------------------------------------------------------------------------------

def jsonl_records(path, bad_line) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSONL file; a line that is not JSON
    raises `bad_line(message)`, the message saying 'invalid JSON, <file>:<line> (<why>)'."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise bad_line(f"invalid JSON, {path}:{n} ({e.msg})") from None


# ---- YAML files the user writes ----------------------------------------------------------------

def yaml_document(path, bad_file) -> Any:
    """The parsed YAML document at `path`; a syntax error raises `bad_file(path, [one line with the
    line number])` (a FileProblems class: a filter's config.yaml, oracles.yaml)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise bad_file(path, [f"YAML syntax error{line}: {getattr(e, 'problem', e)}"]) from None

