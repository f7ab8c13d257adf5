"""The select stage's exports: every split line carries the provenance of its label (gt.db's label
row), the dataset card (README.md) beside the splits, Hugging Face `datasets` loading them offline,
and the Parquet format."""
from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from stages import select as stage
from gt.selection import report as selection_report
from gt.core import store
from gt.student.model import read_split
from tests.conftest import skewed_scores

N = 80


def labelled_db(conn, filt, n=N, with_second_oracle=True):
    """n articles from data/sample's Wikinews and VOA files (as ingest records them: source and origin),
    labelled by oracle-a (model model-a-1, evidence for some dimensions) and, for the first half,
    by oracle-b (another model, other scores and evidence): selecting oracle-a's labels must carry
    oracle-a's provenance, never oracle-b's."""
    names = filt.dimension_names
    with store.transaction(conn):
        for i in range(n):
            conn.execute(
                "INSERT INTO articles (id, title, text, source, origin, content_hash, chars) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f"a{i:03d}", f"Title {i}", f"Body of article {i}. " * 30,
                 "VOA Learning English" if i % 5 == 0 else "Wikinews", "data/sample/articles.jsonl", f"h{i}", 600))
    oracles = [("oracle-a", "model-a-1", skewed_scores(n, 3), n)]
    if with_second_oracle:
        oracles.append(("oracle-b", "model-b-2", skewed_scores(n, 4), n // 2))
    for oracle, model, scores, count in oracles:
        run_id = store.start_run(conn, purpose="label", filt=filt, oracle=oracle, provider="test", model=model)
        for i in range(count):
            evidence = {d: f"{oracle} quote {i} for {d}" for d in names[: 1 + i % len(names)]}  # some dims have none
            store.insert_label(conn, run_id=run_id, article_id=f"a{i:03d}", filt=filt, oracle=oracle, status="ok",
                               scores={d: float(scores[i][j]) for j, d in enumerate(names)},
                               content_type="solutions_story", evidence=evidence)
        store.finish_run(conn, run_id)


def read_lines(folder):
    return {split: [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "val", "test")}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """`datasets` with no network and every cache under tmp_path."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return tmp_path / "hf_cache"


def test_every_line_carries_its_labels_provenance(conn, uplifting, db_path, tmp_path, capsys):
    labelled_db(conn, uplifting)
    out = tmp_path / "out"
    assert stage.main(["--db", str(db_path), "--oracle", "oracle-a", "--target-size", "40", "--output-dir", str(out),
                       "--name", "prov"]) == 0, capsys.readouterr().err
    names = uplifting.dimension_names
    c = sqlite3.connect(db_path)
    c.row_factory = sqlite3.Row
    lines = read_lines(out)
    seen = 0
    for split, rows in lines.items():
        for rec in rows:
            label = c.execute("""SELECT l.*, r.model FROM labels l JOIN label_runs r ON r.id = l.run_id
                                 WHERE l.id = ?""", (rec["label_id"],)).fetchone()
            assert label["article_id"] == rec["id"] and label["oracle"] == rec["oracle"] == "oracle-a"
            assert rec["model"] == label["model"] == "model-a-1"
            assert rec["prompt_sha256"] == label["prompt_sha256"] == uplifting.prompt_sha256
            stored = json.loads(label["evidence_json"])
            assert rec["evidence"] == {d: stored.get(d, "") for d in names}
            assert list(rec["evidence"]) == names and "oracle-a quote" in rec["evidence"][names[0]]
            scores = dict(c.execute("SELECT dimension, score FROM label_scores WHERE label_id = ?",
                                    (rec["label_id"],)).fetchall())
            assert rec["labels"] == [scores[d] for d in names]
            # the keys train and evaluate read are still there, and their reader takes the file
            assert {"id", "title", "text", "labels", "dimension_names", "tier", "overall"} <= set(rec)
            seen += 1
        if rows:
            assert [r["id"] for r in read_split(out / f"{split}.jsonl")] == [r["id"] for r in rows]
    c.close()
    assert seen == 40


def test_imported_labels_carry_the_import_runs_provenance(conn, uplifting, db_path, tmp_path, capsys):
    """A selection from an imported labelled file: each line points at the imported label row."""
    from gt.intake.labeled_file import export_labeled_file

    labelled_db(conn, uplifting, with_second_oracle=False)
    export_labeled_file(conn, uplifting, tmp_path / "labeled.jsonl")
    fresh = tmp_path / "fresh" / "gt.db"
    assert stage.main(["--db", str(fresh), "--labeled-file", str(tmp_path / "labeled.jsonl"), "--target-size", "30",
                       "--output-dir", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    c = sqlite3.connect(fresh)
    for rows in read_lines(tmp_path / "out").values():
        for rec in rows:
            row = c.execute("""SELECT l.article_id, l.oracle, l.prompt_sha256, l.evidence_json, r.model, r.purpose
                               FROM labels l JOIN label_runs r ON r.id = l.run_id WHERE l.id = ?""",
                            (rec["label_id"],)).fetchone()
            assert row[:3] == (rec["id"], rec["oracle"], rec["prompt_sha256"])
            assert (rec["model"], row[5]) == (row[4], "import") and rec["model"] == "model-a-1"
            stored = json.loads(row[3])
            assert rec["evidence"] == {d: stored.get(d, "") for d in uplifting.dimension_names}
            assert any(rec["evidence"].values())
    c.close()


def test_card_counts_licence_and_load_dataset(conn, uplifting, db_path, tmp_path, hf_offline, capsys):
    import datasets

    labelled_db(conn, uplifting)
    out = tmp_path / "out"
    assert stage.main(["--db", str(db_path), "--oracle", "oracle-a", "--target-size", "50", "--output-dir", str(out),
                       "--train-ratio", "0.7", "--val-ratio", "0.2", "--test-ratio", "0.1"]) == 0, \
        capsys.readouterr().err
    lines = read_lines(out)
    counts = {split: len(rows) for split, rows in lines.items()}
    assert counts == {"train": 35, "val": 10, "test": 5}
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "train.jsonl"},
                                                {"split": "validation", "path": "val.jsonl"},
                                                {"split": "test", "path": "test.jsonl"}]
    assert meta["license"] == "cc-by-2.5"          # Wikinews CC BY 2.5 + VOA public domain
    for split, hf in (("train", "train"), ("val", "validation"), ("test", "test")):
        assert f"| {hf} | {split}.jsonl | {counts[split]} |" in card
    assert "public domain" in card and "News articles from Wikinews" in card
    assert "| oracle-a | model-a-1 |" in card and uplifting.prompt_sha256 in card and "oracle-b" not in card
    assert "| seed | 42 |" in card and "| strategy | maximize_coverage |" in card and "objective" in card
    assert f'load_dataset("json", data_dir="{out}")' in card

    for ds in (datasets.load_dataset("json", data_dir=str(out), cache_dir=str(hf_offline)),
               datasets.load_dataset(str(out), cache_dir=str(hf_offline))):      # the card's configs
        assert {name: ds[name].num_rows for name in ds} == {"train": 35, "validation": 10, "test": 5}
        assert ds["validation"]["id"] == [r["id"] for r in lines["val"]]
        assert ds["train"]["label_id"] == [r["label_id"] for r in lines["train"]]


def test_unknown_sources_leave_the_licence_to_the_user():
    import pandas as pd

    rows = lambda *pairs: pd.DataFrame([{"source": s, "origin": o, "articles": 1} for s, o in pairs])  # noqa: E731
    sample = "data/sample/articles.jsonl"
    assert selection_report.card_licence(rows(("Wikinews", sample), ("VOA Learning English", "./" + sample))) == \
        {"license": "cc-by-2.5"}
    assert selection_report.card_licence(rows(("VOA Learning English", sample)))["license_name"] == "public-domain"
    assert selection_report.card_licence(rows(("Wikinews", sample), ("Reuters", "feeds/reuters.jsonl"))) == \
        {"license": "unknown"}
    assert selection_report.card_licence(rows(("Wikinews", "my/own/wikinews.jsonl"))) == {"license": "unknown"}
    assert selection_report.card_licence(rows((None, "data/emobank/emobank.csv.gz"))) == {"license": "cc-by-sa-4.0"}
    mixed = selection_report.card_licence(rows((None, "data/emobank/emobank.csv.gz"), ("Wikinews", sample)))
    assert mixed["license"] == "other" and mixed["license_name"] == "mixed"
    section = "\n".join(selection_report.card_licence_section(rows(("Reuters", "feeds/reuters.jsonl"))))
    assert selection_report.UNKNOWN_LICENCE in section and "Reuters (feeds/reuters.jsonl)" in section


def test_an_empty_split_is_left_out_of_the_cards_configs(conn, uplifting, db_path, tmp_path, hf_offline, capsys):
    import datasets

    labelled_db(conn, uplifting, with_second_oracle=False)
    out = tmp_path / "out"
    assert stage.main(["--db", str(db_path), "--target-size", "20", "--output-dir", str(out),
                       "--train-ratio", "0.9", "--val-ratio", "0.1", "--test-ratio", "0"]) == 0, capsys.readouterr().err
    assert (out / "test.jsonl").read_text() == ""
    card = (out / "README.md").read_text()
    assert [f["split"] for f in front_matter(card)["configs"][0]["data_files"]] == ["train", "validation"]
    assert "data_dir=" not in card and "| test | test.jsonl | 0 |" in card
    ds = datasets.load_dataset(str(out), cache_dir=str(hf_offline))
    assert {name: ds[name].num_rows for name in ds} == {"train": 18, "validation": 2}


def test_parquet_has_the_jsonl_columns_and_replaces_old_jsonl(conn, uplifting, db_path, tmp_path, hf_offline, capsys):
    import datasets
    import pyarrow.parquet as pq

    labelled_db(conn, uplifting)
    out = tmp_path / "out"
    flags = ["--db", str(db_path), "--oracle", "oracle-a", "--target-size", "30", "--output-dir", str(out)]
    assert stage.main(flags) == 0
    jsonl = read_lines(out)
    capsys.readouterr()
    assert stage.main([*flags, "--format", "parquet"]) == 0
    said = capsys.readouterr().out
    assert "Wrote train/val/test.parquet" in said and "`make train` expects the .jsonl splits" in said
    assert "removed the earlier train.jsonl, val.jsonl, test.jsonl" in said
    assert not list(out.glob("*.jsonl"))
    for split, rows in jsonl.items():
        table = pq.read_table(out / f"{split}.parquet")
        assert table.column_names == list(rows[0])
        assert table.to_pylist() == rows                      # same selection (same seed), same values
    card = (out / "README.md").read_text()
    assert [f["path"] for f in front_matter(card)["configs"][0]["data_files"]] == \
        ["train.parquet", "val.parquet", "test.parquet"]
    ds = datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(hf_offline))
    assert {name: ds[name].num_rows for name in ds} == {"train": 24, "validation": 3, "test": 3}
    # and back: a JSONL run removes the Parquet files, so nothing reads a stale selection
    assert stage.main(flags) == 0
    assert not list(out.glob("*.parquet")) and read_lines(out) == jsonl


def test_same_seed_same_splits_and_card(conn, uplifting, db_path, tmp_path):
    """Same seed, same bytes: the splits (provenance included) and the card (but for its folder)."""
    labelled_db(conn, uplifting)
    for name in ("a", "b"):
        assert stage.main(["--db", str(db_path), "--oracle", "oracle-a", "--target-size", "25", "--name", "same",
                           "--output-dir", str(tmp_path / name)]) == 0
    for f in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    cards = [(tmp_path / name / "README.md").read_text().replace(str(tmp_path / name), "OUT") for name in "ab"]
    assert cards[0] == cards[1]
