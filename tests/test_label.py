"""The label stage against the loopback fake provider server, through the real SDK clients: what a
user would notice (the right scores stored, faults ending as retries or recorded invalid/error
labels, a killed run resuming without duplicates, the budget kept, no key anywhere)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gt.core import store
from gt.core.errors import UsageError
from gt.labelling.label import LabelOptions, run_label
from gt.labelling.calls import RetryPolicy
from gt.labelling.sync import RunOptions, label_articles
from gt.labelling.planning import eligible_article_ids
from gt.oracles import registry
from tests.conftest import ROOT, add_articles, sample_articles
from tests.fakes.answers import expected_answer
from tests.fakes.server import FakeProviderServer

PROVIDER_ORACLES = {"openai": "gpt-4o-mini", "gemini": "gemini-flash", "anthropic": "claude-haiku"}
FAST_RETRY = RetryPolicy(attempts=3, rate_limit_attempts=8, initial_s=0.01, max_s=0.05, jitter_s=0.01)
SECRET = "sk-test-DO-NOT-LEAK-9f8e7d6c5b4a"


def unlimited(name: str):
    """The registry's spec for `name`, without client-side rate limits (the fake has none either)."""
    return dataclasses.replace(registry.resolve(name, registry.load_registry()), rpm=None, tpm=None)


@pytest.fixture(scope="module")
def server():
    with FakeProviderServer(latency_s=0.01, retry_after_s=0.3, slow_s=1.5) as srv:
        yield srv


@pytest.fixture
def fake_env(server, monkeypatch):
    server.reset()
    for k, v in server.env(api_key=SECRET).items():
        monkeypatch.setenv(k, v)
    return server


def labels_of(conn, oracle):
    return {(r["article_id"], r["repeat"]): r for r in conn.execute(
        "SELECT * FROM labels WHERE oracle = ? ORDER BY id", (oracle,))}


@pytest.mark.parametrize("provider", sorted(PROVIDER_ORACLES))
def test_each_provider_stores_the_oracles_scores_and_prices_each_label(provider, conn, uplifting, fake_env):
    arts = sample_articles(6)
    add_articles(conn, arts)
    spec = unlimited(PROVIDER_ORACLES[provider])
    summary = label_articles(conn, uplifting, spec, [a["id"] for a in arts], concurrency=3, progress=False,
                             retry=FAST_RETRY)
    assert (summary.ok, summary.invalid, summary.error) == (6, 0, 0)
    view = {r["article_id"]: r for r in conn.execute(f"SELECT * FROM {uplifting.view_name}")}
    for a in arts:
        want = expected_answer(uplifting, a["title"], a["text"])
        got = view[a["id"]]
        assert {n: got[n] for n in uplifting.dimension_names} == want["scores"]
        assert got["content_type"] == want["content_type"]
    # Anthropic bills writing the rubric to its prompt cache (the fake reports the rubric's tokens as a
    # cache write on the first call with it); every other call's usage is in the label row
    rubric_tokens = len(uplifting.prompt_parts("t", "x")[0]) // 4
    total = 0.0
    for row in labels_of(conn, spec.name).values():
        assert row["input_tokens"] > 100 and row["output_tokens"] > 10
        write = rubric_tokens if provider == "anthropic" and not row["cached_tokens"] else 0
        assert row["cost_usd"] == pytest.approx(spec.cost(row["input_tokens"], row["output_tokens"],
                                                          row["cached_tokens"] or 0, cache_write_tokens=write))
        total += row["cost_usd"]
    run = conn.execute("SELECT * FROM label_runs WHERE id = ?", (summary.run_id,)).fetchone()
    assert run["status"] == "done" and run["cost_usd"] == pytest.approx(total) == pytest.approx(summary.cost_usd)


