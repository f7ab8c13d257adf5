"""Human labels from a CSV or JSONL (ingest --labels): columns mapped to dimensions, a 1-5 scale
rescaled to 0-10, several raters per article as repeats of one oracle, one line per bad row,
re-imports that add nothing; the dataset's own split in article_splits; and calibrating imported
human label sets against each other gives the figures scipy, krippendorff and pingouin give on
the same numbers."""
import csv
import json
import re

import numpy as np
import pytest

from stages import calibrate
from stages import ingest
from gt.core import stats, store
from gt.core.filters import load_filter
from gt.intake.human_labels import HumanLabelSpec, Scale, human_prompt_sha256, parse_label_columns
from tests.conftest import ROOT

EMOBANK_VAD = ROOT / "filters" / "emobank_vad" / "v1"
PROBLEM_LINE = re.compile(r"^\S+:\d+: .+ \(.+\)$")
LABELS = "V=valence,A=arousal,D=dominance"


@pytest.fixture(scope="module")
def vad():
    return load_filter(EMOBANK_VAD)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


SENTENCES = [
    ("s1", "train", "I love this wonderful day.", 4.6, 3.8, 3.4),
    ("s2", "dev", "The meeting is at noon.", 3.0, 2.8, 3.0),
    ("s3", "test", "He lost everything in the fire.", 1.4, 3.9, 1.8),
    ("s4", "train", "P.S.", 3.0, 3.0, 3.0),
]


def texts_csv(tmp_path):
    return write_csv(tmp_path / "texts.csv", ["id", "split", "V", "A", "D", "text"],
                     [[i, sp, v, a, d, t] for i, sp, t, v, a, d in SENTENCES])


def run_ingest(db, *args):
    return ingest.main(["--db", str(db), "--filter", str(EMOBANK_VAD), "--workers", "1", *args])


def labels_of(conn, oracle):
    """(article, repeat) -> {dimension: score} of one oracle."""
    out = {}
    for r in conn.execute("""SELECT l.article_id, l."repeat", s.dimension, s.score FROM labels l
                             JOIN label_scores s ON s.label_id = l.id WHERE l.oracle = ? AND l.status = 'ok'""",
                          (oracle,)):
        out.setdefault((r[0], r[1]), {})[r[2]] = r[3]
    return out


# ---- the pieces ---------------------------------------------------------------------------------

def test_scale_rescales_linearly_onto_0_10():
    s = Scale.parse("1-5")
    assert [s.rescale(x) for x in (1, 2, 3, 3.44, 4, 5)] == [0.0, 2.5, 5.0, 6.1, 7.5, 10.0]
    assert s.formula == "(x - 1) * 2.5" and not s.contains(0.9) and not s.contains(5.01)
    assert Scale.parse("0-100").rescale(37) == pytest.approx(3.7)
    for bad in ("5-1", "1..5", "one-five", "3"):
        with pytest.raises(ValueError):
            Scale.parse(bad)


def test_label_columns_must_map_every_dimension_once(vad):
    assert parse_label_columns(LABELS, vad) == {"V": "valence", "A": "arousal", "D": "dominance"}
    for bad, says in (("V=valence,A=arousal", "dominance"), ("V=valence,A=valence,D=dominance", "twice"),
                      ("V=valence,A=arousal,D=joy", "not a dimension"), ("V,A,D", "COLUMN=DIMENSION")):
        with pytest.raises(ValueError, match=says):
            parse_label_columns(bad, vad)


def test_the_human_marker_is_stable_and_never_a_prompt_hash(vad):
    sha = human_prompt_sha256("human-mean")
    assert sha == human_prompt_sha256("human-mean") != human_prompt_sha256("human-rater")
    assert sha.startswith("human:") and len(sha) == 6 + 64 and sha != vad.prompt_sha256


# ---- importing ----------------------------------------------------------------------------------

