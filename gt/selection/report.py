"""What the select stage writes beside a selection (a noun: it renders, it never selects): the
train/val/test split files with each label's provenance, their dataset card (README.md in the
Hugging Face shape), selection_report.md, coverage_comparison.md and its figure. Everything it
shows comes from a ReportContext the stage fills after solving; the Baselines table and the Terms
are written once here and quoted by both reports.
"""
from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gt.core import bands, report, store
from gt.selection import program as solver, splits
from gt.oracles import registry
from gt.core.report import md_table, pct
from gt.selection.strategies import STRATEGIES, Strategy
from gt.selection.bins import bin_labels

SPLIT_FORMATS = ("jsonl", "parquet")
HIGH_BINS = f"{bands.MIDDLE_HIGH:g}-{bands.SCORE_MAX:g}"    # the high tail in the reports' words: "8-10"
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def stand_in_warning(oracle: str, what: str) -> list[str]:
    """The markdown lines that say an offline stand-in made the labels (none for a real oracle)."""
    if not stand_in(oracle):
        return []
    return [f"> The labels come from the offline oracle `{oracle}`, which makes the pipeline run without a key or "
            f"network; it is not a substitute for a real LLM oracle, so treat {what} as a demonstration of the "
            "mechanics.", ""]


def stand_in(oracle: str) -> bool:
    """Whether gt.db's oracle name is an offline stand-in (its oracles.yaml entry's provider is one
    of registry.STAND_IN_PROVIDERS); a name oracles.yaml does not know (an import) is not."""
    try:
        return registry.resolve(oracle, registry.load_registry()).provider in registry.STAND_IN_PROVIDERS
    except registry.OracleConfigError:
        return False


@dataclass
class ReportContext:
    """Everything a selection's files show: the inputs, the program, the answer and the baselines."""
    filt: object
    dims: list
    edges: np.ndarray
    strategy: Strategy
    program: solver.Program
    pool_df: pd.DataFrame
    pool: solver.Pool
    chosen: np.ndarray
    split_of: pd.Series
    solution: solver.Solution
    randoms: list
    random_objs: list
    greedy_mask: np.ndarray | None
    greedy_obj: int | None
    excluded: dict
    oracle: str
    name: str
    params: dict          # the selection's parameters as stored in gt.db (seed, format, time limit, ...)
    output_dir: str       # where the files go, as the user named it (the card's loading code quotes it)
    error: pd.Series | None
    all_rows: pd.DataFrame | None = None   # every labelled row (an extended selection's members are not in pool_df)


def write_files(conn: sqlite3.Connection, ctx: ReportContext, folder: Path) -> list[str]:
    """The train/val/test splits (JSONL or Parquet), the dataset card (README.md) and both reports
    (+ PNG) into `folder`; returns the file names."""
    ids = list(ctx.split_of.index)
    texts = store.article_texts(conn, ids)
    facts = pd.DataFrame([dict(r) for r in _rows_by_id(
        conn, "SELECT id, source, origin, language FROM articles WHERE id IN ({ids})", ids)],
        columns=["id", "source", "origin", "language"])
    records = split_records(conn, ctx, texts)
    split_files = write_splits(records, folder, ctx.params["format"])
    report.write_text_atomic(folder / "README.md", dataset_card(ctx, records, facts))
    report.write_text_atomic(folder / "selection_report.md", selection_report(ctx))
    report.write_text_atomic(folder / "coverage_comparison.md", coverage_report(ctx))
    coverage_plot(ctx, folder / "coverage_comparison.png")
    return [*split_files, "README.md", "selection_report.md", "coverage_comparison.md", "coverage_comparison.png"]


def _rows_by_id(conn: sqlite3.Connection, sql: str, ids: list) -> list[sqlite3.Row]:
    """The rows of `sql` (an IN list written `{ids}`) for every id, 500 ids a query."""
    rows = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows += conn.execute(sql.format(ids=",".join("?" * len(chunk))), chunk).fetchall()
    return rows


