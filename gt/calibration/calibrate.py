"""Calibrate stage: before paying for 20k labels, label a seeded random sample with several models
and decide from evidence which one should label (step 1 of the workflow:
`make calibrate MODELS=gemini-flash,gemini-pro SAMPLE=200 SEED=42`).

Labels go into gt.db through the labelling engine's `label_articles` as calibration runs (purpose
'calibrate'), keyed by (filter, oracle, prompt hash, repeat) like every label: a later `label`
run with the same oracle and prompt reuses them, and labels already in gt.db (an earlier
calibration, an import) are never requested again. The recommendation is the cheapest model whose
agreement with the reference (the strongest model, or the consensus of three or more) is within
the thresholds given as flags.

The steps: draw the sample (draw_sample) -> label what is missing (label_sample) -> read each
model's labels of it (collect) -> choose the reference (choose_reference) -> compare (the figures
are gt/calibration/report.py's) -> recommend -> write the report (calibration_report). The
function `calibrate` is those steps; `run` adds ingesting --source and the report files; `main`
parses the flags into CalibrateOptions, prints the summary and turns errors into one line and an
exit code (gt/core/errors.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from gt import DEFAULT_SEED
from gt.labelling.sync import DEFAULT_CONCURRENCY
from gt.calibration import report as calibration_report
from gt.core.report import REPORTS_DIR
from gt.core import errors, stats, store
from gt.calibration.report import Rater, figures, write_report
from gt.core.filters import DEFAULT_FILTER, Filter, load_filter
from gt.oracles.base import FatalError, OracleSpec

MIN_RUN_SECONDS = 10   # run timestamps have one-second resolution: shorter runs say little about speed


@dataclass(frozen=True)
class Thresholds:
    """What 'agrees well enough with the reference' means. Defaults, and why:
    - mean Spearman over the dimensions >= 0.70: a strong rank agreement; below it the two models
      would fill the selection's score bins with different articles;
    - mean MAE <= 1.0 point: within one half of a scale anchor band (anchors are 2 points wide), so
      an article rarely changes band between the models;
    - tier agreement >= 70%: with three tiers, chance agreement on typical news is ~40-60%;
    - invalid-answer rate <= 5%: invalid answers are lost articles (re-asked once), above 5% they
      cost money and bias the sample towards what the model finds easy to answer;
    - at least 20 articles scored by both: fewer and the figures are noise."""
    min_spearman: float = 0.70
    max_mae: float = 1.0
    min_tier_agreement: float = 0.70
    max_invalid_rate: float = 0.05
    min_articles: int = 20


class CalibrationError(errors.UsageError):
    """The calibration cannot be done as asked (exit 2); the message is one line saying what to do."""


# ---- the sample ------------------------------------------------------------------------------

def draw_sample(conn: sqlite3.Connection, filt: Filter, size: int, seed: int,
                within: set[str] | None = None, within_note: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """A seeded random sample of labellable articles: no duplicates, one per near-duplicate cluster,
    not too short, not caught by the filter's prefilter (the label stage would skip those); with
    `within`, only those articles (e.g. the ones a human gold set labelled). The order is the label
    stage's (sha256 of seed and id), so a larger sample contains a smaller one."""
    from gt.labelling.planning import eligible_article_ids

    ordered = eligible_article_ids(conn, filt, seed=seed, random_sample=True)
    clusters = {r[0]: r[1] for r in conn.execute(
        "SELECT id, near_dup_cluster FROM articles WHERE dup_of IS NULL AND too_short = 0")}
    total = conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]
    candidates = [aid for aid in ordered if aid in clusters]
    outside = 0
    if within is not None:
        outside = sum(aid not in within for aid in candidates)
        candidates = [aid for aid in candidates if aid in within]
    texts = store.article_texts(conn, candidates)
    seen_clusters: set[str] = set()
    pool: list[str] = []
    prefiltered = near_dups = 0
    for aid in candidates:
        cluster = clusters[aid]
        if cluster:
            if cluster in seen_clusters:
                near_dups += 1
                continue
            seen_clusters.add(cluster)
        if filt.prefilter_reason(*texts[aid]):
            prefiltered += 1
            continue
        pool.append(aid)
    info = {"requested": size, "seed": seed, "articles_in_db": int(total), "pool": len(pool),
            "skipped_short_or_duplicate": int(total) - len(ordered), "skipped_near_duplicate": near_dups,
            "skipped_prefilter": prefiltered, "note": None}
    if within is not None:
        info["within"] = within_note
        info["skipped_outside"] = outside
    if size > len(pool):
        info["note"] = (f"asked for {size} articles but only {len(pool)} are eligible "
                        f"(of {total} in gt.db): the sample is the whole pool")
    sample = pool[:size]
    info["used"] = len(sample)
    return sample, info


