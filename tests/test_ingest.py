"""The ingest stage: the real sample, bad input of every kind, formats and field names, duplicates,
near-duplicate clusters, label import, batches, and the command line."""
import contextlib
import csv
import gzip
import io
import json
import re
import sqlite3

import pytest

from gt.intake import ingest
from stages import ingest as ingest_command
from gt.core import store
from gt.core.filters import load_filter
from gt.core.text import content_hash
from tests.conftest import ROOT, SAMPLE

PROBLEM_LINE = re.compile(r"^\S+:\d+: .+ \(.+\)$")


@pytest.fixture(scope="module")
def sample_records():
    with SAMPLE.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def article(rec, **changes):
    out = {k: rec[k] for k in ("id", "title", "text", "source", "url", "published_date")}
    out.update(changes)
    return out


def count(conn, where="1"):
    return conn.execute(f"SELECT COUNT(*) FROM articles WHERE {where}").fetchone()[0]


# ---- the real sample --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_db(tmp_path_factory):
    """The demo's command on the real sample, run once: (connection, exit code, printed summary)."""
    db = tmp_path_factory.mktemp("demo") / "data" / "demo" / "gt.db"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = ingest_command.main(["--db", str(db), "--source", "data/sample/*.jsonl", "--workers", "1"])
    conn = store.connect(db)
    yield conn, rc, out.getvalue()
    conn.close()


def printed(summary_text, label):
    m = re.search(rf"^  {re.escape(label)}\s+([\d,]+)", summary_text, re.M)
    assert m, f"'{label}' not in the printed summary"
    return int(m.group(1).replace(",", ""))


def test_sample_ingest_prints_counts_equal_to_the_database(sample_db):
    conn, rc, out = sample_db
    assert rc == 0
    assert printed(out, "records read") == 360 and printed(out, "rejected") == 0
    assert printed(out, "new articles") == count(conn) == 360
    assert printed(out, "exact duplicates") == count(conn, "dup_of IS NOT NULL")
    assert printed(out, "too short") == count(conn, "too_short = 1")
    assert printed(out, "near-dup clusters") == conn.execute(
        "SELECT COUNT(DISTINCT near_dup_cluster) FROM articles WHERE near_dup_cluster IS NOT NULL").fetchone()[0]
    assert re.search(rf"{count(conn, 'near_dup_cluster IS NOT NULL')} articles in them", out)
    assert f"now holds {count(conn):,} articles ({count(conn, 'dup_of IS NULL'):,} unique)" in out
    assert conn.execute("SELECT COUNT(*) FROM article_minhash").fetchone()[0] == count(conn, "dup_of IS NULL")
    row = conn.execute("SELECT * FROM articles WHERE id = 'wn-e8d671d308'").fetchone()
    assert row["title"].startswith("Magnitogorsk") and row["published_at"] and row["url"].startswith("http")
    assert row["chars"] == len(row["text"]) and row["origin"].endswith("articles.jsonl")


def test_reingesting_the_sample_adds_nothing(sample_db, uplifting):
    conn, _, _ = sample_db
    before = conn.execute("SELECT group_concat(id || ifnull(near_dup_cluster, '') || content_hash) FROM articles").fetchone()[0]
    again = ingest.ingest_files(conn, [str(SAMPLE)], uplifting)
    assert again.inserted == 0 and again.already_present == 360 and again.problems == []
    assert count(conn) == 360
    assert conn.execute("SELECT group_concat(id || ifnull(near_dup_cluster, '') || content_hash) FROM articles").fetchone()[0] == before


# ---- bad input --------------------------------------------------------------------------------

