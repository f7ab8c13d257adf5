"""gt.db: migrations on new and existing files, pragmas, the wide score views, label rows."""
import sqlite3

import pytest

from gt.core import store
from gt.core.filters import load_filter
from tests.conftest import ROOT, UPLIFTING_CASES, edited_filter_copy, expected_overall, expected_tier

SUSTAINABILITY = ROOT / "filters" / "sustainability_tech" / "v1"
TABLES = {"articles", "article_minhash", "filters", "label_runs", "labels", "label_scores", "selections",
          "selection_members", "models", "predictions", "batch_jobs"}


def _tables(conn):
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_new_db_gets_every_table_and_the_latest_version(db_path):
    conn = store.connect(db_path)
    assert TABLES <= _tables(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.schema_version()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()


def test_existing_db_at_version_0_keeps_its_data_and_reopening_changes_nothing(db_path):
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    raw.execute("INSERT INTO notes (body) VALUES ('kept through the migration')")
    raw.commit()
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    raw.close()

    conn = store.connect(db_path)
    assert TABLES <= _tables(conn)
    assert conn.execute("SELECT body FROM notes").fetchone()[0] == "kept through the migration"
    conn.execute("INSERT INTO articles (id, text, content_hash, chars) VALUES ('a1', 'text', 'h', 4)")
    schema_before = conn.execute("SELECT group_concat(sql, ';') FROM sqlite_master").fetchone()[0]
    conn.close()

    again = store.connect(db_path)  # a second open applies nothing and loses nothing
    assert again.execute("PRAGMA user_version").fetchone()[0] == store.schema_version()
    assert again.execute("SELECT group_concat(sql, ';') FROM sqlite_master").fetchone()[0] == schema_before
    assert again.execute("SELECT COUNT(*) FROM articles").fetchone()[0] == 1
    assert store.migrate(again) == store.schema_version()
    again.close()


def test_db_from_newer_code_is_refused(db_path):
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {store.schema_version() + 1}")
    raw.close()
    with pytest.raises(store.StoreError, match="newer"):
        store.connect(db_path)


def test_foreign_keys_are_enforced(conn, uplifting):
    run = store.start_run(conn, purpose="label", filt=uplifting, oracle="o", provider=None, model=None)
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_label(conn, run_id=run, article_id="no-such-article", filt=uplifting, oracle="o",
                           status="invalid", raw_response="{}")


def _article(conn, article_id):
    conn.execute("INSERT INTO articles (id, text, content_hash, chars) VALUES (?, 'text', ?, 4)",
                 (article_id, article_id))


def test_wide_view_exposes_dimensions_by_name_with_overall_and_tier_of_the_filter(conn, uplifting):
    run = store.start_run(conn, purpose="label", filt=uplifting, oracle="gemini-flash", provider="gemini", model="m")
    for i, (scores, ctype) in enumerate(UPLIFTING_CASES):
        _article(conn, f"a{i}")
        store.insert_label(conn, run_id=run, article_id=f"a{i}", filt=uplifting, oracle="gemini-flash", status="ok",
                           scores=scores, content_type=ctype, evidence={n: "e" for n in scores})
    rows = {r["article_id"]: r for r in conn.execute("SELECT * FROM scores_uplifting_v1")}
    assert len(rows) == len(UPLIFTING_CASES)
    for i, (scores, ctype) in enumerate(UPLIFTING_CASES):
        row = rows[f"a{i}"]
        assert {n: row[n] for n in uplifting.dimension_names} == {n: float(v) for n, v in scores.items()}
        want = expected_overall(uplifting, scores, ctype)
        assert row["overall"] == pytest.approx(want) == pytest.approx(uplifting.overall(scores, ctype))
        assert row["tier"] == expected_tier(uplifting, want) == uplifting.tier(uplifting.overall(scores, ctype))
    assert {r["tier"] for r in rows.values()} == {"impact", "connection", "not_uplifting"}
    assert rows["a1"]["overall"] == pytest.approx(3.0)  # the gatekeeper bites
    assert rows["a2"]["overall"] == pytest.approx(2.0)  # the corporate_finance cap bites
    # users query by dimension name from SQL
    assert [r[0] for r in conn.execute("SELECT article_id FROM scores_uplifting_v1 WHERE justice >= 10")] == ["a5"]


def test_second_filter_gets_its_own_view(conn):
    sus = load_filter(SUSTAINABILITY)
    store.register_filter(conn, sus)
    run = store.start_run(conn, purpose="label", filt=sus, oracle="o", provider=None, model=None)
    _article(conn, "s1")
    scores = {"technology_readiness": 8, "climate_impact": 2, "evidence_quality": 9, "deployment_scale": 9}
    store.insert_label(conn, run_id=run, article_id="s1", filt=sus, oracle="o", status="ok", scores=scores,
                       content_type="technology_deployment", evidence={n: "e" for n in scores})
    row = conn.execute("SELECT * FROM scores_sustainability_tech_v1").fetchone()
    assert row["climate_impact"] == 2.0
    assert row["overall"] == pytest.approx(expected_overall(sus, scores, "technology_deployment")) == 3.0
    assert row["tier"] == "not_relevant"


def test_invalid_label_keeps_its_raw_answer_and_has_no_scores(conn, uplifting):
    run = store.start_run(conn, purpose="label", filt=uplifting, oracle="o", provider=None, model=None)
    _article(conn, "a1")
    label_id = store.insert_label(conn, run_id=run, article_id="a1", filt=uplifting, oracle="o", status="invalid",
                                  raw_response='{"scores": {"agency": 11}}', error="agency out of range")
    assert conn.execute("SELECT COUNT(*) FROM label_scores WHERE label_id = ?", (label_id,)).fetchone()[0] == 0
    assert conn.execute("SELECT raw_response FROM labels WHERE id = ?", (label_id,)).fetchone()[0] == '{"scores": {"agency": 11}}'
    assert conn.execute("SELECT COUNT(*) FROM scores_uplifting_v1").fetchone()[0] == 0
    with pytest.raises(ValueError, match="every dimension"):
        store.insert_label(conn, run_id=run, article_id="a1", filt=uplifting, oracle="o2", status="ok",
                           scores={"agency": 5})


def test_relabelling_the_same_article_adds_no_row(conn, uplifting):
    run = store.start_run(conn, purpose="label", filt=uplifting, oracle="o", provider=None, model=None)
    _article(conn, "a1")
    scores, ctype = UPLIFTING_CASES[0]
    first = store.insert_label(conn, run_id=run, article_id="a1", filt=uplifting, oracle="o", status="ok",
                               scores=scores, content_type=ctype)
    second = store.insert_label(conn, run_id=run, article_id="a1", filt=uplifting, oracle="o", status="ok",
                                scores=scores, content_type=ctype)
    assert first is not None and second is None
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1
    store.finish_run(conn, run)
    assert conn.execute("SELECT status FROM label_runs WHERE id = ?", (run,)).fetchone()[0] == "done"


# ---- registering a filter: same id, edited package ----------------------------------------------

def _package(tmp_path, edit_config=None, edit_prompt=None, name="pkg"):
    """A copy of filters/uplifting/v1 (same name and version) with config.yaml / prompt.md edited."""
    return load_filter(edited_filter_copy(tmp_path, edit_config, edit_prompt, name))


def _registered(conn, filt):
    row = conn.execute("SELECT * FROM filters WHERE id = ?", (filt.id,)).fetchone()
    view = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?",
                        (filt.view_name,)).fetchone()
    return tuple(row) if row else None, view[0] if view else None