def labelled_only_pool(conn: sqlite3.Connection, filt: Filter,
                       specs: dict[str, OracleSpec | None]) -> tuple[set[str] | None, str | None]:
    """Label sets that cannot label more (imported, e.g. a human gold set): the articles all of them
    labelled, where the sample must be drawn, and the sentence saying so; (None, None) without any."""
    fixed = [name for name, spec in specs.items() if spec is None]
    within: set[str] | None = None
    for name in fixed:
        _, prompt = store.choose_label_set(conn, filt, name)
        ids = {r[0] for r in conn.execute(
            "SELECT DISTINCT article_id FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? "
            "AND status = 'ok'", (filt.id, name, prompt))}
        within = ids if within is None else within & ids
    if not fixed:
        return None, None
    return within, (f"drawn among the {len(within)} articles labelled by {' and '.join(fixed)} "
                    f"(label sets that cannot label more)")


# ---- collecting labels -----------------------------------------------------------------------

def _labelled_oracles(conn: sqlite3.Connection, filt: Filter) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT oracle FROM labels WHERE filter_id = ?", (filt.id,))}


def known_oracles(conn: sqlite3.Connection, filt: Filter, registry: dict[str, OracleSpec]) -> list[str]:
    return sorted(set(registry) | _labelled_oracles(conn, filt))


def resolve_models(conn: sqlite3.Connection, filt: Filter, names: Sequence[str],
                   registry: dict[str, OracleSpec]) -> dict[str, OracleSpec | None]:
    """name -> spec, or None for an oracle known only from labels in gt.db (e.g. imported).
    Raises UnknownOracle listing every known name."""
    from gt.oracles.registry import UnknownOracle, resolve

    labelled = _labelled_oracles(conn, filt)
    out: dict[str, OracleSpec | None] = {}
    for name in names:
        try:
            out[name] = resolve(name, registry)
        except UnknownOracle:
            if name in labelled:
                out[name] = None
            else:
                raise UnknownOracle(
                    f"unknown model '{name}'; known: {', '.join(known_oracles(conn, filt, registry))} "
                    f"(oracles.yaml entries and oracles with labels in gt.db)") from None
    return out


def collect(conn: sqlite3.Connection, filt: Filter, name: str, spec: OracleSpec | None,
            sample: Sequence[str]) -> Rater:
    """Read one model's labels of the sample from gt.db (current prompt hash; for an oracle not in
    oracles.yaml, the prompt version it has the most labels of)."""
    prompt = filt.prompt_sha256
    if spec is None:
        _, prompt = store.choose_label_set(conn, filt, name)
    dims = filt.dimension_names
    frame = store.scores_frame(conn, filt, oracle=name, prompt_sha256=prompt, repeat=None)
    frame = frame[frame["article_id"].isin(set(sample))]
    repeats: dict[int, pd.DataFrame] = {}
    for rep, part in frame.groupby("repeat"):
        repeats[int(rep)] = part.set_index("article_id")[dims + ["overall"]].reindex(sample).astype(float)
    empty = pd.DataFrame(np.nan, index=pd.Index(sample, name="article_id"), columns=dims + ["overall"])
    scores = repeats.get(0, empty)
    first = frame[frame["repeat"] == 0].set_index("article_id")
    tiers = first["tier"].reindex(sample) if not first.empty else pd.Series([None] * len(sample), index=sample)
    tiers = tiers.astype(object).where(tiers.notna(), None)
    rows = pd.read_sql_query(
        """SELECT article_id, status, cost_usd, latency_ms, input_tokens, output_tokens, cached_tokens, attempts,
                  error, run_id
           FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND "repeat" = 0""",
        conn, params=(filt.id, name, prompt))
    rows = rows[rows["article_id"].isin(set(sample))].reset_index(drop=True)
    return Rater(name, spec, prompt, scores, tiers, repeats, rows,
                 labels_per_second=run_throughput(conn, rows["run_id"].dropna().unique().tolist()))


