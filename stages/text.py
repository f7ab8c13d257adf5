"""Text handling shared by every stage: cleaning, hashing, and the one head+tail truncation.

The oracle prompt and the student model must see the same part of a long article, so both cut it
with `head_tail_truncate` (characters for the prompt, token ids for the student).
"""
from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from typing import Sequence, TypeVar

import ftfy

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
    text = ftfy.fix_text(raw, normalization="NFC")
    if "<" in text and ">" in text:
        text = _BLOCK_TAG.sub("\n\n", text)
        text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def normalise_for_hash(text: str) -> str:
    """Case- and whitespace-insensitive form used to spot exact duplicates."""
    return " ".join(_WORD.findall(text.lower()))


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(normalise_for_hash(f"{title}\n{text}").encode("utf-8")).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


T = TypeVar("T", str, Sequence)


def head_tail_truncate(seq: T, limit: int, head_share: float = 0.75) -> T:
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
