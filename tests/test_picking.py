"""Aimed labelling (label --pick, the loop stage, replay/<oracle>) on a synthetic pool whose
extremes a probe on MiniLM embeddings can see: one sentence in five is clearly joyful or clearly
grim (valence 9.5 or 0.5), the rest are plain statements (valence 5). The truth is imported as
oracle 'truth'; labels are bought from replay/truth through the real label stage."""
from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from stages import label as label_stage
from stages import loop as loop_stage
from gt.labelling import picking
from gt.selection import strategies
from gt.core.filters import load_filter

ROOT = Path(__file__).resolve().parents[1]
VAD = ROOT / "filters" / "emobank_vad" / "v1"
ORACLE = "replay/truth"
N = 300
START = 60

JOY = ["wonderful", "joyful", "delighted", "thrilled", "overjoyed", "grateful", "happy", "ecstatic"]
JOY_EVENTS = ["we won the championship", "my sister had a healthy baby", "the whole town celebrated the victory",
              "our wedding was perfect", "I finally got my dream job", "the children laughed all afternoon"]
GRIM = ["horrible", "devastating", "tragic", "heartbreaking", "terrifying", "miserable", "awful", "dreadful"]
GRIM_EVENTS = ["the flood destroyed every home", "my father died last night", "the war killed thousands",
               "they were tortured and abandoned", "the fire burned the orphanage down", "everyone I loved is gone"]
PLAIN = ["The committee meets on {d} in room {n}.", "The report lists {n} items for {d}.",
         "Parking on level {n} closes on {d}.", "The form has {n} fields and is due on {d}.",
         "Bus line {n} runs every hour on {d}.", "The invoice number {n} was filed on {d}."]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def pool_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N):
        kind = i % 10
        if kind == 0:
            text, v = f"{rng.choice(JOY).capitalize()} news, {rng.choice(JOY)} beyond words: {rng.choice(JOY_EVENTS)} (#{i}).", 9.5
        elif kind == 5:
            text, v = f"{rng.choice(GRIM).capitalize()} and {rng.choice(GRIM)}: {rng.choice(GRIM_EVENTS)} (#{i}).", 0.5
        else:
            text, v = rng.choice(PLAIN).format(d=rng.choice(DAYS), n=int(rng.integers(1, 10_000))), 5.0
        rows.append({"id": f"s{i:03d}", "text": text, "V": v, "A": round(float(rng.uniform(4.5, 5.5)), 1),
                     "D": round(float(rng.uniform(4.5, 5.5)), 1)})
    return rows


def run_label(db: Path, *args: str) -> int:
    return label_stage.main(["--db", str(db), "--filter", str(VAD), "--llm", ORACLE, "--concurrency", "8",
                             "--breaker-window", "0", *args])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """gt.db with the pool, the truth imported, and START random labels bought from replay/truth."""
    from stages import ingest
    work = tmp_path_factory.mktemp("picking")
    rows = pool_rows()
    src = work / "pool.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "V", "A", "D"])
        w.writeheader()
        w.writerows(rows)
    db = work / "base.db"
    assert ingest.main(["--db", str(db), "--filter", str(VAD), "--source", str(src),
                        "--labels", "V=valence,A=arousal,D=dominance", "--oracle", "truth"]) == 0
    cache = work / "emb.db"
    assert run_label(db, "--target-count", str(START), "--random-sample", "--seed", "1") == 0
    return {"db": db, "cache": cache, "work": work, "truth": {r["id"]: r for r in rows}}


def copy_db(base: dict, tmp_path: Path, name: str = "gt.db") -> Path:
    """A copy through SQLite's backup API (a file copy would miss what is still in the -wal file)."""
    db = tmp_path / name
    src, dst = sqlite3.connect(base["db"]), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    return db


def bought(db: Path, oracle: str = ORACLE) -> dict[str, dict]:
    conn = sqlite3.connect(db)
    out = {}
    for aid, status, scores, error in conn.execute(
            """SELECT l.article_id, l.status, (SELECT json_group_object(dimension, score) FROM label_scores
                      WHERE label_id = l.id), l.error FROM labels l WHERE l.oracle = ?""", (oracle,)):
        out[aid] = {"status": status, "scores": json.loads(scores) if scores else None, "error": error}
    conn.close()
    return out


def outer_count(db: Path, ids) -> int:
    labels = bought(db)
    return sum(1 for a in ids if labels[a]["scores"] and strategies.is_extreme(np.array(list(labels[a]["scores"].values()))).any())