def split_records(conn: sqlite3.Connection, ctx: ReportContext, texts: dict) -> dict[str, list[dict]]:
    """The lines of train/val/test, by id: the article, the scores of the label the selection used,
    and that label's provenance (its id in gt.db's labels table, oracle, the model its run called,
    prompt hash, and the evidence per dimension: '' where the answer gave none, null where the
    label carries no evidence at all, e.g. imported human ratings)."""
    names = ctx.filt.dimension_names
    rows = (ctx.all_rows if ctx.all_rows is not None else ctx.pool_df).set_index("article_id")
    labels = {r["id"]: r for r in _rows_by_id(
        conn, """SELECT l.id, l.oracle, l.prompt_sha256, l.evidence_json, r.model FROM labels l
                 JOIN label_runs r ON r.id = l.run_id WHERE l.id IN ({ids})""",
        [int(x) for x in rows.loc[list(ctx.split_of.index), "label_id"]])}
    records = {}
    for split in splits.SPLITS:
        records[split] = []
        for aid in sorted(ctx.split_of.index[ctx.split_of == split]):
            r, label = rows.loc[aid], labels[int(rows.loc[aid, "label_id"])]
            evidence = json.loads(label["evidence_json"]) if label["evidence_json"] else None
            records[split].append({
                "id": aid, "title": texts[aid][0], "text": texts[aid][1],
                "labels": [float(r[n]) for n in names], "dimension_names": names,
                "tier": r["tier"], "overall": round(float(r["overall"]), 4),
                "repeats": int(r["repeats"]) if "repeats" in r.index else 1,
                "label_id": label["id"], "oracle": label["oracle"], "model": label["model"],
                "prompt_sha256": label["prompt_sha256"],
                "evidence": ({n: str(evidence.get(n) or "") for n in names} if isinstance(evidence, dict) else None),
            })
    return records


def write_splits(records: dict[str, list[dict]], folder: Path, fmt: str) -> list[str]:
    """train/val/test.<fmt>, one row per article, the same columns in both formats (Parquet: one
    schema for the three files, so an empty split still has every column)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.Table.from_pylist([r for rows in records.values() for r in rows]).schema
        for split, rows in records.items():
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{split}.parquet")
    else:
        for split, rows in records.items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return [f"{split}.{fmt}" for split in records]


def remove_stale_splits(folder: Path, fmt: str) -> list[str]:
    """Split files of the other format left by an earlier run in `folder`: removed, so that nothing
    (make train, load_dataset) reads an old selection beside the new one. Returns their names."""
    stale = [folder / f"{split}.{other}" for other in SPLIT_FORMATS if other != fmt for split in splits.SPLITS]
    stale = [f for f in stale if f.is_file()]
    for f in stale:
        f.unlink()
    return [f.name for f in stale]


# ---- the dataset card (README.md beside the splits) ------------------------------------------------

# Bundled texts whose licence is known (data/sample/README.md, data/emobank/README.md): (the end of
# the path the article was ingested from, its source or None for any) -> (Hugging Face licence id or
# None for public domain, licence, attribution to keep with every copy). gt.db keeps no licence per
# article, so any other text's licence is the user's to state.
BUNDLED_LICENCES = {
    ("data/sample/articles.jsonl", "Wikinews"): (
        "cc-by-2.5", "CC BY 2.5 (https://creativecommons.org/licenses/by/2.5/)",
        "News articles from Wikinews (https://en.wikinews.org), licensed CC BY 2.5. Each record's url links "
        "the original article. Changes: datelines removed, whitespace normalised."),
    ("data/sample/articles.jsonl", "VOA Learning English"): (
        None, "public domain (US federal work: VOA Learning English items credited to VOA staff)",
        "Articles from VOA Learning English (Voice of America) are in the public domain."),
    ("data/emobank/emobank.csv.gz", None): (
        "cc-by-sa-4.0", "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/): share this dataset "
        "under the same licence",
        "EmoBank by Sven Buechel and Udo Hahn (JULIE Lab, Friedrich-Schiller-Universität Jena), "
        "https://github.com/JULIELab/EmoBank, licensed CC BY-SA 4.0."),
}
UNKNOWN_LICENCE = "not recorded in gt.db: yours to state (check the source's terms before sharing)"


def licence_of(origin: str | None, source: str | None) -> tuple | None:
    """(licence id, licence, attribution) of a bundled text, or None where it is not known."""
    origin = origin.replace("\\", "/") if isinstance(origin, str) else ""
    for (ending, src), licence in BUNDLED_LICENCES.items():
        if (origin == ending or origin.endswith("/" + ending)) and src in (None, source):
            return licence
    return None


def card_licence(sources: pd.DataFrame) -> dict:
    """The card's `license` metadata for (source, origin, articles) rows: the one licence that covers
    every article (public-domain items add no terms), 'unknown' where any text's licence is not known."""
    known = [licence_of(o, s) for s, o in zip(sources["source"], sources["origin"])]
    if any(k is None for k in known):
        return {"license": "unknown"}
    ids = sorted({k[0] for k in known if k[0]})
    if len(ids) == 1:
        return {"license": ids[0]}
    return {"license": "other", "license_name": "public-domain" if not ids else "mixed",
            "license_link": "README.md"}


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(ctx: ReportContext, records: dict[str, list[dict]], facts: pd.DataFrame) -> str:
    """README.md of the split folder in the Hugging Face dataset-card shape: YAML metadata (licence,
    `configs` mapping train/validation/test to the files), then what the rows are, where their labels
    come from, how they were selected, the licence per source, and how to load them. `facts`: the
    source, origin and language of every article in the splits."""
    import yaml

    fmt, out_dir = ctx.params["format"], ctx.output_dir
    counts = {split: len(rows) for split, rows in records.items()}
    k = sum(counts.values())
    nonempty = [split for split in splits.SPLITS if counts[split]]
    sources = facts.groupby(["source", "origin"], dropna=False).size().rename("articles").reset_index()
    languages = sorted(x for x in facts["language"].dropna().unique())
    meta = {"pretty_name": f"{ctx.filt.id} selection {ctx.name}", **card_licence(sources),
            **({"language": languages} if languages else {}),
            "task_categories": ["text-classification"], "tags": ["regression", "llm-labelled", ctx.filt.name],
            "size_categories": [size_category(k)],
            "configs": [{"config_name": "default", "data_files": [
                {"split": HF_SPLIT[split], "path": f"{split}.{fmt}"} for split in nonempty]}]}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {ctx.filt.id}: selection `{ctx.name}`", "",
             f"{k} texts scored 0-10 on the {len(ctx.filt.dimension_names)} dimensions of the filter "
             f"**{ctx.filt.name}** (version {ctx.filt.version}): {', '.join(ctx.filt.dimension_names)}. "
             f"Selected by `python -m stages.select` from {len(ctx.pool_df)} labelled texts in gt.db to cover "
             f"every dimension's score range (strategy **{ctx.strategy.name}**), for training a small model "
             "(the student) to predict the scores.", ""]
    lines += stand_in_warning(ctx.oracle, "this dataset")
    lines += ["## Splits", "", md_table(["split", "file", "rows", "share"],
              [[HF_SPLIT[sp], f"{sp}.{fmt}", counts[sp], pct(counts[sp], k)] for sp in splits.SPLITS]), "",
              "Iterative stratification over the (dimension, score bin) cells: each split holds every score "
              "range in proportion; near-duplicate texts never sit in two splits.", ""]
    lines += ["## Fields", "", md_table(["field", "meaning"], [
        ["id", "the article's id in gt.db (articles.id)"], ["title, text", "the article"],
        ["labels", "the scores, one per dimension, in the order of dimension_names"],
        ["dimension_names", "the filter's dimensions"],
        ["tier, overall", "the filter's tier and weighted overall score"],
        ["label_id", "the label's row in gt.db (labels.id): every figure below can be traced to it"],
        ["oracle", "who labelled it (an LLM oracle, an offline stand-in, or an imported set such as human ratings)"],
        ["model", "the model the labelling run called (null where the run recorded none, e.g. an import)"],
        ["prompt_sha256", "hash of the prompt that produced the label"],
        ["evidence", "per dimension, the evidence the oracle quoted ('' where none; null where the label has none)"]],
        align="ll"), ""]
    lines += card_provenance(ctx, records) + card_selection(ctx)
    lines += card_licence_section(sources) + card_loading(out_dir, fmt, counts)
    return "\n".join(lines)