def test_every_kind_of_bad_input_is_reported_counted_and_the_good_records_go_in(tmp_path, conn, uplifting, sample_records):
    good1, good2, other = sample_records[0], sample_records[1], sample_records[2]
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(article(good1)).encode(),                                       # 1 good
        b'{"id": "broken", "text": "no closing brace"',                            # 2 malformed JSON
        json.dumps({"id": "notext", "title": "Only a title"}).encode(),            # 3 missing text
        '{"id": "latin1", "text": "caf\xe9 au lait"}'.encode("latin-1"),            # 4 not UTF-8
        json.dumps({"id": "huge", "text": "word " * 220_000}).encode(),            # 5 a 1 MB article
        json.dumps(article(other, id=good1["id"])).encode(),                       # 6 same id, other text
        b"",                                                                       # blank: skipped
        json.dumps(article(good2)).encode(),                                       # 8 good
        b"[1, 2, 3]",                                                              # 9 not an object
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    s = ingest.ingest_files(conn, [str(path), str(empty), str(tmp_path / "nothing-*.jsonl")], uplifting)

    assert count(conn) == 2 and s.inserted == 2
    assert {r[0] for r in conn.execute("SELECT id FROM articles")} == {good1["id"], good2["id"]}
    assert conn.execute("SELECT text FROM articles WHERE id = ?", (good1["id"],)).fetchone()[0] == good1["text"]
    assert s.records == 8 and s.rejected == 6
    by_line = {p.split(": ", 1)[0]: p for p in s.problems}
    assert "malformed JSON" in by_line[f"{path}:2"]
    assert "no article text" in by_line[f"{path}:3"]
    assert "not valid UTF-8" in by_line[f"{path}:4"] and "iconv" in by_line[f"{path}:4"]
    assert "above --max-chars 200,000" in by_line[f"{path}:5"]
    assert f"id '{good1['id']}' is already used" in by_line[f"{path}:6"]
    assert "article object was expected" in by_line[f"{path}:9"]
    assert any(p.startswith(f"{empty}: empty file") for p in s.problems)
    assert any("nothing-*.jsonl: matches no file" in p for p in s.problems)
    assert len(s.problems) == 8
    for p in s.problems:
        assert "\n" not in p and p.rstrip().endswith(")")
    assert all(PROBLEM_LINE.match(p) for p in s.problems if f"{path}:" in p)


def test_a_long_article_can_be_allowed(tmp_path, conn, uplifting):
    text = "A long interview. " * 20_000  # 360,000 characters
    src = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "title": "Long", "text": text}])
    assert ingest.ingest_files(conn, [src], uplifting).rejected == 1
    s = ingest.ingest_files(conn, [src], uplifting, max_chars=400_000)
    assert s.rejected == 0 and count(conn, "id = 'long'") == 1


def test_cli_prints_at_most_20_problem_lines_and_exits_1(tmp_path, capsys, sample_records):
    src = write_jsonl(tmp_path / "bad.jsonl", [article(sample_records[0])] + ["{not json"] * 25)
    rc = ingest_command.main(["--db", str(tmp_path / "gt.db"), "--source", src, "--workers", "1"])
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert rc == 1
    assert len([line for line in err_lines if "malformed JSON" in line]) == 20
    assert "... and 5 more" in err_lines
    assert re.search(r"rejected\s+25\b", captured.out) and re.search(r"new articles\s+1\b", captured.out)