def test_gaps_finds_more_extremes_than_random_at_the_same_budget(base, tmp_path):
    aimed, rand = copy_db(base, tmp_path, "aimed.db"), copy_db(base, tmp_path, "random.db")
    before = set(bought(base["db"]))
    assert run_label(aimed, "--pick", "gaps", "--pick-count", "40", "--seed", "3", "--embed-cache", str(base["cache"])) == 0
    assert run_label(rand, "--target-count", str(START + 40), "--random-sample", "--seed", "1") == 0
    new_aimed = set(bought(aimed)) - before
    new_random = set(bought(rand)) - before
    assert len(new_aimed) == len(new_random) == 40
    found_aimed, found_random = outer_count(aimed, new_aimed), outer_count(rand, new_random)
    # a fifth of the pool is extreme: random finds about 8 of 40; the probe sees the words
    assert found_aimed >= 2 * found_random and found_aimed >= 20, (found_aimed, found_random)


def test_picks_are_recorded_with_their_reason_and_a_dry_run_records_nothing(base, tmp_path, capsys):
    db = copy_db(base, tmp_path)
    assert run_label(db, "--pick", "gaps", "--pick-count", "30", "--seed", "3", "--dry-run",
                     "--embed-cache", str(base["cache"])) == 0
    out = capsys.readouterr().out
    assert "dry run, not recorded: picked 30 article(s) by --pick gaps" in out and "predicted coverage" in out
    assert f"{START} articles already have a valid label" in out   # the pool's, not the picks' (which have none)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM label_picks").fetchone()[0] == 0
    assert run_label(db, "--pick", "gaps", "--pick-count", "30", "--seed", "3", "--explore-share", "0.2",
                     "--embed-cache", str(base["cache"])) == 0
    rows = conn.execute("SELECT reason, cell, predicted_json, article_id FROM label_picks").fetchall()
    reasons = [r[0] for r in rows]
    assert reasons.count("explore") == 6 and reasons.count("gap") == 24
    aimed = [r for r in rows if r[0] == "gap" and r[1]]
    assert aimed, "gap picks name the cell they were meant to fill"
    for _, cell, predicted, _ in aimed:
        dim, _, bin_label = cell.partition(":")
        assert dim in ("valence", "arousal", "dominance") and bin_label
        assert set(json.loads(predicted)) == {"valence", "arousal", "dominance"}
    rnd = conn.execute("SELECT method, requested, labels_seen, scorer FROM pick_rounds").fetchone()
    assert rnd[:3] == ("gaps", 30, START) and rnd[3].startswith("probe")
    # every pick was labelled, and nothing else was bought
    assert set(bought(db)) - set(bought(base["db"])) == {r[3] for r in rows}


def test_the_scorer_never_reads_another_oracles_labels(base, tmp_path, capsys):
    db = copy_db(base, tmp_path)
    # 'truth' holds all 300 labels, replay/truth 60: the probe is fitted on those 60 only
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    filt = load_filter(VAD)
    key = picking.LabelKey(filt.id, ORACLE, filt.prompt_sha256)
    eligible = [r[0] for r in conn.execute("SELECT id FROM articles")]
    pool = picking.candidates(conn, filt, key, eligible)
    scorer = picking.fit_scorer(conn, filt, key, pool, cache=base["cache"], seed=1)
    assert scorer.labels_seen == START and len(scorer.predicted) == N - START
    # an oracle with no labels of its own gets no scorer, however many labels other oracles have
    other = picking.LabelKey(filt.id, "replay/nobody", filt.prompt_sha256)
    with pytest.raises(picking.PickError, match="0 valid label"):
        picking.fit_scorer(conn, filt, other, eligible, cache=base["cache"], seed=1)
    conn.close()
    fresh = copy_db(base, tmp_path, "fresh.db")
    c = sqlite3.connect(fresh)
    with c:
        c.execute("PRAGMA foreign_keys = OFF")
        c.execute("DELETE FROM label_scores WHERE label_id IN (SELECT id FROM labels WHERE oracle = ?)", (ORACLE,))
        c.execute("DELETE FROM labels WHERE oracle = ?", (ORACLE,))
    c.close()
    capsys.readouterr()
    assert run_label(fresh, "--pick", "gaps", "--pick-count", "10", "--embed-cache", str(base["cache"])) == 1
    assert "needs at least 30" in capsys.readouterr().err