def card_provenance(ctx: ReportContext, records: dict[str, list[dict]]) -> list[str]:
    """Who labelled the rows: one line per (oracle, model, prompt) with its count, and the filter's prompt."""
    rows = pd.DataFrame([{"oracle": r["oracle"], "model": r["model"] or "—", "prompt": r["prompt_sha256"]}
                         for recs in records.values() for r in recs])
    table = rows.groupby(["oracle", "model", "prompt"]).size().reset_index(name="labels")
    lines = ["## Labels", "",
             md_table(["oracle", "model", "prompt sha256", "labels"], table.values.tolist(), align="lllr"),
             "", f"Filter `{ctx.filt.id}` from `{ctx.filt.path}`; its prompt now hashes to `{ctx.filt.prompt_sha256}`"]
    old = sorted(set(table["prompt"]) - {ctx.filt.prompt_sha256})
    lines[-1] += (" (the labels above with another hash were made with an earlier prompt)." if old else
                  ", the prompt every label above was made with.")
    return lines + [""]


def card_selection(ctx: ReportContext) -> list[str]:
    p, s = ctx.params, ctx.solution
    rows = [["selection in gt.db", f"`{ctx.name}` (tables selections, selection_members)"],
            ["strategy", p["strategy"]], ["target size", p["target_size"]], ["seed", p["seed"]],
            ["train / val / test ratios", " / ".join(f"{r:g}" for r in p["ratios"])],
            ["dimensions covered", ", ".join(p["dimensions"])],
            ["bins (lower edges)", ", ".join(f"{e:g}" for e in p["bins"])],
            ["tier bounds (articles)", ", ".join(f"{t} {lo}-{hi}" for t, lo, hi in
                                                 zip(ctx.filt.tier_names, p["tier_min"], p["tier_max"]))],
            ["max per source", p["max_per_source"] if p["max_per_source"] is not None else "no cap"],
            ["difficulty filter", p["filter_by_difficulty"] or "none"],
            ["model predictions", p["model_predictions"] or "none"],
            ["labelled file imported", p["labeled_file"] or "none"],
            ["held-out split", p["holdout_split"] or "none"],
            ["test split", test_split_words(p)],
            ["exploration share (uniform part of train+val)", f"{p.get('exploration_share') or 0:g}"],
            ["objective / bound / gap", f"{s.objective:,} / {s.bound:,} / {100 * s.gap:.2f}%"],
            ["solver status", s.status + (f" ({s.proven_by})" if s.proven_by else "")]]
    return ["## Selection", "", md_table(["parameter", "value"], rows, align="ll"), "",
            "The objective and the baselines it beats are explained in `selection_report.md`; the coverage per "
            "dimension in `coverage_comparison.md`.", ""]


