"""The sync label engine (`label_articles`: the label stage and calibrate run it) and what it, the
batch engine (stages/label_batch.py) and the dry run share: the sample and its plan, the request for one unit, the judgement of one answer, and
the money path: the ledger, the leases, the writer thread and the circuit breaker.

A unit is (article, filter, oracle, prompt hash, repeat). Its life:
  1. planned (`plan_items`: the same rules for sync, batch and --dry-run);
  2. claimed in gt.db's `label_leases` (`claim_unit`) before anything is sent, so concurrent
     processes never pay for the same unit;
  3. answered, judged (`outcome_from_completion`: valid = fits the schema we sent);
  4. stored (`store_outcome`): the label, its cost added to the run's ledger and the lease released,
     in one transaction. A paid answer that lost a race to another process is still added to the
     ledger (as `unstored`): the ledger is what the provider bills, never less.

Database writes of a sync run go through `DbWriter`, one thread with its own connection that
commits the event loop's work in groups, so a lock held by another process never stalls the loop:
answers wait in memory (at most one per worker) until the lock goes, and past a patience limit
they are kept in a spill file beside gt.db that the next run stores (`apply_spills`).
"""
from __future__ import annotations

import asyncio
import random
import sys
import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import math
import os
import queue
import re
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from stages import store
from stages.filters import AnswerError, Filter
from stages.oracles.base import (Completion, FatalError, NotAnswerable, Oracle, OracleRequest, OracleSpec, QuotaExhausted,
                                 RateLimited, TransientError)
from stages.oracles.ratelimit import RateLimiter

CHARS_PER_TOKEN = 4.0          # the usual estimate for English prompts (--dry-run, rate limiter)
RESERVE_BYTES_PER_TOKEN = 3.0  # the budget reserve errs high: UTF-8 bytes / 3 overestimates tokens
EVIDENCE_CHARS = 120           # a typical evidence sentence, for the expected answer length
FINAL_STATUSES = ("ok", "invalid")
LEASE_TTL_S = 120.0            # a lease lives this long unless its owner renews it
HEARTBEAT_S = 10.0             # how often a running process renews its leases and its run's heartbeat
BATCH_LEASE_TTL_S = 8 * 86400.0  # a provider batch job holds its units until collected (24 h window + slack)


# ---- one label -----------------------------------------------------------------------------------

@dataclass
class LabelOutcome:
    """Everything stored for one label. `calls` is how many billed responses it took (a corrective
    retry makes two); their cost, tokens and count go to the run's ledger with the label."""
    status: str
    scores: dict | None = None
    content_type: str | None = None
    evidence: dict | None = None
    raw_response: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 0
    calls: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LabelKey:
    """The label set a unit belongs to."""
    filter_id: str
    oracle: str
    prompt_sha256: str

    @classmethod
    def of(cls, filt: Filter, oracle: str) -> "LabelKey":
        return cls(filt.id, oracle, filt.prompt_sha256)


# ---- who runs ------------------------------------------------------------------------------------

def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]   # field 22: start time in clock ticks
    except (OSError, IndexError):
        return None


def owner_id() -> str:
    """host:pid:start of this process (the start time tells a reused pid from ours)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '-'}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host (its pid checked), None where it cannot be told (another
    host, a batch job, an old run without owner)."""
    if not owner or owner.startswith("job:"):
        return None
    try:
        host, pid, start = owner.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    ticks = _start_ticks(pid_n)
    return ticks is None or start == "-" or ticks == start


def lease_live(owner: str, expires_at: float, now: float, me: str | None = None) -> bool:
    if owner == me:
        return True
    if expires_at <= now:
        return False
    return owner_alive(owner) is not False


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


# ---- the sample and its plan ---------------------------------------------------------------------