def test_ids_labels_exactly_the_listed_articles(base, tmp_path, capsys):
    db = copy_db(base, tmp_path)
    before = set(bought(db))
    fresh = [a for a in sorted(base["truth"]) if a not in before][:3]
    already = sorted(before)[0]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# three to buy\n{fresh[0]}\n\n{fresh[1]}\n{fresh[0]}\n{json.dumps({'id': fresh[2]})}\n{already}\n")
    assert run_label(db, "--pick", "ids", "--ids-file", str(ids)) == 0
    assert set(bought(db)) - before == set(fresh)
    conn = sqlite3.connect(db)
    assert sorted(r[0] for r in conn.execute("SELECT article_id FROM label_picks WHERE reason = 'listed'")) == sorted(fresh)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{fresh[0]}\nno-such-article\n")
    capsys.readouterr()
    assert run_label(db, "--pick", "ids", "--ids-file", str(bad)) == 1
    err = capsys.readouterr().err
    assert "1 id(s) not in gt.db" in err and "no-such-article" in err and len(err.strip().splitlines()) == 1


def test_ids_refuses_what_the_pool_excludes_before_anything_is_paid(base, tmp_path, capsys):
    """An exact duplicate (its kept article would be labelled again through it) and a text flagged too
    short: refused with the reason, nothing bought."""
    from stages import ingest
    db = copy_db(base, tmp_path)
    before = set(bought(db))
    fresh = [a for a in sorted(base["truth"]) if a not in before][0]
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "copy-1", "text": base["truth"][fresh]["text"]}) + "\n"
                     + json.dumps({"id": "tiny-1", "text": "Too short."}) + "\n", encoding="utf-8")
    assert ingest.main(["--db", str(db), "--filter", str(VAD), "--source", str(extra), "--min-chars", "20"]) == 0
    for listed, words in (("copy-1", f"'copy-1' is an exact duplicate of '{fresh}'"), ("tiny-1", "'tiny-1' is too short")):
        ids = tmp_path / "ids.txt"
        ids.write_text(f"{fresh}\n{listed}\n")
        capsys.readouterr()
        assert run_label(db, "--pick", "ids", "--ids-file", str(ids)) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and "nothing was sent" in err
    assert set(bought(db)) == before


def test_replay_answers_equal_the_source_and_unknown_articles_become_errors(base, tmp_path):
    from stages import ingest
    db = copy_db(base, tmp_path)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "unlabelled-1", "title": "", "text": "A sentence no human ever rated."}) + "\n")
    assert ingest.main(["--db", str(db), "--filter", str(VAD), "--source", str(extra)]) == 0
    ids = tmp_path / "ids.txt"
    ids.write_text("unlabelled-1\ns001\ns010\n")
    assert run_label(db, "--pick", "ids", "--ids-file", str(ids)) == 1   # a missing label: exit 1 with the resume line
    labels = bought(db)
    assert labels["unlabelled-1"]["status"] == "error" and "not in the replayed set" in labels["unlabelled-1"]["error"]
    truth = base["truth"]
    for aid in ("s001", "s010"):
        assert labels[aid]["status"] == "ok"
        assert labels[aid]["scores"] == pytest.approx({"valence": truth[aid]["V"], "arousal": truth[aid]["A"],
                                                       "dominance": truth[aid]["D"]})
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT cost_usd FROM labels WHERE article_id = 'unlabelled-1' AND oracle = ?",
                        (ORACLE,)).fetchone()[0] in (0, None)


def ledger(db: Path) -> tuple[float, float, int]:
    conn = sqlite3.connect(db)
    runs = conn.execute("SELECT SUM(cost_usd) FROM label_runs WHERE oracle = ?", (ORACLE,)).fetchone()[0]
    labels, n = conn.execute("SELECT SUM(cost_usd), COUNT(*) FROM labels WHERE oracle = ?", (ORACLE,)).fetchone()
    return runs, labels, n


def test_a_stopped_pick_round_resumes_without_repicking_or_repaying(base, tmp_path, capsys):
    db = copy_db(base, tmp_path)
    args = ["--pick", "gaps", "--pick-count", "20", "--seed", "5", "--embed-cache", str(base["cache"]),
            "--replay-price", "1000,1000", "--concurrency", "1"]
    assert run_label(db, *args, "--max-cost", "8") == 0          # the budget stops it a few labels in
    conn = sqlite3.connect(db)
    first = conn.execute("SELECT COUNT(*) FROM labels WHERE oracle = ?", (ORACLE,)).fetchone()[0] - START
    assert 0 < first < 20
    capsys.readouterr()
    assert run_label(db, *args) == 0
    assert "resuming pick round 1" in capsys.readouterr().out
    assert conn.execute("SELECT COUNT(*) FROM pick_rounds").fetchone()[0] == 1
    picked = {r[0] for r in conn.execute("SELECT article_id FROM label_picks")}
    assert len(picked) == 20 and picked <= set(bought(db))
    runs, labels, n = ledger(db)
    assert n == START + 20 and runs == pytest.approx(labels)   # every label paid once, and only once


