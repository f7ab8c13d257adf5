"""The sync label engine: `label_articles` (the label stage, calibrate and the loop run it).

A unit is (article, filter, oracle, prompt hash, repeat). Its life:
  1. planned (`planning.plan_items`: the same rules for sync, batch and --dry-run);
  2. claimed in gt.db's `label_leases` (`leases.claim_unit`) before anything is sent, so concurrent
     processes never pay for the same unit;
  3. answered, judged (`ledger.outcome_from_completion`: valid = fits the schema we sent);
  4. stored (`ledger.store_outcome`): the label, its cost added to the run's ledger and the lease
     released, in one transaction.

A fixed pool of worker tasks pulls units from the lazy plan, under the budget (`--max-cost`,
`--max-total-cost`), the oracle's rate limits, bounded retries and the circuit breaker
(gt/labelling/breaker.py); every write goes through the never-blocking writer (gt/labelling/dbwriter.py).
The names the label engines shared when they all lived here are still importable from here.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import sqlite3
import sys
import time
from dataclasses import dataclass
from typing import Iterable

from gt.core import store
from gt.labelling.breaker import Breaker
from gt.labelling.calls import Abort, Caller, RetryPolicy
from gt.labelling.dbwriter import DbWriter, Spilled, WriterStopped, apply_spills, db_file, spill_finish, spill_outcome
from gt.core.filters import Filter
from gt.labelling.leases import (FINAL_STATUSES, LEASE_TTL_S, LabelKey, TargetGate, claim_unit, mark_dead_runs, owner_id,
                           release_owner, release_unit, renew)
from gt.labelling.ledger import (Budget, LabelOutcome, clip, completion_cost, merge_outcomes, off_grid,
                           outcome_from_completion, recorded_spend, scrub_secrets, store_outcome)
from gt.oracles.base import (Completion, FatalError, NotAnswerable, Oracle, OracleRequest, OracleSpec,
                                 QuotaExhausted, RateLimited, TransientError)
from gt.oracles.ratelimit import RateLimiter
from gt.labelling.planning import (PlanCounts, PlanItem, article_text, build_request, existing_labels,
                             expected_output_tokens, plan_items, replay_answers, worst_case_cost)
from gt.labelling.ledger import Usage

__all__ = ["label_articles", "LabelRunSummary", "RunOptions", "DB_PATIENCE_S"]

DEFAULT_CONCURRENCY = 16      # requests in flight at once (label, calibrate, loop)
DB_PATIENCE_S = 300.0         # how long answers may wait for another process's write lock


# ---- results and knobs ---------------------------------------------------------------------------

@dataclass
class LabelRunSummary(Usage):
    run_id: int | None            # None when nothing needed labelling (no run was opened)
    requested: int = 0            # labels this run started (article x repeat)
    ok: int = 0
    invalid: int = 0
    error: int = 0
    skipped_existing: int = 0     # already labelled ok/invalid for this (filter, oracle, prompt, repeat)
    seconds: float = 0.0          # (its Usage: everything this run was billed, unstored answers included)
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
class RunOptions:
    """One sync run's settings."""
    purpose: str = "label"
    repeats: int = 1
    concurrency: int = DEFAULT_CONCURRENCY
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


# ---- the run -------------------------------------------------------------------------------------