def run_throughput(conn: sqlite3.Connection, run_ids: Sequence[int]) -> float | None:
    """Labels per second of the given label runs together (all their labels, wall time from start
    to finish), or None when they are too short to measure or were imports."""
    if not run_ids:
        return None
    marks = ",".join("?" * len(run_ids))
    row = conn.execute(
        f"""SELECT SUM((julianday(finished_at) - julianday(started_at)) * 86400.0),
                   (SELECT COUNT(*) FROM labels WHERE run_id IN ({marks}))
            FROM label_runs WHERE id IN ({marks}) AND finished_at IS NOT NULL AND mode != 'import'""",
        [*map(int, run_ids), *map(int, run_ids)]).fetchone()
    seconds, count = row[0], row[1]
    if not seconds or seconds < MIN_RUN_SECONDS or not count:
        return None
    return count / seconds


def label_sample(conn: sqlite3.Connection, filt: Filter, specs: dict[str, OracleSpec | None],
                 sample: Sequence[str], *, repeats: int = 1, concurrency: int = DEFAULT_CONCURRENCY, max_cost: float | None = None,
                 seed: int = DEFAULT_SEED, timeout: float | None = None, progress: bool = True,
                 log=None) -> dict[str, Any]:
    """Label what is missing for every model with a spec (purpose 'calibrate'); returns
    name -> LabelRunSummary. `max_cost` is the budget for all models together."""
    from gt.labelling.sync import label_articles

    summaries: dict[str, Any] = {}
    spent = 0.0
    for name, spec in specs.items():
        if spec is None:
            continue
        budget = None if max_cost is None else max(max_cost - spent, 0.0)
        if budget is not None and budget <= 0:
            summaries[name] = None
            if log:
                log(f"{name}: skipped, the --max-cost budget is spent")
            continue
        summary = label_articles(conn, filt, spec, list(sample), purpose="calibrate", repeats=repeats,
                                 concurrency=concurrency, max_cost=budget, seed=seed,
                                 params={"calibration_sample": len(sample), "seed": seed, "repeats": repeats},
                                 progress=progress, timeout=timeout)
        spent += summary.cost_usd
        summaries[name] = summary
        if log:
            stopped = f", stopped: {summary.stopped_reason} {summary.stopped_message}" if summary.stopped_reason else ""
            log(f"{name}: {summary.ok} ok, {summary.invalid} invalid, {summary.error} error labelled now, "
                f"{summary.skipped_existing} already in gt.db, ${summary.cost_usd:.4f}{stopped}")
    return summaries


# ---- the comparison --------------------------------------------------------------------------

def compare(filt: Filter, raters: list[Rater], *, reference: str | None, sample_info: dict, titles: dict[str, str],
            thresholds: Thresholds, n_boot: int = stats.DEFAULT_BOOT, seed: int = DEFAULT_SEED, concurrency: int = DEFAULT_CONCURRENCY,
            repeats: int = 1) -> dict[str, Any]:
    """Every figure of the calibration report (calibration_report.figures), with the thresholds, the
    reference and the recommendation, as plain data (Stat objects and frames inside)."""
    result = figures(filt, raters, sample_info=sample_info, titles=titles, n_boot=n_boot, seed=seed,
                     concurrency=concurrency, repeats=repeats)
    result["thresholds"] = dataclasses.asdict(thresholds)
    result["reference"] = reference
    result["recommendation"] = recommend(result, raters, thresholds)
    return result


# ---- the recommendation ------------------------------------------------------------------------