def _writes(conn, action):
    """Run action(); return it and the statements it sent that write (or open a write transaction)."""
    sent = []
    conn.set_trace_callback(sent.append)
    try:
        result = action()
    finally:
        conn.set_trace_callback(None)
    writes = [s for s in sent if s.split(None, 1)[0].upper() in
              {"BEGIN", "INSERT", "UPDATE", "DELETE", "DROP", "CREATE", "REPLACE", "SAVEPOINT"}]
    return result, writes


def test_registering_an_unchanged_filter_writes_nothing(conn, uplifting):
    before = _registered(conn, uplifting)
    note, writes = _writes(conn, lambda: store.register_filter(conn, uplifting))
    assert note is None and writes == []
    assert _registered(conn, uplifting) == before
    # a missing view is made again (and only that)
    conn.execute(f'DROP VIEW "{uplifting.view_name}"')
    note, writes = _writes(conn, lambda: store.register_filter(conn, uplifting))
    assert note is None and not any(w.startswith(("INSERT", "UPDATE")) for w in writes)
    assert _registered(conn, uplifting) == before


@pytest.mark.parametrize("edit_config, edit_prompt, what", [
    (None, lambda p: p.replace("Use the low end freely", "Use the low end very freely"), "prompt.md changed"),
    (lambda c: c["dimensions"].insert(0, c["dimensions"].pop(1)), None, "the dimension list changed"),
    (lambda c: c["content_types"].remove("other") or c.update(
        content_type_caps={k: v for k, v in c["content_type_caps"].items() if k != "other"}), None,
     "the content types changed"),
    (lambda c: c.update(score_step=0.5), None, "score_step changed"),
])
def test_an_edited_prompt_or_answer_shape_under_the_same_version_is_refused(conn, uplifting, tmp_path,
                                                                           edit_config, edit_prompt, what):
    edited = _package(tmp_path, edit_config, edit_prompt)
    assert edited.id == uplifting.id and edited.prompt_sha256 != uplifting.prompt_sha256
    before = _registered(conn, uplifting)
    with pytest.raises(store.FilterMismatch) as err:
        store.register_filter(conn, edited)
    message = str(err.value)
    assert isinstance(err.value, store.StoreError) and "\n" not in message
    assert what in message and "uplifting/v1" in message
    assert f"bump `version` in {edited.path}/config.yaml to register the edited filter" in message
    assert "labels stay with the version that made them" in message
    assert _registered(conn, uplifting) == before  # nothing written: row and view as they were
    assert not conn.in_transaction


