"""Provider batch jobs as gt.db records them (`batch_jobs`), and how the batch engine plans them.

A job is recorded as 'preparing' with its requests ([[custom_id, article_id, repeat], ...]) and its
units claimed for it (lease owner `job:<id>`) in one transaction, before anything is sent; then
'submitted' with the provider's remote id, 'running', and at last 'collected' (or the remote end
state). Its tag (`gt-<job id>-<hash>`) is the name it carries at the provider, so a job sent by a
process that died before recording the remote id is found again instead of being sent twice.
Units are planned by the planner both engines share (`planning.plan_items`) and split by the provider's
limits (requests and bytes per job) and the budget.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import sqlite3
import time
from typing import Any, Sequence

from gt.core import store
from gt.core.filters import Filter
from gt.labelling.leases import BATCH_LEASE_TTL_S, LabelKey, claim_unit, live_leases
from gt.oracles.base import OracleRequest, OracleSpec
from gt.oracles.batch import BatchAdapter, BatchUnavailable
from gt.labelling.planning import article_text, build_request, existing_labels, plan_items, worst_case_cost

# job states written to batch_jobs.state
PREPARING, SUBMITTED, RUNNING, COLLECTED = "preparing", "submitted", "running", "collected"
CLOSED_STATES = ("collected", "failed", "expired", "cancelled")

# ---- jobs in gt.db -------------------------------------------------------------------------------

def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))


def open_jobs(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec) -> list[sqlite3.Row]:
    """Jobs of this (filter, oracle, prompt hash) not yet closed, oldest first."""
    return conn.execute(
        f"""SELECT j.*, r.started_at AS run_started_at FROM batch_jobs j JOIN label_runs r ON r.id = j.run_id
            WHERE r.filter_id = ? AND r.oracle = ? AND r.prompt_sha256 = ?
              AND j.state NOT IN ({",".join("?" * len(CLOSED_STATES))})
            ORDER BY j.id""",
        (filt.id, spec.name, filt.prompt_sha256, *CLOSED_STATES)).fetchall()


def job_units(row: sqlite3.Row) -> list[tuple[str, str, int]]:
    """[(custom_id, article_id, repeat), ...] of a job."""
    return [(c, a, int(r)) for c, a, r in json.loads(row["requests_json"] or "[]")]


def job_tag(row: sqlite3.Row) -> str:
    """The name a job carries at the provider (display name / metadata), stable across restarts
    and distinct between databases (it hashes the run's start time and the job's requests)."""
    digest = hashlib.sha256(f"{row['run_id']}|{row['run_started_at']}|{row['id']}|{row['requests_json']}".encode())
    return f"gt-{row['id']}-{digest.hexdigest()[:12]}"


def create_jobs(conn: sqlite3.Connection, run_id: int, provider: str, chunks: list[list[tuple[str, int]]],
                key: LabelKey | None = None) -> list[int]:
    """Record the planned jobs as 'preparing' (all or none); custom ids are `j<job id>-<n>`, which
    every provider accepts and which never repeat within a database. With `key`, each unit is
    claimed for its job (owner 'job:<id>') in the same transaction, and a unit another process
    holds or has labelled meanwhile is left out, so nobody pays for it twice."""
    ids = []
    with store.transaction(conn):
        for units in chunks:
            cur = conn.execute(
                "INSERT INTO batch_jobs (run_id, provider, state, request_count, requests_json) VALUES (?, ?, ?, ?, '[]')",
                (run_id, provider, PREPARING, len(units)))
            job_id = int(cur.lastrowid)
            if key is not None:
                units = [(aid, rep) for aid, rep in units
                         if claim_unit(conn, key, aid, rep, owner=job_owner(job_id), run_id=run_id,
                                       ttl_s=BATCH_LEASE_TTL_S) == "claimed"]
                if not units:
                    conn.execute("DELETE FROM batch_jobs WHERE id = ?", (job_id,))
                    continue
            requests = [[f"j{job_id}-{n}", aid, rep] for n, (aid, rep) in enumerate(units)]
            conn.execute("UPDATE batch_jobs SET requests_json = ?, request_count = ? WHERE id = ?",
                         (json.dumps(requests), len(units), job_id))
            ids.append(job_id)
    return ids


def job_owner(job_id: int) -> str:
    """The lease owner of a job's units: the job holds them until it is collected."""
    return f"job:{job_id}"


