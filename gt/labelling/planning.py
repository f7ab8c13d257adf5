"""What a label run would send: the sample and its plan, the request for one unit and its size.

The sync engine (gt/labelling/sync.py), the batch engine (gt/labelling/batch.py) and `--dry-run`
share these: the same sample order (`eligible_article_ids`), the same planner (`plan_items`), the
same request (`build_request`) and the same estimates of its tokens and worst-case cost. The
`replay/<oracle>` answers (labels gt.db already holds, replayed as an oracle) are read here too.
"""
from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Iterable, Iterator

from gt import DEFAULT_SEED
from gt.core import store
from gt.core.filters import Filter
from gt.labelling.leases import FINAL_STATUSES
from gt.oracles.base import FatalError, OracleRequest, OracleSpec

CHARS_PER_TOKEN = 4.0          # the usual estimate for English prompts (--dry-run, rate limiter)
RESERVE_BYTES_PER_TOKEN = 3.0  # the budget reserve errs high: UTF-8 bytes / 3 overestimates tokens
EVIDENCE_CHARS = 120           # a typical evidence sentence, for the expected answer length


# ---- the sample and its plan ---------------------------------------------------------------------

def eligible_article_ids(conn: sqlite3.Connection, filt: Filter, *, seed: int = DEFAULT_SEED,
                         random_sample: bool = True) -> list[str]:
    """Articles a label run may pick, in the order it picks them: not duplicates, not too short.
    With `random_sample` the order is sha256(seed:id), a seeded shuffle that is stable (an
    interrupted run resumes on the same articles, and adding articles only interleaves them);
    otherwise ingest order. The keyword prefilter is applied as units are taken."""
    rows = conn.execute(
        "SELECT id FROM articles WHERE dup_of IS NULL AND too_short = 0 AND chars >= ? ORDER BY rowid",
        (filt.min_chars,),
    )
    ids = [r[0] for r in rows]
    if random_sample:
        prefix = f"{seed}:".encode()
        ids.sort(key=lambda a: hashlib.sha256(prefix + a.encode("utf-8")).digest())
    return ids


def existing_labels(conn: sqlite3.Connection, filt: Filter, oracle: str,
                    prompt_sha256: str | None = None) -> dict[tuple[str, int], str]:
    """(article_id, repeat) -> status of the labels already stored for this key."""
    rows = conn.execute(
        'SELECT article_id, "repeat", status FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?',
        (filt.id, oracle, prompt_sha256 or filt.prompt_sha256),
    )
    return {(r[0], r[1]): r[2] for r in rows}


def article_text(conn: sqlite3.Connection, article_id: str) -> tuple[str, str] | None:
    """(title, text) of one article ('' for a missing title or text), None when gt.db lacks it."""
    return store.article_texts(conn, (article_id,)).get(article_id)


@dataclass
class PlanItem:
    article_id: str
    repeats: list[int]        # the repeats still missing a final (ok/invalid) label
    primary: bool             # repeat 0 is among them: a valid answer counts toward the target


@dataclass
class PlanCounts:
    skipped_existing: int = 0  # units already labelled ok/invalid


def plan_items(article_ids: Iterable[str], existing: dict[tuple[str, int], str], *, repeats: int,
               target: int | None, skip: set[tuple[str, int]] | frozenset = frozenset(),
               counts: PlanCounts | None = None) -> Iterator[PlanItem]:
    """The one planner of sync, batch and --dry-run: in sample order, the units still missing for
    each article. Without a target every article gets every repeat. With one, an article whose
    repeat 0 is final is done unless it is valid and among the first `target` valid ones (then its
    other repeats are due); the others come as primary items, and the caller stops taking them once
    the valid labels (and the primaries in flight) reach the target. Units in `skip` (inside an
    open batch job) are left out."""
    counts = counts if counts is not None else PlanCounts()
    granted = 0
    for aid in article_ids:
        missing = [r for r in range(repeats) if existing.get((aid, r)) not in FINAL_STATUSES]
        counts.skipped_existing += repeats - len(missing)
        first = existing.get((aid, 0))
        if target is not None and first in FINAL_STATUSES:
            if first != "ok" or granted >= target:
                counts.skipped_existing += len(missing)
                continue
            granted += 1
        missing = [r for r in missing if (aid, r) not in skip]
        if missing:
            yield PlanItem(aid, missing, primary=target is not None and missing[0] == 0)


