"""EmoBank end to end on a slice of the shipped files (data/emobank/): the sentences with their
official split, the three human label sets (mean, reader, individual raters), calibrate --no-label
between them, a selection that never touches the official test split, the test rows evaluate
reads from gt.db, and the inter-rater floor evaluate reads from the calibration report."""
import csv
import gzip
import json

import numpy as np
import pandas as pd
import pytest

from stages import calibrate
from gt.student import evaluate
from stages import ingest
from stages import select
from gt.core import store
from gt.core.filters import load_filter
from tests.conftest import ROOT

EMOBANK = ROOT / "data" / "emobank"
FILTER = str(ROOT / "filters" / "emobank_vad" / "v1")
FILTER_ID = "emobank_vad/v1"
LABELS = ["--labels", "V=valence,A=arousal,D=dominance", "--label-scale", "1-5"]
N = 300


def read(name: str) -> pd.DataFrame:
    with gzip.open(EMOBANK / name, "rt", encoding="utf-8", newline="") as f:
        return pd.read_csv(f, sep="\t" if name.endswith(".tsv.gz") else ",", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def emobank(tmp_path_factory):
    """The first N sentences of each split's order in emobank.csv (their reader means, every
    individual rating of them, and the ratings of 3 sentences that are not in the slice), written
    as CSV files, imported as `make emobank` does; and the calibration of the three human sets."""
    tmp = tmp_path_factory.mktemp("emobank")
    sentences = read("emobank.csv.gz")
    part = pd.concat([sentences[sentences["split"] == "test"].head(N // 3),
                      sentences[sentences["split"] != "test"].head(N - N // 3)])
    ids = set(part["id"])
    reader = read("reader.csv.gz")
    raters = read("individual_reader_ratings.csv.gz")
    known = set(sentences["id"])
    outside = [i for i in raters["id"].unique() if i not in known][:3]
    files = {"emobank.csv": part, "reader.csv": reader[reader["id"].isin(ids)],
             "ratings.csv": raters[raters["id"].isin(ids | set(outside))]}
    for name, frame in files.items():
        frame.to_csv(tmp / name, index=False, quoting=csv.QUOTE_MINIMAL)
    db = tmp / "gt.db"
    base = ["--db", str(db), "--filter", FILTER, "--workers", "1"]
    codes = [
        ingest.main(base + ["--source", str(tmp / "emobank.csv"), "--split-column", "split", *LABELS,
                            "--oracle", "human-mean"]),
        ingest.main(base + ["--source", str(tmp / "reader.csv"), *LABELS, "--oracle", "human-reader"]),
        ingest.main(base + ["--source", str(tmp / "ratings.csv"), *LABELS, "--oracle", "human-rater",
                            "--skip-unknown-ids"]),
    ]
    report = tmp / "reports" / "humans_calibration.md"
    codes.append(calibrate.main(["--db", str(db), "--filter", FILTER, "--no-label", "--quiet",
                                 "--models", "human-mean,human-reader,human-rater", "--sample-size", "100000",
                                 "--bootstrap", "50", "--no-plots", "--output", str(report)]))
    conn = store.connect(db)
    yield {"conn": conn, "db": db, "tmp": tmp, "part": part, "ratings": files["ratings.csv"], "codes": codes,
           "report": report, "outside": outside}
    conn.close()


def test_the_slice_goes_in_with_its_split_and_three_label_sets(emobank):
    conn, part = emobank["conn"], emobank["part"]
    assert emobank["codes"] == [0, 0, 0, 0]
    assert conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0] == N
    assert conn.execute("SELECT COUNT(*) FROM articles WHERE too_short = 1").fetchone()[0] == 0
    want = {i: {"dev": "val"}.get(s, s) for i, s in zip(part["id"], part["split"])}
    assert store.article_splits(conn, "official") == want
    per_oracle = dict(conn.execute("SELECT oracle, COUNT(*) FROM labels GROUP BY oracle").fetchall())
    ratings = emobank["ratings"]
    in_slice = ratings[ratings["id"].isin(set(part["id"]))]
    assert per_oracle == {"human-mean": N, "human-reader": N, "human-rater": len(in_slice)}
    slots = dict(conn.execute("""SELECT article_id, MAX("repeat") + 1 FROM labels WHERE oracle = 'human-rater'
                                 GROUP BY article_id""").fetchall())
    assert slots == in_slice.groupby("id").size().to_dict()
    row = part.iloc[0]
    got = dict(conn.execute("""SELECT s.dimension, s.score FROM labels l JOIN label_scores s ON s.label_id = l.id
                               WHERE l.oracle = 'human-mean' AND l.article_id = ?""", (row["id"],)).fetchall())
    assert got == pytest.approx({"valence": (float(row["V"]) - 1) * 2.5, "arousal": (float(row["A"]) - 1) * 2.5,
                                 "dominance": (float(row["D"]) - 1) * 2.5})


def test_importing_again_adds_nothing(emobank, capsys):
    conn, tmp = emobank["conn"], emobank["tmp"]
    before = conn.execute("SELECT COUNT(*), (SELECT COUNT(*) FROM label_runs) FROM labels").fetchone()
    assert ingest.main(["--db", str(emobank["db"]), "--filter", FILTER, "--workers", "1", "--source",
                        str(tmp / "ratings.csv"), *LABELS, "--oracle", "human-rater", "--skip-unknown-ids"]) == 0
    assert tuple(conn.execute("SELECT COUNT(*), (SELECT COUNT(*) FROM label_runs) FROM labels").fetchone()) == \
        tuple(before)
    assert f"{len(emobank['outside']) * 5} label rows name articles gt.db does not hold" in capsys.readouterr().err


def test_calibration_gives_the_inter_rater_figures_of_the_raw_ratings(emobank):
    import krippendorff

    data = json.loads(emobank["report"].with_suffix(".json").read_text())
    assert data["reference"] == "human-mean"
    conn = emobank["conn"]
    eligible = {r[0] for r in conn.execute(
        """SELECT id FROM articles a WHERE dup_of IS NULL AND (near_dup_cluster IS NULL OR near_dup_cluster = id)""")}
    ratings = emobank["ratings"]
    ratings = ratings[ratings["id"].isin(eligible)].copy()
    ratings["slot"] = ratings.groupby("id").cumcount()
    for col, dim in (("V", "valence"), ("A", "arousal"), ("D", "dominance")):
        wide = ratings.pivot(index="id", columns="slot", values=col).astype(float)
        matrix = (wide.to_numpy() - 1) * 2.5
        got = data["models"]["human-rater"]["inter_rater"]["per_dimension"][dim]
        assert got["items"] == len(wide)
        assert got["alpha"]["value"] == pytest.approx(
            krippendorff.alpha(reliability_data=matrix.T, level_of_measurement="interval"), abs=1e-9)
        loo = [abs(v - np.nanmean(np.delete(row, j))) for row in matrix for j, v in enumerate(row) if np.isfinite(v)]
        assert got["mae_vs_others"]["value"] == pytest.approx(np.mean(loo), abs=1e-9)
    floor = evaluate.calibration_floor(emobank["report"].with_suffix(".json"), "emobank_vad/v1",
                                       ["valence", "arousal", "dominance"])
    per = data["models"]["human-rater"]["inter_rater"]["per_dimension"]
    assert floor["kind"] == "inter_rater" and floor["oracles"][0] == "human-rater"
    assert floor["mae"] == pytest.approx(np.mean([per[d]["mae_vs_others"]["value"] for d in per if d != "overall"]))


def test_selection_never_takes_the_official_test_split_and_evaluate_reads_it(emobank, tmp_path):
    conn = emobank["conn"]
    out = tmp_path / "training"
    assert select.main(["--db", str(emobank["db"]), "--filter", FILTER, "--oracle", "human-mean",
                        "--target-size", "60", "--holdout-split", "official", "--output-dir", str(out),
                        "--name", "holdout-test", "--time-limit", "10"]) == 0
    test_ids = {a for a, s in store.article_splits(conn).items() if s == "test"}
    members = {r[0] for r in conn.execute(
        "SELECT article_id FROM selection_members m JOIN selections s ON s.id = m.selection_id WHERE s.name = ?",
        ("holdout-test",))}
    assert len(members) == 60 and not members & test_ids
    assert "held out: the test split of 'official'" in (out / "selection_report.md").read_text()
    # a student trained on that selection is measured on every labelled, unduplicated test article
    sel_id = conn.execute("SELECT id FROM selections WHERE name = 'holdout-test'").fetchone()[0]
    conn.execute("INSERT INTO models (id, base_model, filter_id, selection_id) VALUES ('m', 'x', 'emobank_vad/v1', ?)",
                 (sel_id,))
    rows, info = evaluate.split_test_rows(conn, "m", "emobank_vad/v1", "official", None,
                                          ["valence", "arousal", "dominance"])
    kept = {r[0] for r in conn.execute("SELECT id FROM articles WHERE dup_of IS NULL")}
    assert {r["id"] for r in rows} == test_ids & kept and info["oracle"] == "human-mean"
    assert info["trained_on_left_out"] == 0 and info["duplicates_left_out"] == len(test_ids - kept)
    with pytest.raises(evaluate.UsageError, match="no split by that name"):
        evaluate.split_test_rows(conn, "m", "emobank_vad/v1", "nope", None, ["valence", "arousal", "dominance"])
    conn.execute("DELETE FROM models WHERE id = 'm'")


def test_evaluate_reads_the_prompt_version_the_selection_was_built_from(emobank, tmp_path):
    """Two prompt versions of one oracle in gt.db: the newer one holds more labels, the model's selection
    was built from the older one. Evaluate's truth is the selection's version (the old code took the
    version with the most labels); --oracle naming another label set still wins."""
    conn = emobank["conn"]
    dims = ["valence", "arousal", "dominance"]
    assert select.main(["--db", str(emobank["db"]), "--filter", FILTER, "--oracle", "human-mean",
                        "--target-size", "30", "--holdout-split", "official", "--output-dir", str(tmp_path / "t"),
                        "--name", "two-prompts", "--time-limit", "10"]) == 0
    sel_id = conn.execute("SELECT id FROM selections WHERE name = 'two-prompts'").fetchone()[0]
    old = store.selection_label_set(conn, sel_id)
    assert old[0] == "human-mean"
    run = conn.execute("SELECT MAX(run_id) FROM labels WHERE oracle = 'human-mean'").fetchone()[0]
    with conn:  # prompt 'v2' of human-mean: two repeats per article (more labels than 'old'), every score + 1
        for rep in (0, 1):
            conn.execute("""INSERT INTO labels (run_id, article_id, filter_id, oracle, prompt_sha256, "repeat", status)
                            SELECT run_id, article_id, filter_id, oracle, 'v2', ?, status FROM labels
                            WHERE oracle = 'human-mean' AND prompt_sha256 = ? AND "repeat" = 0""", (rep, old[1]))
        conn.execute("""INSERT INTO label_scores (label_id, dimension, score)
                        SELECT n.id, s.dimension, MIN(s.score + 1, 10) FROM labels n
                        JOIN labels o ON o.article_id = n.article_id AND o.oracle = n.oracle
                            AND o.prompt_sha256 = ? AND o."repeat" = 0
                        JOIN label_scores s ON s.label_id = o.id
                        WHERE n.prompt_sha256 = 'v2'""", (old[1],))
        conn.execute("INSERT INTO models (id, base_model, filter_id, selection_id) VALUES "
                     "('two', 'x', 'emobank_vad/v1', ?)", (sel_id,))
    try:
        assert store.choose_label_set(conn, FILTER_ID, "human-mean") == ("human-mean", "v2")   # the most labels
        rows, info = evaluate.split_test_rows(conn, "two", FILTER_ID, "official", None, dims)
        assert (info["oracle"], info["prompt_sha256"]) == old
        truth = store.scores_frame(conn, load_filter(FILTER), oracle="human-mean", prompt_sha256=old[1])
        truth = truth.set_index("article_id")
        assert rows and all(r["labels"] == [truth.loc[r["id"], d] for d in dims] for r in rows)
        _, same = evaluate.split_test_rows(conn, "two", FILTER_ID, "official", "human-mean", dims)
        assert same["prompt_sha256"] == old[1]
        _, other = evaluate.split_test_rows(conn, "two", FILTER_ID, "official", "human-reader", dims)
        assert other["oracle"] == "human-reader"
    finally:
        with conn:
            conn.execute("DELETE FROM models WHERE id = 'two'")
            conn.execute("DELETE FROM labels WHERE prompt_sha256 = 'v2'")
