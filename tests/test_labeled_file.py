"""Labelled JSONL files: the one export shape, the accepted import shapes, round trips, invalid
analyses kept as invalid (never zeros)."""
import json

import pytest

from gt.core import store
from gt.core.filters import load_filter
from gt.intake.labeled_file import (export_labeled_file, import_labeled_file, import_prompt_sha256,
                                 parse_analysis)
from gt.core.text import sha256_text
from tests.conftest import ROOT, SAMPLE


@pytest.fixture(scope="module")
def sample_records():
    with SAMPLE.open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(40), f)]


def _scores(filt, base):
    return {n: float((base + i) % 11) for i, n in enumerate(filt.dimension_names)}


def _label_some(conn, filt, records, oracle="gemini-flash", model="gemini-2.0-flash", n=None):
    """Articles and ok labels written the way the label stage writes them."""
    run = store.start_run(conn, purpose="label", filt=filt, oracle=oracle, provider="gemini", model=model)
    for i, r in enumerate(records[:n]):
        conn.execute("INSERT OR IGNORE INTO articles (id, title, text, source, url, published_at, content_hash, chars) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (r["id"], r["title"], r["text"], r["source"], r["url"], r["published_date"], r["id"], len(r["text"])))
        store.insert_label(conn, run_id=run, article_id=r["id"], filt=filt, oracle=oracle, status="ok",
                           scores=_scores(filt, i), content_type=filt.content_types[i % len(filt.content_types)],
                           evidence={n: f"evidence {n} {i}" for n in filt.dimension_names})
    store.finish_run(conn, run)
    return run


def test_export_writes_the_spec_shape(conn, uplifting, sample_records, tmp_path):
    _label_some(conn, uplifting, sample_records, n=12)
    out = tmp_path / "ground_truth" / "uplifting" / "labeled_articles.jsonl"
    assert export_labeled_file(conn, uplifting, out) == 12
    import os
    import stat
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask     # the user's umask, not mkstemp's 0600
    assert [p.name for p in out.parent.iterdir()] == ["labeled_articles.jsonl"]  # no temp file left
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    first = lines[0]
    assert set(first) == {"id", "title", "text", "source", "url", "published_date", "uplifting_analysis"}
    a = first["uplifting_analysis"]
    assert set(a) == {"dimensions", "content_type", "overall_score", "tier", "analyzed_by", "model",
                      "prompt_sha256", "analyzed_at"}
    assert list(a["dimensions"]) == uplifting.dimension_names
    assert (a["analyzed_by"], a["model"], a["prompt_sha256"]) == ("gemini-flash", "gemini-2.0-flash", uplifting.prompt_sha256)
    by_id = {r["id"]: r for r in sample_records}
    for line in lines:
        analysis = line["uplifting_analysis"]
        scores = {n: d["score"] for n, d in analysis["dimensions"].items()}
        assert analysis["overall_score"] == pytest.approx(uplifting.overall(scores, analysis["content_type"]), abs=1e-4)
        assert analysis["tier"] == uplifting.tier(uplifting.overall(scores, analysis["content_type"]))
        assert line["text"] == by_id[line["id"]]["text"]
        assert analysis["dimensions"]["agency"]["evidence"].startswith("evidence agency")


def test_export_picks_the_label_set_with_most_labels_or_the_one_asked_for(conn, uplifting, sample_records, tmp_path):
    _label_some(conn, uplifting, sample_records, oracle="gemini-flash", n=10)
    _label_some(conn, uplifting, sample_records, oracle="gemini-pro", n=4)
    assert export_labeled_file(conn, uplifting, tmp_path / "a.jsonl") == 10
    assert export_labeled_file(conn, uplifting, tmp_path / "b.jsonl", oracle="gemini-pro") == 4
    first = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    assert first["uplifting_analysis"]["analyzed_by"] == "gemini-pro"
    with pytest.raises(store.StoreError, match="oracle 'claude-haiku'"):
        export_labeled_file(conn, uplifting, tmp_path / "c.jsonl", oracle="claude-haiku")
    assert not (tmp_path / "c.jsonl").exists()


def test_round_trip_into_a_fresh_db_keeps_scores_oracle_and_prompt(conn, uplifting, sample_records, tmp_path):
    _label_some(conn, uplifting, sample_records, n=15)
    path = tmp_path / "labeled_articles.jsonl"
    export_labeled_file(conn, uplifting, path)
    fresh = store.connect(tmp_path / "fresh.db")
    s = import_labeled_file(fresh, uplifting, path)
    assert s.inserted == 15 and s.imported_labels == 15 and s.problems == []
    query = 'SELECT article_id, oracle, prompt_sha256, content_type, {} FROM scores_uplifting_v1 ORDER BY article_id'.format(
        ", ".join(f'"{n}"' for n in uplifting.dimension_names))
    assert [tuple(r) for r in fresh.execute(query)] == [tuple(r) for r in conn.execute(query)]
    run = fresh.execute("SELECT * FROM label_runs").fetchone()
    assert (run["purpose"], run["mode"], run["oracle"], run["model"], run["prompt_sha256"]) == \
        ("import", "import", "gemini-flash", "gemini-2.0-flash", uplifting.prompt_sha256)
    again = import_labeled_file(fresh, uplifting, path)
    assert again.inserted == 0 and again.imported_labels == 0
    assert fresh.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 15
    assert fresh.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0] == 1
    fresh.close()


