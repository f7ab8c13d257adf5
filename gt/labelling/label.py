"""The label step: buy labels of articles from an LLM oracle and store every answer in gt.db (step 2
of the workflow: `make label LLM=gemini-pro TARGET=20000 SEED=42`). Which articles: a seeded random
sample (`--pick random`, the default), the ones a scorer says fill the coverage gaps (`gaps`), where
its ensemble disagrees most (`uncertain`), or a listed set (`ids`): gt.labelling.picking.

Concurrency is asyncio; one rate limiter (requests and tokens per minute from oracles.yaml) is
shared by every request. Every unit is claimed in gt.db before it is sent (so two processes on one
gt.db never pay for the same unit) and every answer is stored with its cost in the run's ledger
as it arrives, by a writer thread that never stalls the event loop, so an interrupted run
(Ctrl-C, `kill -9`, a spent daily quota, a budget, a locked database) loses at most the requests
in flight and the same command continues where it stopped. `--target-count` counts valid labels
of (filter, oracle, prompt hash) across every process: articles already labelled ok or invalid are
never paid for twice; 'error' labels are retried. A circuit breaker stops a run whose recent
answers are mostly invalid or failing.

The sync engine (`gt.labelling.sync.label_articles`, which calibrate and the loop also run), the
batch engine (gt/labelling/batch.py) and what both share live beside this file: the plan and the
request (planning), the judgement and the ledger (ledger), leases (leases), the writer (dbwriter),
the circuit breaker (breaker), retries (calls) and the dry run's estimate (estimate). Here:
`LabelOptions`, and `run_label`, which does the work and returns the summary's lines (and the
error, if any); the command (stages/label.py) prints them and exits 0, 1 or 2 (130 after Ctrl-C).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gt import DEFAULT_SEED
from gt.labelling.sync import DEFAULT_CONCURRENCY
from gt.core import errors, store
from gt.labelling import batch as label_batch, picking
from gt.labelling.batch import BatchOptions
from gt.labelling.calls import RetryPolicy
from gt.labelling.dbwriter import apply_spills
from gt.labelling.estimate import dry_run_lines
from gt.core.filters import DEFAULT_FILTER, Filter, load_filter
from gt.labelling.sync import DB_PATIENCE_S, LabelRunSummary, RunOptions, label_articles
from gt.labelling.leases import run_state
from gt.labelling.ledger import (scrub_secrets)
from gt.oracles.base import FatalError, OracleSpec
from gt.oracles.replay import replay_priced
from gt.labelling.planning import (eligible_article_ids,
                             existing_labels)



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


# ---- the options, the result -------------------------------------------------------------------

@dataclass(frozen=True)
class LabelOptions:
    """The label stage's settings: one field per flag of build_parser (its --help says what each does)."""
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    source: list[str] = field(default_factory=list)
    output_dir: str | None = None
    llm: str = "local-embed"
    oracles_file: str | None = None
    target_count: int | None = None
    random_sample: bool = False
    seed: int = DEFAULT_SEED
    concurrency: int = DEFAULT_CONCURRENCY
    max_cost: float | None = None
    max_total_cost: float | None = None
    dry_run: bool = False
    repeats: int = 1
    mode: str = "sync"
    timeout: float | None = None
    max_attempts: int = RetryPolicy.attempts
    max_wait: float = RetryPolicy.max_wait_s
    breaker_window: int = 20
    db_patience: float = DB_PATIENCE_S
    pick: str = "random"
    pick_count: int | None = None
    explore_share: float | None = None
    ids_file: str | None = None
    no_student: bool = False
    embed_cache: str | None = None
    replay_price: str | None = None
    status: bool = False
    batch_retry: str = BatchOptions.retry
    batch_rounds: int = BatchOptions.rounds
    batch_poll: float = BatchOptions.poll_s
    batch_max_poll: float = BatchOptions.max_poll_s
    batch_no_wait: bool = False

    def params(self) -> dict:
        """The settings a label run records in gt.db (label_runs.params_json)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("status", "dry_run", "db")}


class Interrupted(errors.StageError):
    """Ctrl-C during a run: what was stored is kept. Exit 130; the message is printed as it is."""
    exit_code = 130


@dataclass
class LabelResult:
    lines: list[str] = field(default_factory=list)   # the summary, in order: main prints it on stdout
    error: errors.StageError | None = None               # how the command failed after those lines, if it did


def run_label(o: LabelOptions, resume: str = "python -m stages.label") -> LabelResult:
    """The label stage for parsed options: --status, --dry-run, or a sync or batch run that labels
    what is missing (resuming what an earlier run left). Returns the summary's lines and, when the
    command fails after writing some, its error; prints neither (progress bars go to stderr).
    `resume` is the command that continues this one, quoted in the messages that need it."""
    result = LabelResult()
    try:
        _label(o, resume, result.lines)
    except store.FilterMismatch as e:
        result.error = errors.UsageError(str(e))
    except (store.StoreError, sqlite3.Error) as e:
        result.error = errors.StageError(store.describe_db_error(e, o.db))
    except errors.StageError as e:
        result.error = e
    return result


def _label(o: LabelOptions, resume: str, out: list[str]) -> None:
    problem = usage_problem(o)
    if problem:
        raise errors.UsageError(problem)
    if o.status:
        conn = store.connect(o.db, create=False)
        out += status_lines(conn)
        out += label_batch.live_status_lines(conn) or ["no open batch jobs"]
        return
    filt, spec = _filter_and_oracle(o)
    if o.dry_run:
        _dry_run_command(o, filt, spec, out)
        return
    export_path(o.output_dir, filt)   # an export that cannot be written fails now, before anything is paid
    # only ingesting --source may create gt.db; a lock held before the run starts is waited for as long as
    # --db-patience says (the run's own writes keep to it too), then the usual busy timeout
    conn = store.connect(o.db, create=bool(o.source), busy_timeout=o.db_patience)
    notes = _prepare(conn, o, filt)
    conn.execute(f"PRAGMA busy_timeout = {int(store.busy_timeout_s() * 1000)}")
    ids = _eligible(conn, filt, o)
    if o.pick != "random":
        out += notes
        notes = []
        picked = _apply_picks(conn, filt, spec, ids, o, out, record=True)
        if picked is None:
            return
        ids, o = picked
    if o.mode == "batch":
        _batch(conn, filt, spec, ids, o, resume, notes, out)
    else:
        _sync(conn, filt, spec, ids, o, resume, notes, out)


def usage_problem(o: LabelOptions) -> str | None:
    """What is wrong with the numbers given, before anything is read."""
    for flag, value, low in (("--target-count", o.target_count, 1), ("--concurrency", o.concurrency, 1),
                             ("--repeats", o.repeats, 1), ("--max-attempts", o.max_attempts, 1),
                             ("--breaker-window", o.breaker_window, 0)):
        if value is not None and value < low:
            return f"{flag} must be at least {low}, got {value} (pass a positive number)"
    for flag, value in (("--max-cost", o.max_cost), ("--max-total-cost", o.max_total_cost),
                        ("--db-patience", o.db_patience)):
        if value is not None and value <= 0:
            return f"{flag} must be positive, got {value} (pass e.g. {flag} 5)"
    return None


def _filter_and_oracle(o: LabelOptions) -> tuple[Filter, OracleSpec]:
    """The filter package and the oracle's spec (its key checked unless this is a dry run)."""
    from gt.oracles import registry as reg
    filt = load_filter(o.filter)   # a broken package: FilterError, one line per problem (stages/kit.py)
    # a broken oracles.yaml, an unknown oracle, a missing key: the registry's errors (stages/kit.py)
    oracles = reg.load_registry(o.oracles_file) if o.oracles_file else reg.load_registry()
    spec = reg.resolve(o.llm, oracles)
    if not o.dry_run:
        reg.check_credentials(spec)
    if o.timeout is not None:
        spec = dataclasses.replace(spec, timeout_s=o.timeout)
    if o.replay_price is not None:
        try:
            spec = replay_priced(spec, o.replay_price)
        except ValueError as e:
            raise errors.UsageError(str(e)) from None
    problem = pick_usage_problem(o)
    if problem:
        raise errors.UsageError(problem)
    return filt, spec


