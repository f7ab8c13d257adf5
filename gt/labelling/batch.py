"""The label stage's batch engine (`python -m stages.label --mode batch`): Gemini batch mode, Anthropic Message
Batches and the OpenAI Batch API, at the providers' batch prices (half the sync price).

One label run in batch mode:
  1. plans the (article, repeat) units still missing a label for (filter, oracle, prompt hash),
     exactly as the sync stage would, leaving out units already inside an open batch job;
  2. splits them by the provider's limits (requests and bytes per batch) and records every job in
     gt.db's `batch_jobs` as 'preparing', with its requests ([[custom_id, article_id, repeat], ...]),
     in one transaction, before anything is sent;
  3. submits each job with the same prompt, schema and request parameters as a sync call (the
     provider module's own request builder) and records the remote id at once ('submitted');
  4. polls with backoff, and when a job ends stores every answer through `ledger.record_completion`
     (same validation, batch prices, cached token counts), an 'error' label for each item that
     failed or expired, then closes the job ('collected', or the remote end state);
  5. retries the failed and expired items (`--batch-retry batch`: a new batch, up to
     --batch-rounds rounds; `sync`: the sync engine; `none`: leave them for the next run).

Restart safety: the process can be killed at any point. A job with a remote id is polled, never
resubmitted. A 'preparing' job that was never sent (no submitted_at) is simply sent. A job that was
being sent when the process died (submitted_at set, no remote id) is looked up at the provider
before anything is resent: Gemini by the job's display name and OpenAI by its metadata tag (both
carry the tag `gt-<job id>-<hash>`); Anthropic batches carry no name or metadata, so a batch created
within a minute of the attempt with the same request count, not recorded by another job, is taken
as ours, and only when none is found is the job resent. Collecting is idempotent (labels are
unique per key), so a crash while storing results only repeats the storing.

Prompt caching: the rubric is the prompt's static prefix (Filter.prompt_parts) and the article
comes last; Anthropic requests mark the rubric `cache_control: ephemeral`; Gemini and OpenAI cache
prefixes implicitly. Cached token counts come back per item and are stored in labels.cached_tokens
and priced at the cache-read price (OracleSpec.cost with batch=True).

The jobs as gt.db records them, and their planning and splitting, are gt/labelling/batch_jobs.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from gt.core import errors, store
from gt.labelling.batch_jobs import (CLOSED_STATES, COLLECTED, RUNNING, SUBMITTED, create_jobs, epoch, failed_units,
                               job_owner, job_tag, job_units, now_iso, open_jobs, plan_units, request_for, set_job,
                               split_jobs)
from gt.core.filters import Filter
from gt.labelling.sync import DEFAULT_CONCURRENCY, label_articles
from gt.labelling.leases import LabelKey, owner_id
from gt.labelling.ledger import LabelOutcome, Usage, record_completion, recorded_spend, scrub_secrets, store_outcome
from gt.labelling.planning import existing_labels, worst_case_cost
from gt.oracles.base import FatalError, OracleError, OracleSpec, QuotaExhausted, RateLimited, TransientError
from gt.oracles import batch as batch_services
from gt.oracles.batch import (REMOTE_ENDED, BatchAdapter, BatchUnavailable, ItemResult, JobNotFound, RemoteState,
                                  check_batch_support, limits, make_adapter)

# ---- the run --------------------------------------------------------------------------------------

@dataclass
class BatchSummary(Usage):
    run_id: int | None = None
    jobs_submitted: int = 0        # sent to the provider by this process
    jobs_resumed: int = 0          # found open in gt.db (submitted earlier) and polled
    jobs_adopted: int = 0          # found at the provider by tag after a crash mid-submit
    jobs_collected: int = 0
    ok: int = 0
    invalid: int = 0
    error: int = 0                 # items that failed or expired (stored as 'error', retried)
    retried_batch: int = 0
    retried_sync: int = 0
    prefiltered: int = 0
    polls: int = 0
    seconds: float = 0.0
    waiting: int = 0               # jobs left open (--batch-no-wait, or interrupted)
    rounds: int = 0
    budget_left_out: int = 0       # units not sent because of --max-cost
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BatchOptions:
    repeats: int = 1
    target_valid: int | None = None
    retry: str = "batch"           # batch | sync | none
    rounds: int = 3                # batch rounds at most (the first one included)
    poll_s: float = 30.0           # first poll interval; grows x1.5 up to max_poll_s
    max_poll_s: float = 600.0
    wait: bool = True              # False: submit, record, return (a later run collects)
    seed: int | None = None
    params: dict | None = None
    progress: bool = True
    concurrency: int = DEFAULT_CONCURRENCY          # for --batch-retry sync
    max_cost: float | None = None  # USD: never submit jobs whose worst-case cost could pass it
    max_total_cost: float | None = None  # USD: nor take all spend recorded for (filter, oracle) past it


class BatchRun:
    def __init__(self, conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, adapter: BatchAdapter,
                 article_ids: Sequence[str], options: BatchOptions):
        self.conn, self.filt, self.spec, self.adapter = conn, filt, spec, adapter
        self.article_ids = list(article_ids)
        self.o = options
        self.summary = BatchSummary()
        self.max_requests, self.max_bytes = limits(spec, adapter)
        self.bar = None
        self.reserved = 0.0            # worst-case USD of the jobs this process submitted (--max-cost)
        self.started = time.perf_counter()

    # -- one job ---------------------------------------------------------------------------------
    def _open_run(self) -> int:
        if self.summary.run_id is None:
            self.summary.run_id = store.start_run(
                self.conn, purpose="label", filt=self.filt, oracle=self.spec.name, provider=self.spec.provider,
                model=self.spec.model, mode="batch", params=self.o.params, seed=self.o.seed, owner=owner_id())
        return self.summary.run_id

    def _row(self, job_id: int) -> sqlite3.Row:
        return self.conn.execute(
            """SELECT j.*, r.started_at AS run_started_at FROM batch_jobs j JOIN label_runs r ON r.id = j.run_id
               WHERE j.id = ?""", (job_id,)).fetchone()

    async def _submit(self, row: sqlite3.Row) -> bool:
        """Send a 'preparing' job (or adopt the one a killed process already sent). True when it has a
        remote id afterwards; False when the provider asked us to wait (rate limit) or the send failed
        transiently (it stays 'preparing' and is tried again on the next poll)."""
        tag = job_tag(row)
        units = job_units(row)
        try:
            if row["submitted_at"]:   # an earlier process may have sent it before dying: look first
                known = {r[0] for r in self.conn.execute("SELECT remote_id FROM batch_jobs WHERE remote_id IS NOT NULL")}
                found = await self.adapter.find(tag, request_count=len(units), attempted_at=epoch(row["submitted_at"]),
                                                known=known)
                if found:
                    set_job(self.conn, row["id"], remote_id=found, state=SUBMITTED)
                    self.summary.jobs_adopted += 1
                    self._note(f"job {row['id']}: found {found} at {self.spec.provider} (sent before a restart), not "
                               f"resent")
                    return True
            items = [self.adapter.item(cid, request_for(self.conn, self.filt, aid, rep)) for cid, aid, rep in units]
            set_job(self.conn, row["id"], submitted_at=now_iso())   # from here on a restart looks before resending
            remote_id = await self.adapter.submit(items, tag)
        except (RateLimited, TransientError) as e:   # looking or sending: the job stays 'preparing', resumable
            set_job(self.conn, row["id"], error=scrub_secrets(_short(str(e)), self.spec))
            self._note(f"job {row['id']}: not accepted yet ({_short(str(e), 160)}); will try again")
            return False
        set_job(self.conn, row["id"], remote_id=remote_id, state=SUBMITTED, error=None)
        self.summary.jobs_submitted += 1
        self._note(f"job {row['id']}: submitted {len(units)} requests as {remote_id}")
        return True

    async def _collect(self, row: sqlite3.Row, remote: RemoteState) -> None:
        """Store every answer of an ended job, an 'error' label for every failed item, then close it."""
        units = {cid: (aid, rep) for cid, aid, rep in job_units(row)}
        results: list[ItemResult] = []
        if remote.state != "failed":
            try:
                results = await self.adapter.results(row["remote_id"])
            except JobNotFound as e:
                remote = RemoteState("failed", str(e))
        # one transaction for the whole job: a crash while storing stores nothing, so collecting
        # again never adds an answer's cost to the ledger twice
        with store.transaction(self.conn):
            self._store_results(row, remote, units, results)

    def _store_results(self, row: sqlite3.Row, remote: RemoteState, units: dict[str, tuple[str, int]],
                       results: list[ItemResult]) -> None:
        owner = job_owner(row["id"])
        seen: set[str] = set()
        failures: Counter = Counter()
        for res in results:
            if res.custom_id not in units or res.custom_id in seen:
                continue
            seen.add(res.custom_id)
            aid, rep = units[res.custom_id]
            if res.completion is not None:
                outcome = record_completion(self.conn, run_id=row["run_id"], filt=self.filt, spec=self.spec,
                                            article_id=aid, repeat=rep, completion=res.completion, batch=True,
                                            owner=owner)
                self._count(outcome.status, outcome)
            else:
                failures[res.failure or "errored"] += 1
                self._store_error(row, aid, rep, f"batch item {res.failure}: {res.message}")
        why = {"failed": "the batch failed", "expired": "the batch expired before this item ran",
               "cancelled": "the batch was cancelled"}.get(remote.state, "missing from the batch results")
        for cid, (aid, rep) in units.items():
            if cid not in seen:
                failures["missing" if remote.state == "ended" else remote.state] += 1
                self._store_error(row, aid, rep, f"batch item not answered: {why}")
        self.conn.execute("DELETE FROM label_leases WHERE owner = ?", (owner,))
        final = COLLECTED if remote.state == "ended" else remote.state
        note = ", ".join(f"{n} {k}" for k, n in sorted(failures.items())) or None
        set_job(self.conn, row["id"], state=final, completed_at=now_iso(),
             error=scrub_secrets(f"{remote.detail}; {note}" if note else None, self.spec))
        self.summary.jobs_collected += 1
        answered = len(units) - sum(failures.values())
        self._note(f"job {row['id']} ({row['remote_id']}): {remote.state}, {answered} answers stored"
                   + (f", {note}" if note else ""))
        self._finish_run_if_done(row["run_id"])

    def _store_error(self, row: sqlite3.Row, aid: str, rep: int, message: str) -> None:
        store_outcome(self.conn, run_id=row["run_id"], filt=self.filt, oracle=self.spec.name, article_id=aid,
                      repeat=rep, outcome=LabelOutcome("error", error=scrub_secrets(_short(message), self.spec),
                                                       attempts=1), owner=job_owner(row["id"]))
        self._count("error")

    def _count(self, status: str, usage: Usage | None = None) -> None:
        s = self.summary
        setattr(s, status, getattr(s, status) + 1)
        if usage is not None:
            s.add_usage(usage)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"cost=${s.cost_usd:.4f} invalid={s.invalid} failed={s.error}", refresh=False)

    def _finish_run_if_done(self, run_id: int) -> None:
        """A run is done when none of its jobs is open (an earlier, killed run's too)."""
        left = self.conn.execute(
            f"SELECT COUNT(*) FROM batch_jobs WHERE run_id = ? AND state NOT IN ({','.join('?' * len(CLOSED_STATES))})",
            (run_id, *CLOSED_STATES)).fetchone()[0]
        if not left:
            store.finish_run(self.conn, run_id, "done")

    def _note(self, message: str) -> None:
        message = scrub_secrets(message, self.spec) or ""   # provider messages may echo request details
        self.summary.notes.append(message)
        if self.o.progress:
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)

    # -- waiting ------------------------------------------------------------------------------------
    async def _wait(self, once: bool = False) -> None:
        """Poll every open job until all have ended and been collected (submitting 'preparing' ones
        as the provider accepts them). The interval grows x1.5 per round up to max_poll_s. With
        `once`, one pass: what has ended is collected, the rest stays open for a later run."""
        interval = self.o.poll_s
        while True:
            rows = open_jobs(self.conn, self.filt, self.spec)
            if not rows:
                return
            for row in rows:
                if not row["remote_id"]:
                    if not await self._submit(row):
                        continue
                    row = self._row(row["id"])
                try:
                    remote = await self.adapter.poll(row["remote_id"])
                except JobNotFound as e:
                    remote = RemoteState("failed", str(e))
                except (RateLimited, TransientError) as e:
                    self._note(f"job {row['id']}: status not available ({_short(str(e), 160)}); polling again")
                    continue
                self.summary.polls += 1
                if remote.state in REMOTE_ENDED:
                    try:
                        await self._collect(self._row(row["id"]), remote)
                    except (RateLimited, TransientError) as e:
                        self._note(f"job {row['id']}: results not available yet ({_short(str(e), 160)}); trying again")
                elif remote.state == "running" and row["state"] != RUNNING:
                    set_job(self.conn, row["id"], state=RUNNING)
            if once or not open_jobs(self.conn, self.filt, self.spec):
                return
            if self.bar is not None:
                self.bar.set_description_str(f"batch {self.spec.name} (next poll in {interval:.0f}s)", refresh=True)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.o.max_poll_s)

    # -- rounds -------------------------------------------------------------------------------------
    def _plan_round(self) -> int:
        in_jobs = {(aid, rep) for row in open_jobs(self.conn, self.filt, self.spec) for _, aid, rep in job_units(row)}
        units, prefiltered = plan_units(self.conn, self.filt, self.spec, self.article_ids, repeats=self.o.repeats,
                                        target_valid=self.o.target_valid, in_jobs=in_jobs)
        self.summary.prefiltered = max(self.summary.prefiltered, prefiltered)
        if not units:
            return 0
        budget = None if self.o.max_cost is None else max(self.o.max_cost - self.reserved, 0.0)
        if self.o.max_total_cost is not None:
            # what gt.db records (collected items included) plus the worst case of jobs still open
            recorded = recorded_spend(self.conn, self.filt.id, self.spec.name)
            left = max(self.o.max_total_cost - recorded - self._open_reserve(), 0.0)
            budget = left if budget is None else min(budget, left)
        chunks, reserved, left_out = split_jobs(self.conn, self.filt, self.spec, self.adapter, units,
                                                self.max_requests, self.max_bytes, budget)
        self.reserved += reserved
        if left_out:
            self.summary.budget_left_out = left_out
            limit = " and ".join(x for x in (
                f"--max-cost ${self.o.max_cost:g} (this command's own limit)" if self.o.max_cost is not None else "",
                f"--max-total-cost ${self.o.max_total_cost:g} (all recorded spend)"
                if self.o.max_total_cost is not None else "") if x)
            self._note(f"{left_out} label(s) not sent: their worst-case cost would pass {limit}; raise it and run "
                       f"the same command to send them")
        if chunks:
            create_jobs(self.conn, self._open_run(), self.spec.provider, chunks, key=LabelKey.of(self.filt, self.spec.name))
        return sum(len(c) for c in chunks)

    def _open_reserve(self) -> float:
        """Worst-case cost at batch prices of the units inside open jobs (not yet in the ledger)."""
        total = 0.0
        for row in open_jobs(self.conn, self.filt, self.spec):
            for _, aid, rep in job_units(row):
                try:
                    total += worst_case_cost(self.spec, request_for(self.conn, self.filt, aid, rep), batch=True)
                except LookupError:
                    continue
        return total

    async def run(self) -> BatchSummary:
        resumed = open_jobs(self.conn, self.filt, self.spec)
        self.summary.jobs_resumed = sum(1 for r in resumed if r["remote_id"])
        if resumed:
            self._note(f"resuming {len(resumed)} open batch job(s) recorded in gt.db: "
                       + ", ".join(f"{r['id']} ({r['remote_id'] or 'not sent'})" for r in resumed))
        try:
            while True:
                planned = self._plan_round() if self.summary.rounds < self.o.rounds else 0
                if self.summary.rounds > 0:
                    self.summary.retried_batch += planned
                rows = open_jobs(self.conn, self.filt, self.spec)
                if not rows:
                    break
                self.summary.rounds += 1
                if self.o.progress and self.bar is None:
                    from tqdm import tqdm
                    self.bar = tqdm(total=None, desc=f"batch {self.spec.name}", unit="label", file=sys.stderr,
                                    dynamic_ncols=True)
                if self.bar is not None:
                    self.bar.total = self.bar.n + sum(r["request_count"] for r in rows)
                    self.bar.refresh()
                for row in rows:
                    if not row["remote_id"]:
                        await self._submit(row)
                await self._wait(once=not self.o.wait)
                if not self.o.wait or self.o.retry != "batch":
                    break
        finally:
            if self.bar is not None:
                self.bar.close()
            self.summary.waiting = len(open_jobs(self.conn, self.filt, self.spec))
            self.summary.seconds = time.perf_counter() - self.started
        return self.summary


