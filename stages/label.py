"""Label stage: score a seeded random sample of articles with an LLM oracle and store every answer
in gt.db (step 2 of the workflow: `make label LLM=gemini-pro TARGET=20000 SEED=42`).

Concurrency is asyncio; one rate limiter (requests and tokens per minute from oracles.yaml) is
shared by every request. Every unit is claimed in gt.db before it is sent (so two processes on one
gt.db never pay for the same unit) and every answer is stored with its cost in the run's ledger
as it arrives, by a writer thread that never stalls the event loop, so an interrupted run
(Ctrl-C, `kill -9`, a spent daily quota, a budget, a locked database) loses at most the requests
in flight and the same command continues where it stopped. `--target-count` counts valid labels
of (filter, oracle, prompt hash) across every process: articles already labelled ok or invalid are
never paid for twice; 'error' labels are retried. A circuit breaker stops a run whose recent
answers are mostly invalid or failing.

`label_articles()` is the reusable sync engine (the calibrate stage calls it); batch mode lives in
stages/label_batch.py; what both share (plan, request, judgement, ledger, leases) in
stages/labelling.py.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import math
import random
import shlex
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from stages import store
from stages.filters import Filter, FilterError, load_filter
from stages.labelling import (CHARS_PER_TOKEN, FINAL_STATUSES, LEASE_TTL_S, RESERVE_BYTES_PER_TOKEN, Breaker,
                              DbWriter, LabelKey, LabelOutcome, PlanCounts, PlanItem, Spilled, TargetGate,
                              WriterStopped, apply_spills, article_text, build_request, claim_unit, completion_cost,
                              eligible_article_ids, estimate_input_tokens, existing_labels, expected_output_tokens,
                              judge_answer, mark_dead_runs, merge_outcomes, off_grid, outcome_from_completion,
                              plan_items, record_completion, recorded_spend, release_owner, release_unit, renew,
                              run_state, scrub_secrets, spill_finish, spill_outcome, store_outcome, worst_case_cost,
                              format_duration)
from stages.oracles.base import (Completion, FatalError, Oracle, OracleError, OracleRequest, OracleSpec,
                                 QuotaExhausted, RateLimited, TransientError)
from stages.oracles.ratelimit import RateLimiter

__all__ = ["label_articles", "LabelRunSummary", "RetryPolicy", "RunOptions", "estimate_run", "main",
           # the shared pieces, re-exported for callers of the label stage's API
           "CHARS_PER_TOKEN", "FINAL_STATUSES", "RESERVE_BYTES_PER_TOKEN", "LabelOutcome", "build_request",
           "eligible_article_ids", "existing_labels", "judge_answer", "merge_outcomes", "outcome_from_completion",
           "record_completion", "scrub_secrets", "store_outcome", "worst_case_cost"]

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
        self.owner = _owner()
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
        key, owner, ttl = self.key, self.owner, self.o.lease_ttl_s
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


def _owner() -> str:
    from stages.labelling import owner_id
    return owner_id()


def _clip(text: str, n: int = 500) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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
    if oracle is None:
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
    """What a label run would send (the same planner as the sync and batch engines, every answer
    assumed valid): tokens from the real prompts' length (characters / 4), cost at sync and batch
    prices, and the time the rate limits impose. Calls nothing, writes nothing."""
    existing = existing_labels(conn, filt, spec.name)
    ok = sum(1 for a in article_ids if existing.get((a, 0)) == "ok")
    requests = articles = input_chars = 0
    for item in plan_items(article_ids, existing, repeats=repeats, target=target_valid):
        if item.primary and ok + articles >= target_valid:
            continue
        found = article_text(conn, item.article_id)
        if found is None or filt.prefilter_reason(*found):
            continue
        try:
            request = build_request(filt, item.article_id, 0, *found)
        except Exception:  # noqa: BLE001 - the real run stores it as an 'error' label
            continue
        if item.primary or (target_valid is None and 0 in item.repeats):
            articles += 1
        requests += len(item.repeats)
        input_chars += len(request.prompt) * len(item.repeats)
    input_tokens = math.ceil(input_chars / CHARS_PER_TOKEN)
    output_tokens = expected_output_tokens(filt) * requests
    cost_sync = spec.cost(input_tokens, output_tokens)
    cost_batch = spec.cost(input_tokens, output_tokens, batch=True) if spec.batch_input_per_m is not None else None
    limiter = RateLimiter(spec.rpm, spec.tpm, headroom=1.0)
    seconds = limiter.seconds_for(requests, input_tokens + output_tokens) if limiter.limited else None
    return Estimate(requests, articles, input_tokens, output_tokens, cost_sync, cost_batch, seconds, ok)


# ---- --status ------------------------------------------------------------------------------------

def status_lines(conn: sqlite3.Connection, limit: int = 20) -> list[str]:
    """Spend per run (recent runs, open ones first), per oracle and in total, from the ledger, with
    each run's true state; then open provider batch jobs."""
    rows = conn.execute(
        """SELECT r.*, (SELECT COUNT(*) FROM batch_jobs j WHERE j.run_id = r.id
                          AND j.state NOT IN ('collected', 'failed', 'expired', 'cancelled')) AS open_jobs
           FROM label_runs r ORDER BY (r.status = 'running') DESC, r.id DESC LIMIT ?""", (limit,)).fetchall()
    if not rows:
        return ["no label runs in this database yet"]
    counts = {r[0]: r[1:] for r in conn.execute(
        f"""SELECT run_id, SUM(status = 'ok'), SUM(status = 'invalid'), SUM(status = 'error') FROM labels
            WHERE run_id IN ({",".join(str(int(r["id"])) for r in rows)}) GROUP BY run_id""")}
    out = [f"{'run':>4}  {'purpose':9} {'filter':18} {'oracle':16} {'mode':6} {'state':9} {'ok':>6} {'invalid':>7} "
           f"{'error':>5} {'calls':>6} {'cost $':>10}  started"]
    now = time.time()
    states = []
    for r in rows:
        state = run_state(r, now, open_jobs=r["open_jobs"])
        states.append(state)
        ok, invalid, error = counts.get(r["id"], (0, 0, 0))
        reason = f" ({r['stopped_reason']})" if r["stopped_reason"] and state in ("stopped", "failed") else ""
        out.append(f"{r['id']:>4}  {r['purpose']:9} {r['filter_id']:18} {r['oracle']:16} {r['mode']:6} {state:9} "
                   f"{ok or 0:>6} {invalid or 0:>7} {error or 0:>5} {r['calls']:>6} {r['cost_usd']:>10.4f}  "
                   f"{r['started_at']}{reason}")
    out.append("spend by oracle (all runs):")
    for o in conn.execute("""SELECT filter_id, oracle, COUNT(*) AS runs, SUM(calls) AS calls, SUM(unstored) AS unstored,
                                    SUM(cost_usd) AS cost FROM label_runs WHERE mode != 'import'
                             GROUP BY filter_id, oracle ORDER BY cost DESC, oracle"""):
        extra = f", {o['unstored']} paid answers not kept (another run was first)" if o["unstored"] else ""
        out.append(f"  {o['filter_id']:18} {o['oracle']:16} ${o['cost']:.4f} over {o['runs']} run(s), "
                   f"{o['calls']} billed calls{extra}")
    total = conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM label_runs").fetchone()[0]
    out.append(f"total spend recorded in gt.db: ${total:.4f}")
    jobs = conn.execute(
        """SELECT id, run_id, provider, remote_id, state, request_count, submitted_at FROM batch_jobs
           WHERE state NOT IN ('collected', 'failed', 'expired', 'cancelled') ORDER BY id""").fetchall()
    if jobs:
        out.append("open batch jobs:")
        out += [f"  job {j['id']} (run {j['run_id']}, {j['provider']} {j['remote_id'] or '-'}): {j['state']}, "
                f"{j['request_count']} requests, submitted {j['submitted_at'] or '-'}" for j in jobs]
    if "died" in states:
        out.append("died = the process ended without closing its run (killed): its answers and their cost are "
                   "recorded; run the same command to resume")
    if "running?" in states:
        out.append("running? = a run from before gt.db recorded owners: still running, or killed")
    return out


