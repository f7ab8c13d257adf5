"""Label stage: score a seeded random sample of articles with an LLM oracle and store every answer
in gt.db (step 2 of the workflow: `make label LLM=gemini-pro TARGET=20000 SEED=42`).

Concurrency is asyncio; one rate limiter (requests and tokens per minute from oracles.yaml) is
shared by every request; each label is committed as it arrives, so an interrupted run (Ctrl-C,
`kill -9`, a spent daily quota, a budget) loses at most the requests in flight and the same
command continues where it stopped. `--target-count` counts valid labels of (filter, oracle,
prompt hash): articles already labelled ok or invalid are never paid for twice; 'error' labels
are retried.

`label_articles()` is the reusable core (the calibrate stage calls it); `record_completion()` is
the seam the provider batch mode stores its results through.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import json
import math
import os
import random
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from stages import store
from stages.filters import AnswerError, Filter, FilterError, load_filter
from stages.oracles.base import (Completion, FatalError, Oracle, OracleError, OracleRequest, OracleSpec,
                                 QuotaExhausted, RateLimited, TransientError)
from stages.oracles.ratelimit import RateLimiter

CHARS_PER_TOKEN = 4.0          # the usual estimate for English prompts (--dry-run, rate limiter)
RESERVE_BYTES_PER_TOKEN = 3.0  # the budget reserve errs high: UTF-8 bytes / 3 overestimates tokens
EVIDENCE_CHARS = 120           # a typical evidence sentence, for the expected answer length
FINAL_STATUSES = ("ok", "invalid")


# ---- results and knobs ---------------------------------------------------------------------------

@dataclass
class LabelRunSummary:
    run_id: int | None            # None when nothing needed labelling (no run was opened)
    requested: int = 0            # labels this run started (article x repeat)
    ok: int = 0
    invalid: int = 0
    error: int = 0
    skipped_existing: int = 0     # already labelled ok/invalid for this (filter, oracle, prompt, repeat)
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    stopped_reason: str | None = None   # None: finished; 'quota' | 'budget' | 'interrupted' | 'fatal'
    stopped_message: str = ""
    prefiltered: int = 0          # skipped by the filter's keyword prefilter
    ok_total: int = 0             # valid repeat-0 labels of this key among the articles, after the run
    calls: int = 0                # provider calls, retries included


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: transient failures (5xx, timeouts) back off exponentially with jitter;
    rate limits wait what the provider asks (or back off) and have their own, larger bound."""
    attempts: int = 5
    rate_limit_attempts: int = 12
    initial_s: float = 1.0
    max_s: float = 60.0
    jitter_s: float = 1.0


@dataclass
class LabelOutcome:
    """Everything stored for one label."""
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


@dataclass
class _Unit:
    article_id: str
    repeat: int
    title: str = ""
    text: str = ""


# ---- the sample ----------------------------------------------------------------------------------

def eligible_article_ids(conn: sqlite3.Connection, filt: Filter, *, seed: int = 42,
                         random_sample: bool = True) -> list[str]:
    """Articles a label run may pick, in the order it picks them: not duplicates, not too short.
    With `random_sample` the order is sha256(seed:id), a seeded shuffle that is stable (an
    interrupted run resumes on the same articles, and adding articles only interleaves them);
    otherwise ingest order. The keyword prefilter is applied by label_articles as it goes."""
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


# ---- one request, one answer ---------------------------------------------------------------------

def build_request(filt: Filter, article_id: str, repeat: int, title: str, text: str) -> OracleRequest:
    filt.render_prompt(title, text)  # asserts the article reaches the prompt
    rubric, article = filt.prompt_parts(title, text)
    return OracleRequest(rubric=rubric, article=article, schema=filt.answer_schema(), title=title or "",
                         text=text or "", filter=filt, request_id=f"{article_id}#{repeat}")


def judge_answer(filt: Filter, raw: str | None) -> tuple[LabelOutcome | None, str | None]:
    """(an 'ok' outcome, None) for a valid answer, else (None, what is wrong)."""
    try:
        scores, content_type, evidence = filt.parse_answer(raw)
    except AnswerError as e:
        return None, str(e)
    return LabelOutcome("ok", scores=scores, content_type=content_type, evidence=evidence, raw_response=raw), None