def run_batch(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str],
              options: BatchOptions, *, adapter: BatchAdapter | None = None) -> BatchSummary:
    """Label `article_ids` through the provider's batch service (see the module docstring).
    Raises BatchUnavailable, the registry's MissingKey, FatalError (the provider rejected a job)."""
    check_batch_support(spec)
    store.register_filter(conn, filt)
    own = adapter is None
    adapter = adapter or make_adapter(spec)
    engine = BatchRun(conn, filt, spec, adapter, article_ids, options)

    async def main() -> BatchSummary:
        try:
            return await engine.run()
        finally:
            if own:
                await adapter.aclose()

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:
        if engine.summary.run_id is not None:
            store.finish_run(conn, engine.summary.run_id, "stopped")
        raise
    if options.wait and options.retry == "sync":
        retry = failed_units(conn, filt, spec)
        if retry:
            ids = list(dict.fromkeys(aid for aid, _ in retry))
            left = None if options.max_cost is None else max(options.max_cost - engine.reserved, 1e-9)
            sync = label_articles(conn, filt, spec, ids, purpose="label", repeats=options.repeats,
                                  concurrency=options.concurrency, seed=options.seed, params=options.params,
                                  progress=options.progress, max_cost=left, max_total_cost=options.max_total_cost)
            summary.retried_sync = len(retry)
            summary.notes.append(f"{len(retry)} failed batch item(s) retried as sync requests (run {sync.run_id}): "
                                 f"{sync.ok} ok, {sync.invalid} invalid, {sync.error} error, ${sync.cost_usd:.4f}")
    if summary.run_id is not None and not summary.waiting:
        store.finish_run(conn, summary.run_id, "done")
    return summary