def test_split_words(p: dict) -> str:
    """Which test the split files hold, in words (the dataset card and the model card say it)."""
    if p.get("test_from") == "pool":
        return (f"{p['test_size']} articles drawn uniformly from the eligible pool before the strategy picked "
                f"(--test-from pool): figures on it are those of the pool's distribution")
    if p.get("holdout_split"):
        return f"none here: the test split of '{p['holdout_split']}' in gt.db (evaluate --split {p['holdout_split']})"
    return "a share of the strategy's picks (--test-from selection): skewed as the selection is"


def card_licence_section(sources: pd.DataFrame) -> list[str]:
    """One row per licence: its articles and (up to 5 of) their sources and files; then the attributions."""
    groups: dict[str, list] = {}
    attributions = []
    for src, origin, n in sources[["source", "origin", "articles"]].itertuples(index=False):
        known = licence_of(origin, src)
        where = (src if isinstance(src, str) else "(no source)") + (f" ({origin})" if isinstance(origin, str) else "")
        entry = groups.setdefault(known[1] if known else UNKNOWN_LICENCE, [0, []])
        entry[0] += int(n)
        entry[1].append(where)
        if known and known[2] not in attributions:
            attributions.append(known[2])
    rows = [[licence, n, ", ".join(wheres[:5]) + (f" and {len(wheres) - 5} more" if len(wheres) > 5 else "")]
            for licence, (n, wheres) in groups.items()]
    lines = ["## Licence", "", "The texts keep their own licence; the scores are this project's output.", "",
             md_table(["licence", "articles", "sources (ingested from)"], rows, align="lrl"), ""]
    if attributions:
        lines += ["Attribution to keep with every copy:", ""] + [f"> {a}" for a in attributions] + [""]
    return lines


def card_loading(out_dir: str, fmt: str, counts: dict) -> list[str]:
    builder = "json" if fmt == "jsonl" else "parquet"
    files = ", ".join(f'"{hf}": "{out_dir}/{sp}.{fmt}"' for sp, hf in HF_SPLIT.items() if counts[sp])
    lines = ["## Loading", "", "```python", "from datasets import load_dataset", ""]
    if all(counts.values()):
        lines += [f"# split names from the file names: train, validation (val.{fmt}), test",
                  f'ds = load_dataset("{builder}", data_dir="{out_dir}")']
    else:
        lines += ["# a split is empty and load_dataset refuses a split file without rows: name the others"]
    lines += ["# the files named", f"ds = load_dataset(\"{builder}\", data_files={{{files}}})",
              "# the configs of this card", f'ds = load_dataset("{out_dir}")', "```", ""]
    if fmt == "parquet":
        lines += ["`make train` reads the JSONL splits: rerun select with `--format jsonl`, or train from gt.db "
                  "with `python -m stages.train --selection <name>`.", ""]
    return lines


def strategy_table() -> str:
    return md_table(["strategy", "goal", "quotas", "cell value", "article weight", "tiers"],
                    [[s.name, s.goal, s.quotas, s.values, s.weights, s.tiers] for s in STRATEGIES.values()],
                    align="llllll")


def terms_lines(ctx: ReportContext, strategies: str = "the Strategies table of selection_report.md") -> list[str]:
    """The words both reports use, defined before any figure."""
    integer_bins = np.array_equal(ctx.edges, np.arange(11))
    bins = ("one per integer score 0-10, a half point falls into the bin below" if integer_bins else
            "lower edges " + ", ".join(f"{e:g}" for e in ctx.edges))
    bonus = int(ctx.program.bonus.max())
    weighted = " and ".join(s.name for s in STRATEGIES.values() if s.uses_student_error)
    return ["**Terms.** *Bin*: a range of the 0-10 score scale, from one `--bins` edge to the next "
            f"({bins}). *Cell*: one (dimension, bin) pair; an article sits in one cell per dimension. "
            "*Quota*: how many articles of a cell count; more add nothing. *Value*: what each counted article "
            f"of a cell adds (the strategy sets quotas and values: {strategies}). "
            "*Fill*: value x min(articles in the cell, quota), summed over cells; what the pool allows is the "
            "fill of the whole pool, the most any subset can reach. *Covered*: a cell that holds at least one "
            f"article{f', worth a bonus of {bonus}' if bonus else ''}. *Objective*: fill + the bonuses of the "
            f"covered cells + the strategy's article weights (only {weighted} has any); *bound*: no "
            "selection can score above it; *gap*: (bound - objective) / bound. *Random* and *greedy*: the "
            "baselines, defined under Baselines.", ""]


