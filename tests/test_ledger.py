"""Every dollar accounted for: the label stage's ledger, leases, lock patience and circuit breaker,
against the loopback fake provider through the real OpenAI SDK. What a user would check: gt.db's
recorded spend equals what the provider would invoice (up to the requests in flight), nothing is
paid twice when two processes share a gt.db, a locked database never loses a paid answer, and a run
that can only waste money stops early and says why."""
from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gt.core import store
from gt.labelling.leases import LabelKey, claim_unit, live_leases
from gt.labelling.ledger import LabelOutcome, store_outcome
from gt.oracles import registry
from tests.conftest import ROOT, add_articles, edited_filter_copy, sample_articles
from tests.fakes.answers import expected_answer
from tests.fakes.server import FakeProviderServer

SECRET = "sk-test-ledger-5a4b3c2d1e0f"


@pytest.fixture(scope="module")
def server():
    with FakeProviderServer(latency_s=0.01) as srv:
        yield srv


@pytest.fixture
def fake(server):
    server.reset()
    server.latency_s = 0.01
    yield server
    server.reset()
    server.latency_s = 0.01


def write_oracles(tmp_path: Path) -> Path:
    entry = {"provider": "openai", "model": "gpt-4o-mini", "input_per_m": 0.15, "output_per_m": 0.60,
             "batch_input_per_m": 0.075, "batch_output_per_m": 0.30, "rpm": None, "tpm": None,
             "api_key_env": "OPENAI_API_KEY", "max_output_tokens": 1024, "timeout_s": 10}
    path = tmp_path / "oracles.yaml"
    path.write_text(json.dumps({"oracles": {"fake-gpt": entry}}), encoding="utf-8")
    return path


def fake_spec(tmp_path: Path):
    return registry.resolve("fake-gpt", registry.load_registry(write_oracles(tmp_path)))


@pytest.fixture
def env(fake):
    e = dict(os.environ)
    e.update(fake.env(api_key=SECRET))
    e["HF_HUB_OFFLINE"] = "1"
    return e


@pytest.fixture
def db(tmp_path, uplifting):
    path = tmp_path / "gt.db"
    c = store.connect(path)
    store.register_filter(c, uplifting)
    add_articles(c, sample_articles(80))
    c.close()
    return path


def label_args(db: Path, tmp_path: Path, *extra) -> list[str]:
    return ["--db", str(db), "--llm", "fake-gpt", "--oracles-file", str(write_oracles(tmp_path)), "--random-sample",
            "--seed", "3", *map(str, extra)]


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.label", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(args: list[str], env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.label", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ledger(db: Path) -> float:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM label_runs").fetchone()[0]


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=60) as c:
        return c.execute(sql).fetchone()[0]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# ---- leases: two processes, one target ------------------------------------------------------------