# ---- one request ---------------------------------------------------------------------------------

def build_request(filt: Filter, article_id: str, repeat: int, title: str, text: str) -> OracleRequest:
    """The request for one unit: the rubric, the delimited article, the answer schema. The prompt is
    rendered once (Filter.prompt_parts: the text cut head+tail to the filter's max_article_chars,
    filled in one pass so an article's braces are just text, and checked to hold the article); the
    rubric and the schema are the filter's own, built once per loaded filter."""
    rubric, article = filt.prompt_parts(title, text)
    return OracleRequest(rubric=rubric, article=article, schema=filt.answer_schema(), title=title or "",
                         text=text or "", filter=filt, request_id=f"{article_id}#{repeat}")


def estimate_input_tokens(request: OracleRequest) -> int:
    chars = len(request.rubric) + len(request.article) + sum(len(a) + len(b) for a, b in request.followups)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def expected_output_tokens(filt: Filter) -> int:
    """A typical valid answer's length: a score and an evidence sentence per dimension."""
    per_dim = len('"": 10.0, "": "",') + EVIDENCE_CHARS
    chars = 60 + sum(2 * len(n) + per_dim for n in filt.dimension_names)
    return math.ceil(chars / CHARS_PER_TOKEN)


def worst_case_tokens(request: OracleRequest) -> int:
    """Input tokens one call could bill at most: every prompt byte a third of a token."""
    parts = (request.rubric, request.article, *(turn for pair in request.followups for turn in pair))
    nbytes = sum(len(part.encode("utf-8")) for part in parts)
    return math.ceil(nbytes / RESERVE_BYTES_PER_TOKEN)


def worst_case_cost(spec: OracleSpec, request: OracleRequest, *, batch: bool = False) -> float:
    """What one call could cost at most: the worst-case prompt and a full-length answer."""
    return spec.cost(worst_case_tokens(request), spec.max_output_tokens, batch=batch)


def format_duration(seconds: float) -> str:
    """A duration as people say it: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"



# ---- replay: answers from labels gt.db already holds ----------------------------------------------

def replay_answers(conn: sqlite3.Connection, filt: Filter, source: str) -> dict[tuple[str, int], dict]:
    """{(article_id, repeat): answer} for the `replay/<source>` oracle: each valid label `source` has
    for this filter (the newest where it has several prompt versions) as the JSON answer the filter's
    schema asks for, with the source's token counts where it recorded them. A label that does not
    fit this filter (a dimension missing) is left out: its article is then not in the replayed set."""
    rows = conn.execute(
        """SELECT l.id, l.article_id, l."repeat", l.content_type, l.evidence_json, l.input_tokens, l.output_tokens,
                  json_group_object(s.dimension, s.score) AS scores
           FROM labels l JOIN label_scores s ON s.label_id = l.id
           WHERE l.filter_id = ? AND l.oracle = ? AND l.status = 'ok'
           GROUP BY l.id ORDER BY l.id""", (filt.id, source)).fetchall()
    if not rows:
        raise FatalError(f"replay/{source}: gt.db has no valid label of {filt.id} by oracle '{source}' to replay "
                         f"(see the oracles that have some: make label-status)")
    answers: dict[tuple[str, int], dict] = {}
    names = filt.dimension_names
    for r in rows:
        scores = json.loads(r["scores"])
        if any(n not in scores for n in names):
            continue
        evidence = json.loads(r["evidence_json"]) if r["evidence_json"] else {}
        answer = {"scores": {n: scores[n] for n in names},
                  "content_type": r["content_type"] if r["content_type"] in filt.content_types else filt.content_types[0],
                  "evidence": {n: str(evidence.get(n) or "") for n in names}}
        answers[(r["article_id"], r["repeat"])] = {"text": json.dumps(answer), "input_tokens": r["input_tokens"],
                                                  "output_tokens": r["output_tokens"]}
    return answers