def pick_usage_problem(o: LabelOptions) -> str | None:
    if o.pick_count is not None and o.pick_count < 1:
        return f"--pick-count must be at least 1, got {o.pick_count}"
    if o.explore_share is not None and not 0 <= o.explore_share <= 1:
        return f"--explore-share must lie in 0-1, got {o.explore_share}"
    if o.pick == "ids" and not o.ids_file:
        return "--pick ids needs --ids-file FILE (one article id per line)"
    if o.ids_file and o.pick != "ids":
        return "--ids-file is read with --pick ids only"
    if o.pick in ("gaps", "uncertain") and o.pick_count is None and o.target_count is None:
        return f"--pick {o.pick} needs --pick-count N or --target-count N (how many labels to buy)"
    if o.pick != "random" and o.repeats != 1:
        return "--pick gaps|uncertain|ids labels repeat 0 only; run --repeats on a random sample"
    return None


# ---- before a run: ingest, spills, the articles, the picks ---------------------------------------

def _prepare(conn: sqlite3.Connection, o: LabelOptions, filt: Filter) -> list[str]:
    """Register the filter, store what earlier runs spilled, ingest --source; the notes to show."""
    note = store.register_filter(conn, filt)
    notes: list[str] = [note] if isinstance(note, str) and note else []
    notes += apply_spills(conn, o.db, {filt.id: filt})
    if o.source:
        try:
            notes.append(_ingest(conn, o.source, filt))
        except FileNotFoundError as e:
            raise errors.UsageError(str(e)) from None
    return notes


