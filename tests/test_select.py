"""Select stage: the integer program's answer against brute force, constraints, determinism,
splits, strategy directions, bad input, and the files it writes."""
from __future__ import annotations

import itertools
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from stages import select as stage_command
from gt.selection import program as solver, splits, strategies
from gt.selection import report as selection_report
from gt.core import store
from gt.selection.pool import program_pool
from tests.conftest import skewed_scores

TIERS = ["impact", "connection", "not_uplifting"]


# ---- helpers ----------------------------------------------------------------------------------

def make_pool_db(conn, filt, scores, *, sources=None, clusters=None, too_short=None, oracle="test-oracle",
                 repeat=0, prefix="a", with_articles=True):
    """Articles a000.. with the given score rows (one per article) as valid labels of `oracle`."""
    names = filt.dimension_names
    n = len(scores)
    if with_articles:
        with store.transaction(conn):
            for i in range(n):
                conn.execute(
                    "INSERT INTO articles (id, title, text, source, content_hash, chars, near_dup_cluster, too_short) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (f"{prefix}{i:03d}", f"Title {i}", f"Body of article {i}. " * 30,
                     sources[i] if sources is not None else f"src{i % 4}", f"hash{prefix}{i}", 600,
                     clusters[i] if clusters is not None else None, int(too_short[i]) if too_short is not None else 0))
    run_id = store.start_run(conn, purpose="label", filt=filt, oracle=oracle, provider=None, model=None)
    for i in range(n):
        store.insert_label(conn, run_id=run_id, article_id=f"{prefix}{i:03d}", filt=filt, oracle=oracle, status="ok",
                           repeat=repeat, scores={d: float(scores[i][j]) for j, d in enumerate(names)},
                           content_type="solutions_story")
    store.finish_run(conn, run_id)


def run_select(db_path, out_dir, *extra):
    return stage_command.main(["--db", str(db_path), "--output-dir", str(out_dir), *map(str, extra)])


def members(db_path, name):
    c = sqlite3.connect(db_path)
    rows = c.execute("SELECT m.article_id, m.split FROM selection_members m JOIN selections s ON s.id = m.selection_id "
                     "WHERE s.name = ? ORDER BY m.article_id", (name,)).fetchall()
    c.close()
    return rows


def brute_force(pool: solver.Pool, program: solver.Program) -> int:
    best = -1
    for combo in itertools.combinations(range(pool.size), program.size):
        idx = np.array(combo)
        tiers = np.bincount(pool.tier[idx], minlength=len(program.tier_names))
        if (tiers < program.tier_min).any() or (tiers > program.tier_max).any():
            continue
        if program.max_per_source is not None and np.bincount(pool.source[idx]).max() > program.max_per_source:
            continue
        cl = pool.cluster[idx]
        cl = cl[cl >= 0]
        if len(cl) != len(np.unique(cl)):
            continue
        counts = np.zeros(pool.size, dtype=np.int64)
        counts[idx] = 1
        best = max(best, solver.objective_value(pool.bins, counts, pool.weight, program))
    return best


def random_small_pool(rng, n=14, d=3, with_weight=False):
    bins = np.minimum(rng.geometric(0.45, size=(n, d)) - 1, 10)
    bins[rng.random((n, d)) < 0.15] = rng.integers(7, 11)          # a few high scores
    tier = rng.integers(0, 3, size=n)
    source = rng.integers(0, 4, size=n)
    cluster = np.full(n, -1)
    cluster[rng.choice(n, 4, replace=False)] = [0, 0, 1, 1]        # two near-duplicate pairs
    weight = rng.integers(0, 4, size=n) if with_weight else None
    return solver.Pool(bins=bins, tier=tier, source=source, cluster=cluster, weight=weight)


# ---- the program against brute force -----------------------------------------------------------

@pytest.mark.parametrize("strategy", ["maximize_coverage", "extreme_focus", "balanced_tiers", "iqr_optimization",
                                      "active_learning"])
@pytest.mark.parametrize("case", range(3))
def test_objective_equals_brute_force_optimum(strategy, case):
    rng = np.random.default_rng(100 * case + len(strategy))
    pool = random_small_pool(rng, with_weight=strategy == "active_learning")
    k = 5
    program = strategies.build_program(strategies.STRATEGIES[strategy], np.arange(11.0), k, TIERS, pool, tier_shares=None,
                                  max_per_source=2 if case == 1 else None)
    program.quota[:] = np.minimum(program.quota, 1 + case)           # tight quotas make the choice matter
    groups = solver.aggregate(pool, program)
    optimum = brute_force(pool, program)
    for polish in ("auto", "always"):
        solution = solver.solve(groups, program, time_limit=10, seed=1, polish=polish)
        chosen = solver.pick_articles(pool, groups, solution.counts, seed=1)
        assert solution.objective == optimum, polish
        assert solution.status == "optimal" and solution.bound == optimum
        assert solver.objective_value(pool.bins, chosen.astype(np.int64), pool.weight, program) == optimum
        assert chosen.sum() == k