# ---- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from stages.label_batch import add_arguments as add_batch_arguments
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
                   help="this invocation's budget: never start a request that could take this command's spend past "
                        "it (the next command has its own)")
    p.add_argument("--max-total-cost", type=float, default=None, metavar="USD",
                   help="a cap on all spend gt.db records for this filter and oracle, every earlier run included")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expected requests, tokens, cost and time at the rate limit, and call nothing "
                        "(needs no API key; writes nothing, --source is not ingested)")
    p.add_argument("--repeats", type=int, default=1,
                   help="label each article this many times (self-consistency), stored as repeats 0..N-1")
    p.add_argument("--mode", choices=("sync", "batch"), default="sync",
                   help="sync: requests as you go; batch: the provider's batch service (cheaper, hours)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for one answer (default: the oracle's timeout_s in oracles.yaml)")
    p.add_argument("--max-attempts", type=int, default=RetryPolicy.attempts,
                   help="attempts per request on 5xx, timeouts and dropped connections, with exponential "
                        "backoff and jitter, before the label is stored as 'error' (default: %(default)s)")
    p.add_argument("--breaker-window", type=int, default=20, metavar="N",
                   help="circuit breaker: stop when more than half of the last N answers are invalid or failed "
                        "(default: %(default)s; 0 turns it off)")
    p.add_argument("--db-patience", type=float, default=DB_PATIENCE_S, metavar="SECONDS",
                   help="how long answers wait in memory while another process holds gt.db's write lock before the "
                        "run stops (default: %(default)s)")
    p.add_argument("--status", action="store_true",
                   help="show spend per run, per oracle and in total, each run's state and open batch jobs, then exit")
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


