"""`make browse`: `python -m stages.browse` serves gt.db in Datasette on loopback with titled tables
and canned queries that answer on a real gt.db (fetched as JSON over HTTP), and stops cleanly."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gt.core import browse
from stages import browse as browse_command
from tests.conftest import MAIN, N_MAIN, OTHER, build_fixed_db

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory, uplifting):
    db = tmp_path_factory.mktemp("browse") / "gt.db"
    frame = build_fixed_db(db, uplifting)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stages.browse", "--db", str(db), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(f"{base}/-/versions.json")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"stages.browse did not come up: {proc.communicate()[0]}")
            time.sleep(0.2)
    yield base, db, frame, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=20)


def canned(base: str, name: str, **params) -> list[dict]:
    query = urllib.parse.urlencode({"_shape": "array", **params})
    return get_json(f"{base}/gt/{name}.json?{query}")


def test_coverage_by_dimension_canned_query(served, uplifting):
    base, _, frame, _ = served
    rows = canned(base, "coverage_by_dimension")
    main = [r for r in rows if r["oracle"] == MAIN]
    assert [r["dimension"] for r in main] == uplifting.dimension_names  # the filter's label order
    for r in main:
        expected = np.floor(frame[r["dimension"]]).astype(int).value_counts().reindex(range(11), fill_value=0)
        assert [r[str(b)] for b in range(11)] == expected.tolist()
        assert r["labels"] == N_MAIN  # repeat 1, the invalid label and the duplicate stay out
        assert r["mean"] == pytest.approx(frame[r["dimension"]].mean(), abs=0.006)  # rounded to 2 places
    justice = next(r for r in main if r["dimension"] == "justice")
    assert (justice["8"], justice["9"], justice["10"]) == (0, 0, 0)
    assert {r["oracle"] for r in rows} == {MAIN, OTHER}


def test_most_disagreeing_articles_and_article_labels(served, uplifting):
    base, _, frame, _ = served
    rows = canned(base, "most_disagreeing_articles", oracle_a=OTHER, oracle_b=MAIN)
    assert len(rows) == 12  # the articles both oracles labelled
    top = rows[0]
    k = int(top["article_id"].split("-")[1])
    diffs = {d: abs(frame.loc[k, d] - (k % 4) * 2.5) for d in uplifting.dimension_names}
    assert top["max_abs_difference"] == max(diffs.values())
    assert diffs[top["at_dimension"]] == top["max_abs_difference"]
    assert [r["max_abs_difference"] for r in rows] == sorted((r["max_abs_difference"] for r in rows), reverse=True)
    assert len(canned(base, "most_disagreeing_articles")) == 12  # no oracles given: every pair

    labels = canned(base, "article_labels", article_id="art-001")
    assert sorted((r["oracle"], r["repeat"]) for r in labels) == [(OTHER, 0), (MAIN, 0), (MAIN, 1)]
    first = next(r for r in labels if r["oracle"] == MAIN and r["repeat"] == 0)
    assert json.loads(first["scores"]) == {d: frame.loc[1, d] for d in uplifting.dimension_names}
    assert first["model"] == "gemini-2.5-pro"


def test_cost_per_run_and_metadata(served):
    base, _, _, _ = served
    runs = canned(base, "cost_per_run")
    by_oracle = {r["oracle"]: r for r in runs}
    assert by_oracle[OTHER]["labels"] == 12 and by_oracle[OTHER]["cost_usd"] == pytest.approx(0.012)
    assert by_oracle[MAIN]["invalid"] == 1 and by_oracle[MAIN]["ok"] == N_MAIN + 5 + 1
    metadata = get_json(f"{base}/-/metadata.json")
    tables = metadata["databases"]["gt"]["tables"]
    assert tables["labels"]["title"] == "Labels" and "status" in tables["labels"]["columns"]
    assert tables["scores_uplifting_v1"]["title"].startswith("Scores of uplifting/v1")
    # served read-only: a write through the SQL endpoint is refused
    with pytest.raises(urllib.error.HTTPError):
        get_json(f"{base}/gt.json?" + urllib.parse.urlencode({"sql": "DELETE FROM labels", "_shape": "array"}))


def test_stops_on_terminate_and_errors_are_one_line(served, tmp_path):
    _, db, _, proc = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "Serving" in proc.stdout.read()
    missing = subprocess.run([sys.executable, "-m", "stages.browse", "--db", str(tmp_path / "none.db")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no database")
    assert missing.stderr.count("\n") == 1


def test_a_port_out_of_range_is_one_line_and_exit_2(tmp_path, capsys):
    assert browse_command.main(["--db", str(tmp_path / "gt.db"), "--port", "70000"]) == 2
    assert capsys.readouterr().err == ("error: argument --port: must be a whole number >= 1 and <= 65535, got 70000 "
                                       "(see python -m stages.browse --help)\n")
    assert not (tmp_path / "gt.db").exists()


def test_metadata_is_keyed_by_the_database_name(tmp_path, uplifting):
    db = tmp_path / "pool_2026.db"
    build_fixed_db(db, uplifting)
    metadata = browse.build_metadata(db)
    assert list(metadata["databases"]) == ["pool_2026"]
    queries = metadata["databases"]["pool_2026"]["queries"]
    assert set(queries) == {"coverage_by_dimension", "most_disagreeing_articles", "article_labels", "cost_per_run"}


def test_a_missing_database_names_the_newest_one_here(tmp_path, uplifting):
    (tmp_path / "data" / "demo").mkdir(parents=True)
    build_fixed_db(tmp_path / "data" / "demo" / "gt.db", uplifting)
    (tmp_path / "notes.db").write_text("not a database")
    res = subprocess.run([sys.executable, "-m", "stages.browse", "--db", "gt.db"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: no database at gt.db")
    assert "make browse DB=data/demo/gt.db" in res.stderr and "notes.db" not in res.stderr
    assert not (tmp_path / "gt.db").exists()