def test_cp_sat_improves_a_poor_hint_and_proves_it():
    """Where rounding falls short of the bound, CP-SAT (with reduced-cost fixing) closes the gap."""
    rng = np.random.default_rng(7)
    found_gap_case = False
    for _ in range(40):
        pool = random_small_pool(rng, n=13)
        program = strategies.build_program(strategies.STRATEGIES["maximize_coverage"], np.arange(11.0), 5, TIERS, pool,
                                      tier_shares={"impact": (0.4, 1.0)}, max_per_source=2)
        program.quota[:] = 1
        try:
            groups = solver.aggregate(pool, program)
            solution = solver.solve(groups, program, time_limit=10, seed=3)
        except solver.SelectionError:
            continue
        assert solution.objective == brute_force(pool, program)
        if solution.rounded_objective < solution.objective:
            found_gap_case = True
            assert solution.proven_by == "CP-SAT"
    assert found_gap_case, "no pool where rounding alone fell short: the CP-SAT step went untested"


# ---- the stage on gt.db -----------------------------------------------------------------------

@pytest.fixture
def pool_db(conn, uplifting, db_path):
    """300 labelled articles with skewed scores, 6 sources, 10 near-duplicate pairs, 5 too short."""
    n = 300
    clusters = [f"c{i // 2}" if i < 20 else None for i in range(n)]
    sources = [f"src{i % 6}" for i in range(n)]
    short = [i in (21, 22, 23, 24, 25) for i in range(n)]
    make_pool_db(conn, uplifting, skewed_scores(n, 5), sources=sources, clusters=clusters, too_short=short)
    return db_path


def frame_of(db_path, uplifting):
    c = store.connect(db_path)
    df = store.scores_frame(c, uplifting, "test-oracle")
    arts = {r["id"]: dict(r) for r in c.execute("SELECT * FROM articles")}
    c.close()
    return df.set_index("article_id"), arts