def export(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, output_dir: str) -> str:
    from stages.labeled_file import export_labeled_file
    path = Path(output_dir) / filt.name / "labeled_articles.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = export_labeled_file(conn, filt, path, oracle=spec.name, prompt_sha256=filt.prompt_sha256)
    return f"exported {n} valid labels to {path}"


_export = export


def resume_command(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m stages.label " + shlex.join(str(a) for a in args)


def _describe(summary: LabelRunSummary, spec: OracleSpec, filt: Filter, target: int | None, repeats: int = 1) -> str:
    s = summary
    rate = (s.ok + s.invalid + s.error) / s.seconds if s.seconds else 0.0
    what = "articles" if repeats == 1 else f"(article, repeat) pairs of {repeats} repeats"
    parts = [f"labelled {s.ok + s.invalid + s.error} {what} with {spec.name} ({filt.id}, prompt "
             f"{filt.prompt_sha256[:12]}) in {s.seconds:.1f}s ({rate:.1f}/s): {s.ok} ok, {s.invalid} invalid, "
             f"{s.error} error; {s.skipped_existing} already labelled"]
    if s.off_grid:
        parts.append(f"{s.off_grid} valid label(s) with scores off the half-point grid, stored as given")
    if s.prefiltered:
        parts.append(f"{s.prefiltered} skipped by the prefilter")
    if s.taken:
        parts.append(f"{s.taken} left to another process that holds them")
    if s.bad_articles:
        parts.append(f"{s.bad_articles} article(s) whose request could not be built (stored as 'error')")
    unstored = f"; {s.unstored} paid answer(s) not kept, another process labelled them first" if s.unstored else ""
    parts.append(f"cost ${s.cost_usd:.4f} ({s.input_tokens} input + {s.output_tokens} output tokens, "
                 f"{s.billed_calls} billed calls, {s.calls} calls in all{unstored})")
    if target is not None:
        parts.append(f"{s.ok_total}/{target} valid labels for this filter, oracle and prompt")
    if s.run_id is not None:
        parts.append(f"run {s.run_id}")
    return "; ".join(parts) + "."


def missing_error_units(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str]) -> int:
    """Units of these articles whose last label is 'error' (a later run retries them)."""
    ids = set(article_ids)
    return sum(1 for (a, _), st in existing_labels(conn, filt, spec.name).items() if st == "error" and a in ids)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value, low in (("--target-count", args.target_count, 1), ("--concurrency", args.concurrency, 1),
                             ("--repeats", args.repeats, 1), ("--max-attempts", args.max_attempts, 1),
                             ("--breaker-window", args.breaker_window, 0)):
        if value is not None and value < low:
            return _fail(f"{flag} must be at least {low}, got {value} (pass a positive number)", 2)
    for flag, value in (("--max-cost", args.max_cost), ("--max-total-cost", args.max_total_cost),
                        ("--db-patience", args.db_patience)):
        if value is not None and value <= 0:
            return _fail(f"{flag} must be positive, got {value} (pass e.g. {flag} 5)", 2)

    if args.status:
        try:
            conn = store.connect(args.db, create=False)
            print("\n".join(status_lines(conn)))
            from stages.label_batch import live_status_lines
            print("\n".join(live_status_lines(conn)) or "no open batch jobs")
        except (store.StoreError, sqlite3.Error) as e:
            return _fail(store.describe_db_error(e, args.db))
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
        return _run_command(args, argv, filt, spec)
    except store.FilterMismatch as e:
        return _fail(str(e), 2)
    except (store.StoreError, sqlite3.Error) as e:
        return _fail(store.describe_db_error(e, args.db))