def _ingest(conn: sqlite3.Connection, sources: list[str], filt: Filter) -> str:
    """--source: ingest first (idempotent: records already in gt.db are skipped)."""
    from gt.intake.ingestion import ingest_files
    from gt.intake.reading import expand_sources
    files, problems = expand_sources(sources)
    if not files:
        raise FileNotFoundError(problems[0] if problems else f"--source {', '.join(sources)} matches no file")
    summary = ingest_files(conn, sources, filt=filt, progress=True)
    for line in summary.problems[:5]:
        print(f"ingest: {line}", file=sys.stderr)
    rejected = f", {summary.rejected} records rejected (see above)" if summary.rejected else ""
    return (f"ingested {summary.records} records from {summary.files} file(s) ({', '.join(sources)}): "
            f"{summary.inserted} new articles, {summary.already_present} already in gt.db{rejected}")


def _eligible(conn: sqlite3.Connection, filt: Filter, o: LabelOptions) -> list[str]:
    ids = eligible_article_ids(conn, filt, seed=o.seed, random_sample=o.random_sample)
    if not ids:
        raise errors.StageError(f"no articles to label in {o.db} (ingest some first: make ingest "
                             f"SOURCE='data/sample/*.jsonl')")
    return ids


def choose_picks(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str],
                 o: LabelOptions, *, record: bool) -> picking.Picks | None:
    """--pick gaps|uncertain|ids: the articles this run buys (resuming an unfinished round first), or
    None when the target is already met."""
    key = picking.LabelKey(filt.id, spec.name, filt.prompt_sha256)
    if o.pick != "ids":
        resumed = picking.open_round(conn, key, o.pick)
        if resumed is not None:
            return resumed
    n = o.pick_count
    if n is None and o.pick != "ids":
        n = o.target_count - len(picking.labelled(conn, filt, key))
        if n <= 0:
            return None
    from gt.student.embeddings import cache_path
    cache = cache_path(o.embed_cache)
    share = picking.DEFAULT_EXPLORE_SHARE if o.explore_share is None else o.explore_share
    picks = picking.plan_picks(conn, filt, key, o.pick, ids, n or 0, seed=o.seed, explore_share=share,
                               cache=cache, ids_file=o.ids_file, use_student=not o.no_student, progress=True)
    if record and picks.article_ids:
        picking.record_round(conn, key, picks, requested=n or len(picks.article_ids), seed=o.seed)
    return picks


