"""What the fake provider answers: deterministic scores from the article's text, so a test can
predict the exact answer for any article, and the corrupted answers that fault injection sends."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Sequence

_ARTICLE = re.compile(r"<article>(.*?)</article>", re.S)
_FAULT_MARKER = re.compile(r"FAULT:([a-z_]+)(?::(\d+))?")


def article_block(prompt_text: str) -> str:
    """The delimited article inside a prompt (the text between <article> and </article>), or the
    whole text when there is no such block."""
    m = _ARTICLE.search(prompt_text)
    return (m.group(1) if m else prompt_text).strip()


def article_key(article: str) -> str:
    return hashlib.sha256(article.encode("utf-8")).hexdigest()


def deterministic_answer(article: str, dimensions: Sequence[str], content_types: Sequence[str]) -> dict[str, Any]:
    """Scores in half points 0-10 derived from the article's hash: same article, same answer."""
    digest = hashlib.sha256(article.encode("utf-8")).digest()
    scores = {name: (digest[i % len(digest)] % 21) / 2 for i, name in enumerate(dimensions)}
    content_type = content_types[digest[-1] % len(content_types)] if content_types else "other"
    evidence = {name: f"The fake oracle scored {name} {scores[name]:g} from the article's hash." for name in dimensions}
    return {"scores": scores, "content_type": content_type, "evidence": evidence}


def expected_answer(filter_, title: str, text: str) -> dict[str, Any]:
    """The answer the fake server gives for this article under this filter (tests' oracle)."""
    _, article_part = filter_.prompt_parts(title, text)
    return deterministic_answer(article_block(article_part), filter_.dimension_names, list(filter_.content_types))


def schema_shape(schema: dict | None) -> tuple[list[str], list[str]] | None:
    """(dimension names, content types) read from the answer schema a client sent, if any."""
    try:
        props = schema["properties"]
        return list(props["scores"]["required"]), list(props["content_type"]["enum"])
    except (KeyError, TypeError):
        return None


def fault_markers(article: str) -> list[tuple[str, int | None]]:
    """`FAULT:<name>` (every request) or `FAULT:<name>:<n>` (the first n requests for this
    article) markers written into an article's text."""
    return [(m.group(1), int(m.group(2)) if m.group(2) else None) for m in _FAULT_MARKER.finditer(article)]


def corrupt(answer: dict[str, Any], fault: str) -> str:
    """The answer text for an answer-level fault (the HTTP exchange itself succeeds)."""
    answer = json.loads(json.dumps(answer))
    first = next(iter(answer["scores"]), None)
    if fault == "missing_dimension" and first:
        del answer["scores"][first]
        answer["evidence"].pop(first, None)
    elif fault == "out_of_range" and first:
        answer["scores"][first] = 14
    text = json.dumps(answer)
    if fault == "malformed":
        return text[: len(text) // 2]   # cut mid-object, as a max-token stop would
    if fault == "empty":
        return ""
    return text
