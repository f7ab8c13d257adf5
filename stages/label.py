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

The sync engine (`labelling.label_articles`, which calibrate also runs), the batch engine
(stages/label_batch.py) and what both share (plan, request, judgement, ledger, leases, writer,
breaker) live outside this file; this is the stage's command line, dry run and --status.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stages import picking, store
from stages.filters import Filter, FilterError, load_filter
from stages.labelling import (CHARS_PER_TOKEN, DB_PATIENCE_S, FINAL_STATUSES, RESERVE_BYTES_PER_TOKEN,  # noqa: F401
                              LabelOutcome, LabelRunSummary, RetryPolicy, RunOptions, apply_spills, article_text,
                              build_request, eligible_article_ids, existing_labels, expected_output_tokens,
                              format_duration, judge_answer, label_articles, merge_outcomes, outcome_from_completion,
                              plan_items, record_completion, run_state, scrub_secrets, store_outcome,
                              worst_case_cost)
from stages.oracles.base import FatalError, OracleSpec
from stages.oracles.replay import replay_priced
from stages.oracles.ratelimit import RateLimiter

__all__ = ["label_articles", "LabelRunSummary", "RetryPolicy", "RunOptions", "estimate_run", "main",
           # the shared pieces, re-exported for callers of the label stage's API
           "CHARS_PER_TOKEN", "FINAL_STATUSES", "RESERVE_BYTES_PER_TOKEN", "LabelOutcome", "build_request",
           "eligible_article_ids", "existing_labels", "judge_answer", "merge_outcomes", "outcome_from_completion",
           "record_completion", "scrub_secrets", "store_outcome", "worst_case_cost"]

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
    p.add_argument("--pick", choices=("random", "gaps", "uncertain", "ids"), default="random",
                   help="which articles to buy: random (the seeded sample, default); gaps (a scorer fitted on this "
                        "oracle's labels so far predicts the unlabelled articles, and the picks fill the (dimension, "
                        "score bin) cells the labels leave short, with --explore-share of them random); uncertain "
                        "(where the scorer's ensemble disagrees most); ids (exactly the articles in --ids-file). "
                        "Every pick is recorded in gt.db with why (tables pick_rounds, label_picks)")
    p.add_argument("--pick-count", type=int, default=None, metavar="N",
                   help="with --pick gaps|uncertain: how many articles to pick (default: --target-count minus the "
                        "valid labels this oracle already has)")
    p.add_argument("--explore-share", type=float, default=None, metavar="S",
                   help=f"share of a gaps/uncertain pick taken uniformly at random (default "
                        f"{picking.DEFAULT_EXPLORE_SHARE:g}): keeps a wrong scorer from starving a region, and "
                        f"measures what random buying finds")
    p.add_argument("--ids-file", default=None, metavar="FILE",
                   help="with --pick ids: the article ids to label, one per line (or JSONL with an id field)")
    p.add_argument("--no-student", action="store_true",
                   help="with --pick gaps: always fit the probe, even when a student's predictions cover the pool")
    p.add_argument("--embed-cache", default=None, metavar="PATH",
                   help="the probe's embedding cache (default data/cache/embeddings.db; 'none' for no cache)")
    p.add_argument("--replay-price", default=None, metavar="IN,OUT",
                   help="with --llm replay/<oracle>: USD per 1M input and output tokens (default: oracles.yaml's "
                        "replay/<model> entry)")
    p.add_argument("--status", action="store_true",
                   help="show spend per run, per oracle and in total, each run's state and open batch jobs, then exit")
    add_batch_arguments(p)   # --batch-retry, --batch-rounds, --batch-poll, --batch-max-poll, --batch-no-wait
    return p


def _fail(msg: str, code: int = 1) -> int:
    print("error: " + " ".join(msg.split()), file=sys.stderr)  # one line, whatever the provider wrote
    return code