def eligible_article_ids(conn: sqlite3.Connection, filt: Filter, *, seed: int = 42,
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
    row = conn.execute("SELECT title, text FROM articles WHERE id = ?", (article_id,)).fetchone()
    return (row[0] or "", row[1] or "") if row else None


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
    filled in one pass, so an article's braces are just text."""
    rubric, article = filt.prompt_parts(title, text)
    return OracleRequest(rubric=rubric, article=article, schema=filt.answer_schema(), title=title or "",
                         text=text or "", filter=filt, request_id=f"{article_id}#{repeat}")


def estimate_input_tokens(request: OracleRequest) -> int:
    chars = len(request.prompt) + sum(len(a) + len(b) for a, b in request.followups)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def expected_output_tokens(filt: Filter) -> int:
    """A typical valid answer's length: a score and an evidence sentence per dimension."""
    per_dim = len('"": 10.0, "": "",') + EVIDENCE_CHARS
    chars = 60 + sum(2 * len(n) + per_dim for n in filt.dimension_names)
    return math.ceil(chars / CHARS_PER_TOKEN)


def worst_case_tokens(request: OracleRequest) -> int:
    """Input tokens one call could bill at most: every prompt byte a third of a token."""
    nbytes = len(request.prompt.encode("utf-8")) + sum(len(a.encode()) + len(b.encode()) for a, b in request.followups)
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


# ---- one answer ----------------------------------------------------------------------------------

def judge_answer(filt: Filter, raw: str | None) -> tuple[LabelOutcome | None, str | None]:
    """(an 'ok' outcome, None) for a valid answer, else (None, what is wrong)."""
    try:
        scores, content_type, evidence = filt.parse_answer(raw)
    except AnswerError as e:
        return None, str(e)
    return LabelOutcome("ok", scores=scores, content_type=content_type, evidence=evidence, raw_response=raw), None


def completion_cost(spec: OracleSpec, completion: Completion, *, batch: bool = False) -> float:
    return spec.cost(completion.input_tokens or 0, completion.output_tokens or 0, completion.cached_tokens or 0,
                     batch=batch, cache_write_tokens=completion.cache_write_tokens or 0)


def outcome_from_completion(filt: Filter, spec: OracleSpec, completion: Completion, *,
                            batch: bool = False, corrective: bool = False,
                            first_problem: str | None = None) -> tuple[LabelOutcome, str | None]:
    """Turn one completion into an outcome with its cost. Returns (outcome, problem): problem is
    set when the answer is invalid (outcome.status 'invalid') and a corrective retry may help."""
    usage = dict(input_tokens=completion.input_tokens or 0, output_tokens=completion.output_tokens or 0,
                 cached_tokens=completion.cached_tokens or 0)
    common = dict(cost_usd=completion_cost(spec, completion, batch=batch), latency_ms=completion.latency_ms or 0.0,
                  attempts=1, calls=1, **usage)
    if completion.refusal:
        return LabelOutcome("invalid", raw_response=completion.refusal,
                            error=f"refused: {completion.refusal}"[:500], **common), None
    ok, problem = judge_answer(filt, completion.text)
    if ok is not None:
        return dataclasses.replace(ok, **common), None
    if corrective:
        reason = f"invalid after one corrective retry: {problem} (first answer: {first_problem})"
    else:
        reason = f"invalid answer: {problem}"
    # an empty answer is stored as '' (the model said nothing), never as a missing value
    return LabelOutcome("invalid", raw_response=completion.text or "", error=reason, **common), problem


def merge_outcomes(first: LabelOutcome, second: LabelOutcome) -> LabelOutcome:
    """The outcome of a corrective retry, with the cost, tokens and calls of both."""
    return dataclasses.replace(
        second, input_tokens=first.input_tokens + second.input_tokens,
        output_tokens=first.output_tokens + second.output_tokens,
        cached_tokens=first.cached_tokens + second.cached_tokens, cost_usd=first.cost_usd + second.cost_usd,
        latency_ms=first.latency_ms + second.latency_ms, attempts=first.attempts + second.attempts,
        calls=first.calls + second.calls)


def off_grid(scores: dict | None, step: float = 0.5) -> bool:
    """True when a score is not a multiple of `step` (valid, stored as given, counted in summaries)."""
    return bool(scores) and any(abs(v / step - round(v / step)) > 1e-9 for v in scores.values())


# ---- storing: label, ledger and lease in one transaction -----------------------------------------

def store_outcome(conn: sqlite3.Connection, *, run_id: int, filt: Filter, oracle: str, article_id: str,
                  repeat: int, outcome: LabelOutcome, owner: str | None = None,
                  key: LabelKey | None = None) -> int | None:
    """One transaction: the label (replacing an earlier 'error' label of the unit), the cost, tokens
    and billed calls of the answer added to the run's ledger, and the unit's lease released.
    Returns the label id, or None when the unit already had a label (another process answered it
    first: the answer is paid, so it still goes into the ledger, counted as unstored)."""
    key = key or LabelKey.of(filt, oracle)
    with store.transaction(conn):
        store.replace_failed_label(conn, article_id, filt, oracle, repeat, prompt_sha256=key.prompt_sha256)
        label_id = store.insert_label(
            conn, run_id=run_id, article_id=article_id, filt=filt, oracle=oracle, status=outcome.status,
            repeat=repeat, scores=outcome.scores if outcome.status == "ok" else None,
            content_type=outcome.content_type, evidence=outcome.evidence, raw_response=outcome.raw_response,
            error=outcome.error, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens,
            cached_tokens=outcome.cached_tokens, cost_usd=outcome.cost_usd, latency_ms=outcome.latency_ms,
            attempts=max(outcome.attempts, 1), prompt_sha256=key.prompt_sha256)
        store.add_to_ledger(conn, run_id, cost_usd=outcome.cost_usd, input_tokens=outcome.input_tokens,
                            output_tokens=outcome.output_tokens, cached_tokens=outcome.cached_tokens,
                            calls=outcome.calls, unstored=1 if label_id is None and outcome.calls else 0)
        release_unit(conn, key, article_id, repeat, owner)
    return label_id


def record_completion(conn: sqlite3.Connection, *, run_id: int, filt: Filter, spec: OracleSpec,
                      article_id: str, repeat: int, completion: Completion, batch: bool = True,
                      owner: str | None = None) -> LabelOutcome:
    """Validate one returned answer (a provider batch item) and store it, priced at batch rates.
    Batch results get no corrective retry: an invalid answer is stored 'invalid' with its raw text."""
    outcome, _ = outcome_from_completion(filt, spec, completion, batch=batch)
    store_outcome(conn, run_id=run_id, filt=filt, oracle=spec.name, article_id=article_id, repeat=repeat,
                  outcome=outcome, owner=owner)
    return outcome


# ---- leases --------------------------------------------------------------------------------------

_LEASE_WHERE = 'filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND article_id = ? AND "repeat" = ?'


def claim_unit(conn: sqlite3.Connection, key: LabelKey, article_id: str, repeat: int, *, owner: str,
               run_id: int | None, ttl_s: float = LEASE_TTL_S, now: float | None = None) -> str:
    """Claim one unit before paying for it (call inside a write transaction). Returns 'claimed',
    'done' (it has an ok/invalid label now) or 'taken' (another live process or batch job holds it)."""
    now = time.time() if now is None else now
    unit = (key.filter_id, key.oracle, key.prompt_sha256, article_id, repeat)
    row = conn.execute(
        'SELECT status FROM labels WHERE article_id = ? AND filter_id = ? AND oracle = ? AND prompt_sha256 = ? '
        'AND "repeat" = ?', (article_id, *unit[:3], repeat)).fetchone()
    if row is not None and row[0] in FINAL_STATUSES:
        return "done"
    lease = conn.execute(f"SELECT owner, expires_at FROM label_leases WHERE {_LEASE_WHERE}", unit).fetchone()
    if lease is not None and lease_live(lease[0], lease[1], now, owner):
        if lease[0] != owner:
            return "taken"
    conn.execute(
        """INSERT INTO label_leases (filter_id, oracle, prompt_sha256, article_id, "repeat", owner, run_id, expires_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (filter_id, oracle, prompt_sha256, article_id, "repeat")
           DO UPDATE SET owner = excluded.owner, run_id = excluded.run_id, expires_at = excluded.expires_at""",
        (*unit, owner, run_id, now + ttl_s))
    return "claimed"


def release_unit(conn: sqlite3.Connection, key: LabelKey, article_id: str, repeat: int, owner: str | None) -> None:
    """Drop a lease (only the owner's own: a lease taken over by another process stays theirs)."""
    if owner is None:
        return
    conn.execute(f"DELETE FROM label_leases WHERE {_LEASE_WHERE} AND owner = ?",
                 (key.filter_id, key.oracle, key.prompt_sha256, article_id, repeat, owner))


def release_owner(conn: sqlite3.Connection, owner: str) -> None:
    conn.execute("DELETE FROM label_leases WHERE owner = ?", (owner,))


def renew(conn: sqlite3.Connection, owner: str, run_id: int | None, ttl_s: float = LEASE_TTL_S) -> None:
    now = time.time()
    conn.execute("UPDATE label_leases SET expires_at = ? WHERE owner = ?", (now + ttl_s, owner))
    if run_id is not None:
        conn.execute("UPDATE label_runs SET heartbeat_at = ? WHERE id = ?", (now, run_id))


def live_leases(conn: sqlite3.Connection, key: LabelKey, *, repeat: int | None = None,
                me: str | None = None) -> list[tuple[str, int, str]]:
    """(article, repeat, owner) of the live leases of a label set."""
    now = time.time()
    sql = "SELECT article_id, \"repeat\", owner, expires_at FROM label_leases WHERE filter_id = ? AND oracle = ? " \
          "AND prompt_sha256 = ?"
    args: list[Any] = [key.filter_id, key.oracle, key.prompt_sha256]
    if repeat is not None:
        sql += ' AND "repeat" = ?'
        args.append(repeat)
    return [(a, r, o) for a, r, o, e in conn.execute(sql, args) if lease_live(o, e, now, me)]


class TargetGate:
    """The target across processes: valid repeat-0 labels among the run's articles plus the
    primaries leased by anyone (this process included) must stay below the target before one more
    primary is claimed. Valid labels are followed incrementally (label ids only grow)."""

    def __init__(self, key: LabelKey, article_ids: Iterable[str], target: int, ok_ids: set[str]):
        self.key, self.target = key, target
        self.articles = set(article_ids)
        self.ok = set(ok_ids)
        self.last_id = 0

    def refresh(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            """SELECT id, article_id, "repeat" FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?
               AND status = 'ok' AND id > ?""", (self.key.filter_id, self.key.oracle, self.key.prompt_sha256,
                                                 self.last_id))
        for lid, aid, rep in rows:
            self.last_id = max(self.last_id, lid)
            if rep == 0 and aid in self.articles:
                self.ok.add(aid)

    def state(self, conn: sqlite3.Connection, me: str) -> str:
        """'met' (enough valid labels), 'full' (enough with the leased primaries) or 'open'."""
        self.refresh(conn)
        if len(self.ok) >= self.target:
            return "met"
        leased = {a for a, _, _ in live_leases(conn, self.key, repeat=0, me=me) if a in self.articles and a not in self.ok}
        return "full" if len(self.ok) + len(leased) >= self.target else "open"


# ---- runs ----------------------------------------------------------------------------------------

def run_state(row: sqlite3.Row | dict, now: float | None = None, open_jobs: int = 0) -> str:
    """A run's true state: running, done, stopped, failed, died, or waiting (batch jobs open at the
    provider). A 'running' row whose owner is gone (pid dead here, or no heartbeat for two lease
    lifetimes) died."""
    status = row["status"]
    if status != "running":
        return status
    if open_jobs:
        return "waiting"
    now = time.time() if now is None else now
    alive = owner_alive(row["owner"])
    if alive is False:
        return "died"
    beat = row["heartbeat_at"]
    if row["owner"] is None or beat is None:
        return "running?"   # a run from before gt.db recorded owners: running, or killed
    if alive is None and now - beat > 2 * LEASE_TTL_S:
        return "died"
    return "running"


def mark_dead_runs(conn: sqlite3.Connection) -> int:
    """Write 'died' on running runs whose process is gone (call inside a write transaction)."""
    rows = conn.execute(
        """SELECT r.id, r.status, r.owner, r.heartbeat_at,
                  (SELECT COUNT(*) FROM batch_jobs j WHERE j.run_id = r.id
                     AND j.state NOT IN ('collected', 'failed', 'expired', 'cancelled')) AS open_jobs
           FROM label_runs r WHERE r.status = 'running' AND r.owner IS NOT NULL""").fetchall()
    dead = [r["id"] for r in rows if run_state(r, open_jobs=r["open_jobs"]) == "died"]
    for run_id in dead:
        conn.execute("UPDATE label_runs SET status = 'died', finished_at = COALESCE(finished_at, "
                     "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')) WHERE id = ?", (run_id,))
    return len(dead)


def recorded_spend(conn: sqlite3.Connection, filter_id: str, oracle: str) -> float:
    """All spend gt.db records for a filter and an oracle (every run, every prompt version)."""
    row = conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM label_runs WHERE filter_id = ? AND oracle = ?",
                       (filter_id, oracle)).fetchone()
    return float(row[0])