def test_constraints_hold_and_outputs_load(pool_db, tmp_path, uplifting, capsys):
    out = tmp_path / "training"
    rc = run_select(pool_db, out, "--target-size", 60, "--max-per-source", 11, "--test-from", "selection",
                    "--tier-shares", "not_uplifting=:0.6,connection=0.2:", "--name", "c1")
    assert rc == 0, capsys.readouterr().err
    rows = members(pool_db, "c1")
    assert len(rows) == 60
    df, arts = frame_of(pool_db, uplifting)
    ids = [a for a, _ in rows]
    assert not any(arts[a]["too_short"] for a in ids)
    sources = [arts[a]["source"] for a in ids]
    assert max(sources.count(s) for s in set(sources)) <= 11
    clusters = [arts[a]["near_dup_cluster"] for a in ids if arts[a]["near_dup_cluster"]]
    assert len(clusters) == len(set(clusters))
    tiers = df.loc[ids, "tier"].value_counts()
    assert tiers.get("not_uplifting", 0) <= 36 and tiers.get("connection", 0) >= 12
    # the JSONL splits: documented fields, every selected article once, labels in dimension order
    seen = []
    for split, n in (("train", 48), ("val", 6), ("test", 6)):
        lines = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(lines) == n
        for rec in lines:
            assert set(rec) == {"id", "title", "text", "labels", "dimension_names", "tier", "overall",
                                "label_id", "oracle", "model", "prompt_sha256", "evidence", "repeats"}  # tests/test_splits.py
            assert rec["dimension_names"] == uplifting.dimension_names
            assert rec["labels"] == [df.loc[rec["id"], d] for d in uplifting.dimension_names]
            assert rec["tier"] == df.loc[rec["id"], "tier"] and rec["text"] == arts[rec["id"]]["text"]
            seen.append(rec["id"])
        assert {r[0] for r in rows if r[1] == split} == {rec["id"] for rec in lines}
    assert sorted(seen) == ids
    report = (out / "selection_report.md").read_text()
    assert "proven optimal" in report and "maximize_coverage" in report and "extreme_focus" in report
    coverage = (out / "coverage_comparison.md").read_text()
    assert "random (mean of 5)" in coverage and "greedy" in coverage
    assert (out / "coverage_comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_high_scores_are_counted_per_article_once(conn, uplifting, db_path, tmp_path):
    """a000 scores 9 on agency and 9 on progress, a001 8 on wonder: 2 articles, 3 high (dimension,
    article) pairs. The headline counts articles; the per-dimension table counts pairs."""
    names = uplifting.dimension_names
    scores = np.full((12, len(names)), 3.0)
    scores[:, 0] = np.arange(12) % 6                       # spread, so the bins differ
    scores[0, names.index("agency")] = scores[0, names.index("progress")] = 9
    scores[1, names.index("wonder")] = 8
    make_pool_db(conn, uplifting, scores)
    assert run_select(db_path, tmp_path / "o", "--target-size", 12, "--test-from", "selection") == 0
    coverage = (tmp_path / "o" / "coverage_comparison.md").read_text()
    assert "**2** of the 12 selected articles score 8-10 on at least one of the 8 dimensions" in coverage
    table = coverage.split("## Articles scoring 8-10, per dimension")[1]
    row = lambda d: [x.strip() for x in table.split(f"| {d} |")[1].split("\n")[0].split("|")]  # noqa: E731
    assert row("agency")[:2] == ["1", "1"] and row("progress")[:2] == ["1", "1"] and row("wonder")[:2] == ["1", "1"]
    assert row("justice")[:2] == ["0", "0"]


def test_both_reports_name_the_baselines_and_quote_the_same_numbers(pool_db, tmp_path):
    assert run_select(pool_db, tmp_path / "o", "--target-size", 50, "--seed", 7, "--test-from", "selection") == 0
    report = (tmp_path / "o" / "selection_report.md").read_text()
    coverage = (tmp_path / "o" / "coverage_comparison.md").read_text()
    section = lambda text: text.split("## Baselines")[1].split("\n## ")[0]  # noqa: E731
    assert section(report) == section(coverage)
    assert "5 subsets of 50 articles drawn uniformly at random" in section(report)
    assert "seeds 7 to 11" in section(report)
    assert "**greedy**: starts empty" in section(report)
    random_row = [x.strip() for x in section(report).split("| random (mean of 5) |")[1].split("\n")[0].split("|")]
    assert f"The random baseline reaches {random_row[1]} of this objective" in report
    assert f"the random baseline {random_row[3]}" in coverage
    for text in (report, coverage):
        terms = text.index("**Terms.**")
        assert all(terms < text.index(word) for word in ("fill", "quota", "cell"))
        assert all(f"*{word}*" in text[terms:text.index("\n", terms)] for word in ("Bin", "Cell", "Quota", "Value",
                                                                                     "Fill"))


def test_coverage_figure_is_labelled_with_integer_ticks_and_explains_its_marks():
    dims = ["agency", "progress", "wonder", "justice", "hope"]
    rng = np.random.default_rng(0)
    selection = rng.integers(0, 3, size=(5, 11))
    pool = selection + 1
    pool[2, 10] = 0                                         # wonder: no article scores 10 in the pool
    fig = selection_report.coverage_figure({"selection": selection, "random (mean of 5)": selection * 0.37 + 0.2},
                                           pool, dims, [str(b) for b in range(11)], "t")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5
    assert {ax.get_ylabel() for ax in visible[::4]} == {"articles"}       # the first panel of each row
    # the lowest panel of each column: agency has hope below it, the others nothing
    assert [ax.get_xlabel() for ax in visible] == ["", "score bin", "score bin", "score bin", "score bin"]
    for ax in visible:
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["selection", "random (mean of 5)"] and "no article in the pool" in legend[2]
    no_gap = selection_report.coverage_figure({"selection": selection}, selection + 1, dims,
                                              [str(b) for b in range(11)], "t")
    assert [t.get_text() for t in no_gap.legends[0].get_texts()] == ["selection"]


def test_selection_covers_more_than_random(pool_db, tmp_path, uplifting):
    assert run_select(pool_db, tmp_path / "o", "--target-size", 50, "--name", "cov") == 0
    df, _ = frame_of(pool_db, uplifting)
    chosen = df.loc[[a for a, _ in members(pool_db, "cov")]]
    dims = uplifting.dimension_names
    high_sel = (chosen[dims] >= 8).sum().sum()
    rng = np.random.default_rng(0)
    high_rand = np.mean([(df.iloc[rng.choice(len(df), 50, replace=False)][dims] >= 8).sum().sum() for _ in range(20)])
    assert high_sel > 2 * high_rand
    bins_sel = sum(chosen[d].floordiv(1).nunique() for d in dims)
    bins_pool = sum(df[d].floordiv(1).nunique() for d in dims)
    assert bins_sel == bins_pool  # 50 articles are enough to reach every bin the pool has


def test_same_seed_same_selection_and_splits(pool_db, tmp_path):
    assert run_select(pool_db, tmp_path / "a", "--target-size", 40, "--name", "s1", "--seed", 9) == 0
    assert run_select(pool_db, tmp_path / "b", "--target-size", 40, "--name", "s2", "--seed", 9) == 0
    assert members(pool_db, "s1") == members(pool_db, "s2")
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()


def test_same_name_replaces_unless_a_model_uses_it(pool_db, tmp_path, capsys):
    assert run_select(pool_db, tmp_path / "a", "--target-size", 60, "--name", "x") == 0
    assert run_select(pool_db, tmp_path / "a", "--target-size", 50, "--name", "x") == 0
    assert len(members(pool_db, "x")) == 50
    c = sqlite3.connect(pool_db)
    assert c.execute("SELECT COUNT(*) FROM selections WHERE name = 'x'").fetchone()[0] == 1
    sid = c.execute("SELECT id FROM selections WHERE name = 'x'").fetchone()[0]
    c.execute("INSERT INTO models (id, base_model, selection_id) VALUES ('m1', 'minilm', ?)", (sid,))
    c.commit()
    c.close()
    capsys.readouterr()
    assert run_select(pool_db, tmp_path / "a", "--target-size", 40, "--name", "x") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model 'm1'" in err[0] and "--name" in err[0]
    assert len(members(pool_db, "x")) == 50


# ---- splits -----------------------------------------------------------------------------------

def test_splits_keep_clusters_whole_and_cover_cells_in_proportion():
    rng = np.random.default_rng(3)
    n = 400
    bins = np.minimum(rng.geometric(0.3, size=(n, 4)) - 1, 10)
    unit = np.arange(n)
    unit[:120] = np.repeat(np.arange(40), 3)           # 40 clusters of three articles
    split = splits.assign_splits(bins, unit, (0.8, 0.1, 0.1), seed=5)
    for u in range(40):
        assert len(set(split[unit == u])) == 1
    sizes = np.bincount(split, minlength=3)
    assert abs(sizes[0] - 320) <= 3 and abs(sizes[1] - 40) <= 3 and abs(sizes[2] - 40) <= 3
    for j in range(4):
        for b in range(11):
            in_cell = bins[:, j] == b
            if in_cell.sum() >= 20:
                share = np.bincount(split[in_cell], minlength=3) / in_cell.sum()
                assert abs(share[0] - 0.8) < 0.1 and abs(share[1] - 0.1) < 0.08
    assert (splits.assign_splits(bins, unit, (0.8, 0.1, 0.1), seed=5) == split).all()


def test_single_articles_split_exactly():
    bins = np.minimum(np.random.default_rng(1).geometric(0.4, size=(97, 8)) - 1, 10)
    split = splits.assign_splits(bins, np.arange(97), (0.7, 0.2, 0.1), seed=0)
    assert np.bincount(split, minlength=3).tolist() == splits.split_sizes(97, (0.7, 0.2, 0.1)).tolist() == [68, 19, 10]


# ---- strategies move the distribution their way ---------------------------------------------------

@pytest.fixture(scope="module")
def strategy_pool():
    """A pure-program pool (no gt.db): 600 articles, 4 dimensions, skewed."""
    rng = np.random.default_rng(11)
    scores = skewed_scores(600, 11, d=4)
    tier = np.where(scores.mean(axis=1) >= 6, 0, np.where(scores.mean(axis=1) >= 3, 1, 2))
    error = rng.gamma(2.0, 0.5, size=600)
    return scores, tier, error


def _select(strategy, scores, tier, k=80, error=None):
    """The strategy's program on a pool frame built the stage's way (gt.selection.pool.program_pool): with
    `error`, the article weights and priorities are the stage's own (selection.active_learning_weights)."""
    dims = [f"d{j}" for j in range(scores.shape[1])]
    frame = pd.DataFrame(scores, columns=dims).assign(tier=[TIERS[t] for t in tier], source="one source",
                                                      near_dup_cluster=None)
    pool, _ = program_pool(frame, dims, np.arange(11.0), TIERS, None if error is None else pd.Series(error))
    program = strategies.build_program(strategies.STRATEGIES[strategy], np.arange(11.0), k, TIERS, pool, tier_shares=None,
                                  max_per_source=None)
    groups = solver.aggregate(pool, program)
    return solver.pick_articles(pool, groups, solver.solve(groups, program, seed=1, time_limit=5).counts, seed=1)


def test_extreme_focus_raises_the_share_of_extremes(strategy_pool):
    scores, tier, _ = strategy_pool
    extreme = lambda m: ((scores[m] <= 3) | (scores[m] >= 8)).mean()  # noqa: E731
    assert extreme(_select("extreme_focus", scores, tier)) > extreme(_select("maximize_coverage", scores, tier)) + 0.05


def test_balanced_tiers_equalises_tiers(strategy_pool):
    scores, tier, _ = strategy_pool
    avail = np.bincount(tier, minlength=3)
    counts = np.bincount(tier[_select("balanced_tiers", scores, tier, k=60)], minlength=3)
    assert avail.min() >= 20  # every tier can give its third
    assert counts.tolist() == [20, 20, 20]
    cov = np.bincount(tier[_select("maximize_coverage", scores, tier, k=60)], minlength=3)
    assert cov.max() - cov.min() > 0


def test_iqr_optimization_widens_the_spread(strategy_pool):
    scores, tier, _ = strategy_pool
    iqr = lambda m: np.mean([np.subtract(*np.percentile(scores[m, j], [75, 25])) for j in range(4)])  # noqa: E731
    # 40 of 600: the quotas bind, so the two programs choose differently (at 120 of 600 both fill every cell
    # and their spreads tie)
    wide, covered = _select("iqr_optimization", scores, tier, k=40), _select("maximize_coverage", scores, tier, k=40)
    assert (wide != covered).any()
    assert iqr(wide) > iqr(covered)                    # ... and iqr_optimization's spread is strictly wider


def test_active_learning_prefers_high_error_articles(strategy_pool):
    scores, tier, error = strategy_pool
    picked = _select("active_learning", scores, tier, error=error)
    baseline = _select("maximize_coverage", scores, tier)
    assert error[picked].mean() > error[baseline].mean() + 0.3
    assert error[picked].mean() > np.percentile(error, 65)


def test_active_learning_weights_rank_the_students_error():
    """Weights: the error's pool percentile (average ranks, unknown errors left out) cut into 2 x D
    levels, the top level for the worst; no prediction, no weight and the lowest priority."""
    error = pd.Series([0.1, 2.0, np.nan, 0.5, 3.0, 0.1, 1.0, np.nan])
    weight, priority = strategies.active_learning_weights(error, n_dims=2)             # 4 levels: 0..3
    # percentiles of the six known errors: 0.1 and 0.1 -> 1.5/6, 0.5 -> 3/6, 1.0 -> 4/6, 2.0 -> 5/6, 3.0 -> 6/6
    assert weight.tolist() == [1, 3, 0, 2, 3, 1, 2, 0]
    known = error.notna().to_numpy()
    assert (priority[known] == error[known]).all() and (priority[~known] < error.min()).all()
    many = pd.Series(np.random.default_rng(4).gamma(2.0, 0.5, 400))
    w, _ = strategies.active_learning_weights(many, n_dims=4)
    assert sorted(set(w)) == list(range(8)) and (np.diff(w[np.argsort(many.to_numpy())]) >= 0).all()


def test_active_learning_through_the_stage_with_a_predictions_file(pool_db, tmp_path, uplifting):
    df, _ = frame_of(pool_db, uplifting)
    dims = uplifting.dimension_names
    rng = np.random.default_rng(2)
    bad = set(df.index[rng.choice(len(df), 40, replace=False)])  # the student is badly wrong on these
    preds = tmp_path / "predictions.jsonl"
    with preds.open("w") as f:
        for aid, row in df.iterrows():
            off = 4.0 if aid in bad else 0.2
            values = [min(10.0, row[d] + off) if row[d] < 5 else row[d] - off for d in dims]
            f.write(json.dumps({"id": aid, "predictions": values}) + "\n")
    assert run_select(pool_db, tmp_path / "al", "--target-size", 40, "--strategy", "active_learning",
                      "--model-predictions", preds, "--name", "al") == 0
    chosen = {a for a, _ in members(pool_db, "al")}
    assert len(chosen & bad) >= 20  # random would give about 5
    assert "Student error" in (tmp_path / "al" / "selection_report.md").read_text()


def test_difficulty_filter_keeps_the_disputed_half(conn, uplifting, db_path, tmp_path, capsys):
    n = 40
    scores = skewed_scores(n, 8)
    make_pool_db(conn, uplifting, scores)
    assert run_select(db_path, tmp_path / "h", "--target-size", 5, "--filter-by-difficulty", "hard") == 1
    assert "second oracle" in capsys.readouterr().err
    second = scores.copy()
    disputed = list(range(0, n, 2))                       # a second oracle: 4 points off on half the articles ...
    second[disputed] = np.where(second[disputed] < 5, second[disputed] + 4, second[disputed] - 4)
    calm = list(range(1, n, 2))                           # ... and one point off on one dimension of the others
    second[calm, 0] = np.where(second[calm, 0] < 10, second[calm, 0] + 1, 9)
    make_pool_db(conn, uplifting, second, oracle="other-oracle", with_articles=False)
    assert run_select(db_path, tmp_path / "h", "--target-size", 10, "--oracle", "test-oracle", "--test-from", "selection",
                      "--filter-by-difficulty", "hard", "--name", "hard") == 0
    hard = {a for a, _ in members(db_path, "hard")}
    assert len(hard) == 10 and hard <= {f"a{i:03d}" for i in disputed}
    assert run_select(db_path, tmp_path / "e", "--target-size", 10, "--oracle", "test-oracle", "--test-from", "selection",
                      "--filter-by-difficulty", "easy", "--name", "easy") == 0
    assert {a for a, _ in members(db_path, "easy")} <= {f"a{i:03d}" for i in calm}
    assert not ({a for a, _ in members(db_path, "easy")} & hard)


# ---- bad input: one line, no partial output -------------------------------------------------------

@pytest.mark.parametrize("flags, code, words", [
    (["--target-size", 400], 1, "larger than the eligible pool"),
    (["--target-size", 10, "--train-ratio", 0.8, "--val-ratio", 0.3], 2, "must sum to 1"),
    (["--target-size", 10, "--dimensions", "agency,hope"], 2, "unknown dimension 'hope'"),
    (["--target-size", 50, "--tier-shares", "impact=0.9:"], 1, "tier share of impact"),
    (["--target-size", 50, "--max-per-source", 5], 1, "per-source cap"),
    (["--target-size", 10, "--bins", "1,2,3"], 2, "--bins"),
    (["--target-size", 10, "--strategy", "active_learning"], 2, "needs --model-predictions"),
    (["--target-size", 10, "--model-predictions", "no-such-model"], 1, "no such file and no model"),
])
def test_bad_input_one_line_no_output(pool_db, tmp_path, capsys, flags, code, words):
    out = tmp_path / "never"
    assert run_select(pool_db, out, *flags) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not out.exists()
    c = sqlite3.connect(pool_db)
    assert c.execute("SELECT COUNT(*) FROM selections").fetchone()[0] == 0
    c.close()


def test_predictions_for_unknown_articles_are_refused(pool_db, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "a000", "predictions": [1] * 8}) + "\n"
                     + json.dumps({"article_id": "ghost", "scores": [1] * 8}) + "\n")
    assert run_select(pool_db, tmp_path / "o", "--target-size", 10, "--strategy", "active_learning",
                      "--model-predictions", preds) == 1
    err = capsys.readouterr().err
    assert "not in gt.db" in err and "'ghost'" in err
    assert not (tmp_path / "o").exists()


