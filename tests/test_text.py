"""Text handling: cleaning (HTML, mojibake, whitespace), content hashes, head+tail truncation and
near-duplicate signatures."""
import html
import json
import random
import unicodedata

import ftfy
import pytest

from gt.core.text import (TRUNCATION_MARK, NearDuplicateIndex, clean_text, content_hash, content_hash_of_words,
                         head_tail_truncate, minhash_signature, signature_from_bytes, signature_to_bytes, words)
from tests.conftest import SAMPLE


@pytest.fixture(scope="module")
def sample_texts():
    with SAMPLE.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:60]


def test_html_is_removed_and_paragraphs_kept():
    raw = "<html><head><style>p {color: red}</style></head><body><p>First &amp; foremost.</p>" \
          "<script>alert('x')</script><p>Second<br>line&nbsp;here.</p></body></html>"
    assert clean_text(raw) == "First & foremost.\n\nSecond\n\nline here."


def test_mojibake_is_repaired():
    assert clean_text("CafÃ© owners say â€œbusiness is backâ€\x9d") == 'Café owners say "business is back"'


def test_whitespace_and_control_characters_are_normalised():
    raw = "  One\t\ttwo\u00a0three\u200b.\r\n\r\n\r\n\x07Next   paragraph.\x00  "
    assert clean_text(raw) == "One two three.\n\nNext paragraph."


def _reference_clean(raw):
    """clean_text as first written (ftfy on the whole text, per-character control removal): the
    fast paths must give exactly the same text."""
    import re
    from gt.core import text as t
    if not raw:
        return ""
    s = ftfy.fix_text(raw, normalization="NFC")
    if "<" in s and ">" in s:
        s = t._BLOCK_TAG.sub("\n\n", s)
        s = t._TAG.sub(" ", s)
    s = html.unescape(s)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = "".join(ch for ch in s if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    s = t._SPACES.sub(" ", s)
    s = "\n".join(line.strip() for line in s.split("\n"))
    s = re.sub(r"\n\s*\n+", "\n\n", s)
    return s.strip()


def test_fast_cleaning_equals_plain_ftfy_cleaning(sample_texts):
    rng = random.Random(7)
    alphabet = list("ab <>&;/\n\r\t\x1b\x0c") + ["\u00a0", "Ã©", "â€œ", "\u201c", "é", "\u200b", "&amp;", "&lt;p&gt;", "<p>", "ﬁ"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(400)]
    for raw in sample_texts + fuzz:
        assert clean_text(raw) == _reference_clean(raw), repr(raw)


def test_content_hash_ignores_case_spacing_and_punctuation():
    a = content_hash("Flood defences hold", "The river rose 3 metres.\n\nNobody was hurt.")
    b = content_hash("FLOOD  defences hold!", "The river rose 3 metres. Nobody was hurt")
    c = content_hash("Flood defences hold", "The river rose 4 metres.\n\nNobody was hurt.")
    assert a == b != c
    assert content_hash_of_words(words("Flood defences hold\nThe river rose 3 metres.\n\nNobody was hurt.")) == a


def test_head_tail_truncation_keeps_start_and_end_within_the_limit():
    text = " ".join(f"w{i}" for i in range(3000))
    cut = head_tail_truncate(text, 1000)
    assert len(cut) <= 1000 and cut.startswith("w0 w1") and cut.endswith("w2999") and TRUNCATION_MARK in cut
    assert head_tail_truncate("short", 1000) == "short"
    ids = list(range(100))
    assert head_tail_truncate(ids, 10) == [0, 1, 2, 3, 4, 5, 6, 97, 98, 99]


def test_lightly_edited_copy_is_a_near_duplicate_and_unrelated_text_is_not(sample_texts):
    original = sample_texts[3]
    tokens = original.split(" ")
    tokens[5], tokens[40] = "reportedly", "also"
    edited = " ".join(tokens)
    sig_a, sig_b, sig_c = (minhash_signature(t) for t in (original, edited, sample_texts[4]))
    assert sig_a.jaccard(sig_b) >= 0.8
    assert sig_a.jaccard(sig_c) < 0.2
    index = NearDuplicateIndex()
    index.add("a", sig_a)
    index.add("c", sig_c)
    assert index.similar(sig_b) == ["a"]
    assert index.similar(minhash_signature(sample_texts[5])) == []


def test_signatures_survive_storage_and_are_deterministic(sample_texts):
    sig = minhash_signature(sample_texts[0])
    restored = signature_from_bytes(signature_to_bytes(sig))
    assert restored.jaccard(sig) == 1.0
    assert (minhash_signature(sample_texts[0]).hashvalues == sig.hashvalues).all()
    assert minhash_signature("") is None and minhash_signature("...") is None
    assert minhash_signature("two words") is not None  # fewer words than a shingle: one shingle


def test_index_finds_every_lightly_edited_copy(sample_texts):
    """Recall at Jaccard ~0.9 (one word in 120 changed): every copy is found, nothing else is."""
    index = NearDuplicateIndex()
    originals = sample_texts[:40]
    for i, text in enumerate(originals):
        index.add(f"o{i}", minhash_signature(text))
    for i, text in enumerate(originals):
        tokens = text.split(" ")
        for pos in range(60, len(tokens), 120):
            tokens[pos] = "changed"
        assert index.similar(minhash_signature(" ".join(tokens))) == [f"o{i}"]