def _dimension_stats(ctx: ReportContext, mask: np.ndarray) -> dict:
    bins = ctx.pool.bins[mask]
    b = len(ctx.edges)
    counts = np.stack([np.bincount(bins[:, j], minlength=b) for j in range(bins.shape[1])]) if len(bins) else \
        np.zeros((len(ctx.dims), b), dtype=int)
    high = bands.is_high(ctx.pool_df.loc[mask, ctx.dims].to_numpy())
    fill = (ctx.program.value * np.minimum(counts, ctx.program.quota)).sum(axis=1)
    return {"counts": counts, "covered": (counts > 0).sum(axis=1), "high": high.sum(axis=0),
            "high_articles": int(high.any(axis=1).sum()), "fill": fill}


def baselines(ctx: ReportContext) -> dict[str, dict]:
    """The selection, the random baseline (mean over its subsets) and the greedy one on the same
    measures, so both reports quote the same numbers: objective, fill, cells covered, articles
    scoring in the high tail (8-10) on at least one dimension."""
    def measures(masks: list) -> dict:
        stats = [_dimension_stats(ctx, m) for m in masks]
        return {key: float(np.mean([st[key].sum() if key != "high_articles" else st[key] for st in stats]))
                for key in ("fill", "covered", "high_articles")}

    out = {"selection": {"objective": float(ctx.solution.objective), **measures([ctx.chosen])},
           f"random (mean of {len(ctx.randoms)})": {"objective": float(np.mean(ctx.random_objs)),
                                                    **measures(ctx.randoms)}}
    if ctx.greedy_mask is not None:
        out["greedy"] = {"objective": float(ctx.greedy_obj), **measures([ctx.greedy_mask])}
    return out


def baseline_lines(ctx: ReportContext) -> list[str]:
    """The Baselines section, the same in both reports."""
    k, seed, n = int(ctx.chosen.sum()), ctx.params["seed"], len(ctx.randoms)
    figures = baselines(ctx)
    pool_s = _dimension_stats(ctx, np.ones(ctx.pool.size, dtype=bool))
    reach = float((ctx.program.value * np.minimum(pool_s["counts"], ctx.program.quota)).sum())
    own = figures["selection"]["objective"]
    num = lambda v: f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"  # noqa: E731  (means keep a decimal)
    rows = [[name, num(f["objective"]), pct(f["objective"], own), num(f["fill"]), pct(f["fill"], reach),
             num(f["covered"]), num(f["high_articles"])] for name, f in figures.items()]
    return ["## Baselines", "",
            f"- **random**: {n} subsets of {k} articles drawn uniformly at random from the {len(ctx.pool_df)} "
            f"eligible articles (seeds {seed} to {seed + n - 1}), ignoring the tier, source and near-duplicate "
            f"constraints; every figure is the mean over the {n}.",
            f"- **greedy**: starts empty and adds, one at a time until {k}, the article that raises the objective "
            "most, within the same tier, source and near-duplicate bounds as the program (ties in an order "
            f"seeded by {seed})"
            + ("." if ctx.greedy_mask is not None else "; here it found no subset that meets the bounds."), "",
            md_table(["subset", "objective", "% of the selection's objective", "fill", "% of what the pool allows",
                      f"cells covered (of {ctx.pool.bins.shape[1] * len(ctx.edges)})",
                      f"articles scoring {HIGH_BINS} on at least one dimension"], rows, align="lrrrrrr"), ""]


def selection_report(ctx: ReportContext) -> str:
    """selection_report.md: the answer and its bound, the splits, the parameters, the solver's steps,
    the baselines, the strategies, the tier and source mix, the exclusions and the student's error."""
    lines = (_headline(ctx) + _splits_and_parameters(ctx) + _solver_section(ctx) + baseline_lines(ctx)
             + _strategies_section(ctx) + _mix_sections(ctx))
    if ctx.error is not None:
        e = ctx.error
        lines += ["## Student error", "", f"Mean absolute error of the student over {', '.join(ctx.dims)}: pool "
                  f"{e.mean():.3f}, selection {e[ctx.chosen].mean():.3f} ({int(e.notna().sum())} of "
                  f"{len(e)} pool articles have predictions).", ""]
    return "\n".join(lines)