# ---- --status -------------------------------------------------------------------------------------

def live_status_lines(conn: sqlite3.Connection) -> list[str]:
    """What each provider says now about the open jobs in gt.db (for `make label-status`). Jobs of
    an oracle whose key is not set are listed as not polled. Only the job state is written back
    (submitted -> running); results are collected by the label run, never here."""
    rows = conn.execute(
        f"""SELECT j.id, j.run_id, j.remote_id, j.state, j.request_count, r.oracle FROM batch_jobs j
            JOIN label_runs r ON r.id = j.run_id
            WHERE j.state NOT IN ({",".join("?" * len(CLOSED_STATES))}) ORDER BY j.id""", CLOSED_STATES).fetchall()
    if not rows:
        return []
    from gt.oracles import registry
    try:
        known = registry.load_registry()
    except registry.OracleConfigError as e:
        return [f"provider state not polled: {str(e).splitlines()[0]}"]
    out = ["provider state, polled now:"]

    async def poll_all() -> None:
        by_oracle: dict[str, list[sqlite3.Row]] = {}
        for row in rows:
            by_oracle.setdefault(row["oracle"], []).append(row)
        for oracle, jobs in by_oracle.items():
            try:
                spec = registry.resolve(oracle, known)
                registry.check_credentials(spec)
                adapter = make_adapter(spec)
            except (registry.OracleConfigError, BatchUnavailable) as e:
                out.extend(f"  job {j['id']}: not polled ({e})" for j in jobs)
                continue
            try:
                for j in jobs:
                    if not j["remote_id"]:
                        out.append(f"  job {j['id']} ({oracle}): not sent yet; the next `make label MODE=batch` sends it")
                        continue
                    try:
                        remote = await adapter.poll(j["remote_id"])
                    except OracleError as e:
                        out.append(f"  job {j['id']} ({oracle} {j['remote_id']}): could not poll: {_short(str(e), 200)}")
                        continue
                    if remote.state == "running" and j["state"] == SUBMITTED:
                        set_job(conn, j["id"], state=RUNNING)
                    ended = " (ended: run `make label MODE=batch` to collect)" if remote.state in REMOTE_ENDED else ""
                    out.append(f"  job {j['id']} ({oracle} {j['remote_id']}, {j['request_count']} requests): "
                               f"{remote.detail or remote.state}{ended}")
            finally:
                await adapter.aclose()

    asyncio.run(poll_all())
    return out