def agreement_with_reference(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The summary of `name` against the reference: mean Spearman, mean MAE, tier agreement, n."""
    ref = result["reference"]
    if ref == "consensus":
        vs = (result.get("consensus") or {}).get("vs", {}).get(name)
        if vs is None:
            return None
        summary, tiers = vs["summary"], vs["tier_agreement"]
        n = vs["per_dimension"][result["dimensions"][0]]["mae"].n
    elif name == ref:
        return {"self": True}
    else:
        pair = next((p for p in result["pairs"] if {p["a"], p["b"]} == {name, ref}), None)
        if pair is None:
            return None
        summary, tiers = pair["summary"], pair["tier_agreement"]
        n = pair["per_dimension"][result["dimensions"][0]]["mae"].n
    return {"self": False, "spearman": summary["spearman"], "mae": summary["mae"], "tier_agreement": tiers,
            "bias": summary["bias"], "n": n}


def shortfalls(labels: dict[str, Any], ag: dict[str, Any] | None, t: Thresholds) -> list[str]:
    """Why a model does not qualify (empty: it does), from its answers and its agreement with the reference."""
    reasons: list[str] = []
    invalid, valid = labels["invalid_rate"], labels["ok"]
    if valid == 0:
        reasons.append("no valid answers")
    elif invalid.defined and invalid.value > t.max_invalid_rate:
        reasons.append(f"invalid rate {invalid.value:.1%} > {t.max_invalid_rate:.0%}")
    if ag is None:
        return reasons + ["no comparison with the reference"]
    if ag["self"] or not valid:
        return reasons
    if ag["n"] < t.min_articles:
        reasons.append(f"only {ag['n']} articles scored by both (need {t.min_articles})")
    s = ag["spearman"]
    if not s.defined:
        reasons.append(f"Spearman {s.fmt()}")
    elif s.value < t.min_spearman:
        reasons.append(f"mean Spearman {s.value:.2f} < {t.min_spearman:.2f}")
    mae = ag["mae"]
    if not mae.defined:
        reasons.append(f"MAE {mae.fmt()}")
    elif mae.value > t.max_mae:
        reasons.append(f"mean MAE {mae.value:.2f} > {t.max_mae:.2f}")
    ta = ag["tier_agreement"]
    if not ta.defined:
        reasons.append(f"tier agreement {ta.fmt()}")
    elif ta.value < t.min_tier_agreement:
        reasons.append(f"tier agreement {ta.value:.0%} < {t.min_tier_agreement:.0%}")
    return reasons


def recommend(result: dict[str, Any], raters: list[Rater], t: Thresholds) -> dict[str, Any]:
    """The cheapest model whose agreement with the reference is within the thresholds, and for
    every model the numbers and the reasons it qualified or not."""
    rows = []
    for r in raters:
        m = result["models"][r.name]
        proj = m.get("projection") or {}
        prices = [x for x in (proj.get("cost_sync_usd"), proj.get("cost_batch_usd")) if x is not None]
        ag = agreement_with_reference(result, r.name)
        reasons = shortfalls(m["labels"], ag, t)
        if r.spec is None:
            reasons.append("not in oracles.yaml (labels only, cannot label more)")
        rows.append({"model": r.name, "cost_20k_usd": min(prices) if prices else None, "agreement": ag,
                     "invalid_rate": m["labels"]["invalid_rate"], "qualifies": not reasons, "reasons": reasons,
                     "offline": r.offline, "is_reference": r.name == result["reference"]})
    order = {r.name: i for i, r in enumerate(raters)}
    qualifying = sorted((row for row in rows if row["qualifies"]),
                        key=lambda row: (row["cost_20k_usd"] if row["cost_20k_usd"] is not None else math.inf,
                                         order[row["model"]]))
    chosen = qualifying[0]["model"] if qualifying else None
    label_sets_only = None
    if all(r.spec is None for r in raters):
        label_sets_only = "human label sets" if all(r.human for r in raters) else "label sets already in gt.db"
    return {"model": chosen, "rows": rows, "reference": result["reference"],
            "verdict": calibration_report.verdict(rows, chosen, result["reference"], label_sets_only)}


def check_strongest(names: Sequence[str], requested: str | None) -> None:
    if not requested:
        return
    if requested != "consensus" and requested not in names:
        raise CalibrationError(f"--strongest {requested} is not one of --models ({', '.join(names)}) "
                               f"(pass one of them, or 'consensus')")
    if requested == "consensus" and len(names) < 3:
        raise CalibrationError("--strongest consensus needs at least three models (add models to --models)")


def choose_reference(raters: list[Rater], requested: str | None) -> tuple[str, str]:
    """(reference, why it is the reference): --strongest, else the first imported human label set
    listed (a gold standard outranks any model), else the consensus with three or more models, else
    the model with the highest price per article (list prices on the sample's measured tokens;
    ties: the first listed)."""
    names = [r.name for r in raters]
    if requested:
        check_strongest(names, requested)
        return requested, "chosen with --strongest"
    humans = [r.name for r in raters if r.human]
    if humans:
        return humans[0], ("imported human labels, the gold standard" + (" (the first listed of " + ", ".join(humans)
                           + ")" if len(humans) > 1 else "") + "; pass --strongest NAME to choose")
    if len(raters) >= 3:
        return "consensus", "three or more models: their per-dimension median; pass --strongest NAME to use one model"

    def price(r: Rater) -> float:
        if r.spec is None:
            return -1.0
        rows = r.labels[r.labels["status"].isin(["ok", "invalid"])]
        tin = float(pd.to_numeric(rows["input_tokens"], errors="coerce").fillna(0).mean()) if len(rows) else 2000.0
        tout = float(pd.to_numeric(rows["output_tokens"], errors="coerce").fillna(0).mean()) if len(rows) else 300.0
        return r.spec.cost(tin, tout)
    prices = {r.name: price(r) for r in raters}
    best = max(prices.values())
    top = [n for n in names if prices[n] == best]
    if len(top) > 1:
        return top[0], (f"{', '.join(top)} cost the same per article: the first listed in --models; "
                        f"pass --strongest NAME to choose")
    return top[0], "the highest price per article, taken as the strongest; pass --strongest NAME to choose"


# ---- the whole stage as a function -------------------------------------------------------------

def calibrate(conn: sqlite3.Connection, filt: Filter, models: Sequence[str], *, sample_size: int = 200,
              seed: int = DEFAULT_SEED, repeats: int = 1, concurrency: int = DEFAULT_CONCURRENCY, max_cost: float | None = None,
              strongest: str | None = None, thresholds: Thresholds = Thresholds(), n_boot: int = stats.DEFAULT_BOOT,
              registry: dict[str, OracleSpec] | None = None, label: bool = True, timeout: float | None = None,
              progress: bool = True, log=None) -> tuple[dict[str, Any], list[Rater]]:
    """Draw the sample, label what is missing, compare, recommend. Returns (result, raters)."""
    from gt.oracles.registry import check_credentials, load_registry

    if len(models) < 2:
        raise CalibrationError("calibration compares models: pass at least two to --models (e.g. gemini-flash,gemini-pro)")
    if len(set(models)) != len(models):
        raise CalibrationError(f"--models lists a model twice ({', '.join(models)})")
    check_strongest(models, strongest)       # before anything is paid for
    registry = registry if registry is not None else load_registry()
    store.register_filter(conn, filt)
    specs = resolve_models(conn, filt, models, registry)
    within, within_note = labelled_only_pool(conn, filt, specs)
    sample, info = draw_sample(conn, filt, sample_size, seed, within, within_note)
    if not sample:
        raise CalibrationError("no eligible articles in gt.db (ingest some first: pass --source 'data/sample/*.jsonl')")
    summaries: dict[str, Any] = {}
    if label:
        for spec in specs.values():
            if spec is not None:
                check_credentials(spec)       # every key before any paid call
        summaries = label_sample(conn, filt, specs, sample, repeats=repeats, concurrency=concurrency,
                                 max_cost=max_cost, seed=seed, timeout=timeout, progress=progress, log=log)
    raters = []
    for name, spec in specs.items():
        r = collect(conn, filt, name, spec, sample)
        s = summaries.get(name)
        if s is not None:
            r.labelled_now, r.cost_now = s.ok + s.invalid + s.error, s.cost_usd
        raters.append(r)
    reference, reference_reason = choose_reference(raters, strongest)
    titles = {aid: title for aid, (title, _) in store.article_texts(conn, sample).items()}
    result = compare(filt, raters, reference=reference, sample_info=info, titles=titles, thresholds=thresholds,
                     n_boot=n_boot, seed=seed, concurrency=concurrency, repeats=repeats)
    result["reference_reason"] = reference_reason
    result["labelling"] = {name: (dataclasses.asdict(s) if s is not None else None) for name, s in summaries.items()}
    return result, raters


# ---- command line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrateOptions:
    """The calibration's settings (the flags of `python -m stages.calibrate`); the thresholds'
    defaults are Thresholds'."""
    models: list[str] = field(default_factory=list)
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    source: list[str] = field(default_factory=list)
    sample_size: int = 200
    seed: int = DEFAULT_SEED
    output: str | None = None
    repeats: int = 1
    concurrency: int = DEFAULT_CONCURRENCY
    max_cost: float | None = None
    strongest: str | None = None
    oracles_file: str | None = None
    no_label: bool = False
    timeout: float | None = None
    bootstrap: int = stats.DEFAULT_BOOT
    min_spearman: float = Thresholds.min_spearman
    max_mae: float = Thresholds.max_mae
    min_tier_agreement: float = Thresholds.min_tier_agreement
    max_invalid_rate: float = Thresholds.max_invalid_rate
    min_articles: int = Thresholds.min_articles
    no_plots: bool = False
    quiet: bool = False
    dry_run: bool = False

    @classmethod
    def from_flags(cls, flags: dict) -> "CalibrateOptions":
        """The parsed flags; --models is a comma list."""
        f = dict(flags)
        if isinstance(f.get("models"), str):
            f["models"] = [m.strip() for m in f["models"].split(",") if m.strip()]
        return cls(**f)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_spearman, self.max_mae, self.min_tier_agreement, self.max_invalid_rate,
                          self.min_articles)

    def check(self) -> None:
        """A bad number raises errors.UsageError (argparse itself exits 2 on unknown flags)."""
        for flag, value, low in (("--sample-size", self.sample_size, 1), ("--repeats", self.repeats, 1),
                                 ("--concurrency", self.concurrency, 1), ("--bootstrap", self.bootstrap, 0),
                                 ("--min-articles", self.min_articles, 1)):
            if value < low:
                raise errors.UsageError(f"{flag} must be at least {low}, got {value} (pass a larger number)")
        if self.max_cost is not None and self.max_cost <= 0:
            raise errors.UsageError(f"--max-cost must be positive, got {self.max_cost} (pass US dollars, e.g. "
                                    f"--max-cost 2)")
        for flag, value in (("--min-spearman", self.min_spearman), ("--min-tier-agreement", self.min_tier_agreement),
                            ("--max-invalid-rate", self.max_invalid_rate)):
            if not 0 <= value <= 1:
                raise errors.UsageError(f"{flag} must be between 0 and 1, got {value} (e.g. 0.7)")