def _headline(ctx: ReportContext) -> list[str]:
    s, k = ctx.solution, int(ctx.chosen.sum())
    rand = baselines(ctx)[f"random (mean of {len(ctx.randoms)})"]["objective"]
    proven = (f"**proven optimal** ({s.proven_by})" if s.status == "optimal"
              else f"feasible, within {100 * s.gap:.2f}% of the bound (time limit {ctx.params['time_limit']:g} s)")
    how = ("drawn uniformly at random (no program: its objective is measured, not optimised)"
           if s.status == "uniform" else f"objective {s.objective:,} vs bound {s.bound:,} (gap {100 * s.gap:.2f}%), "
                                        f"{proven}, in {s.seconds:.2f} s")
    explore = (f" {ctx.params['exploration_share']:.0%} of them drawn uniformly from what the program left "
               f"(--exploration-share)." if ctx.params.get("exploration_share") else "")
    test = (f" The test split ({ctx.params['test_size']} articles) is a uniform sample of the eligible pool drawn "
            f"before the strategy picked (--test-from pool): the student's test figures are those of the pool's "
            f"distribution." if ctx.params.get("test_from") == "pool" else "")
    lines = [f"# Selection `{ctx.name}`", "", *terms_lines(ctx, "see Strategies below"),
             f"Selected **{k}** of {len(ctx.pool_df)} eligible articles ({ctx.filt.id}, oracle `{ctx.oracle}`) with "
             f"strategy **{ctx.strategy.name}**: {how}, objective {s.objective:,}.{explore}{test} The random baseline reaches "
             f"{pct(rand, s.objective)} of this objective, the greedy baseline "
             f"{pct(ctx.greedy_obj, s.objective) if ctx.greedy_obj is not None else '— (it found no feasible set)'} "
             "(both under Baselines).", ""]
    lines += stand_in_warning(ctx.oracle, "this selection")
    return lines


def _splits_and_parameters(ctx: ReportContext) -> list[str]:
    k, p = int(ctx.chosen.sum()), ctx.params
    split_counts = ctx.split_of.value_counts()
    return ["## Splits", "", md_table(["split", "articles", "share"],
            [[sp, int(split_counts.get(sp, 0)), pct(split_counts.get(sp, 0), k)] for sp in splits.SPLITS]), "",
            "Each split covers the cells in proportion (iterative stratification over the (dimension, bin) "
            "cells); at most one article per near-duplicate cluster is selected, so no cluster crosses splits. "
            "README.md beside the splits is their dataset card.", "",
            "## Parameters", "", md_table(["parameter", "value"], [
                ["target size", p["target_size"]], ["strategy", p["strategy"]],
                ["dimensions", ", ".join(p["dimensions"])], ["bins (lower edges)", ", ".join(f"{e:g}" for e in p["bins"])],
                ["train / val / test", " / ".join(f"{r:g}" for r in p["ratios"])], ["seed", p["seed"]],
                ["max per source", p["max_per_source"] if p["max_per_source"] is not None else "no cap"],
                ["tier shares (--tier-shares)", json.dumps(p["tier_shares"]) if p["tier_shares"] else "strategy default"],
                ["difficulty filter", p["filter_by_difficulty"] or "none"],
                ["model predictions", p["model_predictions"] or "none"],
                ["labelled file imported", p["labeled_file"] or "none"],
                ["prompt sha256", p["prompt_sha256"][:16] + "…"], ["time limit", f"{p['time_limit']:g} s"]],
                align="ll"), ""]


def _solver_section(ctx: ReportContext) -> list[str]:
    s = ctx.solution
    return ["## Solver", "", md_table(["step", "figure"], [
        ["eligible articles", len(ctx.pool_df)],
        ["groups (identical bin profile, tier, weight, capped source, cluster)", s.groups],
        ["LP relaxation (GLOP) objective", f"{s.lp_objective:,.2f}"],
        ["bound (floor of the LP, or CP-SAT's)", f"{s.bound:,}"],
        ["rounded LP + greedy completion", f"{s.rounded_objective:,}"],
        ["final objective", f"{s.objective:,}"], ["gap", f"{100 * s.gap:.3f}%"],
        ["status", s.status + (f", proven by the {s.proven_by}" if s.proven_by else "")],
        ["CP-SAT groups after reduced-cost fixing", s.free_groups if s.timings.get("cpsat") else "not needed"],
        ["time: LP / rounding / CP-SAT / total", " / ".join(f"{s.timings.get(x, 0.0):.2f}" for x in
                                                            ("lp", "rounding", "cpsat")) + f" / {s.seconds:.2f} s"]],
        align="ll"),
        "",
        f"The objective is the sum over cells of value x min(articles in the cell, quota), plus "
        f"a bonus of {int(ctx.program.bonus.max())} for each cell that holds at least one article (covering an "
        f"empty bin outweighs anything else one article can add), plus the strategy's article weights; all "
        f"coefficients are integers, so the floor of the LP relaxation bounds every selection.", ""]


