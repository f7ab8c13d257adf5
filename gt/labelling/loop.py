"""Loop stage: buy labels in rounds, refitting the scorer between them (`make loop ROUNDS=3
PER_ROUND=2000 PICK=gaps`).

Each round picks PER_ROUND articles by --pick (gt/labelling/picking.py: the probe is refitted on every
label bought so far from this oracle), records the picks in gt.db, and labels them through the
sync label engine (gt/labelling/sync.py: leases, ledger, budget, breaker). A first round with too
few labels to fit a scorer is a random round, and says so. Rounds belong to the loop named by
--name (default: '<pick>-<per round>x<rounds>-seed<seed>'); a loop run again after a kill skips the
finished rounds, resumes the open round's unasked picks (no pick is made twice, no label paid
twice), and goes on.

Writes <output-dir>/loop_<filter>_<oracle>.md and .json: per round the labels bought, their cost,
the coverage objective of the labelled set (cells filled up to the even quota), the articles found
in the outer bins (some dimension scoring below 4 or at least 8) and per dollar, beside what the
same spend at random would have found: the outer-bin rate of the round's random (explore) picks,
times the labels bought, with the number of random picks it rests on.
"""
from __future__ import annotations

import json
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gt import DEFAULT_SEED
from gt.labelling.sync import DEFAULT_CONCURRENCY
from gt.labelling import picking
from gt.core.report import REPORTS_DIR
from gt.core import store
from gt.core.errors import StageError, UsageError
from gt.selection import bins, strategies
from gt.core.filters import DEFAULT_FILTER, Filter, load_filter
from gt.labelling.calls import RetryPolicy
from gt.labelling.planning import eligible_article_ids
from gt.labelling.batch import BatchOptions, run_batch
from gt.labelling.sync import LabelRunSummary, label_articles
from gt.oracles.base import FatalError, OracleSpec
from gt.oracles.replay import replay_priced

RANDOM_REASONS = ("explore", "random")