# fault marker in the article -> (final status, words the stored reason must contain)
FAULT_OUTCOMES = {
    "FAULT:rate_limit:1": ("ok", None),
    "FAULT:server_error:2": ("ok", None),
    "FAULT:unavailable:1": ("ok", None),
    "FAULT:disconnect:1": ("ok", None),
    "FAULT:malformed:1": ("ok", None),           # the corrective retry fixes it
    "FAULT:server_error": ("error", "gave up after 3 attempts"),
    "FAULT:slow": ("error", "gave up after 3 attempts"),
    "FAULT:malformed": ("invalid", "corrective retry"),
    "FAULT:missing_dimension": ("invalid", "corrective retry"),
    "FAULT:out_of_range": ("invalid", "corrective retry"),
    "FAULT:empty": ("invalid", "corrective retry"),
    "FAULT:refusal": ("invalid", "refused"),
}


@pytest.mark.parametrize("provider", sorted(PROVIDER_ORACLES))
def test_every_fault_ends_as_a_retry_or_a_recorded_invalid_or_error(provider, conn, uplifting, fake_env):
    base = sample_articles(len(FAULT_OUTCOMES))
    arts = [dict(a, id=f"fault-{i}", text=a["text"] + f"\n\n{marker}")
            for i, (a, marker) in enumerate(zip(base, FAULT_OUTCOMES))]
    add_articles(conn, arts)
    spec = unlimited(PROVIDER_ORACLES[provider])
    t0 = time.monotonic()
    # a zoo of faults on 12 articles: most answers are bad on purpose, so no circuit breaker here
    summary = label_articles(conn, uplifting, spec, [a["id"] for a in arts], concurrency=6, progress=False,
                             retry=FAST_RETRY, timeout=0.5, breaker_window=0)
    elapsed = time.monotonic() - t0
    rows = labels_of(conn, spec.name)
    for a, (marker, (status, reason)) in zip(arts, FAULT_OUTCOMES.items()):
        row = rows[(a["id"], 0)]
        assert row["status"] == status, (marker, row["status"], row["error"])
        if status == "ok":
            want = expected_answer(uplifting, a["title"], a["text"])
            stored = dict(conn.execute("SELECT dimension, score FROM label_scores WHERE label_id = ?", (row["id"],)).fetchall())
            assert stored == want["scores"]
            assert row["attempts"] >= 2, marker
        else:
            assert reason in row["error"], (marker, row["error"])
            assert not conn.execute("SELECT 1 FROM label_scores WHERE label_id = ?", (row["id"],)).fetchone()
        if status == "invalid" and "refusal" not in marker:
            assert row["raw_response"] is not None and row["attempts"] == 2  # the raw answer, never zeros
    refusal = rows[(arts[list(FAULT_OUTCOMES).index("FAULT:refusal")]["id"], 0)]
    assert refusal["raw_response"]
    assert summary.ok == 5 and summary.error == 2 and summary.invalid == 5
    assert elapsed >= 0.3  # the 429's Retry-After (0.3 s) was waited out


def test_rate_limit_pauses_every_request_then_all_succeed(conn, uplifting, fake_env, monkeypatch):
    with FakeProviderServer(latency_s=0.01, rpm=4, rate_window_s=0.5) as limited:
        for k, v in limited.env().items():
            monkeypatch.setenv(k, v)
        arts = sample_articles(12)
        add_articles(conn, arts)
        summary = label_articles(conn, uplifting, unlimited("gpt-4o-mini"), [a["id"] for a in arts],
                                 concurrency=4, progress=False, retry=FAST_RETRY)
        assert summary.ok == 12 and summary.error == 0
        assert limited.counts["status_429"] > 0           # the server did push back ...
        assert limited.counts["status_429"] < 3 * 12      # ... and the pause held everyone back