# ---- for the label step (gt/labelling/label.py) --------------------------------------------------------


def run_batch_command(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str],
                      options: BatchOptions) -> BatchSummary:
    """`--mode batch` of the label stage: run_batch, its failures as the stage's one-line errors
    (errors.UsageError: no batch mode for this oracle; errors.StageError: a missing key, a spent quota, a
    rejected job). Ctrl-C comes through as KeyboardInterrupt: the jobs sent are recorded."""
    from gt.oracles.registry import MissingKey
    try:
        return run_batch(conn, filt, spec, article_ids, options)
    except BatchUnavailable as e:
        raise errors.UsageError(f"{e} (use --mode sync, or add batch prices to oracles.yaml)") from None
    except MissingKey as e:
        raise errors.StageError(str(e)) from None
    except QuotaExhausted as e:
        raise errors.StageError(f"{scrub_secrets(str(e), spec)}; {e.resume_hint or 're-run the same command to resume'}") \
            from None
    except FatalError as e:
        raise errors.StageError(f"{spec.name} rejected a batch: {scrub_secrets(str(e), spec)} (jobs already sent are "
                             f"recorded in gt.db and will be collected by the next run; check the key, model id and "
                             f"oracles.yaml)") from None


def missing_labels(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str],
                   summary: BatchSummary, target: int | None, resume: str) -> str | None:
    """After every job was collected: what is missing because items failed or expired, or None."""
    existing = existing_labels(conn, filt, spec.name)
    ids = set(article_ids)
    failed = sum(1 for (a, _), st in existing.items() if st == "error" and a in ids)
    ok_total = sum(1 for a in ids if existing.get((a, 0)) == "ok")
    if target and ok_total < target and failed:
        return (f"target not reached: {target - ok_total} valid label(s) missing ({ok_total}/{target}) after "
                f"{summary.rounds} batch round(s); {failed} item(s) ended as 'error' (failed or expired). Resume "
                f"with: {resume}")
    if not target and failed:
        return (f"{failed} item(s) ended as 'error' (failed or expired) after {summary.rounds} batch round(s), so "
                f"{failed} label(s) are missing. Resume with: {resume}")
    return None