def test_looser_shapes_read_the_same(uplifting):
    scores = _scores(uplifting, 3)
    shapes = [
        {**scores, "analyzed_by": "x"},
        {"scores": scores, "analyzed_by": "x"},
        {"dimensions": scores, "analyzed_by": "x"},
        {"dimensions": {n: {"score": v, "reasoning": f"because {n}"} for n, v in scores.items()}, "analyzed_by": "x"},
        json.dumps({"scores": scores, "analyzed_by": "x"}),
    ]
    for shape in shapes:
        parsed = parse_analysis(uplifting, shape)
        assert parsed.status == "ok" and parsed.scores == scores and parsed.oracle == "x", shape
    with_reasoning = parse_analysis(uplifting, shapes[3])
    assert with_reasoning.evidence["agency"] == "because agency"
    loose_evidence = parse_analysis(uplifting, {"scores": scores, "evidence": {"agency": "they acted"}})
    assert loose_evidence.evidence == {"agency": "they acted"}


def test_analyses_without_a_prompt_hash_get_a_stable_import_hash(uplifting, sample_records):
    parsed = parse_analysis(uplifting, {"scores": _scores(uplifting, 1)})
    assert parsed.prompt_sha256 == import_prompt_sha256(uplifting) == "import:" + sha256_text("uplifting/v1")
    assert parsed.oracle == "imported" and parsed.model is None
    sus = load_filter(ROOT / "filters" / "sustainability_tech" / "v1")
    assert import_prompt_sha256(sus) != import_prompt_sha256(uplifting)


@pytest.mark.parametrize("change, reason", [
    (lambda s: s.pop("justice"), "missing dimension justice"),
    (lambda s: s.__setitem__("agency", 12), "agency score 12 is outside 0-10"),
    (lambda s: s.__setitem__("agency", -1), "agency score -1 is outside 0-10"),
    (lambda s: s.__setitem__("agency", "high"), "agency score 'high' is not a number"),
    (lambda s: s.__setitem__("agency", None), "missing dimension agency"),
    (lambda s: s.__setitem__("agency", True), "agency score True is not a number"),
])
def test_broken_analyses_are_invalid_with_the_reason(uplifting, change, reason):
    scores = _scores(uplifting, 2)
    change(scores)
    parsed = parse_analysis(uplifting, {"scores": scores, "analyzed_by": "gemini-pro"})
    assert parsed.status == "invalid" and parsed.scores is None and reason in parsed.error
    assert json.loads(parsed.raw)["scores"] == scores


def test_imported_invalid_analysis_is_stored_as_invalid_not_as_zeros(conn, uplifting, sample_records, tmp_path):
    r = sample_records[0]
    bad = {"scores": {**_scores(uplifting, 1), "progress": 15}, "analyzed_by": "gemini-pro"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**{k: r[k] for k in ("id", "title", "text")}, "uplifting_analysis": bad}) + "\n")
    s = import_labeled_file(conn, uplifting, path)
    assert s.inserted == 1 and s.imported_labels == 0 and s.invalid_labels == 1 and len(s.problems) == 1
    label = conn.execute("SELECT * FROM labels").fetchone()
    assert label["status"] == "invalid" and "progress score 15 is outside" in label["error"]
    assert json.loads(label["raw_response"]) == bad
    assert conn.execute("SELECT COUNT(*) FROM label_scores").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM scores_uplifting_v1").fetchone()[0] == 0


def test_labels_of_a_duplicate_record_go_to_the_kept_article(conn, uplifting, sample_records, tmp_path):
    r = sample_records[1]
    analysis = {"scores": _scores(uplifting, 4), "analyzed_by": "gemini-pro"}
    path = tmp_path / "dups.jsonl"
    rows = [{"id": "kept", "title": r["title"], "text": r["text"]},
            {"id": "copy", "title": r["title"], "text": r["text"], "uplifting_analysis": analysis}]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    s = import_labeled_file(conn, uplifting, path)
    assert s.duplicates == 1 and s.imported_labels == 1
    assert conn.execute("SELECT article_id FROM labels").fetchone()[0] == "kept"