@dataclass
class CalibrationRun:
    """What one run of the stage did: the figures, the raters, the files written."""
    result: dict[str, Any]
    raters: list[Rater]
    report: Path
    figures: Path
    plots: list[Path]
    notes: list[str]          # what ingesting --source did
    seconds: float            # calibrating and writing the report (ingesting excluded)


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """What calibrate adds to the commands' error table (stages/kit.py): a missing key says that
    --no-label needs none; an oracle's refusal is one scrubbed line."""
    from gt.oracles import registry as reg

    try:
        yield
    except reg.MissingKey as e:
        raise errors.StageError(f"{e}; or compare only the labels already in gt.db with --no-label") from None
    except FatalError as e:
        from gt.labelling.ledger import scrub_secrets
        raise errors.StageError(f"an oracle refused the request: {scrub_secrets(str(e))} (check the key, model id "
                             f"and oracles.yaml)") from None


def run(opts: CalibrateOptions) -> CalibrationRun:
    """Ingest --source, calibrate and write the report files; progress on stderr, nothing printed
    of the results. Raises errors.StageError / errors.UsageError."""
    from gt.oracles.registry import load_registry

    with stage_errors():
        filt = load_filter(opts.filter)
        registry = load_registry(opts.oracles_file) if opts.oracles_file else load_registry()
        conn = store.connect(opts.db, create=bool(opts.source))  # only ingesting --source may create gt.db
        try:
            notes = [ingest_sources(conn, opts.source, filt)] if opts.source else []
            started = time.monotonic()
            log = None if opts.quiet else (lambda line: print(line, file=sys.stderr))
            result, raters = calibrate(
                conn, filt, opts.models, sample_size=opts.sample_size, seed=opts.seed, repeats=opts.repeats,
                concurrency=opts.concurrency, max_cost=opts.max_cost, strongest=opts.strongest,
                thresholds=opts.thresholds, n_boot=opts.bootstrap, registry=registry, label=not opts.no_label,
                timeout=opts.timeout, progress=not opts.quiet, log=log)
        finally:
            conn.close()
    output = Path(opts.output or Path(REPORTS_DIR) / f"{filt.report_stem('calibration')}.md")
    try:
        md_path, json_path, pngs = write_report(result, raters, output, plots=not opts.no_plots)
    except OSError as e:
        raise errors.StageError(f"cannot write the report {output}: {e.strerror or e} (pass --output PATH in a "
                             f"writable folder; the labels are stored in gt.db, nothing is paid again)") from None
    return CalibrationRun(result, raters, md_path, json_path, pngs, notes, time.monotonic() - started)