def _run_command(args: argparse.Namespace, argv: list[str] | None, filt: Filter, spec: OracleSpec) -> int:
    from stages.oracles import registry as reg
    if args.dry_run:
        conn = store.connect(args.db, readonly=True, create=False)
        if args.source:
            print("dry run: --source is not ingested (a dry run writes nothing); the estimate covers what gt.db holds")
        note = store.check_filter(conn, filt)   # an edited prompt under the same version: refused here too
        if note:
            print(note)
        ids = eligible_article_ids(conn, filt, seed=args.seed, random_sample=args.random_sample)
        if not ids:
            return _fail(f"no articles to label in {args.db} (ingest some first: make ingest SOURCE='data/sample/*.jsonl')")
        return _dry_run(conn, filt, spec, ids, args)

    conn = store.connect(args.db)
    note = store.register_filter(conn, filt)
    notes: list[str] = [note] if isinstance(note, str) and note else []
    notes += apply_spills(conn, args.db, {filt.id: filt})
    if args.source:
        try:
            notes.append(_ingest(conn, args.source, filt))
        except FileNotFoundError as e:
            return _fail(str(e), 2)
    ids = eligible_article_ids(conn, filt, seed=args.seed, random_sample=args.random_sample)
    if not ids:
        return _fail(f"no articles to label in {args.db} (ingest some first: make ingest SOURCE='data/sample/*.jsonl')")

    if args.mode == "batch":
        from stages.label_batch import main_batch
        for n in notes:
            print(n)
        return main_batch(conn, filt, spec, ids, args, resume=resume_command(argv))

    params = {k: v for k, v in vars(args).items() if k not in ("status", "dry_run", "db")}
    try:
        summary = label_articles(conn, filt, spec, ids, purpose="label", repeats=args.repeats,
                                 concurrency=args.concurrency, max_cost=args.max_cost,
                                 max_total_cost=args.max_total_cost, target_valid=args.target_count,
                                 seed=args.seed, params=params, progress=True, timeout=args.timeout,
                                 retry=RetryPolicy(attempts=args.max_attempts), breaker_window=args.breaker_window,
                                 db_patience_s=args.db_patience)
    except KeyboardInterrupt:
        print("interrupted: labels stored so far are kept; run the same command to continue", file=sys.stderr)
        return 130
    except reg.MissingKey as e:
        return _fail(str(e), 1)
    except FatalError as e:
        return _fail(f"{spec.name} refused the request: {scrub_secrets(str(e), spec)} (nothing more was sent; "
                     f"check the key, model id and oracles.yaml)", 1)
    resume = resume_command(argv)
    print(_describe(summary, spec, filt, args.target_count, args.repeats))
    for n in notes:
        print(n)
    reason = summary.stopped_reason
    if reason == "locked":
        kept = (f"; {summary.spilled} received answer(s) are kept in {summary.spill_path} and will be stored by the "
                f"next run" if summary.spilled else "; every received answer was written")
        return _fail(f"{summary.stopped_message}{kept}; when the lock is gone, resume with: {resume}")
    if reason == "db":
        return _fail(summary.stopped_message)
    if args.output_dir:
        print(export(conn, filt, spec, args.output_dir))
    print(f"database: {args.db} (sqlite3 {args.db} 'select * from {filt.view_name} limit 3')")
    if reason == "quota":
        return _fail(f"stopped: {summary.stopped_message}", 1)
    if reason == "breaker":
        return _fail(f"{summary.stopped_message}. Fix the cause (oracle, prompt or filter), then resume with: "
                     f"{resume}", 1)
    if reason in ("budget", "total_budget"):
        print(summary.stopped_message)
        return 0
    failed = missing_error_units(conn, filt, spec, ids)
    if args.target_count and summary.ok_total < args.target_count:
        short = args.target_count - summary.ok_total
        if failed:
            return _fail(f"target not reached: {short} valid label(s) missing ({summary.ok_total}/{args.target_count}); "
                         f"{failed} unit(s) ended as 'error' (calls failed). Resume with: {resume}", 1)
        print(f"target not reached: {summary.ok_total}/{args.target_count} valid labels, and every one of the "
              f"{len(ids)} eligible articles in {args.db} has been tried (ingest more with --source)")
    elif failed and args.target_count is None:
        return _fail(f"{failed} unit(s) ended as 'error' (calls failed), so {failed} label(s) are missing; "
                     f"resume with: {resume}", 1)
    return 0