def test_two_processes_at_once_make_the_target_once_and_pay_about_once(db, tmp_path, env, fake):
    fake.latency_s = 0.05
    args = label_args(db, tmp_path, "--target-count", 40, "--concurrency", 4)
    procs = [start(args, env), start(args, env)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
        assert "target not reached" not in out + err    # together they reached it: each says what the group did
    assert count(db, "SELECT COUNT(*) FROM labels WHERE status = 'ok'") == 40
    assert count(db, "SELECT COUNT(DISTINCT article_id) FROM labels") == 40
    # every billed call is at most the target plus what was in flight when the target filled
    assert 40 <= fake.answered() <= 40 + 2 * 4
    assert ledger(db) == pytest.approx(fake.bill(fake_spec(tmp_path)), rel=1e-9)
    # the runs' ledgers add up to the labels they stored plus any answer a race left unstored
    assert count(db, "SELECT SUM(calls) FROM label_runs") == fake.answered()
    assert count(db, "SELECT COUNT(*) FROM label_leases") == 0   # every lease released


def test_a_unit_held_by_a_live_lease_is_not_paid_for_and_dead_or_expired_leases_are_taken_over(db, tmp_path, fake,
                                                                                         uplifting, monkeypatch):
    from gt.labelling.planning import eligible_article_ids
    from gt.labelling.sync import label_articles
    for k, v in fake.env(api_key=SECRET).items():
        monkeypatch.setenv(k, v)
    conn = store.connect(db)
    spec = fake_spec(tmp_path)
    ids = eligible_article_ids(conn, uplifting, seed=1)[:6]
    key = LabelKey.of(uplifting, spec.name)
    far = time.time() + 3600
    with store.transaction(conn):
        # a live process on another machine holds ids[0]; a dead process here held ids[1]
        conn.execute("INSERT INTO label_leases (filter_id, oracle, prompt_sha256, article_id, \"repeat\", owner, "
                     "run_id, expires_at) VALUES (?, ?, ?, ?, 0, 'elsewhere:1:1', NULL, ?)",
                     (key.filter_id, key.oracle, key.prompt_sha256, ids[0], far))
        conn.execute("INSERT INTO label_leases (filter_id, oracle, prompt_sha256, article_id, \"repeat\", owner, "
                     "run_id, expires_at) VALUES (?, ?, ?, ?, 0, ?, NULL, ?)",
                     (key.filter_id, key.oracle, key.prompt_sha256, ids[1], f"{os.uname().nodename}:999999:1", far))
        # and a process on another machine whose lease on ids[2] expired (it stopped renewing)
        conn.execute("INSERT INTO label_leases (filter_id, oracle, prompt_sha256, article_id, \"repeat\", owner, "
                     "run_id, expires_at) VALUES (?, ?, ?, ?, 0, 'gone:7:7', NULL, ?)",
                     (key.filter_id, key.oracle, key.prompt_sha256, ids[2], time.time() - 1))
    summary = label_articles(conn, uplifting, spec, ids, concurrency=2, progress=False)
    labelled = {r[0] for r in conn.execute("SELECT article_id FROM labels WHERE status = 'ok'")}
    assert labelled == set(ids[1:]) and summary.taken == 1
    assert fake.answered() == 5
    assert [tuple(r) for r in conn.execute("SELECT article_id, owner FROM label_leases")] == [(ids[0], "elsewhere:1:1")]
    conn.close()


# ---- kill -9, then a 40 s write lock mid-run -------------------------------------------------------

LOCK_HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
c.execute("BEGIN IMMEDIATE")
c.execute("CREATE TABLE IF NOT EXISTS lock_probe (x)")
c.execute("INSERT INTO lock_probe VALUES (1)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_kill_9_then_a_40_s_write_lock_mid_run_keeps_the_ledger_equal_to_the_bill(db, tmp_path, env, fake):
    fake.latency_s = 0.1
    args = label_args(db, tmp_path, "--target-count", 50, "--concurrency", 4)
    first = start(args, env)
    wait_for(lambda: count(db, "SELECT COUNT(*) FROM labels") >= 6)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_ledger = ledger(db)
    assert killed_ledger > 0                        # a killed run keeps what it was billed
    second = start(args, env)
    wait_for(lambda: count(db, "SELECT COUNT(*) FROM labels") >= 15)
    holder = hold_lock(db, 40)
    locked_at = count(db, "SELECT COUNT(*) FROM labels")   # read once the lock is held (WAL readers never wait)
    time.sleep(3)
    # while the lock is held the run goes on in memory but nothing more can be written
    assert count(db, "SELECT COUNT(*) FROM labels") == locked_at
    holder.wait(timeout=60)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert "Traceback" not in err
    assert count(db, "SELECT COUNT(*) FROM labels WHERE status = 'ok'") == 50
    spec = fake_spec(tmp_path)
    # the provider billed the killed process's in-flight requests too (at most --concurrency of them)
    billed, recorded = fake.bill(spec), ledger(db)
    assert recorded <= billed + 1e-12
    per_call = billed / fake.answered()
    assert billed - recorded <= 4 * per_call * 1.5
    assert fake.answered() - count(db, "SELECT SUM(calls) FROM label_runs") <= 4
    shown = run(["--db", str(db), "--status"], env)
    assert shown.returncode == 0
    assert "died" in shown.stdout and "done" in shown.stdout
    assert f"total spend recorded in gt.db: ${recorded:.4f}" in shown.stdout


def test_a_lock_past_the_patience_stops_cleanly_and_the_next_run_stores_every_paid_answer(db, tmp_path, env, fake):
    fake.latency_s = 0.1
    args = label_args(db, tmp_path, "--target-count", 30, "--concurrency", 4, "--db-patience", 2)
    proc = start(args, env)
    wait_for(lambda: count(db, "SELECT COUNT(*) FROM labels") >= 5)
    holder = hold_lock(db, 12)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "locked" in line[0] and "resume with: python -m stages.label" in line[0]
    assert f"pid {holder.pid}" in line[0]                       # who holds the lock
    spills = list(db.parent.glob("gt.db.unsaved-*.jsonl"))
    assert len(spills) == 1 and "kept in" in line[0]
    kept = sum(1 for _ in spills[0].open())
    assert kept >= 1                                             # the answers that were waiting
    holder.wait(timeout=60)
    again = run(args, env)
    assert again.returncode == 0, again.stderr
    assert "stored" in again.stdout and "kept in" in again.stdout
    assert not list(db.parent.glob("gt.db.unsaved-*.jsonl"))
    assert count(db, "SELECT COUNT(*) FROM labels WHERE status = 'ok'") == 30
    # nothing paid was lost: every billed answer is in the ledger
    assert ledger(db) == pytest.approx(fake.bill(fake_spec(tmp_path)), rel=1e-9)
    assert count(db, "SELECT COUNT(*) FROM label_runs WHERE status = 'stopped' AND stopped_reason = 'locked'") == 1


# ---- the circuit breaker and runs that end short ---------------------------------------------------

def test_a_storm_of_malformed_answers_stops_within_40_calls(db, tmp_path, env, fake):
    fake.inject("malformed", 1000)
    res = run(label_args(db, tmp_path, "--target-count", 60, "--concurrency", 16), env)
    assert res.returncode == 1
    assert fake.requests <= 40
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "circuit breaker" in line[0]
    assert "invalid answer" in line[0] and "raw answer '{" in line[0]     # the reason and an example
    assert "resume with" in line[0]
    assert ledger(db) == pytest.approx(fake.bill(fake_spec(tmp_path)), rel=1e-9)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT status, stopped_reason FROM label_runs").fetchone() == ("failed", "breaker")


def test_a_500_storm_stops_and_an_all_failing_small_run_exits_non_zero(db, tmp_path, env, fake):
    fake.inject("server_error", 1000)
    res = run(label_args(db, tmp_path, "--target-count", 60, "--concurrency", 8, "--max-attempts", 2), env)
    assert res.returncode == 1 and "circuit breaker" in res.stderr and "Traceback" not in res.stderr
    assert fake.requests <= 40
    # without the breaker, a run whose every call fails ends with its labels missing: non-zero, and how to resume
    fake.reset()
    fake.inject("server_error", 1000)
    res = run(label_args(db, tmp_path, "--target-count", 3, "--concurrency", 3, "--max-attempts", 2,
                         "--breaker-window", 0), env)
    assert res.returncode == 1, res.stdout
    assert "3 valid label(s) missing" in res.stderr and "Resume with: python -m stages.label" in res.stderr


def test_off_grid_schema_valid_answers_are_stored_as_given(db, tmp_path, env, fake, uplifting):
    fake.inject("off_grid", 3)
    res = run(label_args(db, tmp_path, "--target-count", 3, "--concurrency", 1), env)
    assert res.returncode == 0, res.stderr
    assert "3 ok" in res.stdout and "3 valid label(s) with scores off the half-point grid" in res.stdout
    with sqlite3.connect(db) as c:
        first, second = uplifting.dimension_names[:2]
        rows = c.execute(f'SELECT "{first}", "{second}" FROM {uplifting.view_name}').fetchall()
    assert sorted(rows) == [(8.1, 3.8)] * 3
    assert fake.requests == 3                      # valid: no corrective retry was paid for


def test_an_article_whose_title_holds_template_placeholders_labels_normally(db, tmp_path, fake, uplifting,
                                                                            monkeypatch):
    from gt.labelling.sync import label_articles
    for k, v in fake.env(api_key=SECRET).items():
        monkeypatch.setenv(k, v)
    conn = store.connect(db)
    base = sample_articles(1)[0]
    art = dict(base, id="braces", title="{text} beats {title} and {}", text=base["text"] + " {title} {{x}}")
    add_articles(conn, [art])
    summary = label_articles(conn, uplifting, fake_spec(tmp_path), ["braces"], progress=False)
    assert summary.ok == 1
    row = conn.execute(f"SELECT * FROM {uplifting.view_name} WHERE article_id = 'braces'").fetchone()
    want = expected_answer(uplifting, art["title"], art["text"])
    assert {n: row[n] for n in uplifting.dimension_names} == want["scores"]
    conn.close()


def test_a_filter_with_an_sql_bearing_version_is_refused_before_any_call(db, tmp_path, env, fake):
    bad = edited_filter_copy(tmp_path, lambda cfg: cfg.update(version="1' OR 'a'='a"), name="evil")
    before = count(db, "SELECT COUNT(*) FROM filters")
    res = run(label_args(db, tmp_path, "--filter", bad, "--target-count", 3), env)
    assert res.returncode == 2 and "version" in res.stderr and "Traceback" not in res.stderr
    assert fake.requests == 0
    assert count(db, "SELECT COUNT(*) FROM filters") == before
    assert count(db, "SELECT COUNT(*) FROM label_runs") == 0


# ---- the ledger ------------------------------------------------------------------------------------

def test_retrying_an_error_label_keeps_the_cost_it_had(conn, uplifting):
    add_articles(conn, sample_articles(1))
    aid = sample_articles(1)[0]["id"]
    run_id = store.start_run(conn, purpose="label", filt=uplifting, oracle="x", provider="openai", model="m")
    first = LabelOutcome("error", error="corrective retry not sent", cost_usd=0.01, input_tokens=100, calls=1)
    store_outcome(conn, run_id=run_id, filt=uplifting, oracle="x", article_id=aid, repeat=0, outcome=first)
    scores = {n: 5.0 for n in uplifting.dimension_names}
    second = LabelOutcome("ok", scores=scores, content_type="other", evidence={n: "e" for n in scores},
                          cost_usd=0.02, input_tokens=100, calls=1)
    store_outcome(conn, run_id=run_id, filt=uplifting, oracle="x", article_id=aid, repeat=0, outcome=second)
    store.finish_run(conn, run_id)
    assert [tuple(r) for r in conn.execute("SELECT status FROM labels")] == [("ok",)]
    row = conn.execute("SELECT cost_usd, calls, input_tokens FROM label_runs").fetchone()
    assert tuple(row) == (pytest.approx(0.03), 2, 200)


def test_storing_an_answer_is_one_transaction_label_ledger_and_lease_or_nothing(conn, uplifting):
    add_articles(conn, sample_articles(1))
    aid = sample_articles(1)[0]["id"]
    key = LabelKey.of(uplifting, "x")
    run_id = store.start_run(conn, purpose="label", filt=uplifting, oracle="x", provider="openai", model="m")
    failed = LabelOutcome("error", error="timed out", attempts=1)
    store_outcome(conn, run_id=run_id, filt=uplifting, oracle="x", article_id=aid, repeat=0, outcome=failed)
    with store.transaction(conn):
        assert claim_unit(conn, key, aid, 0, owner="me:1:1", run_id=run_id) == "claimed"
    scores = {n: 5.0 for n in uplifting.dimension_names}
    answer = LabelOutcome("ok", scores=scores, content_type="other", evidence={n: "e" for n in scores},
                          cost_usd=0.02, input_tokens=100, calls=1)
    # the ledger refuses the update: the label, its scores and the lease release must not happen either
    conn.execute("CREATE TEMP TRIGGER refuse BEFORE UPDATE OF cost_usd ON label_runs "
                 "BEGIN SELECT RAISE(ABORT, 'ledger refused'); END")
    with pytest.raises(sqlite3.DatabaseError, match="ledger refused"):
        store_outcome(conn, run_id=run_id, filt=uplifting, oracle="x", article_id=aid, repeat=0, outcome=answer,
                      owner="me:1:1")
    assert [tuple(r) for r in conn.execute("SELECT status, error FROM labels")] == [("error", "timed out")]
    assert conn.execute("SELECT COUNT(*) FROM label_scores").fetchone()[0] == 0
    assert [a for a, _, _ in live_leases(conn, key)] == [aid]
    assert conn.execute("SELECT cost_usd FROM label_runs").fetchone()[0] == 0
    conn.execute("DROP TRIGGER refuse")
    store_outcome(conn, run_id=run_id, filt=uplifting, oracle="x", article_id=aid, repeat=0, outcome=answer,
                  owner="me:1:1")
    assert [tuple(r) for r in conn.execute("SELECT status FROM labels")] == [("ok",)]
    assert conn.execute("SELECT COUNT(*) FROM label_scores").fetchone()[0] == len(scores)
    assert live_leases(conn, key) == []
    assert conn.execute("SELECT cost_usd FROM label_runs").fetchone()[0] == pytest.approx(0.02)


def test_stored_and_printed_messages_lose_every_key_the_registry_knows_of(tmp_path, monkeypatch):
    import dataclasses
    from gt.labelling.ledger import scrub_secrets
    names = sorted(registry.key_variables())
    assert {"OPENAI_API_KEY", "DEEPSEEK_API_KEY"} <= set(names)
    for i, name in enumerate(names):
        monkeypatch.setenv(name, f"secret-{i}-of-{name}")
    message = "; ".join(f"{name} was secret-{i}-of-{name}" for i, name in enumerate(names))
    assert "secret-" not in scrub_secrets(message) and scrub_secrets(message).count("***") == len(names)
    monkeypatch.setenv("TEAM_LLM_KEY", "team-secret-123")
    spec = dataclasses.replace(fake_spec(tmp_path), api_key_env="TEAM_LLM_KEY")
    assert scrub_secrets("echo: team-secret-123", spec) == "echo: ***"
    assert scrub_secrets("echo: team-secret-123") == "echo: team-secret-123"   # a variable only the spec names


def test_max_total_cost_caps_all_recorded_spend_and_max_cost_is_per_invocation(db, tmp_path, env, fake):
    res = run(label_args(db, tmp_path, "--target-count", 5, "--concurrency", 1), env)
    assert res.returncode == 0, res.stderr
    spent = ledger(db)
    assert spent > 0
    # a cap below what is already recorded: nothing more is sent
    sent = fake.requests
    res = run(label_args(db, tmp_path, "--target-count", 20, "--max-total-cost", spent * 1.01), env)
    assert res.returncode == 0, res.stderr
    assert "--max-total-cost" in res.stdout and fake.requests == sent
    res = run(label_args(db, tmp_path, "--target-count", 20, "--max-cost", spent * 0.5), env)
    assert "this command's own limit" in res.stdout
    assert ledger(db) - spent <= spent * 0.5 + 1e-12


def test_dry_run_on_a_missing_database_creates_nothing(tmp_path, env, fake):
    missing = tmp_path / "nowhere" / "gt.db"
    res = run(label_args(missing, tmp_path, "--target-count", 3, "--dry-run"), env)
    assert res.returncode != 0 and res.stderr.startswith("error:") and res.stderr.count("\n") == 1
    assert not missing.exists() and not missing.parent.exists()


# ---- the house -------------------------------------------------------------------------------------

def test_the_oracles_import_no_label_stage_and_no_store():
    for path in (ROOT / "stages" / "oracles").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith(("stages.label", "gt.core.store")), f"{path.name} imports {name}"
                assert name not in ("gt.labelling.sync",), f"{path.name} imports {name}"


# ---- database trouble in the label stage ----------------------------------------------------------

def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in res.stderr, res.stderr
    return [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]


def test_a_database_locked_from_the_start_stops_after_the_patience_with_one_line(db, tmp_path, env, fake):
    holder = hold_lock(db, 30)
    try:
        res = run(label_args(db, tmp_path, "--target-count", 5, "--db-patience", 1), env)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1
    lines = error_lines(res)
    assert len(lines) == 1 and "locked" in lines[0] and f"pid {holder.pid}" in lines[0]
    assert fake.requests == 0            # nothing is sent before its unit is claimed in gt.db


def test_a_corrupt_database_is_one_line_in_label_and_its_dry_run(tmp_path, env, fake):
    bad = tmp_path / "gt.db"
    bad.write_bytes(os.urandom(8192))
    for extra in ((), ("--dry-run",)):
        res = run(label_args(bad, tmp_path, "--target-count", 5, *extra), env)
        assert res.returncode == 1
        lines = error_lines(res)
        assert len(lines) == 1 and "not a readable SQLite database" in lines[0]


def test_a_read_only_database_gives_a_dry_run_and_one_line_for_a_real_run(db, tmp_path, env, fake):
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None or subprocess.run([setpriv, "--inh-caps=-all", "--bounding-set=-all", "true"]).returncode:
            pytest.skip("running as root without a way to drop CAP_DAC_OVERRIDE: modes are not enforced")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
    else:
        prefix = []
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db.chmod(0o444)
    try:
        def go(*extra):
            return subprocess.run([*prefix, sys.executable, "-m", "stages.label",
                                   *label_args(db, tmp_path, "--target-count", 5, *extra)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        dry = go("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would send 5 requests" in dry.stdout
        real = go()
        assert real.returncode == 1
        lines = error_lines(real)
        assert len(lines) == 1 and "read-only" in lines[0]
        assert fake.requests == 0
    finally:
        db.chmod(0o644)


def test_the_breaker_groups_reasons_by_their_numbers_but_keeps_names_intact():
    from gt.labelling.breaker import Breaker
    b = Breaker(window=4)
    for status in (429, 503, 429):
        b.record(False, f"gpt-4o-mini (gpt-4o-mini): rate limited ({status}): slow down, gemini-2.5-flash too")
    message = b.message()
    assert "gpt-4o-mini (gpt-4o-mini): rate limited (N): slow down, gemini-2.5-flash too" in message
    assert "3x " in message and "gptNo" not in message and "gemini-N" not in message


def test_a_lock_held_before_the_run_starts_is_waited_for_as_long_as_the_patience_says(tmp_path, env, fake):
    """Not the connection's 30 s busy timeout: --db-patience 1 against a lock held for 20 s stops in seconds,
    one line, nothing sent (a first run on this gt.db: the filter is registered before anything else)."""
    db = tmp_path / "gt.db"
    c = store.connect(db)
    add_articles(c, sample_articles(10))
    c.close()
    slow = dict(env, GT_DB_BUSY_TIMEOUT="30")
    holder = hold_lock(db, 20)
    try:
        started = time.monotonic()
        res = run(label_args(db, tmp_path, "--target-count", 5, "--db-patience", 1), slow, timeout=60)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1 and "locked" in errors[0], res.stderr
    assert took < 12 and fake.answered() == 0


def test_a_spill_file_with_a_torn_last_line_keeps_every_complete_answer(db, uplifting):
    """A process killed while writing its spill file leaves a torn last line: the complete lines are paid
    answers and are stored; the torn one is reported (it was never complete), not the whole file skipped."""
    import json as _json

    from gt.labelling.dbwriter import apply_spills, spill_file_name, spill_outcome
    from gt.labelling.ledger import LabelOutcome
    conn = store.connect(db)
    run_id = store.start_run(conn, purpose="label", filt=uplifting, oracle="fake-gpt", provider="openai", model="m",
                             mode="sync", params={})
    key = LabelKey.of(uplifting, "fake-gpt")
    ids = [r[0] for r in conn.execute("SELECT id FROM articles ORDER BY id LIMIT 3")]
    scores = {d: 5.0 for d in uplifting.dimension_names}
    lines = [_json.dumps(spill_outcome(run_id, key, a, 0, LabelOutcome("ok", scores=scores, content_type=None,
                                                                        evidence={}, raw_response="{}", cost_usd=0.01,
                                                                        input_tokens=10, output_tokens=5, calls=1)))
             for a in ids]
    path = spill_file_name(str(db))
    Path(path).write_text("\n".join(lines[:2]) + "\n" + lines[2][:40], encoding="utf-8")   # the third one torn
    notes = apply_spills(conn, str(db), {uplifting.id: uplifting})
    stored = {r[0] for r in conn.execute("SELECT article_id FROM labels WHERE status = 'ok'")}
    assert stored == set(ids[:2]) and any("line 3 torn" in n for n in notes), notes
    assert conn.execute("SELECT cost_usd FROM label_runs WHERE id = ?", (run_id,)).fetchone()[0] == pytest.approx(0.02)
    assert not Path(path).exists()
    conn.close()


def test_three_processes_under_one_max_total_cost_stay_within_it_together(db, tmp_path, env, fake):
    """Each process used to check only its own reserve: three at once under --max-total-cost 0.01 ended at
    about $0.021. The claim transaction now counts every live process's reserves: the bill stays within."""
    fake.latency_s = 0.05
    args = label_args(db, tmp_path, "--target-count", 80, "--concurrency", 4, "--max-total-cost", 0.01)
    procs = [start(args, env) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    billed = fake.bill(fake_spec(tmp_path))
    assert billed <= 0.01 + 1e-9 and ledger(db) == pytest.approx(billed, rel=1e-9)
    assert billed > 0.005                                        # and the budget was used, not refused outright
    assert count(db, "SELECT COUNT(*) FROM label_leases") == 0   # every lease (and its reserve) released
