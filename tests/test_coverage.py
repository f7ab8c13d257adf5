"""Coverage stage: its figures against an independent pandas computation on a fixed labelled set
(zeros, half points, empty and sparse bins, capped content types, a gatekeeper, a source-less
article), the gap sentences, the label-set rules (other oracles, repeats, invalid labels and
duplicates stay out), the CLI's outputs and errors, and --labeled-file with off-grid scores."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gt.coverage import measure as coverage, report as coverage_report
from stages import coverage as coverage_command
from gt.core import store
from tests.conftest import MAIN, N_MAIN, OTHER, add_article, build_fixed_db

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "articles.jsonl"
SPARSE = 0.05  # with 40 labels a bin holding 1 label (2.5%) is sparse


@pytest.fixture(scope="module")
def fixed(tmp_path_factory, uplifting):
    db = tmp_path_factory.mktemp("coverage") / "gt.db"
    frame = build_fixed_db(db, uplifting)
    conn = store.connect(db, readonly=True)
    result = coverage.compute_coverage(conn, uplifting, sparse_share=SPARSE)
    conn.close()
    return db, frame, result


# ---- figures against pandas -------------------------------------------------------------------

def test_label_set_is_the_main_oracle_repeat_0_without_invalid_or_duplicates(fixed, uplifting):
    _, frame, result = fixed
    assert result["oracle"] == MAIN
    assert result["prompt_sha256"] == uplifting.prompt_sha256
    assert result["labels"] == N_MAIN == len(frame)


def test_histograms_count_every_bin_including_zeros_and_half_points(fixed, uplifting):
    _, frame, result = fixed
    for d in uplifting.dimension_names:
        expected = np.floor(frame[d]).astype(int).value_counts().reindex(range(11), fill_value=0)
        got = result["dimensions"][d]["histogram"]
        assert [got[str(b)] for b in range(11)] == expected.tolist(), d
        assert sum(got.values()) == N_MAIN
        # exact values: every half point 0..10 listed, zeros included
        values = frame[d].value_counts()
        exact = result["dimensions"][d]["values"]
        assert set(exact) == {f"{k / 2:g}" for k in range(21)}
        for k in range(21):
            assert exact[f"{k / 2:g}"] == int(values.get(k / 2, 0)), (d, k / 2)
        assert result["dimensions"][d]["half_point_scores"] == int((frame[d] % 1 == 0.5).sum())
    # half points go to the bin below (floor): 6.5 -> bin 6, 7.5 -> bin 7
    agency = result["dimensions"]["agency"]
    assert agency["histogram"]["0"] == int((frame["agency"] < 1).sum()) >= 8
    assert agency["histogram"]["10"] == int((frame["agency"] == 10).sum()) >= 1
    assert result["dimensions"]["justice"]["histogram"]["7"] == int(((frame["justice"] >= 7) & (frame["justice"] < 8)).sum()) >= 3


def test_moments_quartiles_bands_and_extremes_match_pandas(fixed, uplifting):
    _, frame, result = fixed
    for d in uplifting.dimension_names:
        s = frame[d]
        f = result["dimensions"][d]
        assert f["n"] == len(s)
        assert f["mean"] == pytest.approx(s.mean(), abs=1e-12)
        assert f["sd"] == pytest.approx(s.std(), abs=1e-12)
        assert f["median"] == pytest.approx(s.median(), abs=1e-12)
        assert f["q1"] == pytest.approx(s.quantile(0.25), abs=1e-12)
        assert f["q3"] == pytest.approx(s.quantile(0.75), abs=1e-12)
        assert f["iqr"] == pytest.approx(s.quantile(0.75) - s.quantile(0.25), abs=1e-12)
        assert f["skew"] == pytest.approx(s.skew(), abs=1e-12)
        # the bands of gt/core/bands.py: low tail s < 4 (bins 0-3), middle 4 <= s < 8, high tail s >= 8
        assert f["share_4_7"] == pytest.approx(((s >= 4) & (s < 8)).mean(), abs=1e-12)
        assert f["count_0_3"] == int((s < 4).sum()) and f["share_0_3"] == pytest.approx((s < 4).mean())
        assert f["count_4_7"] == int(((s >= 4) & (s < 8)).sum())
        assert f["count_8_10"] == int((s >= 8).sum()) and f["share_8_10"] == pytest.approx((s >= 8).mean())
        assert f["count_0_3"] + f["count_4_7"] + f["count_8_10"] == len(s)
        assert f["min"] == s.min() and f["max"] == s.max()


def test_missing_and_sparse_bins(fixed):
    _, frame, result = fixed
    dims = result["dimensions"]
    assert dims["justice"]["missing_bins"] == [8, 9, 10]
    assert dims["wonder"]["missing_bins"] == [0, 5]
    assert 10 in dims["progress"]["missing_bins"] and 9 not in dims["progress"]["missing_bins"]
    assert 9 in dims["progress"]["sparse_bins"]  # one label of 40 = 2.5% < 5%
    for name, f in dims.items():
        counts = np.floor(frame[name]).astype(int).value_counts()
        expected_sparse = sorted(int(b) for b, c in counts.items() if c < SPARSE * N_MAIN)
        assert f["sparse_bins"] == expected_sparse, name


def test_tiers_match_filter_overall_row_by_row_and_the_score_view(fixed, uplifting):
    db, frame, result = fixed
    by_python = pd.Series([
        uplifting.tier(uplifting.overall({d: row[d] for d in uplifting.dimension_names}, row["content_type"]))
        for _, row in frame.iterrows()
    ]).value_counts()
    expected = {t: int(by_python.get(t, 0)) for t in uplifting.tier_names}
    assert result["tiers"]["counts"] == expected
    assert sum(expected.values()) == N_MAIN and expected["impact"] >= 1 and expected["not_uplifting"] >= 1
    conn = store.connect(db, readonly=True)
    view = store.scores_frame(conn, uplifting, oracle=MAIN, repeat=0)
    conn.close()
    view = view[view["article_id"].isin(frame["article_id"])]
    assert view["tier"].value_counts().reindex(uplifting.tier_names, fill_value=0).to_dict() == expected
    # the capped corporate_finance high scorer is not in the top tier
    assert result["tiers"]["thresholds"] == {t.name: t.min_overall for t in uplifting.tiers}


def test_overall_and_tier_of_columns_equal_one_article_at_a_time_and_the_view(fixed, uplifting):
    db, frame, _ = fixed
    got = uplifting.overall({d: frame[d].to_numpy() for d in uplifting.dimension_names},
                            frame["content_type"].to_numpy(dtype=object))
    want = [uplifting.overall({d: r[d] for d in uplifting.dimension_names}, r["content_type"]) for _, r in frame.iterrows()]
    assert got.tolist() == want  # same arithmetic in the same order: exactly equal
    assert [uplifting.tiers[i].name for i in uplifting.tier_index(got)] == [uplifting.tier(x) for x in want]
    conn = store.connect(db)
    view = store.scores_frame(conn, uplifting, oracle=MAIN, repeat=0).set_index("article_id")
    conn.close()
    by_id = dict(zip(frame["article_id"], want))
    shared = [a for a in view.index if a in by_id]
    assert shared and all(abs(view.loc[a, "overall"] - by_id[a]) < 1e-9 for a in shared)
    assert all(view.loc[a, "tier"] == uplifting.tier(by_id[a]) for a in shared)


def test_correlations_match_pandas(fixed, uplifting):
    _, frame, result = fixed
    expected = frame[uplifting.dimension_names].corr()
    got = np.array(result["correlation"]["matrix"], dtype=float)
    assert result["correlation"]["dimensions"] == uplifting.dimension_names
    np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-12)


def test_per_source_counts_match_pandas(fixed):
    _, frame, result = fixed
    expected = frame["source"].fillna("(no source)").value_counts().to_dict()
    assert result["sources"] == expected
    assert result["sources"]["(no source)"] == 1


# ---- the gaps in words ------------------------------------------------------------------------

def test_gap_sentences(fixed):
    _, _, result = fixed
    gaps = result["gaps"]
    justice = next(g for g in gaps if g.startswith("justice"))
    assert justice.startswith("justice has no article above 7.5 (bins 8-10 are empty)")
    wonder = next(g for g in gaps if g.startswith("wonder"))
    assert "wonder has no article below 1 (bin 0 is empty)" in wonder
    assert "bin 5 is empty" in wonder
    progress = next(g for g in gaps if g.startswith("progress"))
    assert "progress has no article above 9.5 (bin 10 is empty)" in progress
    assert "bin 9 is sparse (1 label, 2.5%)" in progress
    # a dimension with every bin filled and none sparse has no sentence
    for name, f in result["dimensions"].items():
        if not f["missing_bins"] and not f["sparse_bins"]:
            assert not any(g.startswith(name) for g in gaps)


def test_repeat_and_oracle_choose_other_label_sets(fixed, uplifting):
    db, _, _ = fixed
    conn = store.connect(db, readonly=True)
    second = coverage.compute_coverage(conn, uplifting, repeat=1)
    other = coverage.compute_coverage(conn, uplifting, oracle=OTHER)
    with pytest.raises(store.StoreError, match="repeat 7"):
        coverage.compute_coverage(conn, uplifting, repeat=7)
    with pytest.raises(store.StoreError, match="nobody"):
        coverage.compute_coverage(conn, uplifting, oracle="nobody")
    conn.close()
    assert second["labels"] == 5 and second["dimensions"]["agency"]["histogram"]["10"] == 5
    assert other["oracle"] == OTHER and other["labels"] == 12
    assert other["dimensions"]["wonder"]["histogram"] == {str(b): (3 if b in (0, 2, 5, 7) else 0) for b in range(11)}


# ---- the command line -------------------------------------------------------------------------

def test_cli_writes_json_report_and_plots(fixed, tmp_path, capsys):
    db, frame, _ = fixed
    out = tmp_path / "cov.json"
    rc = coverage_command.main(["--db", str(db), "--filter", "filters/uplifting/v1", "--output", str(out),
                        "--report-dir", str(tmp_path / "reports"), "--sparse-share", str(SPARSE)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["labels"] == N_MAIN and data["dimensions"]["justice"]["missing_bins"] == [8, 9, 10]
    md = (tmp_path / "reports" / "cov.md").read_text()     # named after --output, in --report-dir
    body = md.split("\n## ")
    assert body[1].startswith("Coverage gaps")  # the report leads with the gaps
    assert "justice has no article above 7.5" in body[1]
    assert "| justice |" in md and "## Tiers" in md and "## Sources" in md
    for png in ("cov_heatmap.png", "cov_histograms.png"):
        raw = (tmp_path / "reports" / png).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5000
    printed = capsys.readouterr().out
    assert "justice has no article above 7.5" in printed and str(out) in printed


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = coverage_command.main(["--db", str(tmp_path / "missing.db"), "--report-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: no database") and err.count("\n") == 1
    assert not (tmp_path / "missing.db").exists()  # a read stage never creates an empty gt.db
    empty = tmp_path / "empty.db"
    store.connect(empty).close()
    rc = coverage_command.main(["--db", str(empty), "--report-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "no valid labels of uplifting/v1" in err and err.count("\n") == 1
    for flag, value in (("--sparse-share", "3"), ("--repeat", "-1"), ("--workers", "0")):
        rc = coverage_command.main(["--db", str(empty), flag, value])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: argument {flag}: must be") and err.count("\n") == 1


def test_labeled_file_with_off_grid_scores_is_imported_and_read_exactly(tmp_path, uplifting):
    """Imported files may carry any 0-10 score: those labels are read exactly, not as half points."""
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:24]]
    records = [r for r in records if len(r["text"]) >= uplifting.min_chars][:20]
    rng = np.random.default_rng(5)
    rows = []
    for i, r in enumerate(records):
        scores = {d: float(rng.choice([0.0, 2.5, 6.25, 7.3, 10.0, 3.0])) for d in uplifting.dimension_names}
        rows.append(scores)
        r["uplifting_analysis"] = {
            "dimensions": {d: {"score": s, "evidence": "test evidence"} for d, s in scores.items()},
            "content_type": "other", "analyzed_by": "other-tool",
        }
    path = tmp_path / "labeled_articles.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    out = tmp_path / "coverage_report.json"
    rc = coverage_command.main(["--db", str(tmp_path / "gt.db"), "--labeled-file", str(path), "--output", str(out),
                        "--report-dir", str(tmp_path / "reports"), "--no-plots"])
    assert rc == 0
    data = json.loads(out.read_text())
    frame = pd.DataFrame(rows)
    assert data["oracle"] == "other-tool" and data["labels"] == len(records)
    for d in uplifting.dimension_names:
        f = data["dimensions"][d]
        assert f["mean"] == pytest.approx(frame[d].mean(), abs=1e-12)
        assert f["median"] == pytest.approx(frame[d].median(), abs=1e-12)
        assert f["other_scores"] == int(frame[d].isin([6.25, 7.3]).sum())
        assert f["histogram"]["7"] == int((frame[d] == 7.3).sum())
        if (frame[d] == 6.25).any():
            assert f["values"]["6.25"] == int((frame[d] == 6.25).sum())
    np.testing.assert_allclose(np.array(data["correlation"]["matrix"], dtype=float),
                               frame.corr().to_numpy(), atol=1e-12)
    # a second run imports nothing new and describes the same labels
    rc = coverage_command.main(["--db", str(tmp_path / "gt.db"), "--labeled-file", str(path), "--output", str(out),
                        "--report-dir", str(tmp_path / "reports"), "--no-plots"])
    assert rc == 0 and json.loads(out.read_text())["labels"] == len(records)


def test_single_label_pool_has_undefined_spread_not_a_crash(tmp_path, uplifting):
    db = tmp_path / "one.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    run = store.start_run(conn, purpose="label", filt=uplifting, oracle="local-embed", provider="local", model="minilm")
    add_article(conn, "only", "Wikinews")
    store.insert_label(conn, run_id=run, article_id="only", filt=uplifting, oracle="local-embed", status="ok",
                       scores={d: 5.0 for d in uplifting.dimension_names}, content_type="other")
    result = coverage.compute_coverage(conn, uplifting)
    conn.close()
    agency = result["dimensions"]["agency"]
    assert agency["mean"] == 5.0 and agency["sd"] is None and agency["skew"] is None and agency["iqr"] == 0.0
    assert any("offline oracle local-embed" in w for w in result["warnings"])
    assert math.isclose(sum(result["tiers"]["shares"].values()), 1.0)


def test_a_label_without_a_dimension_is_an_error_not_a_zero(tmp_path, uplifting, capsys):
    """Labels made under another dimension list must not be read as zeros on the missing one."""
    db = tmp_path / "gt.db"
    build_fixed_db(db, uplifting)
    conn = store.connect(db)
    conn.execute("""DELETE FROM label_scores WHERE dimension = 'wonder' AND label_id IN (
                        SELECT id FROM labels WHERE oracle = ? AND "repeat" = 0 LIMIT 3)""", (MAIN,))
    conn.close()
    rc = coverage_command.main(["--db", str(db), "--report-dir", str(tmp_path), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 1 and "3 labels of this set have no wonder score" in err and err.count("\n") == 1


# ---- the shared report helpers the stage writes with ----------------------------------------------

def test_report_helpers_write_whole_files_and_plain_tables(tmp_path):
    from gt.core import report

    table = report.md_table(["name", "n", "mean"], [["a|b", 3, 1.23456], ["c", None, float("nan")]])
    assert table.splitlines() == ["| name | n | mean |", "|:---|---:|---:|", "| a\\|b | 3 | 1.23 |", "| c | — | — |"]
    with pytest.raises(ValueError):
        report.md_table(["a", "b"], [[1]])
    path = report.write_json_atomic(tmp_path / "out" / "x.json", {"v": float("nan"), "w": np.float64(2.5)})
    assert json.loads(path.read_text()) == {"v": None, "w": 2.5}
    fig = report.histograms({"a": {"pool": [1, 0, 2]}}, [0, 1, 2])
    png = report.save_figure(fig, tmp_path / "out" / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["h.png", "x.json"]  # no temp files left


def test_parallel_gathering_gives_the_same_figures(fixed, uplifting):
    """Large sets are gathered over several read-only connections; the figures must not change."""
    db, _, result = fixed
    conn = store.connect(db, readonly=True)
    for workers in (2, 3):
        split = coverage.compute_coverage(conn, uplifting, sparse_share=SPARSE, workers=workers, parallel_min_labels=0)
        for key in ("labels", "dimensions", "tiers", "sources", "content_types", "gaps"):
            assert split[key] == result[key], (workers, key)
        np.testing.assert_allclose(np.array(split["correlation"]["matrix"], dtype=float),
                                   np.array(result["correlation"]["matrix"], dtype=float), atol=1e-12)
    conn.close()


def test_exported_labeled_file_round_trips_to_the_same_figures(fixed, tmp_path, uplifting):
    """The spec's path: the label stage exports labeled_articles.jsonl; coverage --labeled-file on
    a fresh gt.db describes the same labels with the same figures."""
    from gt.intake.labeled_file import export_labeled_file

    db, _, result = fixed
    exported = tmp_path / "labeled_articles.jsonl"
    conn = store.connect(db, readonly=True)
    assert export_labeled_file(conn, uplifting, exported) == N_MAIN
    conn.close()
    out = tmp_path / "coverage_report.json"
    rc = coverage_command.main(["--db", str(tmp_path / "fresh.db"), "--labeled-file", str(exported), "--output", str(out),
                        "--report-dir", str(tmp_path), "--no-plots", "--sparse-share", str(SPARSE)])
    assert rc == 0
    again = json.loads(out.read_text())
    assert again["oracle"] == MAIN and again["labels"] == N_MAIN
    for key in ("dimensions", "tiers", "sources", "gaps"):
        assert again[key] == json.loads(json.dumps(result[key])), key


def test_output_places_every_file_beside_it(fixed, tmp_path, capsys):
    db, _, _ = fixed
    out = tmp_path / "elsewhere" / "cov.json"
    assert coverage_command.main(["--db", str(db), "--output", str(out), "--sparse-share", str(SPARSE)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["cov.json", "cov.md", "cov_heatmap.png",
                                                            "cov_histograms.png"]
    assert not (tmp_path / "reports").exists() and not Path("reports/cov.md").exists()
    assert json.loads(out.read_text())["report"] == str(out.parent / "cov.md")


def test_the_score_view_follows_an_edited_tier_threshold_after_coverage(tmp_path, uplifting, capsys):
    from gt.core.filters import load_filter
    from tests.conftest import edited_filter_copy
    db = tmp_path / "gt.db"
    build_fixed_db(db, uplifting)
    # the same filter (name, version, prompt) with the middle tier's threshold moved from 4 to 6.5
    edited = edited_filter_copy(tmp_path, lambda c: c["tiers"][1].update(min_overall=6.5), name="uplifting_edit")
    filt = load_filter(edited)
    assert filt.id == uplifting.id and filt.prompt_sha256 == uplifting.prompt_sha256
    assert coverage_command.main(["--db", str(db), "--filter", str(edited), "--report-dir", str(tmp_path / "r"),
                          "--no-plots"]) == 0
    assert "tiers changed since it was registered" in capsys.readouterr().out
    conn = store.connect(db, readonly=True)
    rows = conn.execute(f"SELECT overall, tier FROM {uplifting.view_name}").fetchall()
    conn.close()
    assert rows and all(t == filt.tier(o) for o, t in rows)          # the view follows the new threshold
    assert any(filt.tier(o) != uplifting.tier(o) for o, _ in rows)   # ... which moved some articles


# ---- plots and captions a reader can trust ----------------------------------------------------

def drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def tick_texts(labels) -> list[str]:
    return [t.get_text().replace("\u2212", "-") for t in labels if t.get_text()]


def assert_whole_number_ticks(labels) -> None:
    texts = tick_texts(labels)
    assert texts and all(t.lstrip("-").isdigit() for t in texts), texts


def test_coverage_plots_label_their_axes_count_in_whole_articles_and_explain_the_red_marks(fixed):
    _, _, result = fixed
    assert any(f["missing_bins"] for f in result["dimensions"].values())  # the fixture has empty bins
    figs = {k: drawn(f) for k, f in coverage_report.plot_figures(result).items()}
    heat_ax, colorbar = figs["heatmap"].axes
    assert heat_ax.get_xlabel().startswith("score bin") and heat_ax.get_ylabel() == "dimension"
    assert "articles" in colorbar.get_ylabel()
    assert_whole_number_ticks(colorbar.get_yticklabels())
    panels = [ax for ax in figs["histograms"].axes if ax.get_visible()]
    assert len(panels) == len(result["dimensions"])
    for ax in panels:
        assert ax.get_xlabel() == "score bin" and ax.get_ylabel() == "articles"
        assert_whole_number_ticks(ax.get_yticklabels())
    legend = figs["histograms"].legends
    assert len(legend) == 1
    entries = [t.get_text() for t in legend[0].get_texts()]
    assert entries == [result["oracle"], "empty bin (0 articles)"]
    red = legend[0].legend_handles[1]
    assert red.get_marker() == "x" and red.get_color() == "red"


def test_histograms_legend_only_when_it_explains_something():
    from gt.core import report

    one_series_full = drawn(report.histograms({"a": {"pool": [1, 3, 2]}}, [0, 1, 2]))
    assert not one_series_full.legends  # one series, no red x: nothing to explain
    ax = one_series_full.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert_whole_number_ticks(ax.get_yticklabels())
    two_series = drawn(report.histograms({"a": {"pool": [1, 3, 2], "selection": [1, 1, 1]},
                                          "b": {"pool": [2, 0, 2], "selection": [1, 0, 1]}}, [0, 1, 2]))
    entries = [t.get_text() for t in two_series.legends[0].get_texts()]
    assert entries == ["pool", "selection", "empty bin (0 articles in every series)"]
    for ax in two_series.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert_whole_number_ticks(ax.get_yticklabels())
    # small counts: matplotlib would put ticks at 0.5 steps without the integer locator
    assert_whole_number_ticks(drawn(report.histograms({"a": {"x": [1, 0, 2]}}, [0, 1, 2])).axes[0].get_yticklabels())


def test_coverage_markdown_explains_each_image_and_the_empty_bin_marks(fixed):
    _, _, result = fixed
    images = {"heatmap": "cov_heatmap.png", "histograms": "cov_histograms.png"}
    md = coverage_report.render_markdown(result, images)
    assert "every count of labels below is a count of articles" in md
    # the per-dimension table names the bands of gt/core/bands.py, and its counts are the JSON's
    header = next(line for line in md.splitlines() if line.startswith("| dimension | mean"))
    assert "| 4-7 share | 0-3 | 8-10 |" in header
    agency = next(line for line in md.splitlines() if line.startswith("| agency |")).split("|")
    assert [int(agency[8]), int(agency[9])] == [result["dimensions"]["agency"]["count_0_3"],
                                                result["dimensions"]["agency"]["count_8_10"]]
    assert "- Bands: 0-3 = bins 0-3 (score < 4); 4-7 = bins 4-7 (4 <= score < 8); 8-10 = bins 8-10 (score >= 8)." in md
    after = md.split("(cov_histograms.png)")[1].split("\n## ")[0]
    assert "red x" in after and "empty bin" in after
    justice_empty = ", ".join(map(str, result["dimensions"]["justice"]["missing_bins"]))
    assert f"justice bins {justice_empty}" in after
    assert "articles" in md.split("(cov_heatmap.png)")[1].split("![")[0]
    # with no empty bin, no red x is drawn and none is described
    full = json.loads(json.dumps(result))
    for f in full["dimensions"].values():
        f["missing_bins"] = []
        f["histogram"] = {b: max(c, 1) for b, c in f["histogram"].items()}
    after = coverage_report.render_markdown(full, images).split("(cov_histograms.png)")[1].split("\n## ")[0]
    assert "No bin is empty" in after and "red x on the axis marks" not in after
    assert not [l for l in drawn(coverage_report.plot_figures(full)["histograms"]).legends]
