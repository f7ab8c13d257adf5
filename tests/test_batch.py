"""Provider batch mode against the loopback fake server's batch endpoints, through the real SDKs:
the labels equal a sync run's, a killed process resumes its recorded jobs without submitting them
twice, failed and expired items are retried, and every label is priced at the batch (and cache)
prices from its reported usage."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from gt.core import store
from gt.labelling.sync import label_articles
from gt.oracles import registry
from gt.labelling.batch import BatchOptions, job_tag, open_jobs, request_for, run_batch
from gt.oracles.batch import make_adapter
from tests.conftest import ROOT, add_articles, sample_articles
from tests.fakes.answers import expected_answer
from tests.fakes.server import FakeProviderServer

PROVIDER_ORACLES = {"gemini": "gemini-flash", "anthropic": "claude-haiku", "openai": "gpt-4o-mini"}
FAST = dict(poll_s=0.02, max_poll_s=0.05, progress=False)


def spec_for(provider: str, **options):
    spec = registry.resolve(PROVIDER_ORACLES[provider], registry.load_registry())
    return dataclasses.replace(spec, rpm=None, tpm=None, options={**spec.options, **options})


@pytest.fixture(scope="module")
def server():
    with FakeProviderServer() as srv:
        yield srv


@pytest.fixture
def fake(server, monkeypatch):
    server.reset()
    server.batches.reset()
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    return server


@pytest.fixture(scope="module")
def articles():
    return sample_articles(6)


def labels(conn, oracle):
    return {r["article_id"]: r for r in conn.execute(
        "SELECT * FROM labels WHERE oracle = ? AND \"repeat\" = 0 ORDER BY id", (oracle,))}


def scores(conn, label_id):
    return {r[0]: r[1] for r in conn.execute("SELECT dimension, score FROM label_scores WHERE label_id = ?", (label_id,))}


# ---- the labels a batch run stores ---------------------------------------------------------------

@pytest.mark.parametrize("provider", sorted(PROVIDER_ORACLES))
def test_batch_run_stores_the_same_labels_as_a_sync_run(provider, tmp_path, uplifting, articles, fake):
    ids = [a["id"] for a in articles]
    spec = spec_for(provider, batch_max_requests=4)          # 6 articles -> 2 jobs
    batch_conn = store.connect(tmp_path / "batch.db")
    store.register_filter(batch_conn, uplifting)
    add_articles(batch_conn, articles)
    summary = run_batch(batch_conn, uplifting, spec, ids, BatchOptions(**FAST))

    fake.reset()   # the sync run starts with a cold prompt cache too
    sync_conn = store.connect(tmp_path / "sync.db")
    store.register_filter(sync_conn, uplifting)
    add_articles(sync_conn, articles)
    label_articles(sync_conn, uplifting, spec, ids, concurrency=1, progress=False)

    got, want = labels(batch_conn, spec.name), labels(sync_conn, spec.name)
    assert summary.ok == len(ids) and summary.jobs_submitted == 2 and fake.batches.creates[provider] == 2
    assert set(got) == set(want) == set(ids)
    for a in articles:
        b, s = got[a["id"]], want[a["id"]]
        assert b["status"] == s["status"] == "ok"
        assert scores(batch_conn, b["id"]) == scores(sync_conn, s["id"])
        assert (b["content_type"], b["evidence_json"]) == (s["content_type"], s["evidence_json"])
        assert scores(batch_conn, b["id"]) == expected_answer(uplifting, a["title"], a["text"])["scores"]
        assert (b["input_tokens"], b["output_tokens"]) == (s["input_tokens"], s["output_tokens"])
        assert b["cost_usd"] < s["cost_usd"]          # half price
    run = batch_conn.execute("SELECT * FROM label_runs").fetchone()
    assert (run["mode"], run["status"]) == ("batch", "done")
    assert [r["state"] for r in batch_conn.execute("SELECT state FROM batch_jobs")] == ["collected", "collected"]
    # the rubric is cached after the first request and the count is stored per label
    assert sum(r["cached_tokens"] or 0 for r in got.values()) > 0


@pytest.mark.parametrize("provider", sorted(PROVIDER_ORACLES))
def test_each_label_costs_its_usage_at_the_batch_and_cache_prices(provider, conn, uplifting, articles, fake):
    spec = spec_for(provider)
    add_articles(conn, articles[:3])
    run_batch(conn, uplifting, spec, [a["id"] for a in articles[:3]], BatchOptions(**FAST))
    per_m = registry.load_registry()[PROVIDER_ORACLES[provider]]
    ratio = per_m.batch_input_per_m / per_m.input_per_m
    rows = list(labels(conn, spec.name).values())
    assert sum(1 for r in rows if not r["cached_tokens"]) == 1   # the first request warms the cache
    rubric_tokens = len(uplifting.prompt_parts("", "")[0]) // 4   # the fake's count for the system text
    for r in rows:
        cached = r["cached_tokens"] or 0
        # Anthropic bills the first request's rubric as a cache write (marked cache_control)
        written = rubric_tokens if provider == "anthropic" and not cached else 0
        read_price = per_m.cache_read_per_m * ratio
        write_price = (per_m.cache_write_per_m or per_m.input_per_m) * ratio
        expected = ((r["input_tokens"] - cached - written) * per_m.batch_input_per_m + cached * read_price
                    + written * write_price + r["output_tokens"] * per_m.batch_output_per_m) / 1e6
        assert r["cost_usd"] == pytest.approx(expected, rel=1e-9)
    run = conn.execute("SELECT cost_usd FROM label_runs").fetchone()
    assert run["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))


# ---- failures and retries ------------------------------------------------------------------------

@pytest.mark.parametrize("provider", sorted(PROVIDER_ORACLES))
def test_partly_failed_and_expired_batches_are_retried_in_a_new_batch(provider, conn, uplifting, articles, fake):
    fake.batches.configure(fail_every=3, expire_next=1)
    add_articles(conn, articles)
    spec = spec_for(provider, batch_max_requests=3)
    summary = run_batch(conn, uplifting, spec, [a["id"] for a in articles], BatchOptions(**FAST))
    got = labels(conn, spec.name)
    assert {r["status"] for r in got.values()} == {"ok"} and len(got) == len(articles)
    assert summary.error > 0 and summary.retried_batch == summary.error
    assert fake.batches.creates[provider] > 2             # the retry went out as a new batch
    notes = [r["error"] or "" for r in conn.execute("SELECT error FROM batch_jobs ORDER BY id")]
    assert any("expired" in n for n in notes) and any("errored" in n for n in notes)
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == len(articles)   # no duplicates


def test_failed_items_can_be_retried_as_sync_requests(conn, uplifting, articles, fake):
    fake.batches.configure(fail_every=2)
    add_articles(conn, articles)
    spec = spec_for("openai")
    summary = run_batch(conn, uplifting, spec, [a["id"] for a in articles], BatchOptions(retry="sync", **FAST))
    got = labels(conn, spec.name)
    assert {r["status"] for r in got.values()} == {"ok"} and len(got) == len(articles)
    assert fake.batches.creates["openai"] == 1 and summary.retried_sync == 3
    modes = {r["mode"]: r["n"] for r in conn.execute(
        "SELECT r.mode, COUNT(*) AS n FROM labels l JOIN label_runs r ON r.id = l.run_id GROUP BY r.mode")}
    assert modes == {"batch": 3, "sync": 3}


def test_without_retry_failures_stay_error_labels_until_the_next_run(conn, uplifting, articles, fake):
    fake.batches.configure(expire_next=1)
    add_articles(conn, articles[:4])
    spec = spec_for("anthropic")
    ids = [a["id"] for a in articles[:4]]
    first = run_batch(conn, uplifting, spec, ids, BatchOptions(retry="none", **FAST))
    assert (first.ok, first.error) == (2, 2)
    errors = [r for r in labels(conn, spec.name).values() if r["status"] == "error"]
    assert len(errors) == 2 and all("expired" in r["error"] for r in errors)
    second = run_batch(conn, uplifting, spec, ids, BatchOptions(retry="none", **FAST))
    assert (second.ok, second.jobs_submitted) == (2, 1)   # only the two failed items were sent again
    assert {r["status"] for r in labels(conn, spec.name).values()} == {"ok"}


# ---- restarts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", sorted(PROVIDER_ORACLES))
def test_a_job_sent_by_a_process_that_died_before_recording_it_is_found_not_resent(
        provider, conn, uplifting, articles, fake):
    add_articles(conn, articles[:3])
    ids = [a["id"] for a in articles[:3]]
    spec = spec_for(provider)
    run_id = store.start_run(conn, purpose="label", filt=uplifting, oracle=spec.name, provider=provider,
                             model=spec.model, mode="batch")
    from gt.labelling.batch import create_jobs, job_units
    [job_id] = create_jobs(conn, run_id, provider, [[(a, 0) for a in ids]])
    row = open_jobs(conn, uplifting, spec)[0]
    # what the dead process did: stamp the attempt, send the job, die before storing its id
    conn.execute("UPDATE batch_jobs SET submitted_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = ?", (job_id,))
    import asyncio

    async def send():
        adapter = make_adapter(spec)
        try:
            items = [adapter.item(c, request_for(conn, uplifting, a, r)) for c, a, r in job_units(row)]
            return await adapter.submit(items, job_tag(row))
        finally:
            await adapter.aclose()
    remote = asyncio.run(send())
    summary = run_batch(conn, uplifting, spec, ids, BatchOptions(**FAST))
    assert fake.batches.creates[provider] == 1 and summary.jobs_adopted == 1
    assert conn.execute("SELECT remote_id FROM batch_jobs WHERE id = ?", (job_id,)).fetchone()[0] == remote
    assert summary.ok == 3


def _cli(db, *extra):
    return [sys.executable, "-m", "stages.label", "--db", str(db), "--llm", "gemini-flash", "--mode", "batch",
            "--batch-poll", "0.05", "--batch-max-poll", "0.1", *extra]


def test_killed_process_resumes_by_polling_the_recorded_job_and_never_resubmits(tmp_path, uplifting, articles, fake,
                                                                                capsys):
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles)
    conn.close()
    env = {**os.environ, **fake.env(), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    fake.batches.configure(polls_to_finish=10_000)       # in flight until we say so
    proc = subprocess.Popen(_cli(db), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with sqlite3.connect(db) as c:
                recorded = c.execute("SELECT COUNT(*) FROM batch_jobs WHERE remote_id IS NOT NULL").fetchone()[0]
            if recorded and fake.batches.polls["gemini"] >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the batch id was never recorded")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert fake.batches.creates["gemini"] == 1

    from stages.label import main
    capsys.readouterr()
    assert main(["--db", str(db), "--status"]) == 0      # make label-status
    status = capsys.readouterr().out
    remote_id = sqlite3.connect(db).execute("SELECT remote_id FROM batch_jobs").fetchone()[0]
    assert "open batch jobs" in status and remote_id in status
    live = status.split("provider state, polled now:")[1]
    assert remote_id in live and "JOB_STATE_RUNNING" in live     # what Gemini says about it now

    fake.batches.configure(polls_to_finish=1)           # the provider finishes the job
    done = subprocess.run(_cli(db), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert fake.batches.creates["gemini"] == 1            # polled the recorded id, never submitted again
    assert "1 resumed from gt.db" in done.stdout
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT article_id) FROM labels WHERE status = 'ok'").fetchone() == (
        len(articles), len(articles))
    assert conn.execute("SELECT state FROM batch_jobs").fetchall() == [("collected",)]
    assert conn.execute("SELECT status FROM label_runs").fetchall() == [("done",)]


def test_no_wait_submits_and_exits_then_the_same_command_collects(tmp_path, uplifting, articles, fake):
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles[:3])
    from stages.label import main
    fake.batches.configure(polls_to_finish=3)
    assert main(["--db", str(db), "--llm", "claude-haiku", "--mode", "batch", "--batch-no-wait",
                 "--batch-poll", "0.01"]) == 0
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
    assert conn.execute("SELECT state FROM batch_jobs").fetchone()[0] in ("submitted", "running")
    assert main(["--db", str(db), "--llm", "claude-haiku", "--mode", "batch", "--batch-poll", "0.01"]) == 0
    assert conn.execute("SELECT COUNT(*) FROM labels WHERE status = 'ok'").fetchone()[0] == 3
    assert fake.batches.creates["anthropic"] == 1


def test_a_job_the_provider_no_longer_knows_is_sent_again_not_polled_forever(conn, uplifting, articles, fake):
    add_articles(conn, articles[:3])
    ids = [a["id"] for a in articles[:3]]
    spec = spec_for("openai")
    fake.batches.configure(polls_to_finish=5)
    first = run_batch(conn, uplifting, spec, ids, BatchOptions(wait=False, **FAST))
    assert first.waiting == 1
    fake.batches.jobs.clear()                                # deleted at the provider (or results purged)
    second = run_batch(conn, uplifting, spec, ids, BatchOptions(**FAST))
    assert second.ok == 3 and fake.batches.creates["openai"] == 2
    states = [r[0] for r in conn.execute("SELECT state FROM batch_jobs ORDER BY id")]
    assert states == ["failed", "collected"]
    assert "not known to the provider" in conn.execute("SELECT error FROM batch_jobs WHERE id = 1").fetchone()[0]


def test_max_cost_limits_what_is_submitted(conn, uplifting, articles, fake):
    add_articles(conn, articles)
    spec = spec_for("gemini")
    from gt.labelling.planning import build_request, RESERVE_BYTES_PER_TOKEN
    import math
    worst = [spec.cost(math.ceil(len(build_request(uplifting, a["id"], 0, a["title"], a["text"]).prompt.encode())
                                 / RESERVE_BYTES_PER_TOKEN), spec.max_output_tokens, batch=True) for a in articles]
    budget = sum(worst[:2]) + worst[2] / 2                   # room for two labels' worst case, not three
    summary = run_batch(conn, uplifting, spec, [a["id"] for a in articles], BatchOptions(max_cost=budget, **FAST))
    assert summary.ok == 2 and summary.budget_left_out == len(articles) - 2
    assert summary.cost_usd <= budget
    assert conn.execute("SELECT SUM(request_count) FROM batch_jobs").fetchone()[0] == 2


# ---- the command line ----------------------------------------------------------------------------

def test_no_key_reaches_gt_db_or_the_output(tmp_path, uplifting, articles, fake, monkeypatch, capfd):
    secret = "sk-test-DO-NOT-LEAK-batch-1a2b3c4d"
    for k, v in fake.env(api_key=secret).items():
        monkeypatch.setenv(k, v)
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles[:4])
    fake.batches.configure(fail_every=2, expire_next=1)
    from stages.label import main
    for oracle in PROVIDER_ORACLES.values():
        assert main(["--db", str(db), "--llm", oracle, "--mode", "batch", "--batch-poll", "0.01"]) == 0
    assert main(["--db", str(db), "--status"]) == 0
    out = capfd.readouterr()
    conn.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("gt.db"))
    assert secret.encode() not in stored and secret not in out.out + out.err
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM labels WHERE status = 'ok'").fetchone()[0] == 12


def test_batch_mode_is_refused_for_an_oracle_without_batch_prices(tmp_path, uplifting, articles, fake, capsys):
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles[:2])
    from stages.label import main
    assert main(["--db", str(db), "--llm", "deepseek", "--mode", "batch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no batch prices" in err[0]
    assert fake.requests == 0 and not fake.batches.creates


def _cost_line(out: str) -> list[float]:
    line = next(l for l in out.splitlines() if "cost by mode" in l)
    return [float(v.replace(",", "")) for v in re.findall(r"\$([0-9.,]+)", line)]


def test_dry_run_compares_sync_batch_and_cached_cost_and_time(tmp_path, uplifting, articles, fake, capsys):
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles)
    from stages.label import main
    assert main(["--db", str(db), "--llm", "claude-sonnet", "--dry-run"]) == 0
    out = capsys.readouterr().out
    sync, sync_cached, batch, batch_cached = _cost_line(out)
    assert batch == pytest.approx(sync / 2, rel=0.01)
    assert "completion time" in out and "at most 24 h" in out
    # our rubric is shorter than the 1,024 tokens Sonnet needs to cache a prefix: no discount claimed
    assert batch_cached == batch and sync_cached == sync and "below claude-sonnet's 1024-token minimum" in out

    # with a model that caches shorter prefixes the cached column is cheaper
    doc = yaml.safe_load((ROOT / "oracles.yaml").read_text())
    doc["oracles"]["claude-sonnet"]["options"]["cache_min_tokens"] = 512
    registry_file = tmp_path / "oracles.yaml"
    registry_file.write_text(yaml.safe_dump(doc))
    assert main(["--db", str(db), "--llm", "claude-sonnet", "--dry-run", "--oracles-file", str(registry_file)]) == 0
    sync2, sync_cached2, batch2, batch_cached2 = _cost_line(capsys.readouterr().out)
    assert (sync2, batch2) == (sync, batch) and batch_cached2 < batch2 and sync_cached2 < sync2
    assert fake.requests == 0 and not fake.batches.creates


def test_a_batch_run_whose_items_keep_failing_ends_short_and_exits_non_zero(tmp_path, uplifting, articles, fake,
                                                                           capsys):
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles)
    from stages.label import main
    fake.batches.configure(fail_every=2, fail_always=True)   # every other item fails, round after round
    rc = main(["--db", str(db), "--llm", "gpt-4o-mini", "--mode", "batch", "--batch-poll", "0.01",
               "--batch-max-poll", "0.02", "--batch-rounds", "2", "--target-count", "6"])
    err = capsys.readouterr().err
    ok = conn.execute("SELECT COUNT(*) FROM labels WHERE status = 'ok'").fetchone()[0]
    assert ok < 6
    assert rc == 1
    assert f"{6 - ok} valid label(s) missing" in err and "after 2 batch round(s)" in err and "Resume with" in err
    # every collected item's cost is in its run's ledger, in the transaction that stored it
    for run_id, cost in conn.execute("SELECT id, cost_usd FROM label_runs"):
        labels_cost = conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM labels WHERE run_id = ?", (run_id,)).fetchone()[0]
        assert cost == pytest.approx(labels_cost) and cost > 0
    assert conn.execute("SELECT COUNT(*) FROM label_leases").fetchone()[0] == 0   # every job's leases released


@pytest.mark.parametrize("oracle", ["gpt-4o-mini", "gemini-flash"])
@pytest.mark.parametrize("trouble", ["refused", "timeout"])
def test_a_provider_that_refuses_or_times_out_leaves_the_job_resumable_in_one_line(tmp_path, uplifting, articles,
                                                                                   fake, oracle, trouble):
    """Batch mode against a port nobody listens on (or a server slower than --timeout), twice: the second
    run looks for the job the first may have sent (find) and meets the same trouble. Neither is a
    traceback; the job stays 'preparing' and the run against a working server sends it once."""
    import socket
    db = tmp_path / "gt.db"
    conn = store.connect(db)
    store.register_filter(conn, uplifting)
    add_articles(conn, articles[:3])
    conn.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]                        # closed again: connections to it are refused
    env = {**os.environ, **fake.env(), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    live = fake.url.rsplit(":", 1)[1]
    refused = {**env, **{k: v.replace(f":{live}", f":{dead}") for k, v in fake.env().items() if k.endswith("_URL")}}
    cli = [sys.executable, "-m", "stages.label", "--db", str(db), "--llm", oracle, "--mode", "batch",
           "--batch-poll", "0.05", "--batch-max-poll", "0.1", "--batch-no-wait", "--timeout", "2"]
    if trouble == "timeout":
        fake.batches.configure(stall_s=4)
    for _ in range(2):
        res = subprocess.run(cli, cwd=ROOT, env=refused if trouble == "refused" else env, capture_output=True,
                             text=True, timeout=120)
        assert "Traceback" not in res.stderr, res.stderr
    fake.batches.configure(stall_s=0)
    with sqlite3.connect(db) as c:
        assert [r[0] for r in c.execute("SELECT state FROM batch_jobs")] == ["preparing"]
    done = subprocess.run(cli[:-3], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    provider = "openai" if oracle == "gpt-4o-mini" else "gemini"
    assert fake.batches.creates[provider] == 1


def test_loop_in_batch_mode_buys_the_sync_picks_and_a_killed_round_resumes_without_resubmitting(tmp_path, uplifting,
                                                                                                fake):
    """`make loop MODE=batch`: two rounds (a random start, then gaps) through the batch engine pick the
    same articles as the sync loop; a kill -9 while a round's job is in flight resumes by polling it (one
    job per round at the provider), and the ledger equals what the provider billed at batch prices."""
    from tests.conftest import UPLIFTING
    arts = sample_articles(70)
    dbs = {m: tmp_path / f"{m}.db" for m in ("sync", "batch")}
    for db in dbs.values():
        c = store.connect(db)
        store.register_filter(c, uplifting)
        add_articles(c, arts)
        c.close()
    env = {**os.environ, **fake.env(), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "stages.loop", "--filter", str(UPLIFTING), "--llm", "gemini-flash", "--rounds", "2",
            "--per-round", "30", "--pick", "gaps", "--seed", "5", "--quiet", "--embed-cache", str(tmp_path / "emb.db"),
            "--output-dir", str(tmp_path / "reports")]
    sync = subprocess.run([*base, "--db", str(dbs["sync"])], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert sync.returncode == 0, sync.stderr
    batch = [*base, "--db", str(dbs["batch"]), "--mode", "batch", "--batch-poll", "0.05", "--batch-max-poll", "0.1"]
    fake.batches.configure(polls_to_finish=10_000)              # round 1's job stays in flight ...
    proc = subprocess.Popen(batch, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with sqlite3.connect(dbs["batch"]) as c:
                if c.execute("SELECT COUNT(*) FROM batch_jobs WHERE remote_id IS NOT NULL").fetchone()[0]:
                    break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the round's batch job was never recorded")
    finally:
        proc.send_signal(signal.SIGKILL)                         # ... when the loop is killed
        proc.wait()
    fake.batches.configure(polls_to_finish=1)
    again = subprocess.run(batch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert fake.batches.creates["gemini"] == 2                  # one job per round: the killed one was polled again

    def picks(db):
        with sqlite3.connect(db) as c:
            return [sorted(r[0] for r in c.execute("SELECT p.article_id FROM label_picks p JOIN pick_rounds r "
                                                    "ON r.id = p.round_id WHERE r.id = ?", (rid,)))
                    for (rid,) in c.execute("SELECT id FROM pick_rounds ORDER BY id")]
    assert picks(dbs["batch"]) == picks(dbs["sync"]) and len(picks(dbs["sync"])) == 2
    spec = registry.resolve("gemini-flash", registry.load_registry())
    billed = sum(spec.cost(ex.input_tokens, ex.output_tokens, ex.cached_tokens, batch=True,
                           cache_write_tokens=ex.cache_write_tokens) for ex in fake.log
                 if ex.status == 200 and ex.path == "batch")
    with sqlite3.connect(dbs["batch"]) as c:
        assert c.execute("SELECT COUNT(*) FROM labels WHERE status = 'ok'").fetchone()[0] == 60
        assert c.execute("SELECT SUM(cost_usd) FROM label_runs").fetchone()[0] == pytest.approx(billed, rel=1e-9)