def _strategies_section(ctx: ReportContext) -> list[str]:
    return ["## Strategies", "", f"This selection used **{ctx.strategy.name}**. The base quota is "
            f"ceil(K / bins) = {math.ceil(ctx.params['target_size'] / len(ctx.edges))}; extreme bins are those with a "
            f"midpoint below {bands.MIDDLE_LOW:g} or at least {bands.MIDDLE_HIGH:g}.", "", strategy_table(), ""]


def _mix_sections(ctx: ReportContext) -> list[str]:
    """Tier mix, source mix and exclusions: the pool beside the selection."""
    k, cap = int(ctx.chosen.sum()), ctx.params["max_per_source"]
    pool_t = ctx.pool_df["tier"].value_counts()
    sel_t = ctx.pool_df.loc[ctx.chosen, "tier"].value_counts()
    lines = ["## Tier mix", "", md_table(["tier", "pool", "pool share", "selected", "selected share", "allowed"],
             [[t, int(pool_t.get(t, 0)), pct(pool_t.get(t, 0), len(ctx.pool_df)), int(sel_t.get(t, 0)),
               pct(sel_t.get(t, 0), k), f"{ctx.program.tier_min[i]}-{ctx.program.tier_max[i]}"]
              for i, t in enumerate(ctx.filt.tier_names)]), ""]
    src_pool = ctx.pool_df["source"].fillna("(unknown)").value_counts()
    src_sel = ctx.pool_df.loc[ctx.chosen, "source"].fillna("(unknown)").value_counts()
    lines += ["## Source mix", "", f"{len(src_sel)} sources in the selection ({len(src_pool)} in the pool)"
              + (f"; cap {cap} per source." if cap else "; no per-source cap.")
              + (" The 15 largest:" if len(src_sel) > 15 else ""), "",
              md_table(["source", "pool", "selected", "selected share"],
                       [[src, int(src_pool.get(src, 0)), int(n), pct(n, k)] for src, n in src_sel.head(15).items()]), ""]
    clusters = int(ctx.pool_df["near_dup_cluster"].notna().sum())
    return lines + ["## Exclusions", "", md_table(["reason", "articles"], [[r, n] for r, n in ctx.excluded.items()]
                    + [["in near-duplicate clusters (at most one per cluster may be chosen)", clusters]], align="lr"), ""]


def coverage_report(ctx: ReportContext) -> str:
    everything = np.ones(ctx.pool.size, dtype=bool)
    pool_s, sel_s = _dimension_stats(ctx, everything), _dimension_stats(ctx, ctx.chosen)
    rand_s = [_dimension_stats(ctx, m) for m in ctx.randoms]
    greedy_s = _dimension_stats(ctx, ctx.greedy_mask) if ctx.greedy_mask is not None else None
    reach = (ctx.program.value * np.minimum(pool_s["counts"], ctx.program.quota)).sum(axis=1)
    mean = lambda key: np.mean([r[key] for r in rand_s], axis=0)  # noqa: E731
    b, k, n = len(ctx.edges), int(ctx.chosen.sum()), len(ctx.randoms)
    rand_name = f"random (mean of {n})"
    figures = baselines(ctx)
    lines = ["# Coverage: pool, selection, random and greedy", "", *terms_lines(ctx),
             f"The selection of {k} fills **{pct(sel_s['fill'].sum(), reach.sum())}** of what the pool allows, "
             f"the random baseline {pct(figures[rand_name]['fill'], reach.sum())}"
             + (f", the greedy baseline {pct(figures['greedy']['fill'], reach.sum())}" if greedy_s else "") + ". "
             f"**{sel_s['high_articles']}** of the {k} selected articles score {HIGH_BINS} on at least one of the "
             f"{len(ctx.dims)} dimensions (each article counted once), vs {figures[rand_name]['high_articles']:.1f} "
             f"in a random subset" + (f" and {greedy_s['high_articles']} in the greedy one" if greedy_s else "")
             + f"; the pool has {pool_s['high_articles']}.", "",
             "![coverage per dimension](coverage_comparison.png)", "",
             "*Figure*: articles per score bin, one panel per dimension; a red x marks a bin where the pool has "
             "no article, so no subset can cover it.", "",
             *baseline_lines(ctx),
             f"## Bins covered (of {b}), per dimension", "",
             md_table(["dimension", "pool", "selection", rand_name, "greedy"],
                      [[d, int(pool_s["covered"][j]), int(sel_s["covered"][j]), float(mean("covered")[j]),
                        int(greedy_s["covered"][j]) if greedy_s else None] for j, d in enumerate(ctx.dims)],
                      floatfmt=".1f"), "",
             "## Fill per dimension (and % of what the pool allows)", "",
             md_table(["dimension", "pool allows", "selection", rand_name, "greedy"],
                      [[d, int(reach[j]), f"{int(sel_s['fill'][j])} ({pct(sel_s['fill'][j], reach[j])})",
                        f"{mean('fill')[j]:.1f} ({pct(mean('fill')[j], reach[j])})",
                        f"{int(greedy_s['fill'][j])} ({pct(greedy_s['fill'][j], reach[j])})" if greedy_s else "—"]
                       for j, d in enumerate(ctx.dims)]), "",
             f"## Articles scoring {HIGH_BINS}, per dimension", "",
             f"An article that scores {HIGH_BINS} on two dimensions counts in both rows, so the rows can add up to more "
             "than the articles above.", "",
             md_table(["dimension", "pool", "selection", rand_name, "greedy"],
                      [[d, int(pool_s["high"][j]), int(sel_s["high"][j]), float(mean("high")[j]),
                        int(greedy_s["high"][j]) if greedy_s else None] for j, d in enumerate(ctx.dims)],
                      floatfmt=".1f"), "",
             "## Selected articles per bin", "",
             md_table(["dimension", *bin_labels(ctx.edges)],
                      [[d, *[int(x) for x in sel_s["counts"][j]]] for j, d in enumerate(ctx.dims)]), "",
             "## Pool articles per bin", "",
             md_table(["dimension", *bin_labels(ctx.edges)],
                      [[d, *[int(x) for x in pool_s["counts"][j]]] for j, d in enumerate(ctx.dims)]), ""]
    return "\n".join(lines)


