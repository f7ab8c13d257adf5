"""Learning curves on a synthetic pool whose labels are a known function of the text: sentences
built from word groups, where the count of a dimension's positive or negative words sets its score,
and strong counts (the extremes) are rare. A strategy that puts the extremes into the training set
must beat random on tail MAE; the test set never reaches a selection; the same seed gives the same
numbers. Real MiniLM (cached embeddings), real OR-Tools solver."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from gt.selection import strategies
from gt.core import store

DIMS = ("brightness", "energy")
WORDS = {  # dimension -> (negative words, positive words); their count in the text sets the score
    "brightness": (["grief", "ruin", "despair", "misery", "tragedy", "sorrow"],
                   ["joy", "delight", "triumph", "wonderful", "bliss", "cheerful"]),
    "energy": (["sleepy", "still", "quiet", "drowsy", "calm", "idle"],
               ["frantic", "explosive", "racing", "thrilling", "furious", "electric"]),
}
FILLER = ["the committee", "a report", "on tuesday", "the office", "a meeting", "the schedule", "some paperwork",
          "the hallway", "a table", "the printer", "next week", "the agenda", "a form", "the budget"]
LEVELS = np.array([-3, -2, -1, 0, 1, 2, 3])
LEVEL_P = np.array([0.012, 0.025, 0.17, 0.586, 0.17, 0.025, 0.012])   # |level| >= 2 is rare (~7%)


def score_of(level: int) -> float:
    return float(np.clip(5.5 + 1.5 * level, 0, 10))    # -3 -> 1.0, -2 -> 2.5, 2 -> 8.5, 3 -> 10: outer bins


def synthetic_articles(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        levels = {d: int(rng.choice(LEVELS, p=LEVEL_P)) for d in DIMS}
        words = [str(w) for w in rng.choice(FILLER, size=4, replace=False)]
        for d, lv in levels.items():
            group = WORDS[d][1] if lv > 0 else WORDS[d][0]
            words += [str(w) for w in rng.choice(group, size=abs(lv), replace=False)]
        rng.shuffle(words)
        out.append({"id": f"s{i:04d}", "title": "", "text": " ".join(words) + ".",
                    "scores": {d: score_of(lv) for d, lv in levels.items()}})
    return out


def write_filter(folder):
    folder.mkdir(parents=True)
    dims = "\n".join(textwrap.dedent(f"""\
          - name: {d}
            weight: 0.5
            description: How much {d} the sentence carries.
            low: "score 0-2 if the sentence has none."
            anchors:
              "0-2": None at all.
              "9-10": Overwhelming.""") for d in DIMS)
    (folder / "config.yaml").write_text(textwrap.dedent("""\
        name: synth
        version: 1
        description: Synthetic sentences for the learning-curve tests.
        min_chars: 1
        max_article_chars: 2000
        dimensions:
        """) + textwrap.indent(dims, "  ") + textwrap.dedent("""
        content_types: [plain]
        tiers:
          - name: high
            min_overall: 6.0
            description: Above the middle.
          - name: low
            min_overall: 0.0
            description: The rest.
        """), encoding="utf-8")
    (folder / "prompt.md").write_text("Rate brightness and energy of the sentence; content type plain.\n"
                                      "{title}\n{text}\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from gt.core.filters import load_filter
    from tests.conftest import add_articles

    root = tmp_path_factory.mktemp("curve")
    filt = load_filter(write_filter(root / "filters" / "synth" / "v1"))
    db = root / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, filt)
    articles = synthetic_articles(1000, seed=7)
    add_articles(conn, articles)
    with store.transaction(conn):   # two near-duplicate clusters: each must stay on one side of the test split
        conn.execute("UPDATE articles SET near_dup_cluster = 'c1' WHERE id IN ('s0001', 's0002', 's0003')")
        conn.execute("UPDATE articles SET near_dup_cluster = 'c2' WHERE id IN ('s0010', 's0011')")
    run_id = store.start_run(conn, purpose="import", filt=filt, oracle="synthetic", provider=None, model=None)
    for a in articles:
        store.insert_label(conn, run_id=run_id, article_id=a["id"], filt=filt, oracle="synthetic", status="ok",
                           scores=a["scores"], content_type="plain")
    store.finish_run(conn, run_id)
    conn.close()
    return {"root": root, "db": db, "filter": filt, "articles": {a["id"]: a for a in articles}}


def curve_args(synth, out, *extra):
    from stages import curve as curve_command

    return curve_command.parse_options([
        "--db", str(synth["db"]), "--filter", str(synth["filter"].path), "--budgets", "30,60", "--seeds", "3",
        "--time-limit", "5", "--output-dir", str(out), "--cache", str(synth["root"] / "embeddings.db"),
        *map(str, extra)])


@pytest.fixture(scope="module")
def result(synth):
    import torch

    from gt.student import curve

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the embedding pass: on a shared 2-core machine one thread is the fast one
    try:
        return curve.curve(curve_args(synth, synth["root"] / "out"), progress=False)
    finally:
        torch.set_num_threads(threads)


def summary_row(result, strategy, budget):
    return next(r for r in result["summary"] if r["strategy"] == strategy and r["budget"] == budget)


def test_a_strategy_that_sees_the_extremes_beats_random_on_tail_mae(result):
    assert result["test"]["tail_n"]["brightness"] >= 10 and result["test"]["tail_n"]["energy"] >= 10
    for budget in (30, 60):
        rnd = summary_row(result, "random", budget)
        for name in ("maximize_coverage", "extreme_focus"):
            row = summary_row(result, name, budget)
            # the selection holds several times random's outer-bin articles, and the student learns from them
            assert sum(row["extremes_selected"].values()) > 3 * sum(rnd["extremes_selected"].values())
            assert row["tail_mae"]["mean"] < 0.85 * rnd["tail_mae"]["mean"], (name, budget)


def test_the_test_set_never_appears_in_any_selection(result, synth):
    test_ids = set(result["test_ids"])
    n = len(synth["articles"])
    assert abs(len(test_ids) - 0.2 * n) <= 3                         # the default held-out share
    assert len(result["runs"]) == 2 * 3 * len(strategies.STRATEGIES)   # every strategy, random among them
    for run in result["runs"]:
        assert run["selected_n"] == run["budget"] == len(set(run["selected"]))
        assert not test_ids & set(run["selected"]), (run["strategy"], run["budget"], run["seed"])
    for cluster in ({"s0001", "s0002", "s0003"}, {"s0010", "s0011"}):   # clusters kept whole
        assert cluster <= test_ids or not cluster & test_ids


def test_same_seed_same_numbers_and_the_report(result, synth):
    from gt.student import curve

    again = curve.curve(curve_args(synth, synth["root"] / "again"), progress=False)
    assert again["test_ids"] == result["test_ids"]
    assert [r["selected"] for r in again["runs"]] == [r["selected"] for r in result["runs"]]
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in result["runs"]]
    assert again["embedding_stats"]["computed"] == 0 and result["embedding_stats"]["computed"] > 900
    frame = pd.DataFrame({d: [a["scores"][d] for a in synth["articles"].values()] for d in DIMS})
    frame["near_dup_cluster"] = None
    held = [curve.held_out_test(frame, list(DIMS), np.arange(11.0), 0.2, seed) for seed in (42, 42, 43)]
    assert (held[0] == held[1]).all() and (held[0] != held[2]).any()   # the held-out share follows --seed

    out = synth["root"] / "out"
    md = (out / "curve.md").read_text(encoding="utf-8")
    first = md.splitlines()[0]
    assert first == result["verdict"] and first.startswith("At 60 labels, maximize_coverage's tail MAE is ")
    from gt.core import bands
    assert f"outer bins, the ones the selection strategies call extreme ({bands.words()})" in md   # one definition
    for d in DIMS:   # the tail counts are the test set's scores < 4 and >= 8
        scores = np.array([synth["articles"][a]["scores"][d] for a in result["test_ids"]])
        assert (result["test"]["tail_low_n"][d], result["test"]["tail_high_n"][d]) == ((scores < 4).sum(), (scores >= 8).sum())
    data = json.loads((out / "curve.json").read_text(encoding="utf-8"))
    assert data["summary"][0]["strategy"] == "random" and "selected" not in data["runs"][0]
    for d in (*DIMS, "mean"):
        assert (out / f"curve_{d}.png").stat().st_size > 10_000


def test_tail_metrics_match_an_independent_computation():
    from gt.student import curve

    true = np.array([[1.0, 5.0], [9.0, 5.5], [5.0, 3.5], [6.0, 8.0], [5.0, 5.0]])
    pred = np.array([[3.0, 5.0], [7.5, 5.0], [5.5, 5.0], [6.0, 6.0], [4.0, 5.0]])
    m = curve.test_metrics(true, pred, ["a", "b"])
    assert m["per_dimension"]["a"]["tail_mae"] == pytest.approx((2.0 + 1.5) / 2)      # scores 1 and 9
    assert m["per_dimension"]["b"]["tail_mae"] == pytest.approx((1.5 + 2.0) / 2)      # scores 3.5 and 8
    assert m["tail_mae"] == pytest.approx((1.75 + 1.75) / 2)
    assert m["mae"] == pytest.approx(np.abs(true - pred).mean())
    from gt.student.curve_report import t_interval

    ci = t_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["hi"] - 2.0 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)


def test_ridge_head_leave_one_out_error_equals_refitting_without_each_article():
    from gt.student.probe import RidgeHead

    rng = np.random.default_rng(3)
    x = rng.normal(size=(25, 40))                      # fewer articles than features, as at small budgets
    y = np.c_[x[:, :3].sum(axis=1) + rng.normal(0, 0.5, 25), rng.normal(5, 2, 25)]
    for alpha in (0.1, 10.0):
        head = RidgeHead.fit(x, y, alphas=[alpha])
        z = (y - y.mean(axis=0)) / y.std(axis=0)       # the head's standardised targets
        errors = []
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            xm, zm = x[keep].mean(axis=0), z[keep].mean(axis=0)
            xc = x[keep] - xm
            beta = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (z[keep] - zm))
            errors.append((x[i] - xm) @ beta + zm - z[i])
        assert head.loo_mse == pytest.approx((np.array(errors) ** 2).mean(axis=0), rel=1e-8)
    both = RidgeHead.fit(x, y, alphas=[0.1, 10.0])
    assert both.alpha[1] == 10.0                       # pure noise: the larger penalty predicts it better


def test_official_split_is_the_test_set_and_its_cluster_mates_stay_out(synth, tmp_path):
    import shutil

    from gt.student import curve

    db = tmp_path / "gt.db"
    shutil.copy(synth["db"], db)
    conn = store.connect(db)
    test = [f"s{i:04d}" for i in range(0, 1000, 5)] + ["s0001"]            # s0002/s0003 share s0001's cluster
    with store.transaction(conn):
        conn.executemany("INSERT INTO article_splits (split_name, article_id, split) VALUES ('official', ?, ?)",
                         [(a, "test" if a in test else "train") for a in synth["articles"]])
    conn.close()
    args = curve_args(synth, tmp_path / "out", "--strategies", "maximize_coverage", "--seeds", "1",
                      "--budgets", "30", "--exploration-share", "0.5")   # the uniform fill must stay out too
    args.db = str(db)
    r = curve.curve(args, progress=False)
    mates = {"s0002", "s0003", "s0011"}                                   # s0010 is a test article too
    assert set(r["test_ids"]) == set(test) and r["pool"]["cluster_mates_dropped"] == len(mates)
    assert r["pool"]["n"] == 1000 - len(test) - len(mates)
    assert r["test"]["source"].startswith("the 'test' articles of split scheme 'official'")
    for run in r["runs"]:
        assert not set(run["selected"]) & (set(test) | mates)


def test_bad_flags_are_one_line_errors(synth, capsys, tmp_path):
    from stages import curve as curve_command

    base = ["--db", str(synth["db"]), "--filter", str(synth["filter"].path), "--output-dir", str(tmp_path)]
    assert curve_command.main(base + ["--strategies", "random,nope"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert curve_command.main(base + ["--budgets", "40,10000"]) == 1
    assert "larger than the selection pool" in capsys.readouterr().err
    assert curve_command.main(base + ["--split-name", "official"]) == 2
    assert "no such split scheme" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_real_student_runs_the_real_training_path(synth, tmp_path, method):
    """--student full|lora through gt.student.model.fit_student, on a 2-layer random BERT with MiniLM's
    tokenizer (the real MiniLM trains the same way, only slower; one run: the Trainer is the cost):
    it trains with the named method on a 90/10 split of the selection and predicts the test set it
    never saw."""
    import shutil

    from transformers import BertConfig, BertModel

    from gt.student import curve
    from gt.student.model import minilm_dir

    base = tmp_path / "tiny_bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(base)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / f, base / f)
    r = curve.curve(curve_args(synth, tmp_path / "out", "--student", method, "--model", base, "--budgets", "20",
                               "--seeds", "1", "--strategies", "random", "--epochs", "1", "--max-length", "16",
                               "--device", "cpu"), progress=False)
    (run,) = r["runs"]
    assert r["student_kind"] == method == run["student"]["method"] and run["strategy"] == "random"
    assert run["student"]["train"] == 18
    assert run["student"]["val"] == 2 and not set(r["test_ids"]) & set(run["selected"])
    assert run["metrics"]["mae"] is not None and run["metrics"]["per_dimension"]["energy"]["tail_n"] > 0