# ---- the circuit breaker -------------------------------------------------------------------------

_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?")


class Breaker:
    """Stops a run that can only waste money: over the last `window` answers (billed responses and
    failed calls alike; rate-limit waits do not count), more than half bad (invalid or failed)."""

    def __init__(self, window: int = 20):
        self.window = window
        self.recent: collections.deque[bool] = collections.deque(maxlen=window)
        self.reasons: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self.tripped = False

    def record(self, good: bool, reason: str | None = None, raw: str | None = None) -> bool:
        """Count one answer; True when the breaker trips now."""
        if self.window <= 0:
            return False
        self.recent.append(good)
        if not good:
            kind = _NUMBERS.sub("N", (reason or "unknown").split(" (first answer:")[0])[:160]
            self.reasons[kind] += 1
            if kind not in self.examples and raw is not None:
                self.examples[kind] = raw
        bad = sum(1 for g in self.recent if not g)
        if not self.tripped and bad > self.window // 2:
            self.tripped = True
            return True
        return False

    def message(self) -> str:
        bad = sum(1 for g in self.recent if not g)
        parts = []
        for kind, n in self.reasons.most_common(3):
            ex = self.examples.get(kind)
            example = f"; e.g. raw answer {_clip(ex, 160)!r}" if ex is not None else ""
            parts.append(f"{n}x {kind}{example}")
        return (f"circuit breaker: {bad} of the last {len(self.recent)} answers were invalid or failed, so the run "
                f"stopped before spending more. Most frequent: " + " | ".join(parts))


def _clip(text: str, n: int = 500) -> str:
    """One line of at most n characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- the writer thread ---------------------------------------------------------------------------

class WriterStopped(Exception):
    """The writer gave up (the run stopped past its patience): nothing more is written."""


class Spilled(Exception):
    """The work was not written to gt.db but kept in the spill file `path` (the next run stores it)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future
    spill: Callable[[], dict] | None = None   # for work that carries a paid answer: its spill record
    queued: bool = True                       # counted in DbWriter._queued