def coverage_plot(ctx: ReportContext, path: Path) -> None:
    """coverage_figure for this selection, saved as a PNG."""
    series = {"selection": _dimension_stats(ctx, ctx.chosen)["counts"],
              f"random (mean of {len(ctx.randoms)})":
                  np.mean([_dimension_stats(ctx, m)["counts"] for m in ctx.randoms], axis=0)}
    if ctx.greedy_mask is not None:
        series["greedy"] = _dimension_stats(ctx, ctx.greedy_mask)["counts"]
    pool_counts = _dimension_stats(ctx, np.ones(ctx.pool.size, dtype=bool))["counts"]
    fig = coverage_figure(series, pool_counts, ctx.dims, bin_labels(ctx.edges), f"{ctx.name}: articles per score bin")
    fig.savefig(path, format="png", dpi=90)


def coverage_figure(series: dict[str, np.ndarray], pool_counts: np.ndarray, dims: list[str], labels: list[str],
                    title: str):
    """Articles per score bin, one panel per dimension, one bar per series ((dimensions x bins)
    counts each); a red x on the axis where the pool has no article in the bin. A plain grid layout
    (no constrained layout, no tight bbox): the shared helper's layout pass took seconds here, longer
    than the solve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ncols = min(4, len(dims))
    nrows = math.ceil(len(dims) / ncols)
    height = 2.4 * nrows + 1.2
    fig = Figure(figsize=(3.1 * ncols + 0.4, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    handles = []
    for j, dim in enumerate(dims):
        ax = axes[j // ncols][j % ncols]
        for s_i, (name, counts) in enumerate(series.items()):
            bars = ax.bar(x + (s_i - (len(series) - 1) / 2) * width, counts[j], width=width, color=f"C{s_i}",
                          label=name)
            if j == 0:
                handles.append(bars)
        empty = np.flatnonzero(pool_counts[j] == 0)
        if len(empty):
            ax.plot(empty, np.zeros(len(empty)), linestyle="none", marker="x", color="red", markersize=6,
                    clip_on=False, zorder=3)
        ax.set_title(dim, fontsize=9)
        ax.set_xticks(x, labels, fontsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="y", labelsize=7)
        if j + ncols >= len(dims):
            ax.set_xlabel("score bin", fontsize=8)
        if j % ncols == 0:
            ax.set_ylabel("articles", fontsize=8)
    for j in range(len(dims), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if (pool_counts == 0).any():
        handles.append(Line2D([], [], linestyle="none", marker="x", color="red",
                              label="no article in the pool (no subset can cover it)"))
    fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper center", ncol=len(handles),
               fontsize=7, frameon=False, bbox_to_anchor=(0.5, 1 - 0.45 / height))
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    fig.subplots_adjust(left=0.6 / (3.1 * ncols + 0.4), right=0.98, bottom=0.55 / height, top=1 - 1.0 / height,
                        wspace=0.3, hspace=0.55)
    return fig

