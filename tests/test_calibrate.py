"""The calibrate stage: the recommendation rule on fixed data, and a three-model calibration through
the real SDK clients against the loopback fake provider server (models made to disagree with the
fake's `noise<N>` model ids), producing the report, the JSON and the plots."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gt.calibration import calibrate
from stages import calibrate as calibrate_command
from gt.core import store
from gt.calibration.calibrate import Rater, Thresholds
from gt.labelling.sync import label_articles
from gt.oracles import registry
from gt.oracles.base import OracleSpec
from tests.conftest import ORACLES

# ---- the recommendation rule on fixed data ----------------------------------------------------


def make_rater(filt, name: str, scores: np.ndarray, *, price_in: float, price_out: float = 0.0,
               invalid: int = 0) -> Rater:
    """A rater with the given scores (articles x dimensions; NaN rows: no valid answer) and label
    rows as the label stage stores them (2000 input and 300 output tokens per answer)."""
    dims = filt.dimension_names
    ids = [f"a{i:03d}" for i in range(len(scores))]
    frame = pd.DataFrame(scores, index=pd.Index(ids, name="article_id"), columns=dims)
    frame["overall"] = [filt.overall(dict(zip(dims, row))) if np.isfinite(row).all() else np.nan for row in scores]
    tiers = frame["overall"].map(lambda v: filt.tier(v) if pd.notna(v) else None).astype(object)
    spec = OracleSpec(name=name, provider="openai", model=name, input_per_m=price_in, output_per_m=price_out,
                      rpm=600)
    status = ["ok" if np.isfinite(row).all() else "invalid" for row in scores]
    for i in range(invalid):
        status[i] = "invalid"
        frame.iloc[i] = np.nan
        tiers.iloc[i] = None
    labels = pd.DataFrame({"article_id": ids, "status": status,
                           "cost_usd": [spec.cost(2000, 300)] * len(ids), "latency_ms": np.linspace(500, 1500, len(ids)),
                           "input_tokens": 2000, "output_tokens": 300, "cached_tokens": 0, "attempts": 1,
                           "error": None, "run_id": 1})
    return Rater(name, spec, filt.prompt_sha256, frame, tiers, {0: frame}, labels)


def run_compare(filt, raters, reference=None, thresholds=Thresholds()):
    info = {"requested": 60, "used": 60, "pool": 60, "seed": 1, "articles_in_db": 60, "skipped_short_or_duplicate": 0,
            "skipped_near_duplicate": 0, "skipped_prefilter": 0, "note": None}
    ref, _ = calibrate.choose_reference(raters, reference)
    return calibrate.compare(filt, raters, reference=ref, sample_info=info, titles={}, thresholds=thresholds,
                             n_boot=100, seed=1)


@pytest.fixture(scope="module")
def truth(uplifting):
    rng = np.random.default_rng(11)
    return rng.integers(0, 11, (60, len(uplifting.dimension_names))).astype(float)


def noisy(truth, amplitude, seed):
    rng = np.random.default_rng(seed)
    return np.clip(truth + rng.integers(-amplitude, amplitude + 1, truth.shape), 0, 10)


def test_the_cheapest_model_that_agrees_with_the_strongest_is_recommended(uplifting, truth):
    pro = make_rater(uplifting, "pro", truth, price_in=1.25, price_out=10)
    flash = make_rater(uplifting, "flash", noisy(truth, 1, 1), price_in=0.30, price_out=2.5)
    result = run_compare(uplifting, [flash, pro])
    assert result["reference"] == "pro"                   # the most expensive per article by default
    rec = result["recommendation"]
    assert rec["model"] == "flash"
    row = next(r for r in rec["rows"] if r["model"] == "flash")
    assert row["qualifies"] and row["agreement"]["spearman"].value >= 0.7 and row["agreement"]["mae"].value <= 1.0
    assert "Label with flash" in rec["verdict"]
    # the projection prices 20,000 articles at the measured tokens
    proj = result["models"]["flash"]["projection"]
    assert proj["cost_sync_usd"] == pytest.approx(20_000 * flash.spec.cost(2000, 300))
    assert proj["seconds_at_rate_limit"] == pytest.approx(20_000 / 600 * 60)


def test_a_cheap_model_that_disagrees_loses_to_the_reference(uplifting, truth):
    pro = make_rater(uplifting, "pro", truth, price_in=1.25, price_out=10)
    sloppy = make_rater(uplifting, "sloppy", noisy(truth, 5, 2), price_in=0.1)
    rec = run_compare(uplifting, [sloppy, pro])["recommendation"]
    assert rec["model"] == "pro" and rec["verdict"].startswith("Label with pro, the reference model: no other model")
    row = next(r for r in rec["rows"] if r["model"] == "sloppy")
    assert not row["qualifies"]
    assert any(reason.startswith("mean Spearman") for reason in row["reasons"])
    assert any(reason.startswith("mean MAE") for reason in row["reasons"])


def test_no_model_qualifies_says_so_and_why(uplifting, truth):
    pro = make_rater(uplifting, "pro", truth, price_in=1.25, invalid=10)     # 10 of 60 invalid: 17%
    flash = make_rater(uplifting, "flash", noisy(truth, 1, 3), price_in=0.3, invalid=6)
    rec = run_compare(uplifting, [flash, pro], thresholds=Thresholds(min_spearman=0.99))["recommendation"]
    assert rec["model"] is None
    assert rec["verdict"].startswith("No model qualifies")
    assert "pro: invalid rate 16.7% > 5%" in rec["verdict"]
    assert "flash: invalid rate 10.0% > 5%" in rec["verdict"] and "< 0.99" in rec["verdict"]


def test_a_model_without_valid_answers_is_not_perfect_agreement(uplifting, truth):
    pro = make_rater(uplifting, "pro", truth, price_in=1.25)
    mute = make_rater(uplifting, "mute", np.full_like(truth, np.nan), price_in=0.1)
    result = run_compare(uplifting, [mute, pro])
    pair = result["pairs"][0]
    assert all(s.value is None for s in pair["per_dimension"]["agency"].values())
    assert pair["per_dimension"]["agency"]["spearman"].fmt() == "undefined (mute has no valid answers)"
    row = next(r for r in result["recommendation"]["rows"] if r["model"] == "mute")
    assert not row["qualifies"] and "no valid answers" in row["reasons"]
    assert result["models"]["mute"]["labels"]["invalid_rate"].value == 1.0
    assert result["recommendation"]["model"] == "pro"


def test_consensus_of_three_is_the_default_reference(uplifting, truth):
    a = make_rater(uplifting, "a", truth, price_in=3)
    b = make_rater(uplifting, "b", noisy(truth, 1, 4), price_in=1)
    c = make_rater(uplifting, "c", noisy(truth, 4, 5), price_in=0.1)
    result = run_compare(uplifting, [a, b, c])
    assert result["reference"] == "consensus"
    frame = result["consensus"]["frame"]
    expected = np.median(np.stack([a.scores.iloc[:, :8], b.scores.iloc[:, :8], c.scores.iloc[:, :8]]), axis=0)
    np.testing.assert_allclose(frame[uplifting.dimension_names].to_numpy(), expected)
    assert result["recommendation"]["model"] == "b"
    with pytest.raises(calibrate.CalibrationError):
        calibrate.choose_reference([a, b], "consensus")


# ---- end to end against the fake provider server -----------------------------------------------



def test_three_models_end_to_end_report_json_plots_and_reuse(db_with_articles, fake_env, tmp_path, uplifting, capsys):
    server, oracles = fake_env
    out = tmp_path / "reports" / "uplifting_v1_calibration.md"
    args = ["--db", str(db_with_articles), "--oracles-file", str(oracles), "--models", "fake-pro,fake-flash,fake-mini",
            "--sample-size", "30", "--seed", "5", "--repeats", "2", "--bootstrap", "200", "--output", str(out),
            "--quiet", "--concurrency", "8"]
    assert calibrate_command.main(args) == 0
    printed = capsys.readouterr().out
    assert server.requests == 3 * 30 * 2

    # the report leads with the recommendation: fake-flash, the cheapest close to the consensus
    md = out.read_text(encoding="utf-8")
    assert md.splitlines()[2] == "## Recommendation"
    assert "**Label with fake-flash" in md and "Label with fake-flash" in printed
    assert "offline stand-ins" not in md                     # no offline model here
    for section in ("## Cost, speed and answer quality", "## Agreement between models", "## Consensus", "## Tiers",
                    "## Score distributions", "## Dimension redundancy", "## Self-consistency (repeats)",
                    "## Most disagreeing articles"):
        assert section in md
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["reference"] == "consensus" and data["recommendation"]["model"] == "fake-flash"
    assert set(data["models"]) == set(ORACLES) and len(data["pairs"]) == 3
    mini = next(r for r in data["recommendation"]["rows"] if r["model"] == "fake-mini")
    assert not mini["qualifies"] and mini["reasons"]
    # the reference model answers what the fake derives from the article: it agrees perfectly with itself
    pro_sc = data["models"]["fake-pro"]["self_consistency"]["r0_vs_r1"]["summary"]
    assert pro_sc["spearman"]["value"] == pytest.approx(1.0) and pro_sc["mae"]["value"] == 0.0
    assert data["models"]["fake-flash"]["labels"] == {"ok": 30, "invalid": 0, "error": 0, "missing": 0,
                                                      "invalid_rate": data["models"]["fake-flash"]["labels"]["invalid_rate"]}
    assert data["models"]["fake-pro"]["projection"]["cost_batch_usd"] < data["models"]["fake-pro"]["projection"]["cost_sync_usd"]
    assert data["models"]["fake-mini"]["projection"]["cost_batch_usd"] is None     # no batch prices given
    assert len(data["consensus"]["scores"]) == 30
    for name in data["plots"].values():
        png = out.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in md
    assert len(data["plots"]) == 1 + 3 + 3 + 3      # histograms, 3 pair + 3 consensus scatters, 3 heatmaps

    # the labels are calibration runs in gt.db ...
    conn = store.connect(db_with_articles)
    purposes = {r[0] for r in conn.execute("SELECT DISTINCT purpose FROM label_runs")}
    assert purposes == {"calibrate"}
    # ... reused by a second calibration (nothing requested) and by a later label run of the same oracle
    before = server.requests
    again, _ = calibrate.calibrate(conn, uplifting, ["fake-pro", "fake-flash", "fake-mini"], sample_size=30, seed=5,
                                   repeats=2, n_boot=0, registry=registry.load_registry(oracles), progress=False)
    assert server.requests == before
    assert again["recommendation"]["model"] == "fake-flash"
    assert all(s["requested"] == 0 for s in again["labelling"].values())
    sample_ids = data["sample"]["used"]
    spec = registry.resolve("fake-pro", registry.load_registry(oracles))
    ids = [r[0] for r in conn.execute("SELECT DISTINCT article_id FROM labels WHERE oracle = 'fake-pro'")]
    summary = label_articles(conn, uplifting, spec, ids, purpose="label", progress=False)
    assert summary.requested == 0 and summary.skipped_existing == sample_ids and server.requests == before
    conn.close()


def test_existing_labels_only_unknown_names_and_a_small_pool(db_with_articles, fake_env, tmp_path, uplifting, capsys):
    server, oracles = fake_env
    conn = store.connect(db_with_articles)
    # labels already in gt.db from an oracle that is not in oracles.yaml (as an import leaves them)
    run = store.start_run(conn, purpose="import", filt=uplifting, oracle="imported-rater", provider=None, model=None,
                          mode="import")
    rng = np.random.default_rng(0)
    for (aid,) in conn.execute("SELECT id FROM articles").fetchall():
        store.insert_label(conn, run_id=run, article_id=aid, filt=uplifting, oracle="imported-rater", status="ok",
                           scores={d: float(rng.integers(0, 11)) for d in uplifting.dimension_names},
                           content_type="other")
    store.finish_run(conn, run)
    conn.close()
    out = tmp_path / "r.md"
    base = ["--db", str(db_with_articles), "--oracles-file", str(oracles), "--output", str(out), "--quiet",
            "--bootstrap", "50"]

    assert calibrate_command.main(base + ["--models", "fake-pro,gemini-ultra"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model 'gemini-ultra'; known: ")
    assert "fake-flash" in err[0] and "imported-rater" in err[0]
    assert server.requests == 0

    # more articles asked than the pool holds: said, and the whole pool used; the imported labels are
    # compared as they are, only the registry model is asked
    assert calibrate_command.main(base + ["--models", "imported-rater,fake-pro", "--sample-size", "500"]) == 0
    printed = capsys.readouterr().out
    assert "asked for 500 articles but only 40 are eligible" in printed
    assert server.requests == 40
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["sample"]["used"] == 40
    assert data["models"]["imported-rater"]["labels"]["ok"] == 40
    assert "asked for 500 articles" in out.read_text(encoding="utf-8")


# ---- the sample, the stand-ins, the command line -------------------------------------------------

def test_the_sample_skips_prefiltered_near_duplicates_and_articles_outside_the_gold_set(db_with_articles, uplifting):
    conn = store.connect(db_with_articles)
    ids = sorted(r[0] for r in conn.execute("SELECT id FROM articles"))
    caught, cluster = ids[0], ids[1:4]
    # the prefilter reads the article's text: corporate finance without a community angle is skipped
    conn.execute("UPDATE articles SET text = ? WHERE id = ?",
                 ("Quarterly earnings beat forecasts and the stock price rose after a share buyback. " * 8, caught))
    conn.execute(f"UPDATE articles SET near_dup_cluster = ? WHERE id IN ({','.join('?' * len(cluster))})",
                 [cluster[0], *cluster])
    conn.commit()
    within = set(ids[:30])
    sample, info = calibrate.draw_sample(conn, uplifting, 100, seed=3, within=within, within_note="the gold set")
    assert caught not in sample and info["skipped_prefilter"] == 1
    assert len(set(sample) & set(cluster)) == 1 and info["skipped_near_duplicate"] == 2
    assert set(sample) <= within and info["skipped_outside"] == 10 and info["within"] == "the gold set"
    assert info["used"] == len(sample) == 30 - 1 - 2 and "the sample is the whole pool" in info["note"]
    # seeded: the same seed draws the same articles, a smaller sample is the start of a larger one
    smaller, _ = calibrate.draw_sample(conn, uplifting, 10, seed=3, within=within)
    assert smaller == sample[:10]
    assert calibrate.draw_sample(conn, uplifting, 10, seed=4, within=within)[0] != smaller
    conn.close()


def test_the_offline_stand_ins_are_named_in_the_verdict_and_the_report(uplifting, truth):
    import dataclasses

    from gt.calibration.report import render_markdown
    embed = make_rater(uplifting, "embed", truth, price_in=0.0)
    embed.spec = dataclasses.replace(embed.spec, provider="local-embed")
    replayed = make_rater(uplifting, "replayed", noisy(truth, 1, 6), price_in=1.0)
    replayed.spec = dataclasses.replace(replayed.spec, provider="replay")   # offline, but real labels replayed
    assert embed.offline and not replayed.offline
    result = run_compare(uplifting, [embed, replayed], reference="embed")
    assert result["models"]["embed"]["offline"] and not result["models"]["replayed"]["offline"]
    assert result["recommendation"]["model"] == "embed"
    assert "embed is an offline stand-in: to choose the model for real labels" in result["recommendation"]["verdict"]
    result["reference_reason"] = "chosen with --strongest"
    md = render_markdown(result, [embed, replayed], {}, "cal.json")
    assert "> **local-embed and local-llm are offline stand-ins, not substitutes for a real LLM" in md
    assert "(embed in this calibration.)" in md
    # two models, one rating each: no consensus, no self-consistency, no several-ratings section
    assert "## Agreement between models" in md and "## Consensus" not in md
    assert "## Self-consistency" not in md and "## Agreement among several ratings" not in md


@pytest.mark.parametrize("extra, code, words", [
    (["--sample-size", "0"], 2, "error: argument --sample-size: must be a whole number >= 1, got 0"),
    (["--max-cost", "0"], 2, "error: argument --max-cost: must be a finite number > 0, got 0"),
    (["--max-cost", "nan"], 2, "error: argument --max-cost: must be a finite number > 0, got nan"),
    (["--min-tier-agreement", "1.5"], 2, "error: argument --min-tier-agreement: must be a finite number >= 0 and <= 1, got 1.5"),
    (["--filter", "filters/no-such/v1"], 2, "error: filters/no-such/v1: not a directory"),
    (["--models", "fake-pro"], 2, "error: calibration compares models: pass at least two to --models"),
    (["--strongest", "fake-mini"], 2, "error: --strongest fake-mini is not one of --models"),
    (["--db", "{tmp}/missing.db"], 1, "error: no database at"),
    (["--source", "{tmp}/none-*.jsonl"], 2, "error: {tmp}/none-*.jsonl: matches no file"),
])
def test_bad_input_is_one_error_line_and_its_exit_code(db_with_articles, fake_env, tmp_path, capsys, extra, code, words):
    server, oracles = fake_env
    argv = ["--db", str(db_with_articles), "--oracles-file", str(oracles), "--models", "fake-pro,fake-flash",
            "--output", str(tmp_path / "r.md"), "--quiet"] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert calibrate_command.main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith(words.replace("{tmp}", str(tmp_path)))
    assert server.requests == 0 and not (tmp_path / "r.md").exists()


def test_a_missing_key_stops_before_any_call_and_points_to_no_label(db_with_articles, fake_env, tmp_path, capsys,
                                                                     monkeypatch):
    server, oracles = fake_env
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    argv = ["--db", str(db_with_articles), "--oracles-file", str(oracles), "--models", "fake-pro,fake-mini",
            "--output", str(tmp_path / "r.md"), "--quiet"]
    assert calibrate_command.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ANTHROPIC_API_KEY" in err[0] and err[0].endswith("with --no-label")
    assert server.requests == 0     # fake-pro has its key, but every key is checked before any paid call


def test_a_report_that_cannot_be_written_is_one_line_and_the_labels_stay(db_with_articles, fake_env, tmp_path, capsys):
    server, oracles = fake_env
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    base = ["--db", str(db_with_articles), "--oracles-file", str(oracles), "--models", "fake-pro,fake-flash",
            "--sample-size", "5", "--bootstrap", "0", "--no-plots", "--quiet"]
    assert calibrate_command.main(base + ["--output", str(blocker / "r.md")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write the report {blocker / 'r.md'}")
    paid = server.requests
    assert paid == 2 * 5
    assert calibrate_command.main(base + ["--output", str(tmp_path / "ok" / "r.md")]) == 0
    assert server.requests == paid and (tmp_path / "ok" / "r.json").is_file()


def test_the_makefile_calibrate_lines_still_parse(tmp_path):
    """`make -n demo` and `make -n emobank` name calibrate's flags; each of those lines must parse."""
    import shlex
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    lines = []
    for target in ("demo", "emobank"):
        out = subprocess.run(["make", "-n", target], cwd=root, capture_output=True, text=True, check=True).stdout
        lines += [ln for ln in out.replace("\\\n", " ").splitlines() if "-m stages.calibrate " in ln]
    assert len(lines) >= 4
    for line in lines:
        argv = shlex.split(line.split("-m stages.calibrate ", 1)[1])
        opts = calibrate_command.parse_options(argv)
        assert len(opts.models) >= 2 and opts.sample_size >= 1, line


def test_dry_run_prints_the_sample_s_cost_per_model_and_calls_nothing(db_with_articles, fake_env, tmp_path, capsys):
    server, oracles = fake_env
    before = sqlite3.connect(db_with_articles).execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    argv = ["--db", str(db_with_articles), "--oracles-file", str(oracles), "--models", "fake-pro,fake-flash",
            "--sample-size", "12", "--dry-run", "--output", str(tmp_path / "r.md")]
    assert calibrate_command.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dry run, nothing was called: a sample of 12 articles")
    per_model = [line for line in out if line.startswith(("  fake-pro", "  fake-flash"))]
    assert len(per_model) == 2 and all("12 requests" in line and "$" in line for line in per_model)
    total = float(out[-1].split("$")[1].split()[0])
    assert out[-1].startswith("expected cost of the calibration: $") and total > 0
    assert server.requests == 0 and not (tmp_path / "r.md").exists()
    assert sqlite3.connect(db_with_articles).execute("SELECT COUNT(*) FROM labels").fetchone()[0] == before