def test_daily_quota_stops_cleanly_and_the_same_call_resumes(conn, uplifting, fake_env):
    arts = sample_articles(8)
    add_articles(conn, arts)
    ids = [a["id"] for a in arts]
    spec = unlimited("gemini-flash")
    fake_env.inject("quota", 1)
    first = label_articles(conn, uplifting, spec, ids, concurrency=1, progress=False, retry=FAST_RETRY)
    assert first.stopped_reason == "quota" and "resume" in first.stopped_message
    assert conn.execute("SELECT status FROM label_runs WHERE id = ?", (first.run_id,)).fetchone()[0] == "stopped"
    assert first.ok < 8
    second = label_articles(conn, uplifting, spec, ids, concurrency=4, progress=False, retry=FAST_RETRY)
    assert second.stopped_reason is None and second.ok == 8 - first.ok
    assert tuple(conn.execute("SELECT COUNT(*), COUNT(DISTINCT article_id) FROM labels WHERE status = 'ok'").fetchone()) == (8, 8)


def test_auth_failure_stops_fast(conn, uplifting, fake_env):
    from gt.oracles.base import FatalError
    arts = sample_articles(10)
    add_articles(conn, arts)
    fake_env.inject("auth", 1)
    with pytest.raises(FatalError):
        label_articles(conn, uplifting, unlimited("claude-haiku"), [a["id"] for a in arts], concurrency=1,
                       progress=False, retry=FAST_RETRY)
    assert fake_env.requests == 1
    assert conn.execute("SELECT status FROM label_runs").fetchone()[0] == "failed"


def test_max_cost_stops_before_the_budget_is_exceeded(conn, uplifting, fake_env):
    arts = sample_articles(20)
    add_articles(conn, arts)
    spec = dataclasses.replace(unlimited("gpt-4o-mini"), input_per_m=100.0, output_per_m=400.0,
                               max_output_tokens=400)
    budget = 1.0
    summary = label_articles(conn, uplifting, spec, [a["id"] for a in arts], concurrency=4, max_cost=budget,
                             progress=False, retry=FAST_RETRY)
    spent = conn.execute("SELECT SUM(cost_usd) FROM labels").fetchone()[0]
    assert summary.stopped_reason == "budget"
    assert 0 < summary.ok < 20
    assert spent <= budget
    assert fake_env.requests == summary.ok          # nothing was sent that was not stored


def test_repeats_are_stored_and_never_paid_twice(conn, uplifting, fake_env):
    arts = sample_articles(4)
    add_articles(conn, arts)
    ids = [a["id"] for a in arts]
    spec = unlimited("gpt-4o-mini")
    first = label_articles(conn, uplifting, spec, ids, repeats=3, progress=False)
    assert first.ok == 12
    got = conn.execute('SELECT article_id, "repeat" FROM labels ORDER BY 1, 2').fetchall()
    assert [tuple(r) for r in got] == [(a, r) for a in sorted(ids) for r in range(3)]
    # the run's settings as one RunOptions, a keyword on top of it
    again = label_articles(conn, uplifting, spec, ids, RunOptions(repeats=3, concurrency=2), progress=False)
    assert again.requested == 0 and again.skipped_existing == 12 and fake_env.requests == 12
    with pytest.raises(TypeError):
        label_articles(conn, uplifting, spec, ids, no_such_setting=1)


# ---- the command line ----------------------------------------------------------------------------

def write_oracles(tmp_path: Path, **overrides) -> Path:
    """oracles.yaml with one OpenAI-compatible entry pointed at the fake server."""
    entry = {"provider": "openai", "model": "gpt-4o-mini", "input_per_m": 0.15, "output_per_m": 0.60,
             "batch_input_per_m": 0.075, "batch_output_per_m": 0.30, "rpm": None, "tpm": None,
             "api_key_env": "OPENAI_API_KEY", "max_output_tokens": 1024, "timeout_s": 10}
    entry.update(overrides)
    path = tmp_path / "oracles.yaml"
    path.write_text(json.dumps({"oracles": {"fake-gpt": entry}}), encoding="utf-8")  # JSON is YAML
    return path


def cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "stages.label", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def cli_env(fake_env):
    env = {k: v for k, v in os.environ.items()}
    env.update(fake_env.env(api_key=SECRET))
    return env