def _apply_picks(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], o: LabelOptions,
                 out: list[str], *, record: bool) -> tuple[list[str], LabelOptions] | None:
    """The picked articles and the options to label exactly them; None when there is nothing to label."""
    try:
        picks = choose_picks(conn, filt, spec, ids, o, record=record)
    except picking.PickError as e:
        raise errors.StageError(str(e)) from None
    if picks is None:
        out.append(f"nothing to pick: {spec.name} already has {o.target_count} or more valid labels of {filt.id} "
                   f"(raise --target-count, or pass --pick-count N)")
        return None
    line = ("dry run, not recorded: " if not record else "") + picking.describe(picks)
    if record:   # what is about to be bought, before the run (progress, on stderr); the summary repeats it
        print(line, file=sys.stderr)
    out.append(line)
    if not picks.article_ids:
        out.append("nothing to label: every article picked or listed already has a label")
        return None
    return picks.article_ids, dataclasses.replace(o, target_count=None)


# ---- the runs ------------------------------------------------------------------------------------

def _sync(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], o: LabelOptions, resume: str,
          notes: list[str], out: list[str]) -> None:
    from gt.oracles.registry import MissingKey
    options = RunOptions(purpose="label", repeats=o.repeats, concurrency=o.concurrency, max_cost=o.max_cost,
                         max_total_cost=o.max_total_cost, target_valid=o.target_count, seed=o.seed,
                         params=o.params(), progress=True, timeout=o.timeout,
                         retry=RetryPolicy(attempts=o.max_attempts, max_wait_s=o.max_wait), breaker_window=o.breaker_window,
                         db_patience_s=o.db_patience)
    try:
        summary = label_articles(conn, filt, spec, ids, options)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: labels stored so far are kept; run the same command to continue") from None
    except MissingKey as e:
        raise errors.StageError(str(e)) from None
    except FatalError as e:
        raise errors.StageError(f"{spec.name} refused the request: {scrub_secrets(str(e), spec)} (nothing more was "
                             f"sent; check the key, model id and oracles.yaml)") from None
    out.append(_describe(summary, spec, filt, o.target_count, o.repeats))
    out += notes
    _sync_verdict(conn, filt, spec, ids, o, summary, resume, out)


def _sync_verdict(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], o: LabelOptions,
                  summary: LabelRunSummary, resume: str, out: list[str]) -> None:
    """After a sync run: the export and where the labels are; an error when labels are missing."""
    reason = summary.stopped_reason
    if reason == "locked":
        kept = (f"; {summary.spilled} received answer(s) are kept in {summary.spill_path} and will be stored by the "
                f"next run" if summary.spilled else "; every received answer was written")
        raise errors.StageError(f"{summary.stopped_message}{kept}; when the lock is gone, resume with: {resume}")
    if reason == "db":
        raise errors.StageError(summary.stopped_message)
    if o.output_dir:
        out.append(export(conn, filt, spec, o.output_dir))
    out.append(f"database: {o.db} (sqlite3 {o.db} 'select * from {filt.view_name} limit 3')")
    if reason == "quota":
        raise errors.StageError(f"stopped: {summary.stopped_message}")
    if reason == "breaker":
        raise errors.StageError(f"{summary.stopped_message}. Fix the cause (oracle, prompt or filter), then resume "
                             f"with: {resume}")
    if reason in ("budget", "total_budget"):
        out.append(summary.stopped_message)
        return
    failed = missing_error_units(conn, filt, spec, ids)
    # what gt.db holds now, every process on it together (this one's count misses what the others stored)
    existing = existing_labels(conn, filt, spec.name)
    group = sum(1 for a in ids if existing.get((a, 0)) == "ok")
    if o.target_count and summary.ok_total < o.target_count <= group:
        out.append(f"target reached: {group}/{o.target_count} valid labels in {o.db}, {summary.ok} of them from this "
                   f"process and the rest from others labelling the same gt.db")
    elif o.target_count and group < o.target_count:
        short = o.target_count - group
        if failed:
            raise errors.StageError(f"target not reached: {short} valid label(s) missing ({group}/"
                                 f"{o.target_count}); {failed} unit(s) ended as 'error' (calls failed). Resume "
                                 f"with: {resume}")
        out.append(f"target not reached: {group}/{o.target_count} valid labels, and every one of the "
                   f"{len(ids)} eligible articles in {o.db} has been tried (ingest more with --source)")
    elif failed and o.target_count is None:
        raise errors.StageError(f"{failed} unit(s) ended as 'error' (calls failed), so {failed} label(s) are missing; "
                             f"resume with: {resume}")