class DbWriter:
    """Runs small pieces of work (`fn(conn)`) for the event loop, each all or nothing, without ever
    making the loop wait for another process's lock. The fast path runs a piece at once on the
    loop's own write connection with no busy wait: gt.db is free nearly always, and a local
    transaction takes a fraction of a millisecond. When the lock is held elsewhere the piece goes
    to a thread with its own connection, which keeps trying (blocked_for() says how long) and
    commits what waits in groups, each piece in its own savepoint; until that queue is empty every
    new piece follows it, so pieces stay in order. `abandon()` puts the pending paid answers into a
    spill file and fails the rest. Call `open_inline()` from the loop's thread."""

    def __init__(self, path: str, *, heartbeat: Callable[[sqlite3.Connection], None] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, spill_path: str | None = None):
        self.path = path
        self.heartbeat = heartbeat
        self.heartbeat_s = heartbeat_s
        self.spill_path = spill_path or spill_file_name(path)
        self.queue: queue.Queue[_Op | None] = queue.Queue()
        self._blocked_since: float | None = None
        self._abandoned = threading.Event()
        self._queued = 0                 # pieces handed to the thread and not yet settled
        self._count_lock = threading.Lock()
        self.inline: sqlite3.Connection | None = None
        self.spilled = 0
        self.cpu_s = 0.0                 # the thread's own CPU time, when it has stopped
        self.transactions = 0            # commits: the thread's and the fast path's
        self.deferred = 0                # pieces that found gt.db locked and went to the thread
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="gt.db writer", daemon=True)
        self.thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error

    # -- the loop's side ---------------------------------------------------------------------------
    def open_inline(self) -> None:
        """The fast path's connection, owned by the calling (event loop) thread: no busy wait."""
        self.inline = store.connect(self.path)
        self.inline.execute("PRAGMA busy_timeout = 0")

    def submit(self, fn: Callable[[sqlite3.Connection], Any],
               spill: Callable[[], dict] | None = None) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._abandoned.is_set():
            self._fail([_Op(fn, fut, spill, queued=False)])
        else:
            with self._count_lock:
                self._queued += 1
            self.queue.put(_Op(fn, fut, spill))
        return fut

    async def run(self, fn: Callable[[sqlite3.Connection], Any], spill: Callable[[], dict] | None = None) -> Any:
        if self.inline is not None and not self._queued and not self._abandoned.is_set():
            done, value = self._try_inline(fn)
            if done:
                return value
            self.deferred += 1
        return await asyncio.wrap_future(self.submit(fn, spill))

    def _try_inline(self, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
        """(True, result) when the piece ran and committed; (False, None) when gt.db is locked."""
        conn = self.inline
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _is_busy(e):
                return False, None
            raise
        try:
            value = fn(conn)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if _is_busy(e):
                return False, None
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1
        return True, value

    def blocked_for(self) -> float:
        since = self._blocked_since
        return 0.0 if since is None else time.monotonic() - since

    def abandon(self) -> None:
        self._abandoned.set()

    def close(self, timeout: float | None = None) -> None:
        self.queue.put(None)
        self.thread.join(timeout)

    def close_inline(self) -> None:
        """Close the fast path's connection (from the thread that opened it)."""
        if self.inline is not None:
            self.inline.close()
            self.inline = None

    # -- the thread --------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.conn = store.connect(self.path)
            self.conn.execute("PRAGMA busy_timeout = 200")
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        last_beat = time.monotonic()
        stop = False
        try:
            while not stop:
                ops: list[_Op] = []
                try:
                    waiting = self.queue.get(timeout=self.heartbeat_s)
                except queue.Empty:
                    waiting = _IDLE
                if waiting is not _IDLE:
                    for op in self._drain(waiting):
                        if op is None:
                            stop = True
                        else:
                            ops.append(op)
                beat = self.heartbeat is not None and time.monotonic() - last_beat >= self.heartbeat_s
                if not ops and not beat:
                    continue
                if self._commit(ops, beat):
                    if beat:
                        last_beat = time.monotonic()
                else:
                    self._fail(ops)
            # anything queued after the stop marker
            rest = [op for op in self._drain(None)[1:] if op is not None]
            if rest and not self._commit(rest, False):
                self._fail(rest)
        finally:
            self.conn.close()
            self.cpu_s = time.thread_time()

    def _drain(self, first: _Op | None) -> list[_Op | None]:
        ops: list[_Op | None] = [first]
        while len(ops) < 512:
            try:
                ops.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return ops

    def _commit(self, ops: list[_Op], beat: bool) -> bool:
        """Run `ops` in one transaction, waiting out another process's lock; False when abandoned."""
        while True:
            if self._abandoned.is_set():
                return False
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    if self._blocked_since is None:
                        self._blocked_since = time.monotonic()
                    continue
                self._resolve_all(ops, e)
                return True
            self._blocked_since = None
            results: list[tuple[bool, Any]] = []
            try:
                for op in ops:
                    self.conn.execute("SAVEPOINT op")
                    try:
                        results.append((True, op.fn(self.conn)))
                        self.conn.execute("RELEASE op")
                    except Exception as e:  # noqa: BLE001 - the piece fails, the group goes on
                        self.conn.execute("ROLLBACK TO op")
                        self.conn.execute("RELEASE op")
                        results.append((False, e))
                if beat and self.heartbeat is not None:
                    self.heartbeat(self.conn)
                self.conn.execute("COMMIT")
                self.transactions += 1
            except sqlite3.OperationalError as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if _is_busy(e):
                    continue
                self._resolve_all(ops, e)
                return True
            for op, (ok, value) in zip(ops, results):
                self._settled(op)
                if op.future.done():
                    continue
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)
            return True

    def _settled(self, op: _Op) -> None:
        if op.queued:
            op.queued = False
            with self._count_lock:
                self._queued = max(self._queued - 1, 0)

    def _resolve_all(self, ops: list[_Op], error: BaseException) -> None:
        for op in ops:
            self._settled(op)
            if not op.future.done():
                op.future.set_exception(error)

    def _fail(self, ops: list[_Op]) -> None:
        """Abandoned: paid answers go to the spill file (fsynced), the rest fail."""
        spills = [op for op in ops if op.spill is not None]
        if spills:
            with open(self.spill_path, "a", encoding="utf-8") as f:
                for op in spills:
                    f.write(json.dumps(op.spill(), ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.spilled += len(spills)
        for op in ops:
            self._settled(op)
            if op.future.done():
                continue
            if op.spill is not None:
                op.future.set_exception(Spilled(self.spill_path))
            else:
                op.future.set_exception(WriterStopped("gt.db stayed locked; nothing more is written"))


_IDLE = object()


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


# ---- spill files ---------------------------------------------------------------------------------

def spill_file_name(db_path: str) -> str:
    return f"{db_path}.unsaved-{socket.gethostname()}-{os.getpid()}-{int(time.time())}.jsonl"


def spill_files(db_path: str) -> list[str]:
    return sorted(glob.glob(glob.escape(str(db_path)) + ".unsaved-*.jsonl"))


def spill_outcome(run_id: int, key: LabelKey, article_id: str, repeat: int, outcome: LabelOutcome) -> dict:
    return {"type": "outcome", "run_id": run_id, "filter_id": key.filter_id, "oracle": key.oracle,
            "prompt_sha256": key.prompt_sha256, "article_id": article_id, "repeat": repeat,
            "outcome": outcome.to_json()}


def spill_finish(run_id: int, status: str, reason: str | None) -> dict:
    return {"type": "finish", "run_id": run_id, "status": status, "reason": reason}


def apply_spills(conn: sqlite3.Connection, db_path: str, filters: dict[str, Filter]) -> list[str]:
    """Store the answers earlier runs kept in spill files (gt.db was locked past their patience),
    each file once (label_spills), then delete it. Returns one line per file applied."""
    notes = []
    for path in spill_files(db_path):
        name = Path(path).name
        try:
            records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            notes.append(f"spill file {path} could not be read ({e}); left in place")
            continue
        needed = {r["filter_id"] for r in records if r.get("type") == "outcome"}
        if needed - set(filters):
            notes.append(f"spill file {path} holds labels of {', '.join(sorted(needed - set(filters)))}; "
                         f"run that filter's label command to store them")
            continue
        with store.transaction(conn):
            if conn.execute("SELECT 1 FROM label_spills WHERE name = ?", (name,)).fetchone():
                applied = False
            else:
                conn.execute("INSERT INTO label_spills (name, records) VALUES (?, ?)", (name, len(records)))
                applied = True
                for r in records:
                    if r.get("type") == "outcome":
                        filt = filters[r["filter_id"]]
                        o = LabelOutcome(**r["outcome"])
                        store_outcome(conn, run_id=r["run_id"], filt=filt, oracle=r["oracle"],
                                      article_id=r["article_id"], repeat=r["repeat"], outcome=o,
                                      key=LabelKey(r["filter_id"], r["oracle"], r["prompt_sha256"]))
                    elif r.get("type") == "finish":
                        store.finish_run(conn, r["run_id"], r["status"], r.get("reason"))
        os.unlink(path)
        if applied:
            notes.append(f"stored {sum(r.get('type') == 'outcome' for r in records)} answer(s) kept in {path} "
                         f"by a run that stopped while gt.db was locked")
    return notes


# ---- secrets -------------------------------------------------------------------------------------

def scrub_secrets(text: str | None, spec: OracleSpec | None = None) -> str | None:
    """Remove any API key value from a message before it is stored or printed (SDK errors can
    echo request details)."""
    if not text:
        return text
    names = {"GEMINI_API_KEY", "GOOGLE_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY"}
    if spec is not None:
        if spec.api_key_env:
            names.add(spec.api_key_env)
        names.update(spec.options.get("api_key_env_alternatives", []) or [])
    for name in names:
        value = os.environ.get(name, "").strip()
        if len(value) >= 6 and value in text:
            text = text.replace(value, "***")
    return text


# ==== the sync engine (label_articles: the label stage and calibrate run it) ====================

DB_PATIENCE_S = 300.0         # how long answers may wait for another process's write lock


# ---- results and knobs ---------------------------------------------------------------------------

@dataclass
class LabelRunSummary:
    run_id: int | None            # None when nothing needed labelling (no run was opened)
    requested: int = 0            # labels this run started (article x repeat)
    ok: int = 0
    invalid: int = 0
    error: int = 0
    skipped_existing: int = 0     # already labelled ok/invalid for this (filter, oracle, prompt, repeat)
    cost_usd: float = 0.0         # everything this run was billed (the ledger), unstored answers included
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    stopped_reason: str | None = None   # None: finished; budget | total_budget | quota | interrupted | locked | breaker | fatal | db
    stopped_message: str = ""
    prefiltered: int = 0          # skipped by the filter's keyword prefilter
    ok_total: int = 0             # valid repeat-0 labels of this key among the articles, after the run
    calls: int = 0                # provider calls, retries included
    billed_calls: int = 0         # responses the provider bills (answers, corrective retries)
    unstored: int = 0             # paid answers not kept: another process labelled the unit first
    taken: int = 0                # units skipped because another process holds them
    off_grid: int = 0             # valid labels with a score off the half-point grid (stored as given)
    spilled: int = 0              # answers kept in spill_path because gt.db stayed locked
    spill_path: str | None = None
    bad_articles: int = 0         # articles whose request could not be built (stored as 'error')
    writer_cpu_s: float = 0.0     # CPU of the writer thread (bench/label.py reports it)
    transactions: int = 0         # write transactions it committed (each holds many pieces under load)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: transient failures (5xx, timeouts) back off exponentially with jitter;
    rate limits wait what the provider asks (or back off) and have their own, larger bound."""
    attempts: int = 5
    rate_limit_attempts: int = 12
    initial_s: float = 1.0
    max_s: float = 60.0
    jitter_s: float = 1.0


@dataclass(frozen=True)
class RunOptions:
    """One sync run's settings."""
    purpose: str = "label"
    repeats: int = 1
    concurrency: int = 16
    max_cost: float | None = None          # USD, this invocation
    max_total_cost: float | None = None    # USD, all spend gt.db records for this filter and oracle
    target_valid: int | None = None
    seed: int | None = None
    params: dict | None = None
    progress: bool = True
    timeout: float | None = None
    retry: RetryPolicy = RetryPolicy()
    mode: str = "sync"
    breaker_window: int = 20               # 0: no circuit breaker
    db_patience_s: float = DB_PATIENCE_S
    lease_ttl_s: float = LEASE_TTL_S


@dataclass
class _Unit:
    article_id: str
    repeat: int
    title: str = ""
    text: str = ""


class _Abort(Exception):
    """The run is stopping: a call not yet answered is not sent again."""


# ---- the run -------------------------------------------------------------------------------------

class _Budget:
    """--max-cost and --max-total-cost: spent (reported usage x prices) plus a worst-case reserve
    for every call in flight must stay within each limit before a call may start."""

    def __init__(self, limit: float | None, total_limit: float | None = None, recorded: float = 0.0):
        self.limit, self.total_limit, self.recorded = limit, total_limit, recorded
        self.spent = 0.0
        self.reserved = 0.0

    def refusal(self, amount: float) -> str | None:
        """None when `amount` more may be reserved, else which limit stops it ('budget'/'total_budget')."""
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-12:
            return "budget"
        if self.total_limit is not None and self.recorded + self.spent + self.reserved + amount > self.total_limit + 1e-12:
            return "total_budget"
        return None

    def try_reserve(self, amount: float) -> bool:
        if self.refusal(amount) is not None:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


def db_file(conn: sqlite3.Connection) -> str:
    """The file behind a connection (the writer thread opens its own)."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            if not row[2]:
                raise ValueError("the label stage needs gt.db in a file (an in-memory database cannot be shared "
                                 "with its writer thread)")
            return row[2]
    raise ValueError("no main database")


class _Run:
    """One label run's engine: a fixed pool of worker tasks pulls (article, repeat) units from a
    lazy plan, so memory stays flat however large the sample. Reads use the caller's connection;
    every write goes through the writer thread."""

    def __init__(self, conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, oracle: Oracle,
                 article_ids: Iterable[str], o: RunOptions):
        self.conn, self.filt, self.spec, self.oracle, self.o = conn, filt, spec, oracle, o
        self.key = LabelKey.of(filt, spec.name)
        self.owner = owner_id()
        self.db_path = db_file(conn)
        self.target = o.target_valid
        self.timeout = o.timeout if o.timeout is not None else spec.timeout_s
        self.retry = o.retry
        self.budget = _Budget(o.max_cost, o.max_total_cost,
                              recorded_spend(conn, filt.id, spec.name) if o.max_total_cost is not None else 0.0)
        self.limiter = RateLimiter(spec.rpm, spec.tpm)
        self.breaker = Breaker(o.breaker_window)
        self.summary = LabelRunSummary(run_id=None)
        self.run_id: int | None = None
        self.article_ids = list(article_ids)
        self.existing = existing_labels(conn, filt, spec.name)
        ok_ids = {a for a in self.article_ids if self.existing.get((a, 0)) == "ok"}
        self.gate = TargetGate(self.key, self.article_ids, self.target, ok_ids) if self.target is not None else None
        self.summary.ok_total = len(ok_ids)
        self.counts = PlanCounts()
        self.plan = plan_items(self.article_ids, self.existing, repeats=o.repeats, target=self.target,
                               counts=self.counts)
        self.queued: collections.deque = collections.deque()  # (unit, primary) ready to claim
        self.front: collections.deque = collections.deque()   # units given back (budget, gate)
        self.plan_done = False
        self.target_met = False
        self.in_flight_primary = 0
        self.in_flight = 0
        self.changed = asyncio.Event()
        self.stopping = False
        self.fatal: BaseException | None = None
        self.db_error: BaseException | None = None
        self.bar = None
        self.owns_oracle = True
        self.writer: DbWriter | None = None
        self.open_lock = asyncio.Lock()
        self.started = time.perf_counter()

    # -- what to label ---------------------------------------------------------------------------
    def _next_candidate(self):
        """(unit, primary) from the front, the queue or the plan; None when there is none now."""
        if self.front:
            return self.front.popleft()
        if self.queued:
            return self.queued.popleft()
        while not self.plan_done:
            try:
                item: PlanItem = next(self.plan)
            except StopIteration:
                self.plan_done = True
                break
            if item.primary:
                if self.target_met:
                    continue
                # repeat 0 first; the article's other repeats once it is valid
                return _Unit(item.article_id, 0), True
            self.queued.extend((_Unit(item.article_id, r), False) for r in item.repeats)
            return self.queued.popleft()
        return None

    async def _wait_for_change(self, timeout: float | None = None) -> None:
        self.changed.clear()
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _fill(self, unit: _Unit) -> bool:
        """Fetch the unit's text; False when the article is gone or the prefilter skips it."""
        if unit.text or unit.title:
            return True
        found = article_text(self.conn, unit.article_id)
        if found is None:
            return False
        unit.title, unit.text = found
        if self.filt.prefilter_reason(unit.title, unit.text):
            if unit.repeat == 0 or self.target is None:
                self.summary.prefiltered += 1
            return False
        return True

    async def _next_unit(self):
        """The next (unit, primary, request, reserve) to label, or None when the run is over. The
        budget and the claim in gt.db (with the target across processes) come before any call."""
        while True:
            if self.stopping:
                return None
            candidate = self._next_candidate()
            if candidate is None:
                if self.in_flight == 0:
                    return None  # nothing in flight can reopen the gate or queue repeats
                await self._wait_for_change()
                continue
            unit, primary = candidate
            if primary and self.target_met:
                continue
            if not self._fill(unit):
                continue
            try:
                request = build_request(self.filt, unit.article_id, unit.repeat, unit.title, unit.text)
                reserve = worst_case_cost(self.spec, request)
            except Exception as e:  # noqa: BLE001 - one bad article must not stop the run
                await self._store_bad_article(unit, e)
                continue
            refusal = self.budget.refusal(reserve)
            if refusal is not None:
                if self.in_flight == 0:
                    self._stop_budget(refusal, reserve)
                    return None
                self.front.appendleft(candidate)  # a finishing call may free enough budget
                await self._wait_for_change()
                continue
            self.budget.try_reserve(reserve)
            self.in_flight += 1
            if primary:
                self.in_flight_primary += 1
            try:
                claim = await self._claim(unit, primary)
            except BaseException:
                self._give_back(primary, reserve)
                raise
            if claim == "claimed":
                return unit, primary, request, reserve
            self._give_back(primary, reserve)
            if claim == "done":
                self.summary.skipped_existing += 1
            elif claim == "taken":
                self.summary.taken += 1
            elif claim == "met":
                self.target_met = True
            elif claim == "full":
                # the target is full with calls in flight (ours or another process's): one may fail
                self.front.appendleft(candidate)
                await self._wait_for_change(None if self.in_flight_primary else 0.5)

    def _give_back(self, primary: bool, reserve: float) -> None:
        self.budget.settle(reserve, 0.0)
        self.in_flight -= 1
        if primary:
            self.in_flight_primary -= 1
        self.changed.set()

    async def _claim(self, unit: _Unit, primary: bool) -> str:
        await self._open_run()
        gate, owner, run_id, key, ttl = self.gate, self.owner, self.run_id, self.key, self.o.lease_ttl_s

        def op(conn: sqlite3.Connection) -> str:
            if primary and gate is not None:
                state = gate.state(conn, owner)
                if state != "open":
                    return state
            return claim_unit(conn, key, unit.article_id, unit.repeat, owner=owner, run_id=run_id, ttl_s=ttl)

        return await self._write(op)

    async def _write(self, fn, spill: dict | None = None):
        try:
            return await self.writer.run(fn, spill)
        except (Spilled, WriterStopped):
            raise
        except sqlite3.Error as e:
            self.db_error = e
            self._stop("db", store.describe_db_error(e, self.db_path))
            raise _Abort() from e

    async def _open_run(self) -> int:
        async with self.open_lock:
            if self.run_id is None:
                s, f, o = self.spec, self.filt, self.o

                def op(conn: sqlite3.Connection) -> int:
                    mark_dead_runs(conn)
                    return store.start_run(conn, purpose=o.purpose, filt=f, oracle=s.name, provider=s.provider,
                                           model=s.model, mode=o.mode, params=o.params, seed=o.seed,
                                           owner=self.owner)

                self.run_id = await self._write(op)
                self.summary.run_id = self.run_id
        return self.run_id

    async def _store_bad_article(self, unit: _Unit, e: Exception) -> None:
        """An article whose request cannot be built is an 'error' label; the run goes on."""
        self.summary.bad_articles += 1
        await self._open_run()
        outcome = LabelOutcome("error", error=_clip(f"could not build the request: {type(e).__name__}: {e}"))
        await self._store(unit, outcome)

    # -- one provider call -------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        return min(self.retry.max_s, self.retry.initial_s * 2 ** (attempt - 1)) + random.uniform(0, self.retry.jitter_s)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return 0.0  # the limiter is paused for everyone; acquire() waits it out
        return self._backoff(state.attempt_number)

    async def _call(self, request: OracleRequest) -> tuple[Completion, int]:
        """One answer, with rate limiting and bounded retries. Returns (completion, calls made).
        Raises _Abort when the run stops between attempts."""
        counts = {"transient": 0, "rate": 0, "calls": 0}

        def stop(state: RetryCallState) -> bool:
            if isinstance(state.outcome.exception(), RateLimited):
                counts["rate"] += 1
                return counts["rate"] >= self.retry.rate_limit_attempts
            counts["transient"] += 1
            return counts["transient"] >= self.retry.attempts

        estimate = estimate_input_tokens(request) + expected_output_tokens(self.filt)
        retrying = AsyncRetrying(retry=retry_if_exception_type((TransientError, RateLimited)), stop=stop,
                                 wait=self._wait, reraise=True)
        async for attempt in retrying:
            with attempt:
                if self.stopping:
                    raise _Abort()
                await self.limiter.acquire(estimate)
                if self.stopping:
                    raise _Abort()
                counts["calls"] += 1
                self.summary.calls += 1
                t0 = time.perf_counter()
                try:
                    # the SDK enforces the timeout; this is the safety net if a client ignores it
                    completion = await asyncio.wait_for(self.oracle.complete(request), self.timeout + 5.0)
                except asyncio.TimeoutError:
                    self._count_answer(False, f"transient error: no answer within {self.timeout:g}s")
                    raise TransientError(f"no answer within {self.timeout:g}s") from None
                except RateLimited as e:
                    self.limiter.pause(e.retry_after if e.retry_after is not None
                                       else self._backoff(counts["rate"] + 1))
                    raise
                except TransientError as e:
                    self._count_answer(False, f"transient error: {e}")
                    raise
                if not completion.latency_ms:
                    completion.latency_ms = (time.perf_counter() - t0) * 1000.0
                self.limiter.settle(estimate, (completion.input_tokens or 0) + (completion.output_tokens or 0))
                return completion, counts["calls"]
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _priced_call(self, request: OracleRequest, reserve: float) -> tuple[Completion, int]:
        """A call whose worst-case cost `reserve` is already reserved; settles it with the real cost."""
        actual = 0.0
        try:
            completion, calls = await self._call(request)
            actual = completion_cost(self.spec, completion)
            return completion, calls
        finally:
            self.budget.settle(reserve, actual)

    def _count_answer(self, good: bool, reason: str | None = None, raw: str | None = None) -> None:
        if self.breaker.record(good, scrub_secrets(reason, self.spec), raw):
            self._stop("breaker", scrub_secrets(self.breaker.message(), self.spec) or "")

    # -- one label ---------------------------------------------------------------------------------
    async def _label(self, unit: _Unit, request: OracleRequest, reserve: float) -> LabelOutcome:
        calls_before = 0
        try:
            completion, calls = await self._priced_call(request, reserve)
            calls_before = calls
            outcome, problem = outcome_from_completion(self.filt, self.spec, completion)
            outcome.attempts = calls
            self._count_answer(outcome.status == "ok", outcome.error, outcome.raw_response)
            if problem is None:
                return outcome
            # one corrective retry: show the model its answer and what was wrong with it
            corrective = dataclasses.replace(
                request, followups=((completion.text or "", self.filt.corrective_message(problem)),))
            reserve2 = worst_case_cost(self.spec, corrective)
            why_not = None
            if self.stopping:
                why_not = f"the run stopped ({self.summary.stopped_reason})"
            elif not self.budget.try_reserve(reserve2):
                why_not = "--max-cost reached"
            if why_not:
                # 'error', not 'invalid': a later run retries it
                return dataclasses.replace(outcome, status="error", scores=None, content_type=None, evidence=None,
                                           error=f"{outcome.error}; corrective retry not sent: {why_not}")
            try:
                completion2, calls2 = await self._priced_call(corrective, reserve2)
            except (TransientError, RateLimited, _Abort) as e:
                return dataclasses.replace(outcome, status="error", scores=None, content_type=None, evidence=None,
                                           error=_clip(f"{outcome.error}; corrective retry failed: {e or 'run stopped'}"))
            second, _ = outcome_from_completion(self.filt, self.spec, completion2, corrective=True,
                                                first_problem=problem)
            second.attempts = calls2
            self._count_answer(second.status == "ok", second.error, second.raw_response)
            return merge_outcomes(outcome, second)
        except NotAnswerable as e:
            self._count_answer(False, str(e))
            return LabelOutcome("error", error=_clip(str(e)), attempts=1)
        except (TransientError, RateLimited) as e:
            kind = "rate limited" if isinstance(e, RateLimited) else "transient error"
            limit = self.retry.rate_limit_attempts if isinstance(e, RateLimited) else self.retry.attempts
            return LabelOutcome("error", error=f"{kind}, gave up after {limit} attempts: {e}",
                                attempts=calls_before + limit)

    async def _store(self, unit: _Unit, outcome: LabelOutcome) -> None:
        outcome.error = scrub_secrets(outcome.error, self.spec)
        run_id, f, spec, key, owner = self.run_id, self.filt, self.spec, self.key, self.owner

        def op(conn: sqlite3.Connection) -> int | None:
            return store_outcome(conn, run_id=run_id, filt=f, oracle=spec.name, article_id=unit.article_id,
                                 repeat=unit.repeat, outcome=outcome, owner=owner, key=key)

        s = self.summary
        try:
            label_id = await self._write(op, spill=lambda: spill_outcome(run_id, key, unit.article_id, unit.repeat,
                                                                         outcome))
        except Spilled as e:
            s.spilled += 1
            s.spill_path = e.path
            label_id = -1
        s.cost_usd += outcome.cost_usd
        s.input_tokens += outcome.input_tokens
        s.output_tokens += outcome.output_tokens
        s.billed_calls += outcome.calls
        if label_id is None:
            s.unstored += 1   # paid, but another process had labelled the unit first
            return
        self.existing[(unit.article_id, unit.repeat)] = outcome.status
        setattr(s, outcome.status, getattr(s, outcome.status) + 1)
        if outcome.status == "ok" and off_grid(outcome.scores):
            s.off_grid += 1

    async def _release(self, unit: _Unit) -> None:
        key, owner = self.key, self.owner
        try:
            await self._write(lambda conn: release_unit(conn, key, unit.article_id, unit.repeat, owner))
        except (Spilled, WriterStopped, _Abort):
            pass  # the lease expires, or dies with this process

    def _stop(self, reason: str, message: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.summary.stopped_reason = reason
            self.summary.stopped_message = message
        self.changed.set()

    def _stop_budget(self, which: str, reserve: float) -> None:
        b = self.budget
        if which == "budget":
            self._stop("budget", f"stopped before exceeding --max-cost ${b.limit:g}, this command's own limit "
                                 f"(spent ${b.spent:.4f} in this run; the next label could cost up to ${reserve:.4f}); "
                                 f"the same command with --max-cost spends up to that much again "
                                 f"(--max-total-cost caps all recorded spend)")
        else:
            self._stop("total_budget", f"stopped before the spend gt.db records for {self.filt.id} with "
                                       f"{self.spec.name} passes --max-total-cost ${b.total_limit:g} (recorded "
                                       f"${b.recorded + b.spent:.4f}; the next label could cost up to ${reserve:.4f})")

    async def _worker(self) -> None:
        while True:
            try:
                got = await self._next_unit()
            except (_Abort, Spilled, WriterStopped):
                return
            if got is None:
                return
            unit, primary, request, reserve = got
            stored = False
            try:
                self.summary.requested += 1
                outcome = await self._label(unit, request, reserve)
                await self._store(unit, outcome)
                stored = True
                if outcome.status == "ok" and unit.repeat == 0:
                    self.summary.ok_total += 1
                    if self.target is not None:
                        self.queued.extend((_Unit(unit.article_id, r, unit.title, unit.text), False)
                                           for r in range(1, self.o.repeats)
                                           if self.existing.get((unit.article_id, r)) not in FINAL_STATUSES)
                self._tick()
            except _Abort:
                self.summary.requested -= 1   # never answered: the next run asks again
            except (WriterStopped, Spilled):
                pass
            except QuotaExhausted as e:
                self.summary.requested -= 1   # not stored: the next run asks again
                hint = e.resume_hint or "re-run the same command to resume where it stopped"
                self._stop("quota", scrub_secrets(f"{e}; {hint}", self.spec))
            except FatalError as e:
                self.summary.requested -= 1
                self.fatal = e
                self._stop("fatal", scrub_secrets(str(e), self.spec))
                for t in self.tasks:
                    if t is not asyncio.current_task():
                        t.cancel()
                return
            finally:
                if not stored:
                    await asyncio.shield(self._release(unit))
                self.in_flight -= 1
                if primary:
                    self.in_flight_primary -= 1
                self.changed.set()

    async def _watch_the_lock(self) -> None:
        """Past the patience limit with gt.db locked by another process, stop: received answers go
        to a spill file the next run stores."""
        while True:
            await asyncio.sleep(0.25)
            blocked = self.writer.blocked_for()
            if blocked > self.o.db_patience_s:
                holders = store.who_has_open(self.db_path)
                who = f" (open in {'; '.join(holders[:3])})" if holders else ""
                self._stop("locked", f"{self.db_path} has been locked by another process for {blocked:.0f} s{who}; "
                                     f"stopped after {self.o.db_patience_s:g} s of patience")
                self.writer.abandon()
                return

    def _tick(self) -> None:
        if self.bar is None:
            return
        s = self.summary
        done = s.ok_total if self.target is not None else s.ok + s.invalid + s.error
        self.bar.set_postfix_str(f"cost=${s.cost_usd:.4f} invalid={s.invalid} error={s.error}", refresh=False)
        self.bar.update(done - self.bar.n)

    def _final_status(self) -> tuple[str, str | None]:
        reason = self.summary.stopped_reason
        if reason in ("fatal", "breaker", "db"):
            return "failed", reason
        if reason:
            return "stopped", reason
        return "done", None

    async def _finish(self) -> None:
        """Close the run (its ledger is already complete) and drop this process's leases."""
        owner = self.owner
        if self.run_id is None:
            return
        status, reason = self._final_status()
        run_id = self.run_id

        def op(conn: sqlite3.Connection) -> None:
            store.finish_run(conn, run_id, status, reason)
            release_owner(conn, owner)

        try:
            await self.writer.run(op, spill=lambda: spill_finish(run_id, status, reason))
        except (Spilled, WriterStopped, sqlite3.Error):
            pass

    async def run(self) -> LabelRunSummary:
        loop = asyncio.get_running_loop()
        owner, ttl = self.owner, self.o.lease_ttl_s
        self.writer = await loop.run_in_executor(
            None, lambda: DbWriter(self.db_path, heartbeat=lambda conn: renew(conn, owner, self.run_id, ttl)))
        self.writer.open_inline()
        if self.o.progress:
            from tqdm import tqdm
            if self.target is not None:
                total, initial = self.target, min(self.summary.ok_total, self.target)
            else:
                total = sum(1 for a in self.article_ids for r in range(self.o.repeats)
                            if self.existing.get((a, r)) not in FINAL_STATUSES)
                initial = 0
            self.bar = tqdm(total=total, initial=initial, desc=f"label {self.spec.name}", unit="label",
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        watcher = asyncio.create_task(self._watch_the_lock())
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.o.concurrency)]
        interrupted = False
        try:
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
        except asyncio.CancelledError:
            interrupted = True
            self._stop("interrupted", "interrupted (Ctrl-C)")
            raise
        finally:
            watcher.cancel()
            if self.bar is not None:
                self.bar.close()
            if self.owns_oracle and not interrupted:
                await self.oracle.aclose()
            await asyncio.shield(self._finish())
            writer = self.writer
            await loop.run_in_executor(None, writer.close)
            writer.close_inline()
            self.summary.writer_cpu_s, self.summary.transactions = writer.cpu_s, writer.transactions
            self.summary.skipped_existing += self.counts.skipped_existing
            self.summary.seconds = time.perf_counter() - self.started
        if self.fatal is not None:
            raise self.fatal
        for r in results:  # a bug in a worker is a bug: surface it
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r
        return self.summary


def label_articles(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Iterable[str], *,
                   purpose: str = "label", repeats: int = 1, concurrency: int = 16, max_cost: float | None = None,
                   target_valid: int | None = None, seed: int | None = None, params: dict | None = None,
                   progress: bool = True, timeout: float | None = None, retry: RetryPolicy | None = None,
                   oracle: Oracle | None = None, mode: str = "sync", max_total_cost: float | None = None,
                   breaker_window: int = 20, db_patience_s: float = DB_PATIENCE_S,
                   lease_ttl_s: float = LEASE_TTL_S) -> LabelRunSummary:
    """Label `article_ids` (in this order) with the oracle `spec`, storing every answer in gt.db.

    Only what is missing for (filter, oracle, prompt hash, repeat) is labelled, and every unit is
    claimed in gt.db first, so a label is never paid twice, across processes too. With
    `target_valid`, articles are taken in order until that many articles have a valid repeat-0 label
    (and each of them its `repeats`); without it every article gets every repeat. Stops cleanly
    (summary.stopped_reason) on a spent quota or budget, a tripped circuit breaker or a database
    locked past `db_patience_s`; raises FatalError (auth, bad request) and the registry's
    MissingKey before any call. Ctrl-C marks the run 'stopped' and re-raises KeyboardInterrupt."""
    if repeats < 1 or concurrency < 1:
        raise ValueError("repeats and concurrency must be at least 1")
    if timeout is not None:
        spec = dataclasses.replace(spec, timeout_s=float(timeout))
    owns_oracle = oracle is None  # an oracle passed in stays open for the caller
    if oracle is None and spec.provider == "replay":
        from stages.oracles.replay import ReplayOracle
        oracle = ReplayOracle(spec, replay_answers(conn, filt, spec.model))
    elif oracle is None:
        from stages.oracles.registry import make_oracle
        oracle = make_oracle(spec)  # raises MissingKey before any work
    store.register_filter(conn, filt)
    options = RunOptions(purpose=purpose, repeats=repeats, concurrency=concurrency, max_cost=max_cost,
                         max_total_cost=max_total_cost, target_valid=target_valid, seed=seed, params=params,
                         progress=progress, timeout=timeout, retry=retry or RetryPolicy(), mode=mode,
                         breaker_window=breaker_window, db_patience_s=db_patience_s, lease_ttl_s=lease_ttl_s)
    for note in apply_spills(conn, db_file(conn), {filt.id: filt}):
        print(note, file=sys.stderr)

    async def main():
        engine = _Run(conn, filt, spec, oracle, article_ids, options)
        engine.owns_oracle = owns_oracle
        return await engine.run()

    return asyncio.run(main())