def dry_run(opts: CalibrateOptions) -> list[str]:
    """`--dry-run`: the sample calibrate would draw and what labelling it would cost per model (the
    label stage's estimate: the same planner, labels already in gt.db reused), calling nothing and
    writing nothing (no key needed; --source is not ingested)."""
    from gt.labelling.estimate import estimate_run
    from gt.oracles.registry import load_registry

    if len(opts.models) < 2:
        raise CalibrationError("calibration compares models: pass at least two to --models (e.g. gemini-flash,gemini-pro)")
    filt = load_filter(opts.filter)
    registry = load_registry(opts.oracles_file) if opts.oracles_file else load_registry()
    conn = store.connect(opts.db, readonly=True, create=False)
    try:
        store.check_filter(conn, filt)   # an edited prompt under the same version: refused here too
        specs = resolve_models(conn, filt, opts.models, registry)
        within, within_note = labelled_only_pool(conn, filt, specs)
        sample, info = draw_sample(conn, filt, opts.sample_size, opts.seed, within, within_note)
        lines = [f"dry run, nothing was called: a sample of {len(sample)} articles of {filt.id} from {opts.db} "
                 f"(seed {opts.seed}), {opts.repeats} repeat(s) per model"
                 + (" (--source is not ingested by a dry run)" if opts.source else "")]
        total = 0.0
        for name, spec in specs.items():
            if spec is None or opts.no_label:
                lines.append(f"  {name}: compared from the labels gt.db already holds, nothing to buy")
                continue
            est = estimate_run(conn, filt, spec, sample, repeats=opts.repeats)
            batch = f", ${est.cost_batch:.4f} at batch prices" if est.cost_batch is not None else ""
            lines.append(f"  {name} ({spec.provider} {spec.model}): {est.requests} requests ({est.already_valid} "
                         f"articles already labelled), {est.input_tokens:,} input + {est.output_tokens:,} output "
                         f"tokens: ${est.cost_sync:.4f}{batch}")
            total += est.cost_sync
    finally:
        conn.close()
    cap = f" (--max-cost ${opts.max_cost:g} stops it there)" if opts.max_cost is not None else ""
    lines.append(f"expected cost of the calibration: ${total:.4f}{cap}")
    return lines


def ingest_sources(conn: sqlite3.Connection, sources: list[str], filt: Filter) -> str:
    """--source: ingest first (idempotent: records already in gt.db are skipped); returns what it did."""
    from gt.intake.ingestion import ingest_files
    from gt.intake.reading import expand_sources

    files, problems = expand_sources(sources)
    if not files:
        raise errors.UsageError(problems[0] if problems else f"--source {', '.join(sources)} matches no file")
    summary = ingest_files(conn, sources, filt=filt, progress=True)
    for line in summary.problems[:5]:
        print(f"ingest: {line}", file=sys.stderr)
    return (f"ingested {summary.records} records from {summary.files} file(s): {summary.inserted} new articles, "
            f"{summary.already_present} already in gt.db")