def test_an_edited_tier_threshold_reregisters_with_a_note_and_the_view_follows(conn, uplifting, tmp_path):
    run = store.start_run(conn, purpose="label", filt=uplifting, oracle="o", provider=None, model=None)
    _article(conn, "a0")
    scores, ctype = UPLIFTING_CASES[0]  # overall 8.06
    store.insert_label(conn, run_id=run, article_id="a0", filt=uplifting, oracle="o", status="ok",
                       scores=scores, content_type=ctype)
    assert conn.execute("SELECT tier FROM scores_uplifting_v1").fetchone()[0] == "impact"

    edited = _package(tmp_path, lambda c: c["tiers"][0].update(min_overall=8.5))
    assert edited.prompt_sha256 == uplifting.prompt_sha256  # thresholds do not shape the oracle's answer
    note = store.register_filter(conn, edited)
    assert note == ("filter uplifting/v1: tiers changed since it was registered; "
                    "the score view scores_uplifting_v1 now follows the current config.yaml")
    assert conn.execute("SELECT tier FROM scores_uplifting_v1").fetchone()[0] == "connection"
    row = conn.execute("SELECT config_json, prompt_sha256 FROM filters WHERE id = 'uplifting/v1'").fetchone()
    assert '"min_overall": 8.5' in row[0] and row[1] == uplifting.prompt_sha256
    assert store.register_filter(conn, edited) is None  # registered as is now: nothing to say
    # and back: the shipped thresholds again
    assert "tiers" in store.register_filter(conn, uplifting)
    assert conn.execute("SELECT tier FROM scores_uplifting_v1").fetchone()[0] == "impact"


def test_edited_weights_and_caps_are_named_in_the_note(conn, tmp_path):
    def edit(cfg):
        cfg["dimensions"][0]["weight"], cfg["dimensions"][1]["weight"] = 0.19, 0.14
        cfg["content_type_caps"]["corporate_finance"] = 2.5
    note = store.register_filter(conn, _package(tmp_path, edit))
    assert note.startswith("filter uplifting/v1: content_type_caps, weights changed since it was registered")


def test_names_with_quotes_cannot_break_the_view_sql(conn, uplifting):
    """Defence in depth: load_filter refuses such names, and the view's SQL quotes them anyway."""
    import dataclasses

    from gt.core.filters import Tier
    odd = dataclasses.replace(
        uplifting, name="odd", version="1",
        tiers=(Tier("it's top", 7.0), Tier('a "quoted" tier', 4.0), Tier("x') OR ('1'='1", 0.0)),
        content_type_caps={"corporate_finance": 2.0, "it's": 1.0},
    )
    assert "'it''s top'" in store.view_sql(odd)
    store.register_filter(conn, odd)
    run = store.start_run(conn, purpose="label", filt=odd, oracle="o", provider=None, model=None)
    for i, (scores, ctype) in enumerate(UPLIFTING_CASES[:4]):
        _article(conn, f"a{i}")
        store.insert_label(conn, run_id=run, article_id=f"a{i}", filt=odd, oracle="o", status="ok",
                           scores=scores, content_type=ctype)
    tiers = dict(conn.execute("SELECT article_id, tier FROM scores_odd_v1").fetchall())
    assert tiers == {"a0": "it's top", "a1": "x') OR ('1'='1", "a2": "x') OR ('1'='1", "a3": 'a "quoted" tier'}
    assert conn.execute("SELECT COUNT(*) FROM scores_uplifting_v1").fetchone()[0] == 0  # filter id quoted too