def outcome_from_completion(filt: Filter, spec: OracleSpec, completion: Completion, *,
                            batch: bool = False, corrective: bool = False,
                            first_problem: str | None = None) -> tuple[LabelOutcome, str | None]:
    """Turn one completion into an outcome with its cost. Returns (outcome, problem): problem is
    set when the answer is invalid (outcome.status 'invalid') and a corrective retry may help."""
    usage = dict(input_tokens=completion.input_tokens or 0, output_tokens=completion.output_tokens or 0,
                 cached_tokens=completion.cached_tokens or 0)
    cost = spec.cost(usage["input_tokens"], usage["output_tokens"], usage["cached_tokens"], batch=batch,
                     cache_write_tokens=completion.cache_write_tokens or 0)
    common = dict(cost_usd=cost, latency_ms=completion.latency_ms or 0.0, attempts=1, **usage)
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
    """The outcome of a corrective retry, with the cost and tokens of both calls."""
    return dataclasses.replace(
        second, input_tokens=first.input_tokens + second.input_tokens,
        output_tokens=first.output_tokens + second.output_tokens,
        cached_tokens=first.cached_tokens + second.cached_tokens, cost_usd=first.cost_usd + second.cost_usd,
        latency_ms=first.latency_ms + second.latency_ms, attempts=first.attempts + second.attempts)


def store_outcome(conn: sqlite3.Connection, *, run_id: int, filt: Filter, oracle: str, article_id: str,
                  repeat: int, outcome: LabelOutcome) -> int | None:
    """Commit one label (replacing an earlier 'error' label of the same key). One transaction."""
    prompt_sha256 = filt.prompt_sha256
    store.replace_failed_label(conn, article_id, filt, oracle, repeat, prompt_sha256=prompt_sha256)
    return store.insert_label(
        conn, run_id=run_id, article_id=article_id, filt=filt, oracle=oracle, status=outcome.status,
        repeat=repeat, scores=outcome.scores if outcome.status == "ok" else None,
        content_type=outcome.content_type, evidence=outcome.evidence, raw_response=outcome.raw_response,
        error=outcome.error, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens,
        cached_tokens=outcome.cached_tokens, cost_usd=outcome.cost_usd, latency_ms=outcome.latency_ms,
        attempts=max(outcome.attempts, 1), prompt_sha256=prompt_sha256)


def record_completion(conn: sqlite3.Connection, *, run_id: int, filt: Filter, spec: OracleSpec,
                      article_id: str, repeat: int, completion: Completion, batch: bool = True) -> LabelOutcome:
    """The seam for provider batch mode: validate one returned answer and store it (priced at batch
    rates). Batch results get no corrective retry here; an invalid answer is stored as 'invalid'
    with its raw text and reason."""
    outcome, _ = outcome_from_completion(filt, spec, completion, batch=batch)
    store_outcome(conn, run_id=run_id, filt=filt, oracle=spec.name, article_id=article_id, repeat=repeat,
                  outcome=outcome)
    return outcome


def estimate_input_tokens(request: OracleRequest) -> int:
    chars = len(request.prompt) + sum(len(a) + len(b) for a, b in request.followups)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def expected_output_tokens(filt: Filter) -> int:
    """A typical valid answer's length: a score and an evidence sentence per dimension."""
    per_dim = len('"": 10.0, "": "",') + EVIDENCE_CHARS
    chars = 60 + sum(2 * len(n) + per_dim for n in filt.dimension_names)
    return math.ceil(chars / CHARS_PER_TOKEN)


def worst_case_cost(spec: OracleSpec, request: OracleRequest) -> float:
    """What one call could cost at most: every prompt byte a third of a token, a full-length answer."""
    nbytes = len(request.prompt.encode("utf-8")) + sum(len(a.encode()) + len(b.encode()) for a, b in request.followups)
    return spec.cost(math.ceil(nbytes / RESERVE_BYTES_PER_TOKEN), spec.max_output_tokens)


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


# ---- the run -------------------------------------------------------------------------------------