def test_infeasible_program_names_the_constraint():
    """Counting checks pass (each family alone is satisfiable) but together they are not: the
    diagnosis re-solves with each family relaxed."""
    n = 10
    pool = solver.Pool(bins=np.zeros((n, 2), dtype=int), tier=np.array([0] * 5 + [1] * 5),
                    source=np.array([0] * 5 + [1] * 5), cluster=np.full(n, -1))
    program = solver.Program(quota=np.ones((2, 11)), value=np.ones((2, 11)), size=6, tier_names=["a", "b"],
                          tier_min=np.array([4, 0]), tier_max=np.array([6, 6]), max_per_source=3)
    with pytest.raises(solver.SelectionError, match="tier shares together with the per-source cap"):
        solver.solve(solver.aggregate(pool, program), program)


# ---- other inputs: a labelled file, predictions of a model in gt.db ------------------------------

def test_labeled_file_is_imported_then_selected_from(pool_db, tmp_path, uplifting, capsys):
    from gt.intake.labeled_file import export_labeled_file

    c = store.connect(pool_db)
    exported = export_labeled_file(c, uplifting, tmp_path / "labeled_articles.jsonl")
    c.close()
    fresh = tmp_path / "fresh" / "gt.db"
    rc = stage_command.main(["--db", str(fresh), "--labeled-file", str(tmp_path / "labeled_articles.jsonl"),
                     "--output-dir", str(tmp_path / "out"), "--target-size", "40", "--name", "from-file"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"imported {exported} labels" in out.out
    assert len(members(fresh, "from-file")) == 40


def test_predictions_of_a_model_in_gt_db_drive_active_learning(pool_db, tmp_path, uplifting):
    df, _ = frame_of(pool_db, uplifting)
    dims = uplifting.dimension_names
    worst = set(df.index[::10])                       # 30 articles the student gets badly wrong
    c = sqlite3.connect(pool_db)
    c.execute("INSERT INTO models (id, base_model) VALUES ('student-v1', 'minilm')")
    c.executemany("INSERT INTO predictions (model_id, article_id, dimension, score) VALUES ('student-v1', ?, ?, ?)",
                  [(aid, d, float(row[d]) + (5.0 if aid in worst and row[d] < 5 else -5.0 if aid in worst else 0.1))
                   for aid, row in df.iterrows() for d in dims])
    c.commit()
    c.close()
    assert run_select(pool_db, tmp_path / "o", "--target-size", 40, "--strategy", "active_learning",
                      "--model-predictions", "student-v1", "--name", "al-db") == 0
    chosen = {a for a, _ in members(pool_db, "al-db")}
    assert len(chosen & worst) >= 20                  # random would give about 4


def test_active_learning_never_repicks_training_articles_and_extend_keeps_val_and_test(pool_db, tmp_path, uplifting):
    assert run_select(pool_db, tmp_path / "base", "--target-size", 60, "--name", "base") == 0
    base = dict(members(pool_db, "base"))
    trained = {a for a, s in base.items() if s == "train"}
    df, _ = frame_of(pool_db, uplifting)
    dims = uplifting.dimension_names
    c = sqlite3.connect(pool_db)
    c.execute("INSERT INTO models (id, base_model, selection_id) VALUES ('s1', 'minilm', "
              "(SELECT id FROM selections WHERE name = 'base'))")
    # the student errs most on its own training articles: a stage that ignored the rule would pick them
    c.executemany("INSERT INTO predictions (model_id, article_id, dimension, score) VALUES ('s1', ?, ?, ?)",
                  [(aid, d, float(row[d]) + (4.0 if aid in trained and row[d] < 5 else -4.0 if aid in trained else 0.5))
                   for aid, row in df.iterrows() for d in dims])
    c.commit()
    c.close()
    assert run_select(pool_db, tmp_path / "al", "--target-size", 30, "--strategy", "active_learning",
                      "--model-predictions", "s1", "--name", "al") == 0
    assert not {a for a, _ in members(pool_db, "al")} & trained
    assert run_select(pool_db, tmp_path / "ext", "--target-size", 30, "--strategy", "active_learning",
                      "--model-predictions", "s1", "--extend", "base") == 0
    extended = dict(members(pool_db, "base+active_learning-30-seed42"))
    assert len(extended) == 90
    assert {a: s for a, s in extended.items() if a in base} == base          # every old member keeps its split
    new = set(extended) - set(base)
    assert len(new) == 30 and {extended[a] for a in new} == {"train"}
    counts = {s: sum(1 for line in open(tmp_path / "ext" / f"{s}.jsonl")) for s in ("train", "val", "test")}
    assert counts["val"] == sum(1 for s in base.values() if s == "val")
    assert counts["test"] == sum(1 for s in base.values() if s == "test")
    assert counts["train"] == len(trained) + 30


# ---- the test split from the pool, random, exploration ------------------------------------------

def outer_share(scores: np.ndarray) -> float:
    """Share of (article, dimension) scores in the outer bands (< 4 or >= 8), gt/core/bands.py."""
    from gt.core import bands
    return float(((scores < bands.MIDDLE_LOW) | (scores >= bands.MIDDLE_HIGH)).mean())


def test_the_test_split_is_a_uniform_sample_of_the_pool_apart_from_train_and_val(conn, uplifting, db_path, tmp_path):
    """--test-from pool (the default): on a pool whose scores sit mostly in the middle, the test split's
    share of outer-band scores is the pool's within sampling error, while maximize_coverage's train split
    is far more extreme; no test article or cluster mate is in train or val."""
    n = 1200
    rng = np.random.default_rng(3)
    scores = np.clip(np.rint(rng.normal(5.5, 1.4, size=(n, 8))), 0, 10)
    clusters = [f"c{i // 3}" if i < 90 else None for i in range(n)]   # 30 clusters of three
    make_pool_db(conn, uplifting, scores, clusters=clusters)
    assert run_select(db_path, tmp_path / "o", "--target-size", 600, "--train-ratio", 0.6, "--val-ratio", 0.1,
                      "--test-ratio", 0.3, "--name", "natural") == 0
    split = dict(members(db_path, "natural"))
    test = [a for a, s in split.items() if s == "test"]
    train_val = [a for a, s in split.items() if s != "test"]
    assert len(test) == 180 and len(train_val) == 420 and not set(test) & set(train_val)
    cluster_of = {f"a{i:03d}": clusters[i] for i in range(n) if clusters[i]}
    assert not {cluster_of[a] for a in test if a in cluster_of} & {cluster_of[a] for a in train_val if a in cluster_of}
    row = {f"a{i:03d}": i for i in range(n)}
    pool_share = outer_share(scores)
    test_share = outer_share(scores[[row[a] for a in test]])
    train_share = outer_share(scores[[row[a] for a in split if split[a] == "train"]])
    sampling_error = 3 * np.sqrt(pool_share * (1 - pool_share) / (len(test) * 8 / 2))   # 3 s.e., scores correlate
    assert abs(test_share - pool_share) < sampling_error, (test_share, pool_share)
    assert train_share > pool_share + sampling_error, (train_share, pool_share)
    card = (tmp_path / "o" / "README.md").read_text()
    assert "drawn uniformly from the eligible pool" in card
    # the spec's behaviour on request: the test split is a share of the strategy's picks
    assert run_select(db_path, tmp_path / "s", "--target-size", 600, "--train-ratio", 0.6, "--val-ratio", 0.1,
                      "--test-ratio", 0.3, "--name", "skewed", "--test-from", "selection") == 0
    picked = dict(members(db_path, "skewed"))
    assert outer_share(scores[[row[a] for a in picked if picked[a] == "test"]]) > pool_share + sampling_error


def test_random_strategy_and_exploration_share_give_the_documented_counts(pool_db, tmp_path):
    assert run_select(pool_db, tmp_path / "r", "--target-size", 50, "--strategy", "random", "--name", "rnd",
                      "--seed", 3) == 0
    rnd = dict(members(pool_db, "rnd"))
    assert len(rnd) == 50 and sorted(set(rnd.values())) == ["test", "train", "val"]
    assert run_select(pool_db, tmp_path / "r2", "--target-size", 50, "--strategy", "random", "--name", "rnd2",
                      "--seed", 3) == 0
    assert dict(members(pool_db, "rnd2")) == rnd                          # same seed, same sample and splits
    report = (tmp_path / "r" / "selection_report.md").read_text()
    assert "drawn uniformly at random (no program" in report
    # 40 to pick, 25% of them uniform: the program's 30 picks are the picks of the program alone at 30
    common = ("--test-ratio", 0, "--train-ratio", 0.9, "--val-ratio", 0.1, "--seed", 4)
    assert run_select(pool_db, tmp_path / "e", "--target-size", 40, "--exploration-share", 0.25, "--name", "explore",
                      *common) == 0
    assert run_select(pool_db, tmp_path / "p", "--target-size", 30, "--name", "program", *common) == 0
    explored, program_only = {a for a, _ in members(pool_db, "explore")}, {a for a, _ in members(pool_db, "program")}
    assert len(explored) == 40 and program_only <= explored
    assert "25% of them drawn uniformly" in (tmp_path / "e" / "selection_report.md").read_text()


def test_target_size_all_selects_every_eligible_article_once_per_cluster(pool_db, tmp_path, capsys):
    """--target-size all: every eligible article (the 5 too short ones out) is selected, or its
    near-duplicate mate is; train and val hold at most one article of a cluster; a word other than
    'all' is a usage error."""
    assert run_select(pool_db, tmp_path / "a", "--target-size", "all", "--strategy", "random", "--name", "whole") == 0
    picked = dict(members(pool_db, "whole"))
    eligible = {f"a{i:03d}" for i in range(300) if i not in (21, 22, 23, 24, 25)}
    mate = {f"a{i:03d}": f"a{i ^ 1:03d}" for i in range(20)}
    assert set(picked) <= eligible and all(a in picked or mate.get(a) in picked for a in eligible)
    train_val = [a for a, s in picked.items() if s != "test"]
    assert not any(mate.get(a) in train_val for a in train_val)
    assert {s for s in picked.values()} == {"train", "val", "test"}
    capsys.readouterr()
    assert run_select(pool_db, tmp_path / "b", "--target-size", "most") == 2
    assert "must be a whole number >= 1 or all, got 'most'" in capsys.readouterr().err


def test_the_training_target_is_the_mean_of_an_article_s_valid_repeats(conn, uplifting, db_path, tmp_path):
    """Two repeats 4 and 6 train as 5 (the split line says 2 repeats); an article with one repeat
    still trains; a failed repeat does not count."""
    names = uplifting.dimension_names
    n = 40
    scores = np.tile(np.arange(n)[:, None] % 11, (1, len(names))).astype(float)
    make_pool_db(conn, uplifting, scores)
    second = scores.copy()
    second[0] = 6.0
    conn.execute("UPDATE label_scores SET score = 4.0 WHERE label_id = (SELECT id FROM labels WHERE article_id = 'a000')")
    make_pool_db(conn, uplifting, second[:1], repeat=1, with_articles=False)   # a000's second repeat: 6 everywhere
    run_id = store.start_run(conn, purpose="label", filt=uplifting, oracle="test-oracle", provider=None, model=None)
    store.insert_label(conn, run_id=run_id, article_id="a001", filt=uplifting, oracle="test-oracle", status="invalid",
                       repeat=1)
    store.finish_run(conn, run_id)
    frame = store.target_frame(conn, uplifting, "test-oracle", uplifting.prompt_sha256).set_index("article_id")
    assert frame.loc["a000", names].tolist() == [5.0] * len(names) and frame.loc["a000", "repeats"] == 2
    assert frame.loc["a001", "repeats"] == 1 and frame.loc["a001", names[0]] == 1.0
    assert frame.loc["a000", "overall"] == pytest.approx(uplifting.overall(dict.fromkeys(names, 5.0), "solutions_story"))
    assert run_select(db_path, tmp_path / "o", "--target-size", n, "--test-ratio", 0, "--train-ratio", 0.9,
                      "--val-ratio", 0.1, "--name", "all") == 0
    lines = {}
    for split in ("train", "val"):
        for line in (tmp_path / "o" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            lines[row["id"]] = row
    assert lines["a000"]["labels"] == [5.0] * len(names) and lines["a000"]["repeats"] == 2
    assert lines["a001"]["repeats"] == 1 and len(lines) == n