def test_cli_glob_matching_nothing_exits_1_with_one_line(tmp_path, capsys):
    rc = ingest_command.main(["--db", str(tmp_path / "gt.db"), "--source", str(tmp_path / "raw" / "*.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[0].startswith("error: ") and "matches no file" in err[0]
    assert err[-1].startswith("error: nothing to ingest")


def test_cli_malformed_filter_fails_before_any_work(tmp_path, capsys, sample_records):
    pkg = tmp_path / "badfilter"
    pkg.mkdir()
    (pkg / "config.yaml").write_text("name: bad\nversion: 1\ncolour: blue\n")
    (pkg / "prompt.md").write_text("no placeholders\n")
    src = write_jsonl(tmp_path / "a.jsonl", [article(sample_records[0])])
    rc = ingest_command.main(["--db", str(tmp_path / "gt.db"), "--source", src, "--filter", str(pkg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) >= 3 and all(line.startswith(f"error: {pkg}: ") for line in err)   # as in every command
    assert not (tmp_path / "gt.db").exists()


# ---- formats, fields, ids ---------------------------------------------------------------------

def test_gzip_csv_and_common_field_names(tmp_path, conn, uplifting, sample_records):
    r0, r1, r2 = sample_records[10], sample_records[11], sample_records[12]
    gz = tmp_path / "feed.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"article_id": 17, "headline": r0["title"], "content": r0["text"], "link": "https://x/1",
                            "publisher": {"name": "Example Wire"}, "date": "2024-05-01", "lang": "en"}) + "\n")
    csv_path = tmp_path / "export.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["guid", "Title", "Body", "URL", "published_at"])
        w.writeheader()
        w.writerow({"guid": "g-1", "Title": r1["title"], "Body": r1["text"], "URL": "https://x/2", "published_at": "2024-06-01"})
        w.writerow({"guid": "g-2", "Title": r2["title"], "Body": r2["text"].replace("\n\n", "\r\n\r\n"), "URL": "", "published_at": ""})
    s = ingest.ingest_files(conn, [str(tmp_path / "*.gz"), str(csv_path)], uplifting)
    assert s.problems == [] and s.inserted == 3 and s.files == 2
    a = conn.execute("SELECT * FROM articles WHERE id = '17'").fetchone()
    assert (a["title"], a["url"], a["source"], a["published_at"], a["language"]) == \
        (r0["title"], "https://x/1", "Example Wire", "2024-05-01", "en")
    assert a["text"] == r0["text"]
    b = conn.execute("SELECT * FROM articles WHERE id = 'g-1'").fetchone()
    assert (b["title"], b["url"], b["published_at"]) == (r1["title"], "https://x/2", "2024-06-01")
    c = conn.execute("SELECT * FROM articles WHERE id = 'g-2'").fetchone()
    assert c["text"] == r2["text"] and c["url"] is None  # CRLF paragraphs normalised, empty URL is NULL
    assert ingest.ingest_files(conn, [str(gz), str(csv_path)], uplifting).inserted == 0


def test_csv_row_with_bad_bytes_is_rejected_alone(tmp_path, conn, uplifting, sample_records):
    text = sample_records[20]["text"].replace('"', "'")
    body = f'id,text\nok,"{text}"\nbad,"caf\xe9 {text[:400]}"\n'.encode("latin-1", errors="replace")
    (tmp_path / "latin.csv").write_bytes(body)
    s = ingest.ingest_files(conn, [str(tmp_path / "latin.csv")], uplifting)
    assert s.inserted == 1 and s.rejected == 1
    bad_row_line = 3 + text.count("\n")  # the physical line where the bad row starts
    assert s.problems[0].startswith(f"{tmp_path / 'latin.csv'}:{bad_row_line}: not valid UTF-8")


def test_html_and_mojibake_are_cleaned_at_ingest(tmp_path, conn, uplifting):
    raw = "<p>CafÃ© owners reopened the market.</p><p>" + "They rebuilt the stalls together. " * 12 + "</p>"
    s = ingest.ingest_files(conn, [write_jsonl(tmp_path / "h.jsonl", [{"id": "h", "text": raw}])], uplifting)
    text = conn.execute("SELECT text FROM articles WHERE id = 'h'").fetchone()[0]
    assert s.inserted == 1 and text.startswith("Café owners reopened the market.\n\nThey rebuilt")
    assert "<p>" not in text


def test_ids_are_derived_from_content_and_duplicates_kept_as_rows(tmp_path, conn, uplifting, sample_records):
    r = sample_records[30]
    same_text_other_spacing = r["text"].upper().replace(". ", ".   ")
    records = [
        {"title": r["title"], "text": r["text"]},                         # derived id
        {"title": r["title"], "text": r["text"]},                         # same, no id: derived id -2
        {"id": "explicit", "title": r["title"], "text": same_text_other_spacing},  # exact duplicate by hash
    ]
    src = write_jsonl(tmp_path / "d.jsonl", records)
    s = ingest.ingest_files(conn, [src], uplifting)
    kept = content_hash(r["title"], r["text"])[:16]
    rows = {row["id"]: row["dup_of"] for row in conn.execute("SELECT id, dup_of FROM articles")}
    assert rows == {kept: None, f"{kept}-2": kept, "explicit": kept}
    assert s.inserted == 3 and s.duplicates == 2 == count(conn, "dup_of IS NOT NULL")
    again = ingest.ingest_files(conn, [src], uplifting)
    assert again.inserted == 0 and again.already_present == 3


def test_short_texts_are_flagged_not_dropped(tmp_path, conn, uplifting):
    src = write_jsonl(tmp_path / "s.jsonl", [{"id": "short", "text": "Too short to judge."},
                                             {"id": "long", "text": "Long enough to judge. " * 20}])
    s = ingest.ingest_files(conn, [src], uplifting)
    assert s.too_short == 1 == count(conn, "too_short = 1 AND id = 'short'")
    assert ingest.ingest_files(conn, [src], uplifting, min_chars=10).inserted == 0  # flag set once, at insert


# ---- near-duplicates --------------------------------------------------------------------------

def _edited(text, *replacements):
    tokens = text.split(" ")
    for pos, word in replacements:
        tokens[pos] = word
    return " ".join(tokens)


def test_near_duplicates_share_a_cluster_across_ingests(tmp_path, conn, uplifting, sample_records):
    base, unrelated = sample_records[40], sample_records[41]
    first = write_jsonl(tmp_path / "one.jsonl", [
        article(base),
        article(unrelated),
        article(base, id="copy-1", text=_edited(base["text"], (3, "reportedly"), (30, "also"))),
    ])
    s1 = ingest.ingest_files(conn, [first], uplifting)
    clusters = dict(conn.execute("SELECT id, near_dup_cluster FROM articles"))
    assert clusters == {base["id"]: base["id"], "copy-1": base["id"], unrelated["id"]: None}
    assert s1.near_dup_clusters == 1 and s1.near_dup_articles == 2

    # a later ingest finds the cluster from the stored signatures (article_minhash)
    assert conn.execute("SELECT COUNT(*) FROM article_minhash").fetchone()[0] == 3
    second = write_jsonl(tmp_path / "two.jsonl", [
        article(base, id="copy-2", text=_edited(base["text"], (10, "indeed"), (50, "notably"))),
        article(unrelated, id="copy-3", text=_edited(unrelated["text"], (8, "meanwhile"))),
    ])
    s2 = ingest.ingest_files(conn, [second], uplifting)
    clusters = dict(conn.execute("SELECT id, near_dup_cluster FROM articles"))
    assert clusters["copy-2"] == base["id"]
    assert clusters["copy-3"] == clusters[unrelated["id"]] == unrelated["id"]  # a lone article starts a cluster
    assert s2.near_dup_clusters == 2 and s2.near_dup_articles == 2


def test_an_article_close_to_two_clusters_merges_them_under_the_first(tmp_path, conn, uplifting, sample_records):
    base = max(sample_records[:80], key=lambda r: len(r["text"].split(" ")) if len(r["text"]) < 12000 else 0)
    n_words = len(base["text"].split(" "))
    # each edit spoils 5 shingles: 'between' differs from base and from 'far' by about 7.5% of the
    # shingles (Jaccard ~0.86), 'far' from base by 15% (Jaccard ~0.74)
    edits = round(0.015 * n_words)
    positions = [int(n_words * (i + 0.5) / (2 * edits)) for i in range(2 * edits)]
    far = _edited(base["text"], *[(p, f"changed{i}") for i, p in enumerate(positions)])
    between = _edited(base["text"], *[(p, f"changed{i}") for i, p in enumerate(positions) if i % 2 == 0])
    first = write_jsonl(tmp_path / "first.jsonl", [article(base), article(base, id="far", text=far)])
    ingest.ingest_files(conn, [first], uplifting)
    assert dict(conn.execute("SELECT id, near_dup_cluster FROM articles")) == {base["id"]: None, "far": None}
    second = write_jsonl(tmp_path / "second.jsonl", [article(base, id="between", text=between)])
    s = ingest.ingest_files(conn, [second], uplifting)
    assert dict(conn.execute("SELECT id, near_dup_cluster FROM articles")) == \
        {base["id"]: base["id"], "far": base["id"], "between": base["id"]}
    assert s.near_dup_clusters == 1


def test_parallel_workers_give_the_same_result(tmp_path, uplifting, sample_records):
    records = [article(r) for r in sample_records[:120]]
    records += [article(sample_records[5], id="near", text=_edited(sample_records[5]["text"], (4, "also")))]
    records += ["{broken"]
    src = write_jsonl(tmp_path / "w.jsonl", records)
    results = []
    for workers in (1, 2):
        conn = store.connect(tmp_path / f"w{workers}.db")
        s = ingest.ingest_files(conn, [src], uplifting, workers=workers, batch_size=50)
        results.append((s.inserted, s.rejected, s.near_dup_clusters, s.problems,
                        conn.execute("SELECT group_concat(id || ':' || ifnull(near_dup_cluster, '-'), ',') "
                                     "FROM (SELECT * FROM articles ORDER BY rowid)").fetchone()[0]))
        conn.close()
    assert results[0] == results[1]
    assert results[0][:3] == (121, 1, 1)


def test_a_failed_batch_leaves_whole_batches_and_a_rerun_completes(tmp_path, conn, uplifting, sample_records):
    records = [article(r) for r in sample_records[50:60]]
    src = write_jsonl(tmp_path / "b.jsonl", records)
    # the 8th article makes the database refuse the third batch, as a crash mid-ingest would
    conn.execute(f"""CREATE TRIGGER fail_once BEFORE INSERT ON articles WHEN NEW.id = '{records[7]["id"]}'
                     BEGIN SELECT RAISE(ABORT, 'simulated crash'); END""")
    with pytest.raises(sqlite3.DatabaseError, match="simulated crash"):
        ingest.ingest_files(conn, [src], uplifting, batch_size=3)
    assert count(conn) == 6  # two whole batches of 3
    assert conn.execute("SELECT COUNT(*) FROM article_minhash").fetchone()[0] == 6
    conn.execute("DROP TRIGGER fail_once")
    s = ingest.ingest_files(conn, [src], uplifting, batch_size=3)
    assert s.inserted == 4 and s.already_present == 6 and count(conn) == 10


# ---- labels carried by the records ------------------------------------------------------------

def _analysis(filt, score=6, **extra):
    return {"dimensions": {n: {"score": score, "evidence": f"{n} evidence"} for n in filt.dimension_names},
            "content_type": filt.content_types[0], "analyzed_by": "gemini-pro", **extra}


def test_records_with_spec_labels_become_an_import_run(tmp_path, conn, uplifting, sample_records):
    broken = _analysis(uplifting)
    del broken["dimensions"]["wonder"]
    records = [
        {**article(sample_records[60]), "uplifting_analysis": _analysis(uplifting, 7, model="gemini-1.5-pro")},
        {**article(sample_records[61]), "uplifting_analysis": _analysis(uplifting, 3, model="gemini-1.5-pro")},
        {**article(sample_records[62]), "uplifting_analysis": broken},
        {**article(sample_records[63]), "sustainability_tech_analysis": {"anything": 1}},
    ]
    src = write_jsonl(tmp_path / "labelled.jsonl", records)
    s = ingest.ingest_files(conn, [src], uplifting)
    assert s.inserted == 4 and s.imported_labels == 2 and s.invalid_labels == 1
    assert len(s.problems) == 1 and s.problems[0].startswith(f"{src}:3: uplifting_analysis is invalid: missing dimension wonder")
    assert any("sustainability_tech_analysis" in n for n in s.notes)
    run = conn.execute("SELECT * FROM label_runs").fetchone()
    assert (run["purpose"], run["mode"], run["oracle"], run["model"], run["status"]) == \
        ("import", "import", "gemini-pro", "gemini-1.5-pro", "done")
    view = {r["article_id"]: r for r in conn.execute("SELECT * FROM scores_uplifting_v1")}
    assert view[sample_records[60]["id"]]["agency"] == 7.0 and view[sample_records[61]["id"]]["wonder"] == 3.0
    invalid = conn.execute("SELECT * FROM labels WHERE status = 'invalid'").fetchone()
    assert invalid["article_id"] == sample_records[62]["id"] and json.loads(invalid["raw_response"]) == broken
    assert conn.execute("SELECT COUNT(*) FROM label_scores WHERE label_id = ?", (invalid["id"],)).fetchone()[0] == 0

    # one run per oracle, prompt and model: the broken analysis names no model
    assert conn.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0] == 2 == len(s.label_runs)

    again = ingest.ingest_files(conn, [src], uplifting)
    assert again.inserted == 0 and again.imported_labels == 0 and again.invalid_labels == 0
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0] == 2


def test_second_filter_labels_import_through_the_same_path(tmp_path, db_path, sample_records):
    sus = load_filter(ROOT / "filters" / "sustainability_tech" / "v1")
    conn = store.connect(db_path)
    src = write_jsonl(tmp_path / "sus.jsonl", [
        {**article(sample_records[70]), "sustainability_tech_analysis": {
            "scores": {"technology_readiness": 8, "climate_impact": 9, "evidence_quality": 7, "deployment_scale": 6},
            "content_type": "technology_deployment", "analyzed_by": "claude-sonnet"}},
    ])
    s = ingest.ingest_files(conn, [src], sus)
    row = conn.execute("SELECT * FROM scores_sustainability_tech_v1").fetchone()
    assert s.imported_labels == 1 and row["oracle"] == "claude-sonnet" and row["tier"] == "breakthrough"
    assert row["overall"] == pytest.approx(sus.overall(
        {"technology_readiness": 8, "climate_impact": 9, "evidence_quality": 7, "deployment_scale": 6}, "technology_deployment"))
    conn.close()


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        ingest_command.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--db", "--source", "--filter", "--min-chars", "--max-chars", "--workers", "--batch-size"):
        assert flag in out