class _Budget:
    """--max-cost: spent (reported usage x prices) plus a worst-case reserve for every call in
    flight must stay within the limit before a call may start."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def try_reserve(self, amount: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-12:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


class _Run:
    """One label run's engine: a fixed pool of worker tasks pulls (article, repeat) units from a
    lazy plan, so memory stays flat however large the sample."""

    def __init__(self, conn, filt, spec, oracle, article_ids, *, purpose, repeats, concurrency, max_cost,
                 target_valid, seed, params, progress, timeout, retry, mode):
        self.conn, self.filt, self.spec, self.oracle = conn, filt, spec, oracle
        self.purpose, self.repeats, self.concurrency = purpose, repeats, concurrency
        self.target, self.seed, self.params, self.progress = target_valid, seed, params, progress
        self.timeout = timeout if timeout is not None else spec.timeout_s
        self.retry, self.mode = retry, mode
        self.budget = _Budget(max_cost)
        self.limiter = RateLimiter(spec.rpm, spec.tpm)
        self.summary = LabelRunSummary(run_id=None)
        self.run_id: int | None = None
        self.article_ids = list(article_ids)
        self.existing = existing_labels(conn, filt, spec.name)
        self.ok_total = sum(1 for a in self.article_ids if self.existing.get((a, 0)) == "ok")
        self.summary.ok_total = self.ok_total
        self.pending: collections.deque[_Unit] = collections.deque()   # repeats of valid articles
        self.front: collections.deque = collections.deque()              # units given back (budget, gate)
        self.plan = self._plan()
        self.plan_done = False
        self.in_flight_primary = 0
        self.in_flight = 0
        self.changed = asyncio.Event()
        self.stopping = False
        self.fatal: BaseException | None = None
        self.bar = None
        self.owns_oracle = True
        self.started = time.perf_counter()

    # -- what to label ---------------------------------------------------------------------------
    def _text(self, article_id: str) -> tuple[str, str] | None:
        row = self.conn.execute("SELECT title, text FROM articles WHERE id = ?", (article_id,)).fetchone()
        return (row[0] or "", row[1] or "") if row else None

    def _missing_repeats(self, article_id: str, start: int) -> list[int]:
        return [r for r in range(start, self.repeats) if self.existing.get((article_id, r)) not in FINAL_STATUSES]

    def _plan(self):
        """Yield (unit, primary) in sample order, without text (fetched when the unit starts). In
        target mode only repeat 0 ('primary') is gated by the target; an article's other repeats are
        queued once its repeat 0 is valid, for at most `target` articles."""
        repeats_granted = 0
        for aid in self.article_ids:
            if self.target is None:
                missing = self._missing_repeats(aid, 0)
                self.summary.skipped_existing += self.repeats - len(missing)
                for r in missing:
                    yield _Unit(aid, r), False
                continue
            first = self.existing.get((aid, 0))
            if first in FINAL_STATUSES:
                self.summary.skipped_existing += 1
                if first == "ok" and repeats_granted < self.target:
                    repeats_granted += 1
                    for r in self._missing_repeats(aid, 1):
                        yield _Unit(aid, r), False
                continue
            yield _Unit(aid, 0), True

    def _target_open(self) -> bool:
        return self.target is None or self.ok_total + self.in_flight_primary < self.target

    async def _wait_for_change(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    async def _next_unit(self):
        """The next (unit, primary, request, reserve) to label, or None when the run is over. The
        target gate and the budget are checked here, before a call can start."""
        while True:
            if self.stopping:
                return None
            if self.front:
                candidate = self.front.popleft()
            elif self.pending:
                candidate = (self.pending.popleft(), False)
            elif not self.plan_done:
                try:
                    candidate = next(self.plan)
                except StopIteration:
                    self.plan_done = True
                    continue
            else:
                candidate = None
            if candidate is not None and candidate[1] and not self._target_open():
                if self.in_flight_primary == 0:
                    continue  # the target is met for good: skip the remaining unlabelled articles
                self.front.appendleft(candidate)  # a call in flight may still fail and reopen the gate
                candidate = None
            if candidate is None:
                if self.in_flight == 0:
                    return None  # nothing in flight can reopen the gate or queue repeats
                await self._wait_for_change()
                continue
            unit, primary = candidate
            if not unit.text and not unit.title:
                found = self._text(unit.article_id)
                if found is None:
                    continue
                unit.title, unit.text = found
                if self.filt.prefilter_reason(unit.title, unit.text):
                    if unit.repeat == 0 or self.target is None:
                        self.summary.prefiltered += 1
                    continue
            request = build_request(self.filt, unit.article_id, unit.repeat, unit.title, unit.text)
            reserve = worst_case_cost(self.spec, request)
            if not self.budget.try_reserve(reserve):
                if self.in_flight == 0:
                    self._stop("budget", f"stopped before exceeding --max-cost ${self.budget.limit:g} "
                                         f"(spent ${self.budget.spent:.4f}; the next label could cost up to ${reserve:.4f})")
                    return None
                self.front.appendleft(candidate)  # a finishing call may free enough budget
                await self._wait_for_change()
                continue
            if primary:
                self.in_flight_primary += 1
            self.in_flight += 1
            return unit, primary, request, reserve

    # -- one provider call -------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        return min(self.retry.max_s, self.retry.initial_s * 2 ** (attempt - 1)) + random.uniform(0, self.retry.jitter_s)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return 0.0  # the limiter is paused for everyone; acquire() waits it out
        return self._backoff(state.attempt_number)

    async def _call(self, request: OracleRequest) -> tuple[Completion, int]:
        """One answer, with rate limiting and bounded retries. Returns (completion, calls made)."""
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
                await self.limiter.acquire(estimate)
                counts["calls"] += 1
                self.summary.calls += 1
                t0 = time.perf_counter()
                try:
                    # the SDK enforces the timeout; this is the safety net if a client ignores it
                    completion = await asyncio.wait_for(self.oracle.complete(request), self.timeout + 5.0)
                except asyncio.TimeoutError:
                    raise TransientError(f"no answer within {self.timeout:g}s") from None
                except RateLimited as e:
                    self.limiter.pause(e.retry_after if e.retry_after is not None
                                       else self._backoff(counts["rate"] + 1))
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
            actual = self.spec.cost(completion.input_tokens or 0, completion.output_tokens or 0,
                                    completion.cached_tokens or 0,
                                    cache_write_tokens=completion.cache_write_tokens or 0)
            return completion, calls
        finally:
            self.budget.settle(reserve, actual)

    # -- one label ---------------------------------------------------------------------------------
    async def _label(self, unit: _Unit, request: OracleRequest, reserve: float) -> LabelOutcome:
        calls_before = 0
        try:
            completion, calls = await self._priced_call(request, reserve)
            calls_before = calls
            outcome, problem = outcome_from_completion(self.filt, self.spec, completion)
            outcome.attempts = calls
            if problem is None:
                return outcome
            # one corrective retry: show the model its answer and what was wrong with it
            corrective = dataclasses.replace(
                request, followups=((completion.text or "", self.filt.corrective_message(problem)),))
            reserve2 = worst_case_cost(self.spec, corrective)
            if not self.budget.try_reserve(reserve2):
                # 'error', not 'invalid': a later run with more budget retries it
                return dataclasses.replace(outcome, status="error", scores=None, content_type=None, evidence=None,
                                           error=f"{outcome.error}; corrective retry not sent: --max-cost reached")
            completion2, calls2 = await self._priced_call(corrective, reserve2)
            second, _ = outcome_from_completion(self.filt, self.spec, completion2, corrective=True,
                                                first_problem=problem)
            second.attempts = calls2
            return merge_outcomes(outcome, second)
        except (TransientError, RateLimited) as e:
            kind = "rate limited" if isinstance(e, RateLimited) else "transient error"
            limit = self.retry.rate_limit_attempts if isinstance(e, RateLimited) else self.retry.attempts
            return LabelOutcome("error", error=f"{kind}, gave up after {limit} attempts: {e}",
                                attempts=calls_before + limit)

    def _open_run(self) -> int:
        if self.run_id is None:
            self.run_id = store.start_run(
                self.conn, purpose=self.purpose, filt=self.filt, oracle=self.spec.name, provider=self.spec.provider,
                model=self.spec.model, mode=self.mode, params=self.params, seed=self.seed)
            self.summary.run_id = self.run_id
        return self.run_id

    def _store(self, unit: _Unit, outcome: LabelOutcome) -> None:
        outcome.error = scrub_secrets(outcome.error, self.spec)
        store_outcome(self.conn, run_id=self._open_run(), filt=self.filt, oracle=self.spec.name,
                      article_id=unit.article_id, repeat=unit.repeat, outcome=outcome)
        self.existing[(unit.article_id, unit.repeat)] = outcome.status
        s = self.summary
        setattr(s, outcome.status, getattr(s, outcome.status) + 1)
        s.cost_usd += outcome.cost_usd
        s.input_tokens += outcome.input_tokens
        s.output_tokens += outcome.output_tokens

    def _stop(self, reason: str, message: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.summary.stopped_reason = reason
            self.summary.stopped_message = message
        self.changed.set()

    async def _worker(self) -> None:
        while True:
            got = await self._next_unit()
            if got is None:
                return
            unit, primary, request, reserve = got
            try:
                self._open_run()
                self.summary.requested += 1
                outcome = await self._label(unit, request, reserve)
                self._store(unit, outcome)
                if outcome.status == "ok" and unit.repeat == 0:
                    self.ok_total += 1
                    if self.target is not None:
                        self.pending.extend(_Unit(unit.article_id, r, unit.title, unit.text)
                                            for r in self._missing_repeats(unit.article_id, 1))
                self._tick()
            except QuotaExhausted as e:
                self.summary.requested -= 1  # not stored: the next run asks again
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
                self.in_flight -= 1
                if primary:
                    self.in_flight_primary -= 1
                self.changed.set()

    def _tick(self) -> None:
        if self.bar is None:
            return
        s = self.summary
        done = self.ok_total if self.target is not None else s.ok + s.invalid + s.error
        self.bar.set_postfix_str(f"cost=${s.cost_usd:.4f} invalid={s.invalid} error={s.error}", refresh=False)
        self.bar.update(done - self.bar.n)

    async def run(self) -> LabelRunSummary:
        if self.progress:
            from tqdm import tqdm
            if self.target is not None:
                total, initial = self.target, min(self.ok_total, self.target)
            else:
                total = sum(len(self._missing_repeats(a, 0)) for a in self.article_ids)
                initial = 0
            self.bar = tqdm(total=total, initial=initial, desc=f"label {self.spec.name}", unit="label",
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        try:
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.owns_oracle:
                await self.oracle.aclose()
        self.summary.ok_total = self.ok_total
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
                   oracle: Oracle | None = None, mode: str = "sync") -> LabelRunSummary:
    """Label `article_ids` (in this order) with the oracle `spec`, storing every answer in gt.db.

    Only what is missing for (filter, oracle, prompt hash, repeat) is labelled, so a label is never
    paid twice. With `target_valid`, articles are taken in order until that many articles have a
    valid repeat-0 label (and each of them its `repeats`); without it every article gets every
    repeat. Stops cleanly (summary.stopped_reason) on a spent quota or budget; raises FatalError
    (auth, bad request) and the registry's MissingKey before any call. Ctrl-C marks the run
    'stopped' and re-raises KeyboardInterrupt."""
    if repeats < 1 or concurrency < 1:
        raise ValueError("repeats and concurrency must be at least 1")
    if timeout is not None:
        spec = dataclasses.replace(spec, timeout_s=float(timeout))
    owns_oracle = oracle is None  # an oracle passed in stays open for the caller
    if oracle is None:
        from stages.oracles.registry import make_oracle
        oracle = make_oracle(spec)  # raises MissingKey before any work
    store.register_filter(conn, filt)
    engine_box: dict = {}

    async def main():
        engine = _Run(conn, filt, spec, oracle, article_ids, purpose=purpose, repeats=repeats,
                      concurrency=concurrency, max_cost=max_cost, target_valid=target_valid, seed=seed,
                      params=params, progress=progress, timeout=timeout, retry=retry or RetryPolicy(), mode=mode)
        engine.owns_oracle = owns_oracle
        engine_box["engine"] = engine
        return await engine.run()

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:
        engine = engine_box.get("engine")
        if engine is not None and engine.run_id is not None:
            store.finish_run(conn, engine.run_id, "stopped")
        raise
    except FatalError:
        engine = engine_box.get("engine")
        if engine is not None and engine.run_id is not None:
            store.finish_run(conn, engine.run_id, "failed")
        raise
    if summary.run_id is not None:
        store.finish_run(conn, summary.run_id, "stopped" if summary.stopped_reason else "done")
    return summary


# ---- --dry-run -----------------------------------------------------------------------------------

@dataclass
class Estimate:
    requests: int
    articles: int
    input_tokens: int
    output_tokens: int
    cost_sync: float
    cost_batch: float | None
    seconds_at_limit: float | None
    already_valid: int


def estimate_run(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str], *,
                 repeats: int = 1, target_valid: int | None = None) -> Estimate:
    """What a label run would send (the same plan as label_articles, every answer assumed valid):
    tokens from the real prompts' length (characters / 4), cost at sync and batch prices, and the
    time the rate limits impose. Calls nothing."""
    existing = existing_labels(conn, filt, spec.name)
    ok = sum(1 for a in article_ids if existing.get((a, 0)) == "ok")
    requests = articles = input_chars = 0
    out_per = expected_output_tokens(filt)
    granted = 0
    for aid in article_ids:
        first = existing.get((aid, 0))
        if target_valid is not None:
            if first in FINAL_STATUSES:
                if first == "ok" and granted < target_valid:
                    granted += 1
                    missing = [r for r in range(1, repeats) if existing.get((aid, r)) not in FINAL_STATUSES]
                else:
                    missing = []
            elif ok + articles < target_valid:
                missing = list(range(repeats))
            else:
                continue
        else:
            missing = [r for r in range(repeats) if existing.get((aid, r)) not in FINAL_STATUSES]
        if not missing:
            continue
        row = conn.execute("SELECT title, text FROM articles WHERE id = ?", (aid,)).fetchone()
        if row is None or filt.prefilter_reason(row[0] or "", row[1] or ""):
            continue
        request = build_request(filt, aid, 0, row[0] or "", row[1] or "")
        if 0 in missing:
            articles += 1
        requests += len(missing)
        input_chars += len(request.prompt) * len(missing)
    input_tokens = math.ceil(input_chars / CHARS_PER_TOKEN)
    output_tokens = out_per * requests
    cost_sync = spec.cost(input_tokens, output_tokens)
    cost_batch = spec.cost(input_tokens, output_tokens, batch=True) if spec.batch_input_per_m is not None else None
    limiter = RateLimiter(spec.rpm, spec.tpm, headroom=1.0)
    seconds = limiter.seconds_for(requests, input_tokens + output_tokens) if limiter.limited else None
    return Estimate(requests, articles, input_tokens, output_tokens, cost_sync, cost_batch, seconds, ok)


# ---- --status ------------------------------------------------------------------------------------

def status_lines(conn: sqlite3.Connection, limit: int = 20) -> list[str]:
    """Recent label runs (open ones first) and open provider batch jobs, one line each."""
    rows = conn.execute(
        """SELECT r.id, r.purpose, r.filter_id, r.oracle, r.mode, r.status, r.started_at, r.finished_at, r.cost_usd,
                  SUM(l.status = 'ok') AS ok, SUM(l.status = 'invalid') AS invalid, SUM(l.status = 'error') AS error,
                  COALESCE(SUM(l.cost_usd), 0) AS spent
           FROM label_runs r LEFT JOIN labels l ON l.run_id = r.id
           GROUP BY r.id ORDER BY (r.status = 'running') DESC, r.id DESC LIMIT ?""", (limit,)).fetchall()
    if not rows:
        return ["no label runs in this database yet"]
    out = [f"{'run':>4}  {'purpose':9} {'filter':16} {'oracle':16} {'mode':5} {'status':8} {'ok':>6} {'invalid':>7} "
           f"{'error':>5} {'cost $':>9}  started"]
    for r in rows:
        status = r["status"] if r["status"] != "running" else "running?"  # a killed run stays 'running'
        out.append(f"{r['id']:>4}  {r['purpose']:9} {r['filter_id']:16} {r['oracle']:16} {r['mode']:5} {status:8} "
                   f"{r['ok'] or 0:>6} {r['invalid'] or 0:>7} {r['error'] or 0:>5} {r['spent']:>9.4f}  {r['started_at']}")
    jobs = conn.execute(
        """SELECT id, run_id, provider, remote_id, state, request_count, submitted_at FROM batch_jobs
           WHERE state NOT IN ('collected', 'failed', 'expired', 'cancelled') ORDER BY id""").fetchall()
    if jobs:
        out.append("open batch jobs:")
        out += [f"  job {j['id']} (run {j['run_id']}, {j['provider']} {j['remote_id'] or '-'}): {j['state']}, "
                f"{j['request_count']} requests, submitted {j['submitted_at'] or '-'}" for j in jobs]
    if any(r["status"] == "running" for r in rows):
        out.append("running? = started and not finished: still running, or killed (re-run the same command to resume)")
    return out


# ---- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stages.label",
        description="Label a seeded random sample of articles with an LLM oracle and store every answer in gt.db. "
                    "Re-running the same command resumes: only labels missing for (filter, oracle, prompt hash) "
                    "are requested.")
    p.add_argument("--db", default=store.default_db_path(), help="gt.db path (default: $GT_DB, else gt.db)")
    p.add_argument("--filter", default="filters/uplifting/v1", help="filter package directory (default: %(default)s)")
    p.add_argument("--source", action="append", default=[],
                   help="JSONL file(s) or glob(s) to ingest into gt.db first (repeatable); without it, label what "
                        "gt.db already holds")
    p.add_argument("--output-dir", default=None,
                   help="also export DIR/<filter name>/labeled_articles.jsonl (valid labels, the spec's shape)")
    p.add_argument("--llm", default="local-embed",
                   help="oracle name from oracles.yaml (gemini-flash, gemini-pro, claude-sonnet, claude-haiku, "
                        "gpt-4o-mini, deepseek, ollama/<model>, local-embed, local-llm; default: %(default)s)")
    p.add_argument("--oracles-file", default=None, help="oracle registry (default: oracles.yaml of the project)")
    p.add_argument("--target-count", type=int, default=None,
                   help="label until this many articles have a valid label for (filter, oracle, prompt hash); "
                        "default: every eligible article")
    p.add_argument("--random-sample", action="store_true",
                   help="take articles in a seeded random order (sha256 of seed and id) instead of ingest order")
    p.add_argument("--seed", type=int, default=42, help="seed of the random sample (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default: %(default)s)")
    p.add_argument("--max-cost", type=float, default=None, metavar="USD",
                   help="never start a request that could take the run's cost past this many US dollars")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expected requests, tokens, cost and time at the rate limit, and call nothing "
                        "(needs no API key; --source files are still ingested)")
    p.add_argument("--repeats", type=int, default=1,
                   help="label each article this many times (self-consistency), stored as repeats 0..N-1")
    p.add_argument("--mode", choices=("sync", "batch"), default="sync",
                   help="sync: requests as you go; batch: the provider's batch service (cheaper, hours)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for one answer (default: the oracle's timeout_s in oracles.yaml)")
    p.add_argument("--max-attempts", type=int, default=RetryPolicy.attempts,
                   help="attempts per request on 5xx, timeouts and dropped connections, with exponential "
                        "backoff and jitter, before the label is stored as 'error' (default: %(default)s)")
    p.add_argument("--status", action="store_true", help="show recent label runs and open batch jobs, then exit")
    from stages.oracles.batch import add_arguments as add_batch_arguments
    add_batch_arguments(p)   # --batch-retry, --batch-rounds, --batch-poll, --batch-max-poll, --batch-no-wait
    return p


def _fail(msg: str, code: int = 1) -> int:
    print("error: " + " ".join(msg.split()), file=sys.stderr)  # one line, whatever the provider wrote
    return code


def _ingest(conn: sqlite3.Connection, sources: list[str], filt: Filter) -> str:
    """--source: ingest first (idempotent: records already in gt.db are skipped)."""
    from stages.ingest import expand_sources, ingest_files
    files, problems = expand_sources(sources)
    if not files:
        raise FileNotFoundError(problems[0] if problems else f"--source {', '.join(sources)} matches no file")
    summary = ingest_files(conn, sources, filt=filt, progress=True)
    for line in summary.problems[:5]:
        print(f"ingest: {line}", file=sys.stderr)
    rejected = f", {summary.rejected} records rejected (see above)" if summary.rejected else ""
    return (f"ingested {summary.records} records from {summary.files} file(s) ({', '.join(sources)}): "
            f"{summary.inserted} new articles, {summary.already_present} already in gt.db{rejected}")


def _export(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, output_dir: str) -> str:
    from stages.labeled_file import export_labeled_file
    path = Path(output_dir) / filt.name / "labeled_articles.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = export_labeled_file(conn, filt, path, oracle=spec.name, prompt_sha256=filt.prompt_sha256)
    return f"exported {n} valid labels to {path}"


def _describe(summary: LabelRunSummary, spec: OracleSpec, filt: Filter, target: int | None, repeats: int = 1) -> str:
    s = summary
    rate = (s.ok + s.invalid + s.error) / s.seconds if s.seconds else 0.0
    what = "articles" if repeats == 1 else f"(article, repeat) pairs of {repeats} repeats"
    parts = [f"labelled {s.ok + s.invalid + s.error} {what} with {spec.name} ({filt.id}, prompt "
             f"{filt.prompt_sha256[:12]}) in {s.seconds:.1f}s ({rate:.1f}/s): {s.ok} ok, {s.invalid} invalid, "
             f"{s.error} error; {s.skipped_existing} already labelled"]
    if s.prefiltered:
        parts.append(f"{s.prefiltered} skipped by the prefilter")
    parts.append(f"cost ${s.cost_usd:.4f} ({s.input_tokens} input + {s.output_tokens} output tokens, {s.calls} calls)")
    if target is not None:
        parts.append(f"{s.ok_total}/{target} valid labels for this filter, oracle and prompt")
    if s.run_id is not None:
        parts.append(f"run {s.run_id}")
    return "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value, low in (("--target-count", args.target_count, 1), ("--concurrency", args.concurrency, 1),
                             ("--repeats", args.repeats, 1), ("--max-attempts", args.max_attempts, 1)):
        if value is not None and value < low:
            return _fail(f"{flag} must be at least {low}, got {value} (pass a positive number)", 2)
    if args.max_cost is not None and args.max_cost <= 0:
        return _fail(f"--max-cost must be positive, got {args.max_cost} (pass US dollars, e.g. --max-cost 5)", 2)

    if args.status:
        try:
            conn = store.connect(args.db)
        except (store.StoreError, sqlite3.Error) as e:
            return _fail(f"{e}, {args.db} (check --db)")
        print("\n".join(status_lines(conn)))
        from stages.oracles.batch import live_status_lines
        print("\n".join(live_status_lines(conn)) or "no open batch jobs")
        return 0

    from stages.oracles import registry as reg
    try:
        filt = load_filter(args.filter)
    except FilterError as e:
        return _fail(f"{e.problems[0]}, {e.path} (fix the filter package or pass --filter filters/<name>/v<N>)", 2)
    try:
        oracles = reg.load_registry(args.oracles_file) if args.oracles_file else reg.load_registry()
        spec = reg.resolve(args.llm, oracles)
        if not args.dry_run:
            reg.check_credentials(spec)
    except reg.MissingKey as e:
        return _fail(str(e), 1)
    except reg.OracleConfigError as e:
        return _fail(str(e).splitlines()[0], 2)
    if args.timeout is not None:
        spec = dataclasses.replace(spec, timeout_s=args.timeout)

    try:
        conn = store.connect(args.db)
    except (store.StoreError, sqlite3.Error) as e:
        return _fail(f"{e}, {args.db} (check --db)")
    store.register_filter(conn, filt)
    notes: list[str] = []
    if args.source:
        try:
            notes.append(_ingest(conn, args.source, filt))
        except FileNotFoundError as e:
            return _fail(str(e), 2)
    ids = eligible_article_ids(conn, filt, seed=args.seed, random_sample=args.random_sample)
    if not ids:
        return _fail(f"no articles to label in {args.db} (ingest some first: make ingest SOURCE='data/sample/*.jsonl')")

    if args.dry_run:
        est = estimate_run(conn, filt, spec, ids, repeats=args.repeats, target_valid=args.target_count)
        limits = ", ".join(x for x in (f"{spec.rpm:g} RPM" if spec.rpm else "", f"{spec.tpm:g} TPM" if spec.tpm else "") if x)
        print(f"dry run, nothing was called: {spec.name} ({spec.provider} {spec.model}) on {filt.id}, "
              f"{est.already_valid} articles already have a valid label")
        print(f"  would send {est.requests} requests ({est.articles} new articles x {args.repeats} repeat(s), "
              f"assuming every answer is valid)")
        print(f"  expected tokens: {est.input_tokens:,} input (prompt characters / {CHARS_PER_TOKEN:g}) + "
              f"{est.output_tokens:,} output (~{expected_output_tokens(filt)} per answer)")
        batch = f"; batch mode ${est.cost_batch:.2f}" if est.cost_batch is not None else "; no batch prices for it"
        print(f"  expected cost: ${est.cost_sync:.2f} sync{batch}")
        from stages.oracles.batch import dry_run_lines
        print("\n".join(dry_run_lines(spec, filt, requests=est.requests, input_tokens=est.input_tokens,
                                     output_tokens=est.output_tokens, seconds_at_limit=est.seconds_at_limit)))
        if est.seconds_at_limit is not None:
            print(f"  time at the rate limit ({limits}): {est.seconds_at_limit / 60:.1f} min")
        else:
            print("  time: no rate limit configured; bounded by the oracle's speed and --concurrency")
        return 0

    if args.mode == "batch":
        # the seam for provider batch mode (stages/oracles/batch.py): it plans with existing_labels,
        # builds requests with build_request and stores results with record_completion/store_outcome
        try:
            from stages.oracles import batch as batch_mode
        except ImportError:
            batch_mode = None
        if batch_mode is None or not hasattr(batch_mode, "main_batch"):
            return _fail("--mode batch is not available in this version (use --mode sync)", 2)
        return batch_mode.main_batch(conn, filt, spec, ids, args)

    params = {k: v for k, v in vars(args).items() if k not in ("status", "dry_run", "db")}
    try:
        summary = label_articles(conn, filt, spec, ids, purpose="label", repeats=args.repeats,
                                 concurrency=args.concurrency, max_cost=args.max_cost, target_valid=args.target_count,
                                 seed=args.seed, params=params, progress=True, timeout=args.timeout,
                                 retry=RetryPolicy(attempts=args.max_attempts))
    except KeyboardInterrupt:
        print("interrupted: labels stored so far are kept; run the same command to continue", file=sys.stderr)
        return 130
    except reg.MissingKey as e:
        return _fail(str(e), 1)
    except FatalError as e:
        return _fail(f"{spec.name} refused the request: {scrub_secrets(str(e), spec)} (nothing more was sent; "
                     f"check the key, model id and oracles.yaml)", 1)
    if args.output_dir:
        notes.append(_export(conn, filt, spec, args.output_dir))
    print(_describe(summary, spec, filt, args.target_count, args.repeats))
    for n in notes:
        print(n)
    print(f"database: {args.db} (sqlite3 {args.db} 'select * from {filt.view_name} limit 3')")
    if args.target_count and summary.ok_total < args.target_count and not summary.stopped_reason:
        print(f"target not reached: {summary.ok_total}/{args.target_count} valid labels, and every one of the {len(ids)} "
              f"eligible articles in {args.db} has been tried (ingest more with --source; 'error' labels are retried "
              f"by the next run)")
    if summary.stopped_reason == "quota":
        return _fail(f"stopped: {summary.stopped_message}", 1)
    if summary.stopped_reason == "budget":
        print(summary.stopped_message + "; raise --max-cost and run the same command to continue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