def test_texts_labels_and_split_from_one_csv(tmp_path, vad, capsys):
    db = tmp_path / "gt.db"
    assert run_ingest(db, "--source", texts_csv(tmp_path), "--labels", LABELS, "--label-scale", "1-5",
                      "--oracle", "human-mean", "--split-column", "split") == 0
    conn = store.connect(db)
    got = labels_of(conn, "human-mean")
    assert set(got) == {(i, 0) for i, *_ in SENTENCES}
    for i, _, _, v, a, d in SENTENCES:   # (x - 1) * 2.5
        assert got[(i, 0)] == pytest.approx({"valence": (v - 1) * 2.5, "arousal": (a - 1) * 2.5,
                                             "dominance": (d - 1) * 2.5})
    assert conn.execute("SELECT COUNT(*) FROM articles WHERE too_short = 1").fetchone()[0] == 0  # "P.S." included
    assert store.article_splits(conn) == {"s1": "train", "s2": "val", "s3": "test", "s4": "train"}
    run = conn.execute("SELECT * FROM label_runs").fetchone()
    assert (run["purpose"], run["mode"], run["oracle"], run["prompt_sha256"]) == \
        ("import", "import", "human-mean", human_prompt_sha256("human-mean"))
    params = json.loads(run["params_json"])
    assert params["scale"] == "1-5" and params["columns"] == {"V": "valence", "A": "arousal", "D": "dominance"}
    # coverage, select and train find the set by its name
    assert store.choose_label_set(conn, vad, "human-mean") == ("human-mean", human_prompt_sha256("human-mean"))
    view = conn.execute("SELECT valence, tier FROM scores_emobank_vad_v1 WHERE article_id = 's3'").fetchone()
    assert view["valence"] == pytest.approx(1.0) and view["tier"] == "negative"
    assert re.search(r"^  human labels\s+4\s+new labels of 4 articles in 1 rater slot", capsys.readouterr().out, re.M)


def test_several_raters_bad_rows_and_a_reimport_that_adds_nothing(tmp_path, vad, capsys):
    db = tmp_path / "gt.db"
    assert run_ingest(db, "--source", texts_csv(tmp_path)) == 0
    ratings = write_csv(tmp_path / "ratings.csv", ["id", "V", "A", "D"], [
        ["s1", 5, 4, 3],        # 2: s1 rater slot 0
        ["s1", 4, 4, 4],        # 3: s1 slot 1
        ["s2", 3, 3, 3],        # 4: s2 slot 0
        ["s1", 2, 1, 5],        # 5: s1 slot 2
        ["s2", "x", 3, 3],      # 6: not a number
        ["s2", 3, 6, 3],        # 7: outside 1-5
        ["nope", 3, 3, 3],      # 8: unknown article
        ["s2", "", 2, 2],       # 9: empty value
        ["s3", 1, 5, 1],        # 10: s3 slot 0
    ])
    args = ["--source", ratings, "--labels", LABELS, "--label-scale", "1-5", "--oracle", "human-rater"]
    assert run_ingest(db, *args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(ratings)]
    assert [line.split(": ", 1)[0] for line in lines] == [f"{ratings}:{n}" for n in (6, 7, 8, 9)]
    assert all(PROBLEM_LINE.match(line) for line in lines)
    assert "'x', not a number" in lines[0] and "holds 6, outside the scale 1-5" in lines[1]
    assert "'nope' is not in gt.db" in lines[2] and "no value in label column 'V'" in lines[3]

    conn = store.connect(db)
    got = labels_of(conn, "human-rater")
    assert sorted(got) == [("s1", 0), ("s1", 1), ("s1", 2), ("s2", 0), ("s3", 0)]
    assert got[("s1", 2)] == {"valence": 2.5, "arousal": 0.0, "dominance": 10.0}
    assert got[("s3", 0)] == {"valence": 0.0, "arousal": 10.0, "dominance": 0.0}
    runs = conn.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0]

    assert run_ingest(db, *args) == 1             # the same bad rows, reported again
    assert labels_of(conn, "human-rater") == got  # and nothing added
    assert conn.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0] == runs
    assert re.search(r"already there\s+5\b", capsys.readouterr().out)

    # a second file claiming the same slots with other values is refused, not mixed in
    other = write_csv(tmp_path / "other.csv", ["id", "V", "A", "D"], [["s2", 1, 1, 1]])
    assert run_ingest(db, "--source", other, "--labels", LABELS, "--label-scale", "1-5", "--oracle", "human-rater") == 1
    assert "already has a human-rater label" in capsys.readouterr().err
    assert labels_of(conn, "human-rater") == got
    conn.close()