def describe(s: BatchSummary, spec: OracleSpec, filt: Filter, target: int | None) -> str:
    parts = [f"batch mode with {spec.name} ({filt.id}, prompt {filt.prompt_sha256[:12]}) in {s.seconds:.1f}s: "
             f"{s.jobs_submitted} job(s) submitted, {s.jobs_resumed} resumed from gt.db"
             + (f", {s.jobs_adopted} found at the provider after a restart" if s.jobs_adopted else "")
             + f", {s.jobs_collected} collected over {s.rounds} round(s), {s.polls} status polls",
             f"{s.ok} ok, {s.invalid} invalid, {s.error} failed or expired items"
             + (f" ({s.retried_batch} resent in a new batch)" if s.retried_batch else "")
             + (f" ({s.retried_sync} retried as sync requests)" if s.retried_sync else ""),
             f"cost ${s.cost_usd:.4f} at batch prices ({s.input_tokens} input tokens of which {s.cached_tokens} "
             f"cached, {s.output_tokens} output)"]
    if s.prefiltered:
        parts.append(f"{s.prefiltered} skipped by the prefilter")
    if s.budget_left_out:
        parts.append(f"{s.budget_left_out} label(s) not sent: the cost limit was reached (raise it and run again)")
    if s.waiting:
        parts.append(f"{s.waiting} job(s) still open at the provider: run the same command again to collect them "
                     f"({batch_services.TURNAROUND.get(spec.provider, '')})")
    if s.run_id is not None:
        parts.append(f"run {s.run_id}")
    text = "; ".join(parts) + "."
    extra = [n for n in s.notes if "retried as sync" in n]
    return "\n".join([text, *extra])


def _short(text: str, n: int = 500) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