def _batch(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], o: LabelOptions, resume: str,
           notes: list[str], out: list[str]) -> None:
    out += notes
    if o.batch_rounds < 1:
        raise errors.UsageError("--batch-rounds must be at least 1 (pass e.g. --batch-rounds 3)")
    if o.batch_poll <= 0 or o.batch_max_poll <= 0:
        raise errors.UsageError("--batch-poll and --batch-max-poll must be positive seconds")
    options = label_batch.BatchOptions(
        repeats=o.repeats, target_valid=o.target_count, retry=o.batch_retry, rounds=o.batch_rounds,
        poll_s=o.batch_poll, max_poll_s=max(o.batch_max_poll, o.batch_poll), wait=not o.batch_no_wait, seed=o.seed,
        params=o.params(), progress=True, concurrency=o.concurrency, max_cost=o.max_cost,
        max_total_cost=o.max_total_cost)
    try:
        summary = label_batch.run_batch_command(conn, filt, spec, ids, options)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: every submitted batch is recorded in gt.db (make label-status); run the same "
                          "command to keep polling and collect it, nothing is resubmitted") from None
    out.append(label_batch.describe(summary, spec, filt, o.target_count))
    if o.output_dir and not summary.waiting:
        out.append(export(conn, filt, spec, o.output_dir))
    out.append(f"database: {o.db} (open batch jobs: python -m stages.label --status --db {o.db})")
    if not summary.waiting and not summary.budget_left_out:
        problem = label_batch.missing_labels(conn, filt, spec, ids, summary, o.target_count, resume)
        if problem:
            raise errors.StageError(problem)


def export_path(output_dir: str | None, filt: Filter) -> Path | None:
    """Where --output-dir's export goes (DIR/<filter name>/labeled_articles.jsonl), its folder made
    and checked writable; a path that cannot hold it is a UsageError before the first request."""
    if not output_dir:
        return None
    path = Path(output_dir) / filt.name / "labeled_articles.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise errors.UsageError(f"--output-dir {output_dir}: cannot make {path.parent} ({e.strerror or e}): pass a "
                                f"folder for the export; nothing was sent") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise errors.UsageError(f"--output-dir {output_dir}: {path} cannot be written: pass a writable folder for "
                                f"the export; nothing was sent")
    return path


def export(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, output_dir: str) -> str:
    from gt.intake.labeled_file import export_labeled_file
    path = export_path(output_dir, filt)
    n = export_labeled_file(conn, filt, path, oracle=spec.name, prompt_sha256=filt.prompt_sha256)
    return f"exported {n} valid labels to {path}"


def resume_command(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m stages.label " + shlex.join(str(a) for a in args)


def missing_error_units(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str]) -> int:
    """Units of these articles whose last label is 'error' (a later run retries them)."""
    ids = set(article_ids)
    return sum(1 for (a, _), st in existing_labels(conn, filt, spec.name).items() if st == "error" and a in ids)


# ---- what the summary says -----------------------------------------------------------------------

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


# ---- --dry-run -----------------------------------------------------------------------------------

def _dry_run_command(o: LabelOptions, filt: Filter, spec: OracleSpec, out: list[str]) -> None:
    conn = store.connect(o.db, readonly=True, create=False)
    if o.source:
        out.append("dry run: --source is not ingested (a dry run writes nothing); the estimate covers what gt.db holds")
    note = store.check_filter(conn, filt)   # an edited prompt under the same version: refused here too
    if note:
        out.append(note)
    ids = _eligible(conn, filt, o)
    pool_valid = None
    if o.pick != "random":
        existing = existing_labels(conn, filt, spec.name)
        pool_valid = sum(1 for a in ids if existing.get((a, 0)) == "ok")   # the picks have none; the pool may
        picked = _apply_picks(conn, filt, spec, ids, o, out, record=False)
        if picked is None:
            return
        ids, o = picked
    out += dry_run_lines(conn, filt, spec, ids, repeats=o.repeats, target=o.target_count, db=o.db,
                         pool_valid=pool_valid)