@dataclass
class LoopOptions:
    """The loop's settings (the flags of `python -m stages.loop`)."""
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    llm: str = "local-embed"
    oracles_file: str | None = None
    rounds: int = 3
    per_round: int = 2000
    pick: str = "gaps"
    explore_share: float | None = None
    name: str | None = None
    seed: int = DEFAULT_SEED
    concurrency: int = DEFAULT_CONCURRENCY
    max_cost: float | None = None
    replay_price: str | None = None
    mode: str = "sync"                     # sync | batch: each round's picks through the provider's batch service
    batch_poll: float = BatchOptions.poll_s
    batch_max_poll: float = BatchOptions.max_poll_s
    embed_cache: str | None = None
    output_dir: str = REPORTS_DIR
    quiet: bool = False

    def check(self) -> None:
        for flag, value in (("--rounds", self.rounds), ("--per-round", self.per_round),
                            ("--concurrency", self.concurrency)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if self.mode not in ("sync", "batch"):
            raise UsageError(f"--mode must be sync or batch, got {self.mode!r}")
        if self.explore_share is not None and not 0 <= self.explore_share <= 1:
            raise UsageError(f"--explore-share must lie in 0-1, got {self.explore_share}")


@dataclass
class LoopResult:
    name: str
    rounds: list[dict] = field(default_factory=list)
    report: Path | None = None
    stopped: str | None = None       # why the loop stopped early, in words
    code: int = 0


def loop_key(args: LoopOptions) -> str:
    return args.name or f"{args.pick}-{args.per_round}x{args.rounds}-seed{args.seed}"


def say(line: str) -> None:
    """Progress of a long loop (stderr, like the progress bars)."""
    print(line, file=sys.stderr)


def round_picks(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, key: picking.LabelKey, name: str,
                round_no: int, args: LoopOptions) -> tuple[picking.Picks | None, str | None]:
    """The round's picks still to ask (recorded now if the round is new), or None when it is done."""
    row = conn.execute("SELECT id FROM pick_rounds WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? "
                       "AND loop_key = ? AND round_no = ?",
                       (key.filter_id, key.oracle, key.prompt_sha256, name, round_no)).fetchone()
    if row is not None:
        pending = picking.pending_picks(conn, key, int(row[0]))
        return (pending if pending.article_ids else None), None
    method, note = args.pick, None
    have = len(picking.labelled(conn, filt, key))
    if method in ("gaps", "uncertain") and have < picking.MIN_LABELS_TO_AIM:
        method = "random"
        note = (f"round {round_no}: {have} valid label(s) so far, too few to fit a scorer "
                f"({picking.MIN_LABELS_TO_AIM} needed): a random round")
    ids = eligible_article_ids(conn, filt, seed=args.seed, random_sample=True)
    share = picking.DEFAULT_EXPLORE_SHARE if args.explore_share is None else args.explore_share
    from gt.student.embeddings import cache_path
    cache = cache_path(args.embed_cache)
    picks = picking.plan_picks(conn, filt, key, method, ids, args.per_round, seed=args.seed + round_no,
                               explore_share=share, cache=cache, progress=not args.quiet)
    if not picks.article_ids:
        return None, "nothing left to pick: every eligible article has a label"
    picking.record_round(conn, key, picks, requested=args.per_round, seed=args.seed + round_no, loop_key=name,
                         round_no=round_no)
    return picks, note


def round_figures(conn: sqlite3.Connection, filt: Filter, key: picking.LabelKey, name: str) -> list[dict]:
    """Per round of the loop: labels bought, cost, coverage objective after it, outer-bin finds."""
    dims = filt.dimension_names
    rounds = conn.execute("SELECT id, round_no, method FROM pick_rounds WHERE filter_id = ? AND oracle = ? "
                          "AND prompt_sha256 = ? AND loop_key = ? ORDER BY round_no",
                          (key.filter_id, key.oracle, key.prompt_sha256, name)).fetchall()
    all_labels = conn.execute(
        """SELECT l.id, json_group_object(s.dimension, s.score) FROM labels l JOIN label_scores s ON s.label_id = l.id
           WHERE l.filter_id = ? AND l.oracle = ? AND l.prompt_sha256 = ? AND l.status = 'ok' AND l."repeat" = 0
           GROUP BY l.id ORDER BY l.id""", (key.filter_id, key.oracle, key.prompt_sha256)).fetchall()
    label_ids = np.array([r[0] for r in all_labels], dtype=np.int64)
    scores = np.array([[json.loads(r[1])[d] for d in dims] for r in all_labels], dtype=float).reshape(-1, len(dims))
    edges = bins.parse_bins(bins.DEFAULT_BINS)
    out, random_outer, random_n = [], 0, 0
    # the running coverage starts from what was labelled before the loop's first pick was bought
    first = conn.execute(
        """SELECT MIN(l.id) FROM label_picks p JOIN labels l ON l.article_id = p.article_id AND l.filter_id = ?
               AND l.oracle = ? AND l.prompt_sha256 = ? AND l."repeat" = 0
           WHERE p.round_id IN (SELECT value FROM json_each(?))""",
        (key.filter_id, key.oracle, key.prompt_sha256, json.dumps([r[0] for r in rounds]))).fetchone()[0]
    last = (first - 1) if first is not None else (int(label_ids.max()) if len(label_ids) else 0)
    for rid, no, method in rounds:
        rows = conn.execute(
            """SELECT p.reason, l.id, l.status, l.cost_usd, (SELECT json_group_object(s.dimension, s.score)
                      FROM label_scores s WHERE s.label_id = l.id)
               FROM label_picks p LEFT JOIN labels l ON l.article_id = p.article_id AND l.filter_id = ?
                    AND l.oracle = ? AND l.prompt_sha256 = ? AND l."repeat" = 0
               WHERE p.round_id = ?""", (key.filter_id, key.oracle, key.prompt_sha256, rid)).fetchall()
        ok = [r for r in rows if r[2] == "ok"]
        outer = [bool(strategies.is_extreme(np.array([json.loads(r[4])[d] for d in dims])).any()) for r in ok]
        rand = [o for r, o in zip(ok, outer) if r[0] in RANDOM_REASONS]
        random_outer += sum(rand)
        random_n += len(rand)
        cost = float(sum(r[3] or 0.0 for r in rows if r[1] is not None))
        last = max([r[1] for r in ok] + [last])   # a round that bought nothing keeps the coverage so far
        upto = scores[label_ids <= last] if len(label_ids) else scores
        counts = picking.cell_counts(bins.to_bins(upto, edges), len(edges))
        quota = picking.even_quota(len(upto), len(edges))
        rate = random_outer / random_n if random_n else None
        out.append({"round": no, "method": method, "picked": len(rows), "labels": len(ok), "cost_usd": round(cost, 4),
                    "labels_total": int(len(upto)), "fill": picking.fill(counts, quota),
                    "fill_max": int(counts.size * quota), "outer": int(sum(outer)),
                    "outer_per_dollar": round(sum(outer) / cost, 2) if cost else None,
                    "random_picks_so_far": random_n,
                    "outer_at_random": round(rate * len(ok), 1) if rate is not None else None})
    return out


def report(filt: Filter, spec: OracleSpec, name: str, rows: list[dict]) -> str:
    from gt.core.report import md_table
    lines = [f"# Labelling loop '{name}': {filt.id}, {spec.name}", "",
             "Per round: the labels bought and what they cost; the coverage objective of every label bought so "
             "far (the (dimension, score bin) cells filled up to an even quota, of the most it could be); the "
             "articles found in the outer bins (some dimension scoring below 4 or at least 8 on 0-10); and the "
             "outer-bin articles the same number of random labels would have found (the outer-bin rate of the "
             "loop's random picks so far, explore share included, times the labels bought; the count of random "
             "picks it rests on is beside it).", "",
             md_table(["round", "pick", "labels", "cost $", "coverage objective", "outer-bin articles",
                       "per $", "same spend at random (from n random picks)"],
                      [[r["round"], r["method"], r["labels"], f"{r['cost_usd']:.4f}", f"{r['fill']} of {r['fill_max']}",
                        r["outer"], r["outer_per_dollar"] if r["outer_per_dollar"] is not None else "-",
                        f"{r['outer_at_random']} (n={r['random_picks_so_far']})"
                        if r["outer_at_random"] is not None else "no random picks yet"] for r in rows]), ""]
    return "\n".join(lines)


def run_loop(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, args: LoopOptions) -> LoopResult:
    """Every round still to do (picked, recorded, labelled), then the report files."""
    key = picking.LabelKey(filt.id, spec.name, filt.prompt_sha256)
    result = LoopResult(loop_key(args))
    spent = 0.0
    for round_no in range(1, args.rounds + 1):
        picks, note = round_picks(conn, filt, spec, key, result.name, round_no, args)
        if note:
            say(note)
        if picks is None:
            if note:
                break
            continue
        say(f"round {round_no}/{args.rounds}: " + picking.describe(picks))
        budget = None if args.max_cost is None else max(args.max_cost - spent, 0.0)
        params = {"loop": result.name, "round": round_no, "pick_round": picks.round_id}
        if args.mode == "batch":
            cost, stopped, code = _batch_round(conn, filt, spec, picks.article_ids, args, budget, params)
        else:
            summary: LabelRunSummary = label_articles(
                conn, filt, spec, picks.article_ids, purpose="label", concurrency=args.concurrency, max_cost=budget,
                seed=args.seed, params=params, progress=not args.quiet, retry=RetryPolicy())
            cost, stopped = summary.cost_usd, summary.stopped_message if summary.stopped_reason else None
            code = 0 if summary.stopped_reason in ("budget", "total_budget") else 1
        spent += cost
        if stopped:
            result.stopped = (f"stopped in round {round_no}: {stopped}; run the same command to resume (the round's "
                              f"unasked picks are kept, its batch jobs are polled, never sent twice)")
            result.code = code
            break
    result.rounds = round_figures(conn, filt, key, result.name)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "loop_" + re.sub(r"[^A-Za-z0-9]+", "_", f"{filt.id}_{spec.name}")
    from gt.core.report import write_text_atomic
    write_text_atomic(out / f"{stem}.md", report(filt, spec, result.name, result.rounds))
    write_text_atomic(out / f"{stem}.json", json.dumps({"loop": result.name, "filter": filt.id, "oracle": spec.name,
                                                        "rounds": result.rounds}, indent=1))
    result.report = out / f"{stem}.md"
    return result


def _batch_round(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: list[str], args: LoopOptions,
                 budget: float | None, params: dict) -> tuple[float, str | None, int]:
    """One round's picks through the batch engine (the same ledger and leases; a killed round's jobs are
    recorded in gt.db and polled again, never resent). (cost, why it stopped or None, exit code)."""
    s = run_batch(conn, filt, spec, ids, BatchOptions(max_cost=budget, seed=args.seed, params=params,
                                                        progress=not args.quiet, concurrency=args.concurrency,
                                                        poll_s=args.batch_poll, max_poll_s=args.batch_max_poll))
    if s.budget_left_out:
        return s.cost_usd, f"--max-cost reached: {s.budget_left_out} label(s) not sent", 0
    if s.waiting:
        return s.cost_usd, f"{s.waiting} batch job(s) still open at the provider", 1
    return s.cost_usd, None, 0


def loop(opts: LoopOptions) -> LoopResult:
    """The whole loop for checked options: the filter and the oracle (its key checked before any
    work), gt.db (never created here), then run_loop. Raises FilterError, the registry's errors, the
    store's, StageError (a pick that cannot be made, an oracle that refuses)."""
    from gt.oracles import registry as reg
    filt = load_filter(opts.filter)
    spec = reg.resolve(opts.llm, reg.load_registry(opts.oracles_file) if opts.oracles_file else reg.load_registry())
    reg.check_credentials(spec)
    if opts.replay_price:
        try:
            spec = replay_priced(spec, opts.replay_price)
        except ValueError as e:
            raise UsageError(str(e).splitlines()[0]) from None
    conn = store.connect(opts.db, create=False)
    try:
        store.register_filter(conn, filt)
        return run_loop(conn, filt, spec, opts)
    except picking.PickError as e:
        raise StageError(str(e)) from None
    except FatalError as e:
        raise StageError(f"{spec.name} refused the request: {e} (nothing more was sent)") from None
    finally:
        conn.close()