def test_jsonl_rows_a_rater_column_and_unknown_ids_skipped(tmp_path, vad, capsys):
    db = tmp_path / "gt.db"
    assert run_ingest(db, "--source", texts_csv(tmp_path)) == 0
    first = tmp_path / "a.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in [
        {"id": "s1", "who": "ann", "V": 5, "A": 3, "D": 3},
        {"id": "s1", "who": "bob", "V": 4, "A": 3, "D": 3},
        {"id": "gone", "who": "ann", "V": 3, "A": 3, "D": 3},
    ]) + "\n")
    base = ["--labels", LABELS, "--label-scale", "1-5", "--oracle", "panel", "--rater-column", "who"]
    assert run_ingest(db, "--source", str(first), *base, "--skip-unknown-ids") == 0
    assert "1 label rows name articles gt.db does not hold" in capsys.readouterr().err
    second = tmp_path / "b.jsonl"   # a later file: bob keeps his slot, cid gets the next one
    second.write_text("\n".join(json.dumps(r) for r in [
        {"id": "s2", "who": "bob", "V": 2, "A": 2, "D": 2},
        {"id": "s2", "who": "cid", "V": 1, "A": 1, "D": 1},
        {"id": "s2", "who": "cid", "V": 1, "A": 1, "D": 1},
    ]) + "\n")
    assert run_ingest(db, "--source", str(second), *base) == 1
    assert f"{second}:3: rater 'cid' already rated article 's2' at {second}:2" in capsys.readouterr().err
    conn = store.connect(db)
    got = labels_of(conn, "panel")
    assert sorted(got) == [("s1", 0), ("s1", 1), ("s2", 1), ("s2", 2)]
    assert got[("s2", 1)]["valence"] == 2.5 and got[("s2", 2)]["valence"] == 0.0
    raters = {}
    for (p,) in conn.execute("SELECT params_json FROM label_runs WHERE oracle = 'panel' ORDER BY id"):
        raters.update(json.loads(p)["raters"])
    assert raters == {"ann": 0, "bob": 1, "cid": 2}
    conn.close()


def test_flags_that_cannot_work_fail_before_anything_is_read(tmp_path, capsys):
    src = texts_csv(tmp_path)
    db = tmp_path / "gt.db"
    for args, says in ((["--labels", "V=valence,A=arousal", "--oracle", "h"], "dominance"),
                       (["--labels", LABELS], "--oracle NAME"),
                       (["--labels", LABELS, "--oracle", "gemini-flash"], "oracles.yaml"),
                       (["--labels", LABELS, "--oracle", "h", "--label-scale", "5-1"], "high end"),
                       (["--oracle", "human-mean"], "goes with --labels")):
        assert run_ingest(db, "--source", src, *args) == 2
        assert says in capsys.readouterr().err
    assert not db.exists()


def test_a_bad_split_value_is_one_line_and_the_article_still_goes_in(tmp_path, capsys):
    src = write_csv(tmp_path / "t.csv", ["id", "split", "text"], [["a", "train", "Fine."], ["b", "holdout", "Odd."]])
    db = tmp_path / "gt.db"
    assert run_ingest(db, "--source", src, "--split-column", "split", "--split-name", "mine") == 1
    assert f"{src}:3: split column holds 'holdout'" in capsys.readouterr().err
    conn = store.connect(db)
    assert store.article_splits(conn, "mine") == {"a": "train"} and store.article_splits(conn) == {}
    assert conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0] == 2
    conn.close()


# ---- calibrating human label sets ---------------------------------------------------------------

