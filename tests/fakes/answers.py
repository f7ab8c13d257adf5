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


def expected_answer(filter_, title: str, text: str, model: str = "") -> dict[str, Any]:
    """The answer the fake server gives for this article under this filter (tests' oracle); a
    model id with a `noise<N>` part gets the same perturbation as on the server."""
    _, article_part = filter_.prompt_parts(title, text)
    article = article_block(article_part)
    return model_variant(deterministic_answer(article, filter_.dimension_names, list(filter_.content_types)),
                         article, model)


_NOISE = re.compile(r"noise(\d+(?:\.\d+)?)")


def model_variant(answer: dict[str, Any], article: str, model: str) -> dict[str, Any]:
    """Make models disagree, deterministically: a model id containing `noise<N>` (e.g.
    `fake-flash-noise1.5`) moves every score by an offset in [-N, N] points (half-point steps, from
    the hash of model and article, clipped to 0-10). Any other model id answers unchanged, so
    models without `noise` agree perfectly."""
    m = _NOISE.search(model or "")
    if not m:
        return answer
    amplitude = float(m.group(1))
    steps = int(amplitude * 2)
    digest = hashlib.sha256(f"{model}\n{article}".encode("utf-8")).digest()
    out = json.loads(json.dumps(answer))
    for i, name in enumerate(out["scores"]):
        offset = ((digest[i % len(digest)] % (2 * steps + 1)) - steps) / 2 if steps else 0.0
        out["scores"][name] = min(10.0, max(0.0, out["scores"][name] + offset))
    return out


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
    elif fault == "off_grid":
        # fits the schema we send (numbers 0-10) but not the half-point grid the prompt asks for
        for name, value in zip(answer["scores"], (8.1, 3.8)):
            answer["scores"][name] = value
    text = json.dumps(answer)
    if fault == "malformed":
        return text[: len(text) // 2]   # cut mid-object, as a max-token stop would
    if fault == "empty":
        return ""
    return text