def test_the_loop_resumes_after_a_stop_and_reports_each_round(base, tmp_path, capsys):
    db = copy_db(base, tmp_path)
    args = ["--db", str(db), "--filter", str(VAD), "--llm", ORACLE, "--rounds", "2", "--per-round", "15",
            "--seed", "2", "--embed-cache", str(base["cache"]), "--replay-price", "1000,1000", "--concurrency", "1",
            "--output-dir", str(tmp_path / "reports"), "--quiet"]
    assert loop_stage.main(args + ["--max-cost", "12"]) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM pick_rounds").fetchone()[0] == 1
    assert loop_stage.main(args) == 0
    rounds = conn.execute("SELECT round_no, method, loop_key FROM pick_rounds ORDER BY round_no").fetchall()
    assert [r[:2] for r in rounds] == [(1, "gaps"), (2, "gaps")] and rounds[0][2] == "gaps-15x2-seed2"
    picks = [r[0] for r in conn.execute("SELECT article_id FROM label_picks")]
    assert len(picks) == len(set(picks)) == 30                      # no article picked twice
    runs, labels, n = ledger(db)
    assert n == START + 30 and runs == pytest.approx(labels)
    report = json.loads((tmp_path / "reports" / "loop_emobank_vad_v1_replay_truth.json").read_text())
    assert [r["labels"] for r in report["rounds"]] == [15, 15]
    assert report["rounds"][1]["labels_total"] == START + 30
    # a finished loop run again buys nothing
    assert loop_stage.main(args) == 0
    assert ledger(db)[2] == START + 30


@pytest.mark.parametrize("content", [b"\xff\xfe\x00b\x00i\x00n", "caf\xe9-1\n".encode("latin-1"), b"a-1\n\x80\x81\n"])
def test_an_ids_file_that_is_not_utf8_is_one_line_naming_the_line(tmp_path, content):
    path = tmp_path / "ids.txt"
    path.write_bytes(content)
    with pytest.raises(picking.PickError, match=r"--ids-file .* line \d+: not UTF-8 text"):
        picking.read_ids_file(str(path))


def test_a_prefiltered_article_is_never_a_candidate(conn, uplifting):
    """A label run never sends what the prefilter skips; picked, it would come back every round."""
    from tests.conftest import add_articles, sample_articles
    articles = sample_articles(3)
    articles[1] = dict(articles[1], id="finance-1",
                       text="The quarterly earnings beat forecasts and the share buyback goes on. " + articles[1]["text"])
    add_articles(conn, articles)
    key = picking.LabelKey(uplifting.id, "any-oracle", uplifting.prompt_sha256)
    ids = [a["id"] for a in articles]
    assert uplifting.prefilter_reason(articles[1]["title"], articles[1]["text"]) == "corporate finance"
    assert picking.candidates(conn, uplifting, key, ids) == [ids[0], ids[2]]


def test_a_round_that_bought_nothing_reports_the_running_coverage_not_zero(base, tmp_path):
    from gt.labelling.loop import round_figures
    db = copy_db(base, tmp_path)
    args = ["--db", str(db), "--filter", str(VAD), "--llm", ORACLE, "--rounds", "1", "--per-round", "10",
            "--seed", "2", "--embed-cache", str(base["cache"]), "--output-dir", str(tmp_path / "reports"), "--quiet"]
    assert loop_stage.main(args) == 0
    conn = sqlite3.connect(db)
    (rid, name), = conn.execute("SELECT id, loop_key FROM pick_rounds").fetchall()
    unlabelled = next(a for a in base["truth"] if not conn.execute(
        "SELECT 1 FROM labels WHERE article_id = ? AND oracle = ?", (a, ORACLE)).fetchone())
    with conn:   # a second round whose only pick was never labelled (as a prefiltered pick used to be)
        conn.execute("""INSERT INTO pick_rounds (filter_id, oracle, prompt_sha256, method, loop_key, round_no, requested)
                        SELECT filter_id, oracle, prompt_sha256, method, loop_key, 2, 1 FROM pick_rounds WHERE id = ?""",
                     (rid,))
        conn.execute("INSERT INTO label_picks (round_id, article_id, rank, reason) VALUES (?, ?, 0, 'gap')",
                     (conn.execute("SELECT MAX(id) FROM pick_rounds").fetchone()[0], unlabelled))
    filt = load_filter(VAD)
    key = picking.LabelKey(filt.id, ORACLE, filt.prompt_sha256)
    first, second = round_figures(store_conn(db), filt, key, name)
    assert first["labels_total"] == START + 10 and second["labels"] == 0
    assert second["labels_total"] == first["labels_total"] and second["fill"] == first["fill"] > 0


def store_conn(db):
    from gt.core import store
    return store.connect(db)