def _ingest(conn: sqlite3.Connection, sources: list[str], filt: Filter) -> str:
    """--source: ingest first (idempotent: records already in gt.db are skipped)."""
    from stages.ingestion import expand_sources, ingest_files
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
    if args.replay_price is not None:
        try:
            spec = replay_priced(spec, args.replay_price)
        except ValueError as e:
            return _fail(str(e), 2)
    problem = pick_usage_problem(args)
    if problem:
        return _fail(problem, 2)

    try:
        return _run_command(args, argv, filt, spec)
    except store.FilterMismatch as e:
        return _fail(str(e), 2)
    except (store.StoreError, sqlite3.Error) as e:
        return _fail(store.describe_db_error(e, args.db))


def pick_usage_problem(args: argparse.Namespace) -> str | None:
    if args.pick_count is not None and args.pick_count < 1:
        return f"--pick-count must be at least 1, got {args.pick_count}"
    if args.explore_share is not None and not 0 <= args.explore_share <= 1:
        return f"--explore-share must lie in 0-1, got {args.explore_share}"
    if args.pick == "ids" and not args.ids_file:
        return "--pick ids needs --ids-file FILE (one article id per line)"
    if args.ids_file and args.pick != "ids":
        return "--ids-file is read with --pick ids only"
    if args.pick in ("gaps", "uncertain") and args.pick_count is None and args.target_count is None:
        return f"--pick {args.pick} needs --pick-count N or --target-count N (how many labels to buy)"
    if args.pick != "random" and args.repeats != 1:
        return "--pick gaps|uncertain|ids labels repeat 0 only; run --repeats on a random sample"
    return None


def choose_picks(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str],
                 args: argparse.Namespace, *, record: bool) -> picking.Picks | None:
    """--pick gaps|uncertain|ids: the articles this run buys (resuming an unfinished round first), or
    None when the target is already met."""
    key = picking.LabelKey(filt.id, spec.name, filt.prompt_sha256)
    if args.pick != "ids":
        resumed = picking.open_round(conn, key, args.pick)
        if resumed is not None:
            return resumed
    n = args.pick_count
    if n is None and args.pick != "ids":
        n = args.target_count - len(picking.labelled(conn, filt, key))
        if n <= 0:
            return None
    cache = None if args.embed_cache == "none" else (Path(args.embed_cache) if args.embed_cache else None)
    if cache is None and args.embed_cache != "none":
        from stages.embeddings import DEFAULT_CACHE
        cache = DEFAULT_CACHE
    share = picking.DEFAULT_EXPLORE_SHARE if args.explore_share is None else args.explore_share
    picks = picking.plan_picks(conn, filt, key, args.pick, ids, n or 0, seed=args.seed, explore_share=share,
                               cache=cache, ids_file=args.ids_file, use_student=not args.no_student, progress=True)
    if record and picks.article_ids:
        picking.record_round(conn, key, picks, requested=n or len(picks.article_ids), seed=args.seed)
    return picks


def _apply_picks(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], args: argparse.Namespace,
                 *, record: bool) -> int | tuple[list[str], argparse.Namespace]:
    """The picked articles and the arguments to label exactly them, or an exit code."""
    try:
        picks = choose_picks(conn, filt, spec, ids, args, record=record)
    except picking.PickError as e:
        return _fail(str(e), 1)
    if picks is None:
        print(f"nothing to pick: {spec.name} already has {args.target_count} or more valid labels of {filt.id} "
              f"(raise --target-count, or pass --pick-count N)")
        return 0
    print(("dry run, not recorded: " if not record else "") + picking.describe(picks))
    if not picks.article_ids:
        print("nothing to label: every article picked or listed already has a label")
        return 0
    return picks.article_ids, argparse.Namespace(**{**vars(args), "target_count": None})


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
        if args.pick != "random":
            picked = _apply_picks(conn, filt, spec, ids, args, record=False)
            if isinstance(picked, int):
                return picked
            ids, args = picked
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
    if args.pick != "random":
        for n in notes:
            print(n)
        notes = []
        picked = _apply_picks(conn, filt, spec, ids, args, record=True)
        if isinstance(picked, int):
            return picked
        ids, args = picked

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