def test_calibrating_two_human_sets_matches_scipy_krippendorff_and_pingouin(tmp_path, vad):
    """Two imported label sets, and a third with five raters per article: calibrate --no-label gives
    the Spearman and alpha of scipy and krippendorff on the same rescaled numbers, and the
    inter-rater figures of krippendorff, pingouin and a direct leave-one-out mean."""
    import krippendorff
    import pingouin as pg
    from scipy.stats import spearmanr

    rng = np.random.default_rng(7)
    n = 60
    truth = rng.uniform(1.5, 4.5, size=(n, 3))
    ids = [f"t{k:03d}" for k in range(n)]
    texts = write_csv(tmp_path / "texts.csv", ["id", "text"],
                      [[i, f"Sentence number {k} says something different each time: {rng.integers(1e9)}."]
                       for k, i in enumerate(ids)])
    a = np.round(truth + rng.normal(0, 0.3, truth.shape), 2).clip(1, 5)
    b = np.round(truth + rng.normal(0, 0.5, truth.shape), 1).clip(1, 5)
    raters = np.rint(truth[:, None, :] + rng.normal(0, 0.8, (n, 5, 3))).clip(1, 5)
    fa = write_csv(tmp_path / "a.csv", ["id", "V", "A", "D"], [[i, *row] for i, row in zip(ids, a)])
    fb = write_csv(tmp_path / "b.csv", ["id", "V", "A", "D"], [[i, *row] for i, row in zip(ids, b)])
    fr = write_csv(tmp_path / "r.csv", ["id", "V", "A", "D"],
                   [[i, *raters[k, j]] for k, i in enumerate(ids) for j in range(5)])
    db = tmp_path / "gt.db"
    assert run_ingest(db, "--source", texts) == 0
    for path, oracle in ((fa, "gold-a"), (fb, "gold-b"), (fr, "crowd")):
        assert run_ingest(db, "--source", path, "--labels", LABELS, "--label-scale", "1-5", "--oracle", oracle) == 0

    out = tmp_path / "cal.md"
    assert calibrate.main(["--db", str(db), "--filter", str(EMOBANK_VAD), "--no-label", "--quiet",
                           "--models", "gold-a,gold-b,crowd", "--sample-size", "1000", "--bootstrap", "100", "--no-plots",
                           "--output", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["reference"] == "gold-a"   # a human set is the reference by default
    assert data["recommendation"]["verdict"].startswith("Nothing to recommend")
    pair = next(p for p in data["pairs"] if (p["a"], p["b"]) == ("gold-a", "gold-b"))
    for j, dim in enumerate(vad.dimension_names):
        x, y = (a[:, j] - 1) * 2.5, (b[:, j] - 1) * 2.5
        got = pair["per_dimension"][dim]
        assert got["spearman"]["value"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-9)
        assert got["alpha"]["value"] == pytest.approx(
            krippendorff.alpha(reliability_data=np.vstack([x, y]), level_of_measurement="interval"), abs=1e-9)
        assert got["mae"]["n"] == n

        ir = data["models"]["crowd"]["inter_rater"]["per_dimension"][dim]
        m = (raters[:, :, j] - 1) * 2.5                      # articles x raters, rescaled
        assert ir["items"] == n and ir["ratings"] == 5 * n and ir["ratings_per_item"] == {"5": n}
        assert ir["alpha"]["value"] == pytest.approx(
            krippendorff.alpha(reliability_data=m.T, level_of_measurement="interval"), abs=1e-9)
        others = (m.sum(axis=1, keepdims=True) - m) / 4
        assert ir["mae_vs_others"]["value"] == pytest.approx(np.abs(m - others).mean(), abs=1e-9)
        long = {"item": np.repeat(np.arange(n), 5), "rater": np.tile(np.arange(5), n), "score": m.ravel()}
        import pandas as pd
        icc = pg.intraclass_corr(pd.DataFrame(long), targets="item", raters="rater", ratings="score")
        assert ir["icc1"]["value"] == pytest.approx(icc.loc[icc["Type"].isin(["ICC1", "ICC(1,1)"]), "ICC"].iloc[0],
                                                    abs=1e-9)
    md = out.read_text()
    assert "## Agreement among several ratings of the same article" in md and "### crowd (5 rater slots)" in md


def test_inter_rater_statistics_handle_uneven_raters_and_their_closed_forms_equal_the_library():
    import krippendorff

    rng = np.random.default_rng(3)
    truth = rng.normal(5, 1.5, 300)
    m = np.rint(truth[:, None] + rng.normal(0, 1.2, (300, 6)))
    m[rng.random(m.shape) < 0.3] = np.nan
    m[:5, 1:] = np.nan                                  # items rated once do not count
    keep = np.isfinite(m).sum(axis=1) >= 2
    out = stats.inter_rater(m, n_boot=200, seed=1)
    expected = krippendorff.alpha(reliability_data=m[keep].T, level_of_measurement="interval")
    assert out["alpha"].value == pytest.approx(expected, abs=1e-12)
    assert out["items"] == int(keep.sum()) and out["alpha"].ci[0] < out["alpha"].value < out["alpha"].ci[1]
    assert stats._alpha_from_sums(*stats._item_sums(m[keep])[:3]) == pytest.approx(expected, abs=1e-12)
    loo = [abs(v - np.nanmean(np.delete(row, j))) for row in m[keep] for j, v in enumerate(row) if np.isfinite(v)]
    assert out["mae_vs_others"].value == pytest.approx(np.mean(loo), abs=1e-12)
    assert "first" in out["icc1"].ci_note and out["icc1"].ci is not None
    # alpha on many distinct values switches to the closed form: the same number, no giant array
    cont = np.vstack([truth, truth + rng.normal(0, 1, 300)])
    small = stats.krippendorff_alpha(np.round(cont, 1))
    saved, stats.KRIPPENDORFF_MAX_CELLS = stats.KRIPPENDORFF_MAX_CELLS, 10
    try:
        forced = stats.krippendorff_alpha(np.round(cont, 1))
    finally:
        stats.KRIPPENDORFF_MAX_CELLS = saved
    assert "closed form" in forced.ci_note and forced.value == pytest.approx(small.value, abs=1e-12)


def test_the_emobank_filter_suits_sentences(vad):
    assert vad.dimension_names == ["valence", "arousal", "dominance"] and vad.min_chars == 1
    assert [vad.tier(vad.overall({"valence": v, "arousal": 9, "dominance": 9})) for v in (1.5, 5, 7.5)] == \
        ["negative", "neutral", "positive"]
    prompt = vad.render_prompt("", "P.S.")
    assert "P.S." in prompt and "valence" in prompt and "{text}" not in prompt
    spec = HumanLabelSpec("human-mean", parse_label_columns(LABELS, vad), Scale.parse("1-5"))
    assert spec.prompt_sha256 != vad.prompt_sha256


def test_an_llm_is_calibrated_on_the_gold_articles_only(db_with_articles, fake_env, tmp_path, uplifting):
    """A team's gold set covers 12 of the 40 articles in gt.db: calibrating a model against it labels
    those 12 (not a random 30 of which few have a gold label) and takes the gold set as reference."""
    server, oracles = fake_env
    conn = store.connect(db_with_articles)
    ids = [r[0] for r in conn.execute("SELECT id FROM articles ORDER BY id")][:12]
    conn.close()
    dims = uplifting.dimension_names
    rng = np.random.default_rng(2)
    gold = write_csv(tmp_path / "gold.csv", ["article_id", *dims],
                     [[i, *rng.integers(1, 6, len(dims))] for i in ids])
    assert ingest.main(["--db", str(db_with_articles), "--source", gold, "--labels",
                        ",".join(f"{d}={d}" for d in dims), "--label-scale", "1-5", "--oracle", "human-gold"]) == 0
    out = tmp_path / "cal.md"
    assert calibrate.main(["--db", str(db_with_articles), "--oracles-file", str(oracles), "--models",
                           "human-gold,fake-pro", "--sample-size", "30", "--bootstrap", "0", "--no-plots", "--quiet",
                           "--output", str(out)]) == 0
    assert server.requests == 12
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["reference"] == "human-gold" and data["sample"]["used"] == 12
    assert data["pairs"][0]["per_dimension"][dims[0]]["mae"]["n"] == 12
    assert "drawn among the 12 articles labelled by human-gold" in out.read_text()




def test_a_csv_header_that_repeats_a_column_is_refused_not_read_wrong(tmp_path, vad, capsys):
    """id,V,V,A,D,text: DictReader would silently keep the second V; the file is refused with one line."""
    src = tmp_path / "dup.csv"
    src.write_text("id,V,V,A,D,text\nx1,1,5,3,3,A sentence that is long enough to be kept.\n", encoding="utf-8")
    db = tmp_path / "gt.db"
    assert run_ingest(db, "--source", str(src), "--labels", LABELS, "--label-scale", "1-5", "--oracle", "human-mean") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"{src}:1: the header names column 'v' 2 times: which one holds the data is ambiguous "
                      f"(rename or drop one; nothing of this file was read)")
    conn = store.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
    conn.close()