@pytest.fixture
def sample_db(db_path, uplifting):
    c = store.connect(db_path)
    store.register_filter(c, uplifting)
    add_articles(c, sample_articles(60))
    c.close()
    return db_path


def test_killed_run_resumes_to_exactly_the_target_without_duplicates(sample_db, tmp_path, cli_env, fake_env, uplifting,
                                                                     capsys):
    fake_env.latency_s = 0.15
    try:
        oracles = write_oracles(tmp_path)
        args = ["--db", sample_db, "--llm", "fake-gpt", "--oracles-file", oracles, "--target-count", 25,
                "--random-sample", "--seed", 7, "--concurrency", 4]
        proc = subprocess.Popen([sys.executable, "-m", "stages.label", *map(str, args)], cwd=ROOT, env=cli_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn = sqlite3.connect(sample_db, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                n = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            if n >= 8:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        assert 8 <= killed_at < 25
        done = cli(args, cli_env)
        assert done.returncode == 0, done.stderr
        rows = conn.execute("SELECT article_id, status FROM labels").fetchall()
        assert len(rows) == 25 and {s for _, s in rows} == {"ok"}
        assert len({a for a, _ in rows}) == 25
        # the resumed run labelled the same seeded sample: the first 25 eligible articles in its order
        c2 = store.connect(sample_db)
        assert {a for a, _ in rows} == set(eligible_article_ids(c2, uplifting, seed=7)[:25])
        assert fake_env.requests <= 25 + 4  # at most the in-flight requests were lost
        from stages.label import main
        assert main(["--db", str(sample_db), "--status"]) == 0
        shown = capsys.readouterr().out
        assert "died" in shown and "done" in shown  # the killed run, then the one that finished
        conn.close()
        c2.close()
    finally:
        fake_env.latency_s = 0.01


def test_ctrl_c_stops_the_run_cleanly(sample_db, tmp_path, cli_env, fake_env):
    fake_env.latency_s = 1.0   # the whole run would take 30 s: Ctrl-C lands mid-run even on a loaded machine
    try:
        args = ["--db", sample_db, "--llm", "fake-gpt", "--oracles-file", write_oracles(tmp_path), "--target-count", 60,
                "--concurrency", 2]
        proc = subprocess.Popen([sys.executable, "-m", "stages.label", *map(str, args)], cwd=ROOT, env=cli_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn = sqlite3.connect(sample_db, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] >= 2:
                    break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert "run the same command to continue" in err and "Traceback" not in err
        assert conn.execute("SELECT status FROM label_runs").fetchone()[0] == "stopped"
        assert 2 <= conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] < 60
        conn.close()
    finally:
        fake_env.latency_s = 0.01


def test_cli_labels_exports_and_leaks_no_key(sample_db, tmp_path, cli_env, fake_env, uplifting):
    conn = store.connect(sample_db)
    add_articles(conn, [dict(sample_articles(1)[0], id="broken", text=sample_articles(1)[0]["text"] + " FAULT:server_error")])
    conn.close()
    oracles = write_oracles(tmp_path)
    out = tmp_path / "gt_out"
    res = cli(["--db", sample_db, "--llm", "fake-gpt", "--oracles-file", oracles, "--target-count", 61,
               "--random-sample", "--concurrency", 8, "--output-dir", out, "--timeout", 2, "--max-attempts", 2], cli_env)
    # one article's calls all failed: the target is one label short, so the run fails and says how to resume
    assert res.returncode == 1, res.stderr
    assert "1 valid label(s) missing" in res.stderr and "Resume with: python -m stages.label" in res.stderr
    conn = store.connect(sample_db)
    counts = dict(conn.execute("SELECT status, COUNT(*) FROM labels GROUP BY status").fetchall())
    assert counts == {"ok": 60, "error": 1}
    assert "60 ok" in res.stdout and "1 error" in res.stdout
    for f in [sample_db, Path(f"{sample_db}-wal")]:
        if f.exists():
            assert SECRET.encode() not in f.read_bytes()
    assert SECRET not in res.stdout + res.stderr
    exported = out / uplifting.name / "labeled_articles.jsonl"
    assert sum(1 for _ in exported.open()) == 60


def test_dry_run_calls_nothing_and_needs_no_key(sample_db, tmp_path, cli_env, fake_env):
    env = {k: v for k, v in cli_env.items() if k != "OPENAI_API_KEY"}
    res = cli(["--db", sample_db, "--llm", "fake-gpt", "--oracles-file", write_oracles(tmp_path, rpm=30),
               "--target-count", 40, "--random-sample", "--dry-run"], env)
    assert res.returncode == 0, res.stderr
    assert fake_env.requests == 0
    assert "would send 40 requests" in res.stdout
    assert "expected cost: $" in res.stdout and "batch mode $" in res.stdout
    assert "time at the rate limit (30 RPM): 80 s" in res.stdout
    conn = store.connect(sample_db)
    assert conn.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0] == 0


def test_missing_key_and_unknown_oracle_fail_before_any_work(sample_db, tmp_path, cli_env, fake_env):
    env = {k: v for k, v in cli_env.items() if k != "OPENAI_API_KEY"}
    res = cli(["--db", sample_db, "--llm", "fake-gpt", "--oracles-file", write_oracles(tmp_path)], env)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "OPENAI_API_KEY" in res.stderr and "Traceback" not in res.stderr
    res = cli(["--db", sample_db, "--llm", "gpt-5-imaginary"], cli_env)
    assert res.returncode == 2 and "gemini-pro" in res.stderr and "claude-sonnet" in res.stderr
    assert fake_env.requests == 0
    conn = store.connect(sample_db)
    assert conn.execute("SELECT COUNT(*) FROM label_runs").fetchone()[0] == 0


def test_rate_limiter_keeps_the_pace_and_a_pause_holds_everyone():
    import asyncio
    from gt.oracles.ratelimit import RateLimiter

    async def go():
        limiter = RateLimiter(rpm=6000, headroom=1.0)       # 100 requests/s, 1 s of burst
        t0 = time.monotonic()
        await asyncio.gather(*[limiter.acquire() for _ in range(150)])
        paced = time.monotonic() - t0
        limiter.pause(0.3)
        t1 = time.monotonic()
        await asyncio.gather(*[limiter.acquire() for _ in range(3)])
        return paced, time.monotonic() - t1

    paced, paused = asyncio.run(go())
    assert 0.45 <= paced < 1.5   # 100 go at once (the burst), the other 50 at 100/s: about 0.5 s, not seconds
    assert 0.29 <= paused < 1.0  # the pause holds them 0.3 s, then they go


def test_demo_path_labels_with_the_offline_local_embed_oracle(sample_db, tmp_path, uplifting, capsys):
    """What `make demo` runs, on a few articles: no key, no network, scores in the wide view."""
    from stages.label import main
    out = tmp_path / "ground_truth"
    assert main(["--db", str(sample_db), "--llm", "local-embed", "--target-count", "6", "--random-sample",
                 "--seed", "42", "--output-dir", str(out), "--concurrency", "6"]) == 0
    conn = store.connect(sample_db)
    rows = conn.execute(f"SELECT * FROM {uplifting.view_name} WHERE oracle = 'local-embed'").fetchall()
    assert len(rows) == 6
    assert all(0 <= r[n] <= 10 for r in rows for n in uplifting.dimension_names)
    assert sum(1 for _ in (out / "uplifting" / "labeled_articles.jsonl").open()) == 6
    assert "6/6 valid labels" in capsys.readouterr().out


def test_dry_run_on_a_pool_short_of_the_target_says_so_and_projects_the_target(sample_db, tmp_path, cli_env, fake_env):
    import re
    res = cli(["--db", sample_db, "--llm", "fake-gpt", "--oracles-file", write_oracles(tmp_path, rpm=60),
               "--target-count", 1200, "--dry-run"], cli_env)
    assert res.returncode == 0, res.stderr
    assert fake_env.requests == 0
    out = res.stdout
    assert "would send 60 requests" in out
    assert "the pool is short of the target: at most 60 of the 1,200 valid labels" in out
    assert "for the target: 1,200 requests" in out
    pool_sync, target_sync = [float(x.replace(",", "")) for x in re.findall(r"cost by mode: sync \$([\d,]+\.\d+)", out)]
    assert target_sync == pytest.approx(pool_sync * 1200 / 60, rel=0.01)
    # the time lines agree: 60 requests at 60 RPM is a minute, 1,200 are 20 minutes
    assert "completion time: sync 60 s at the rate limit" in out and "time at the rate limit (60 RPM): 60 s" in out
    assert "completion time: sync 20.0 min at the rate limit" in out


def test_run_label_returns_its_lines_and_error_and_prints_nothing(sample_db, tmp_path, capsys):
    """The stage's work without its command line: lines and error come back, main prints them."""
    bad = run_label(LabelOptions(db=str(sample_db), concurrency=0))
    assert bad.lines == [] and isinstance(bad.error, UsageError) and bad.error.exit_code == 2
    assert "--concurrency must be at least 1, got 0" in str(bad.error)
    missing = tmp_path / "nowhere" / "gt.db"
    gone = run_label(LabelOptions(db=str(missing), status=True))
    assert gone.error.exit_code == 1 and str(missing) in str(gone.error) and not missing.parent.exists()
    dry = run_label(LabelOptions(db=str(sample_db), target_count=3, random_sample=True, dry_run=True))
    assert dry.error is None and any("would send 3 requests" in line for line in dry.lines)
    assert capsys.readouterr() == ("", "")
    from stages.label import main
    assert main(["--db", str(sample_db), "--concurrency", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: argument --concurrency: must be a whole number >= 1, got 0 "
                                 "(see python -m stages.label --help)\n")


def test_an_export_that_cannot_be_written_and_a_missing_database_fail_before_any_call(sample_db, tmp_path, cli_env,
                                                                                      fake_env):
    oracles = write_oracles(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    res = cli(["--db", sample_db, "--oracles-file", oracles, "--llm", "fake-gpt", "--target-count", 3,
               "--output-dir", blocker], cli_env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --output-dir {blocker}")
    assert "nothing was sent" in lines[0] and fake_env.requests == 0
    missing = tmp_path / "no-such-folder" / "gt.db"
    res = cli(["--db", missing, "--oracles-file", oracles, "--llm", "fake-gpt", "--target-count", 3], cli_env)
    assert res.returncode == 1 and res.stderr.startswith(f"error: no database at {missing}")
    assert not missing.parent.exists() and fake_env.requests == 0


def test_a_storm_of_429s_stops_the_run_after_max_wait_with_the_reason(conn, uplifting, fake_env):
    """Every request rate-limited: the breaker never trips (rate limits are waits, not bad answers), so
    --max-wait stops the run, with the reason, instead of waiting on; nothing is stored as paid."""
    arts = sample_articles(6)
    add_articles(conn, arts)
    fake_env.inject("rate_limit", 10_000)
    retry = dataclasses.replace(FAST_RETRY, rate_limit_attempts=10_000, max_wait_s=1.5)
    started = time.monotonic()
    summary = label_articles(conn, uplifting, unlimited("gpt-4o-mini"), [a["id"] for a in arts], concurrency=2,
                             progress=False, retry=retry)
    assert time.monotonic() - started < 30
    assert summary.stopped_reason == "quota" and "no call was answered for" in summary.stopped_message
    assert "--max-wait 1.5" in summary.stopped_message and summary.ok == 0
    assert conn.execute("SELECT COUNT(*) FROM labels WHERE status = 'ok'").fetchone()[0] == 0
    fake_env.reset()