def _dry_run(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], args: argparse.Namespace) -> int:
    from stages.label_batch import dry_run_lines
    est = estimate_run(conn, filt, spec, ids, repeats=args.repeats, target_valid=args.target_count)
    limiter = RateLimiter(spec.rpm, spec.tpm, headroom=1.0)
    limits = ", ".join(x for x in (f"{spec.rpm:g} RPM" if spec.rpm else "", f"{spec.tpm:g} TPM" if spec.tpm else "") if x)
    print(f"dry run, nothing was called: {spec.name} ({spec.provider} {spec.model}) on {filt.id}, "
          f"{est.already_valid} articles already have a valid label")
    print(f"  would send {est.requests} requests ({est.articles} new articles x {args.repeats} repeat(s), "
          f"assuming every answer is valid)")
    print(f"  expected tokens: {est.input_tokens:,} input (prompt characters / {CHARS_PER_TOKEN:g}) + "
          f"{est.output_tokens:,} output (~{expected_output_tokens(filt)} per answer)")
    batch = f"; batch mode ${est.cost_batch:.2f}" if est.cost_batch is not None else "; no batch prices for it"
    print(f"  expected cost: ${est.cost_sync:.2f} sync{batch}")
    print("\n".join(dry_run_lines(spec, filt, requests=est.requests, input_tokens=est.input_tokens,
                                 output_tokens=est.output_tokens, seconds_at_limit=est.seconds_at_limit)))
    if est.seconds_at_limit is not None:
        print(f"  time at the rate limit ({limits}): {format_duration(est.seconds_at_limit)}")
    else:
        print("  time: no rate limit configured; bounded by the oracle's speed and --concurrency")
    target = args.target_count
    if target is not None and est.already_valid + est.articles < target:
        # the pool cannot make the target: say so, and what the target itself would cost, from the
        # pool's own measured prompt sizes
        reachable = est.already_valid + est.articles
        print(f"the pool is short of the target: at most {reachable:,} of the {target:,} valid labels asked for "
              f"can come from the {len(ids):,} eligible articles in {args.db} (ingest more with --source); "
              f"a run stops there")
        if est.requests:
            per_in = est.input_tokens / est.requests
            per_out = est.output_tokens / est.requests
            requests = (target - est.already_valid) * args.repeats
            tin, tout = math.ceil(per_in * requests), math.ceil(per_out * requests)
            seconds = limiter.seconds_for(requests, tin + tout) if limiter.limited else None
            print(f"  for the target: {requests:,} requests at this pool's measured size ({per_in:,.0f} input + "
                  f"~{per_out:,.0f} output tokens per request): {tin:,} input + {tout:,} output tokens")
            print("\n".join(dry_run_lines(spec, filt, requests=requests, input_tokens=tin, output_tokens=tout,
                                         seconds_at_limit=seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