def set_job(conn: sqlite3.Connection, job_id: int, **values: Any) -> None:
    cols = ", ".join(f"{k} = ?" for k in values)
    with store.transaction(conn):
        conn.execute(f"UPDATE batch_jobs SET {cols} WHERE id = ?", (*values.values(), job_id))


# ---- planning -------------------------------------------------------------------------------------

def plan_units(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str], *,
               repeats: int, target_valid: int | None, in_jobs: set[tuple[str, int]]) -> tuple[list[tuple[str, int]], int]:
    """The (article, repeat) units to send now, in sample order, and how many articles the
    prefilter skipped. The planner both engines share (planning.plan_items): a unit with an ok or
    invalid label is never sent again, an 'error' label is retried, a unit another live process
    holds is left to it; with `target_valid`, articles are taken until those with a valid label
    plus those in flight (in open jobs, or leased) reach the target."""
    key = LabelKey.of(filt, spec.name)
    existing = existing_labels(conn, filt, spec.name)
    leased = {(a, r) for a, r, _ in live_leases(conn, key)}
    busy = set(in_jobs) | leased
    counted = sum(1 for a in article_ids if existing.get((a, 0)) == "ok")
    counted += len({a for a, r in busy if r == 0 and existing.get((a, 0)) != "ok"})
    units: list[tuple[str, int]] = []
    prefiltered = 0
    for item in plan_items(article_ids, existing, repeats=repeats, target=target_valid, skip=busy):
        if item.primary and counted >= target_valid:
            continue
        found = article_text(conn, item.article_id)
        if found is None:
            continue
        if filt.prefilter_reason(*found):
            prefiltered += 1
            continue
        units += [(item.article_id, r) for r in item.repeats]
        if item.primary:
            counted += 1
    return units, prefiltered


def request_for(conn: sqlite3.Connection, filt: Filter, article_id: str, repeat: int) -> OracleRequest:
    found = article_text(conn, article_id)
    if found is None:
        raise LookupError(f"article {article_id} is no longer in gt.db")
    return build_request(filt, article_id, repeat, *found)


def split_jobs(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, adapter: BatchAdapter,
               units: list[tuple[str, int]], max_requests: int | None, max_bytes: int,
               budget: float | None = None) -> tuple[list[list[tuple[str, int]]], float, int]:
    """Greedy split in sample order: a job closes when one more item would pass the request count
    or the byte size (of the serialised items, measured with a custom id of the longest form).
    With `budget` (USD), units stop once their worst-case cost at batch prices (every prompt byte a
    third of a token, a full-length answer) would pass it. Returns (jobs, reserved USD, units left out)."""
    chunks: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    size = 0
    reserved = 0.0
    for i, (aid, rep) in enumerate(units):
        request = request_for(conn, filt, aid, rep)
        if budget is not None:
            worst = worst_case_cost(spec, request, batch=True)
            if reserved + worst > budget + 1e-12:
                if current:
                    chunks.append(current)
                return chunks, reserved, len(units) - i
            reserved += worst
        item = adapter.item("j999999999-99999", request)
        n = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1
        if n > max_bytes:
            raise BatchUnavailable(f"article {aid} alone ({n} bytes) exceeds the batch size limit ({max_bytes} bytes)")
        if current and ((max_requests and len(current) >= max_requests) or size + n > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append((aid, rep))
        size += n
    if current:
        chunks.append(current)
    return chunks, reserved, 0


def failed_units(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec) -> list[tuple[str, int]]:
    rows = conn.execute(
        """SELECT article_id, "repeat" FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?
           AND status = 'error' ORDER BY id""", (filt.id, spec.name, filt.prompt_sha256))
    return [(r[0], int(r[1])) for r in rows]