class _Run:
    """One label run's engine: a fixed pool of worker tasks pulls (article, repeat) units from a
    lazy plan, so memory stays flat however large the sample. Reads use the caller's connection;
    every write goes through the writer thread."""

    def __init__(self, conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, oracle: Oracle,
                 article_ids: Iterable[str], o: RunOptions, *, owns_oracle: bool = True):
        self.conn, self.filt, self.spec, self.oracle, self.o = conn, filt, spec, oracle, o
        self.owns_oracle = owns_oracle          # an oracle passed in by the caller stays open for it
        self.key = LabelKey.of(filt, spec.name)
        self.owner = owner_id()
        self.db_path = db_file(conn)
        target = o.target_valid
        self.budget = Budget(o.max_cost, o.max_total_cost,
                             recorded_spend(conn, filt.id, spec.name) if o.max_total_cost is not None else 0.0)
        self.breaker = Breaker(o.breaker_window)
        self.caller = Caller(oracle, RateLimiter(spec.rpm, spec.tpm), o.retry,
                             o.timeout if o.timeout is not None else spec.timeout_s,
                             output_tokens=expected_output_tokens(filt), stopping=lambda: self.stopping,
                             count_answer=self._count_answer)
        self.summary = LabelRunSummary(run_id=None)
        self.run_id: int | None = None
        self.article_ids = list(article_ids)
        self.existing = existing_labels(conn, filt, spec.name)
        ok_ids = {a for a in self.article_ids if self.existing.get((a, 0)) == "ok"}
        self.gate = TargetGate(self.key, self.article_ids, target, ok_ids) if target is not None else None
        self.summary.ok_total = len(ok_ids)
        self.counts = PlanCounts()
        self.plan = plan_items(self.article_ids, self.existing, repeats=o.repeats, target=target, counts=self.counts)
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
            if unit.repeat == 0 or self.o.target_valid is None:
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
                claim = await self._claim(unit, primary, reserve)
            except BaseException:
                self._give_back(primary, reserve)
                raise
            if claim == "claimed":
                return unit, primary, request, reserve
            self._give_back(primary, reserve)
            if claim == "over_budget":   # other processes' calls in flight hold the rest of --max-total-cost
                if self.in_flight == 0:
                    self._stop_budget("total_budget", reserve)
                    return None
                self.front.appendleft(candidate)
                await self._wait_for_change()
                continue
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

    async def _claim(self, unit: _Unit, primary: bool, reserve: float) -> str:
        await self._open_run()
        gate, owner, run_id, key, ttl = self.gate, self.owner, self.run_id, self.key, self.o.lease_ttl_s
        total_limit, own = self.o.max_total_cost, max(0.0, self.budget.reserved - reserve)   # in flight, not this one

        def op(conn: sqlite3.Connection) -> str:
            if primary and gate is not None:
                state = gate.state(conn, owner)
                if state != "open":
                    return state
            return claim_unit(conn, key, unit.article_id, unit.repeat, owner=owner, run_id=run_id, ttl_s=ttl,
                              reserve_usd=reserve, total_limit=total_limit, own_reserved=own)

        return await self._write(op)

    async def _write(self, fn, spill: dict | None = None):
        try:
            return await self.writer.run(fn, spill)
        except (Spilled, WriterStopped):
            raise
        except sqlite3.Error as e:
            self.db_error = e
            self._stop("db", store.describe_db_error(e, self.db_path))
            raise Abort() from e

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
        outcome = LabelOutcome("error", error=clip(f"could not build the request: {type(e).__name__}: {e}"))
        await self._store(unit, outcome)

    async def _priced_call(self, request: OracleRequest, reserve: float) -> tuple[Completion, int]:
        """A call whose worst-case cost `reserve` is already reserved; settles it with the real cost."""
        actual = 0.0
        try:
            completion, calls = await self.caller.call(request)
            actual = completion_cost(self.spec, completion)
            return completion, calls
        finally:
            self.budget.settle(reserve, actual)

    def _count_answer(self, good: bool, reason: str | None = None, raw: str | None = None) -> None:
        if self.breaker.record(good, scrub_secrets(reason, self.spec), raw):
            self._stop("breaker", scrub_secrets(self.breaker.message(), self.spec) or "")

    # -- one label ---------------------------------------------------------------------------------
    async def _label(self, request: OracleRequest, reserve: float) -> LabelOutcome:
        """One label: the call (its worst-case cost `reserve` already reserved), the judgement of the
        answer and, when it is invalid, one corrective retry."""
        calls = 0
        try:
            completion, calls = await self._priced_call(request, reserve)
            outcome, problem = outcome_from_completion(self.filt, self.spec, completion)
            outcome.attempts = calls
            self._count_answer(outcome.status == "ok", outcome.error, outcome.raw_response)
            if problem is None:
                return outcome
            return await self._corrective(request, completion, outcome, problem)
        except NotAnswerable as e:
            self._count_answer(False, str(e))
            return LabelOutcome("error", error=clip(str(e)), attempts=1)
        except (TransientError, RateLimited) as e:
            kind = "rate limited" if isinstance(e, RateLimited) else "transient error"
            limit = self.o.retry.rate_limit_attempts if isinstance(e, RateLimited) else self.o.retry.attempts
            return LabelOutcome("error", error=f"{kind}, gave up after {limit} attempts: {e}", attempts=calls + limit)

    async def _corrective(self, request: OracleRequest, completion: Completion, outcome: LabelOutcome,
                          problem: str) -> LabelOutcome:
        """The one corrective retry: show the model its answer and what was wrong with it. When it
        cannot be sent or fails, the label is an 'error' (not 'invalid': a later run retries it)."""
        corrective = dataclasses.replace(request,
                                         followups=((completion.text or "", self.filt.corrective_message(problem)),))
        reserve = worst_case_cost(self.spec, corrective)
        failed = dict(status="error", scores=None, content_type=None, evidence=None)
        if self.stopping:
            why_not = f"the run stopped ({self.summary.stopped_reason})"
        elif not self.budget.try_reserve(reserve):
            why_not = "--max-cost reached"
        else:
            why_not = None
        if why_not:
            return dataclasses.replace(outcome, **failed, error=f"{outcome.error}; corrective retry not sent: {why_not}")
        try:
            completion2, calls2 = await self._priced_call(corrective, reserve)
        except (TransientError, RateLimited, Abort) as e:
            return dataclasses.replace(outcome, **failed,
                                       error=clip(f"{outcome.error}; corrective retry failed: {e or 'run stopped'}"))
        second, _ = outcome_from_completion(self.filt, self.spec, completion2, corrective=True, first_problem=problem)
        second.attempts = calls2
        self._count_answer(second.status == "ok", second.error, second.raw_response)
        return merge_outcomes(outcome, second)

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
        s.add_usage(outcome)
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
        except (Spilled, WriterStopped, Abort):
            pass  # the lease expires, or dies with this process

    def _stop(self, reason: str, message: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.summary.stopped_reason = reason
            self.summary.stopped_message = message
        self.changed.set()

    def _stop_budget(self, which: str, reserve: float) -> None:
        self._stop(which, self.budget.stop_message(which, reserve, self.filt.id, self.spec.name))

    async def _worker(self) -> None:
        while True:
            try:
                got = await self._next_unit()
            except (Abort, Spilled, WriterStopped):
                return
            if got is None:
                return
            unit, primary, request, reserve = got
            stored = False
            try:
                self.summary.requested += 1
                outcome = await self._label(request, reserve)
                await self._store(unit, outcome)
                stored = True
                if outcome.status == "ok" and unit.repeat == 0:
                    self.summary.ok_total += 1
                    if self.o.target_valid is not None:
                        self.queued.extend((_Unit(unit.article_id, r, unit.title, unit.text), False)
                                           for r in range(1, self.o.repeats)
                                           if self.existing.get((unit.article_id, r)) not in FINAL_STATUSES)
                self._tick()
            except Abort:
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
        done = s.ok_total if self.o.target_valid is not None else s.ok + s.invalid + s.error
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

    def _progress_bar(self):
        from tqdm import tqdm
        target = self.o.target_valid
        if target is not None:
            total, initial = target, min(self.summary.ok_total, target)
        else:
            total = sum(1 for a in self.article_ids for r in range(self.o.repeats)
                        if self.existing.get((a, r)) not in FINAL_STATUSES)
            initial = 0
        return tqdm(total=total, initial=initial, desc=f"label {self.spec.name}", unit="label", file=sys.stderr,
                    dynamic_ncols=True, smoothing=0.05)

    async def run(self) -> LabelRunSummary:
        loop = asyncio.get_running_loop()
        owner, ttl = self.owner, self.o.lease_ttl_s
        self.writer = await loop.run_in_executor(
            None, lambda: DbWriter(self.db_path, heartbeat=lambda conn: renew(conn, owner, self.run_id, ttl)))
        self.writer.open_inline()
        if self.o.progress:
            self.bar = self._progress_bar()
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
            s = self.summary
            s.writer_cpu_s, s.transactions, s.calls = writer.cpu_s, writer.transactions, self.caller.calls
            s.skipped_existing += self.counts.skipped_existing
            s.seconds = time.perf_counter() - self.started
        if self.fatal is not None:
            raise self.fatal
        for r in results:  # a bug in a worker is a bug: surface it
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r
        return self.summary


def label_articles(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Iterable[str],
                   options: RunOptions | None = None, *, oracle: Oracle | None = None, **settings) -> LabelRunSummary:
    """Label `article_ids` (in this order) with the oracle `spec`, storing every answer in gt.db.
    The run's settings are `options` (a RunOptions), with any of its fields given as keywords on
    top (`label_articles(conn, filt, spec, ids, target_valid=100, max_cost=5.0)`). An `oracle`
    passed in is used instead of the registry's and stays open for the caller.

    Only what is missing for (filter, oracle, prompt hash, repeat) is labelled, and every unit is
    claimed in gt.db first, so a label is never paid twice, across processes too. With
    `target_valid`, articles are taken in order until that many articles have a valid repeat-0 label
    (and each of them its `repeats`); without it every article gets every repeat. Stops cleanly
    (summary.stopped_reason) on a spent quota or budget, a tripped circuit breaker or a database
    locked past `db_patience_s`; raises FatalError (auth, bad request) and the registry's
    MissingKey before any call. Ctrl-C marks the run 'stopped' and re-raises KeyboardInterrupt."""
    o = dataclasses.replace(options or RunOptions(), **settings)
    if o.retry is None:
        o = dataclasses.replace(o, retry=RetryPolicy())
    if o.repeats < 1 or o.concurrency < 1:
        raise ValueError("repeats and concurrency must be at least 1")
    if o.timeout is not None:
        spec = dataclasses.replace(spec, timeout_s=float(o.timeout))
    owns_oracle = oracle is None
    if oracle is None and spec.provider == "replay":
        from gt.oracles.replay import ReplayOracle
        oracle = ReplayOracle(spec, replay_answers(conn, filt, spec.model))
    elif oracle is None:
        from gt.oracles.registry import make_oracle
        oracle = make_oracle(spec)  # raises MissingKey before any work
    store.register_filter(conn, filt)
    for note in apply_spills(conn, db_file(conn), {filt.id: filt}):
        print(note, file=sys.stderr)

    async def main():
        return await _Run(conn, filt, spec, oracle, article_ids, o, owns_oracle=owns_oracle).run()

    return asyncio.run(main())
