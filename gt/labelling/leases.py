"""Leases: who holds a label unit, and whether its holder still lives.

A unit is (article, filter, oracle, prompt hash, repeat). Before anything is paid for, a process
claims the unit in gt.db's `label_leases` (`claim_unit`, inside a write transaction), so concurrent
processes never pay for the same unit. A lease lives `LEASE_TTL_S` unless its owner renews it
(`renew`, with the run's heartbeat); an owner is `host:pid:start`, so a dead process's leases and
runs are told from live ones (`owner_alive`, `run_state`). `TargetGate` keeps `--target-count`
across processes: valid labels plus primaries leased by anyone stay below the target.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable

from gt.core.filters import Filter

FINAL_STATUSES = ("ok", "invalid")   # a unit with such a label is done; an 'error' label is retried
LEASE_TTL_S = 120.0            # a lease lives this long unless its owner renews it
HEARTBEAT_S = 10.0             # how often a running process renews its leases and its run's heartbeat
BATCH_LEASE_TTL_S = 8 * 86400.0  # a provider batch job holds its units until collected (24 h window + slack)


@dataclass(frozen=True)
class LabelKey:
    """The label set a unit belongs to."""
    filter_id: str
    oracle: str
    prompt_sha256: str

    @classmethod
    def of(cls, filt: Filter, oracle: str) -> "LabelKey":
        return cls(filt.id, oracle, filt.prompt_sha256)


# ---- who runs ------------------------------------------------------------------------------------

def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]   # field 22: start time in clock ticks
    except (OSError, IndexError):
        return None


def owner_id() -> str:
    """host:pid:start of this process (the start time tells a reused pid from ours)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '-'}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host (its pid checked), None where it cannot be told (another
    host, a batch job, an old run without owner)."""
    if not owner or owner.startswith("job:"):
        return None
    try:
        host, pid, start = owner.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    ticks = _start_ticks(pid_n)
    return ticks is None or start == "-" or ticks == start


def lease_live(owner: str, expires_at: float, now: float, me: str | None = None) -> bool:
    if owner == me:
        return True
    if expires_at <= now:
        return False
    return owner_alive(owner) is not False


# ---- leases --------------------------------------------------------------------------------------

_LEASE_WHERE = 'filter_id = ? AND oracle = ? AND prompt_sha256 = ? AND article_id = ? AND "repeat" = ?'


def reserved_elsewhere(conn: sqlite3.Connection, key: LabelKey, owner: str, now: float) -> float:
    """Dollars the live leases of other processes hold for their calls in flight (filter and oracle,
    every prompt version, as --max-total-cost counts spend)."""
    rows = conn.execute("SELECT owner, expires_at, reserve_usd FROM label_leases WHERE filter_id = ? AND oracle = ? "
                        "AND owner != ? AND reserve_usd > 0", (key.filter_id, key.oracle, owner)).fetchall()
    return sum(r[2] for r in rows if lease_live(r[0], r[1], now))


def claim_unit(conn: sqlite3.Connection, key: LabelKey, article_id: str, repeat: int, *, owner: str,
               run_id: int | None, ttl_s: float = LEASE_TTL_S, now: float | None = None, reserve_usd: float = 0.0,
               total_limit: float | None = None, own_reserved: float = 0.0) -> str:
    """Claim one unit before paying for it (call inside a write transaction). Returns 'claimed',
    'done' (it has an ok/invalid label now), 'taken' (another live process or batch job holds it) or,
    with `total_limit` (--max-total-cost), 'over_budget': what gt.db records for the filter and oracle,
    plus every other live process's reserves, plus this process's own (`own_reserved`) and this call's
    worst case (`reserve_usd`) would pass the limit. Checked in the claim's transaction, so processes
    sharing one gt.db stay within the limit together."""
    now = time.time() if now is None else now
    unit = (key.filter_id, key.oracle, key.prompt_sha256, article_id, repeat)
    row = conn.execute(
        'SELECT status FROM labels WHERE article_id = ? AND filter_id = ? AND oracle = ? AND prompt_sha256 = ? '
        'AND "repeat" = ?', (article_id, *unit[:3], repeat)).fetchone()
    if row is not None and row[0] in FINAL_STATUSES:
        return "done"
    lease = conn.execute(f"SELECT owner, expires_at FROM label_leases WHERE {_LEASE_WHERE}", unit).fetchone()
    if lease is not None and lease_live(lease[0], lease[1], now, owner):
        if lease[0] != owner:
            return "taken"
    if total_limit is not None:
        recorded = conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM label_runs WHERE filter_id = ? AND oracle = ?",
                                (key.filter_id, key.oracle)).fetchone()[0]
        if recorded + reserved_elsewhere(conn, key, owner, now) + own_reserved + reserve_usd > total_limit + 1e-12:
            return "over_budget"
    conn.execute(
        """INSERT INTO label_leases (filter_id, oracle, prompt_sha256, article_id, "repeat", owner, run_id, expires_at,
                                    reserve_usd)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (filter_id, oracle, prompt_sha256, article_id, "repeat")
           DO UPDATE SET owner = excluded.owner, run_id = excluded.run_id, expires_at = excluded.expires_at,
                         reserve_usd = excluded.reserve_usd""",
        (*unit, owner, run_id, now + ttl_s, reserve_usd))
    return "claimed"


def release_unit(conn: sqlite3.Connection, key: LabelKey, article_id: str, repeat: int, owner: str | None) -> None:
    """Drop a lease (only the owner's own: a lease taken over by another process stays theirs)."""
    if owner is None:
        return
    conn.execute(f"DELETE FROM label_leases WHERE {_LEASE_WHERE} AND owner = ?",
                 (key.filter_id, key.oracle, key.prompt_sha256, article_id, repeat, owner))


def release_owner(conn: sqlite3.Connection, owner: str) -> None:
    conn.execute("DELETE FROM label_leases WHERE owner = ?", (owner,))


def renew(conn: sqlite3.Connection, owner: str, run_id: int | None, ttl_s: float = LEASE_TTL_S) -> None:
    now = time.time()
    conn.execute("UPDATE label_leases SET expires_at = ? WHERE owner = ?", (now + ttl_s, owner))
    if run_id is not None:
        conn.execute("UPDATE label_runs SET heartbeat_at = ? WHERE id = ?", (now, run_id))


def live_leases(conn: sqlite3.Connection, key: LabelKey, *, repeat: int | None = None,
                me: str | None = None) -> list[tuple[str, int, str]]:
    """(article, repeat, owner) of the live leases of a label set."""
    now = time.time()
    sql = "SELECT article_id, \"repeat\", owner, expires_at FROM label_leases WHERE filter_id = ? AND oracle = ? " \
          "AND prompt_sha256 = ?"
    args: list[Any] = [key.filter_id, key.oracle, key.prompt_sha256]
    if repeat is not None:
        sql += ' AND "repeat" = ?'
        args.append(repeat)
    return [(a, r, o) for a, r, o, e in conn.execute(sql, args) if lease_live(o, e, now, me)]


class TargetGate:
    """The target across processes: valid repeat-0 labels among the run's articles plus the
    primaries leased by anyone (this process included) must stay below the target before one more
    primary is claimed. Valid labels are followed incrementally (label ids only grow)."""

    def __init__(self, key: LabelKey, article_ids: Iterable[str], target: int, ok_ids: set[str]):
        self.key, self.target = key, target
        self.articles = set(article_ids)
        self.ok = set(ok_ids)
        self.last_id = 0

    def refresh(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            """SELECT id, article_id, "repeat" FROM labels WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ?
               AND status = 'ok' AND id > ?""", (self.key.filter_id, self.key.oracle, self.key.prompt_sha256,
                                                 self.last_id))
        for lid, aid, rep in rows:
            self.last_id = max(self.last_id, lid)
            if rep == 0 and aid in self.articles:
                self.ok.add(aid)

    def state(self, conn: sqlite3.Connection, me: str) -> str:
        """'met' (enough valid labels), 'full' (enough with the leased primaries) or 'open'."""
        self.refresh(conn)
        if len(self.ok) >= self.target:
            return "met"
        leased = {a for a, _, _ in live_leases(conn, self.key, repeat=0, me=me) if a in self.articles and a not in self.ok}
        return "full" if len(self.ok) + len(leased) >= self.target else "open"


# ---- runs ----------------------------------------------------------------------------------------

def run_state(row: sqlite3.Row | dict, now: float | None = None, open_jobs: int = 0) -> str:
    """A run's true state: running, done, stopped, failed, died, or waiting (batch jobs open at the
    provider). A 'running' row whose owner is gone (pid dead here, or no heartbeat for two lease
    lifetimes) died."""
    status = row["status"]
    if status != "running":
        return status
    if open_jobs:
        return "waiting"
    now = time.time() if now is None else now
    alive = owner_alive(row["owner"])
    if alive is False:
        return "died"
    beat = row["heartbeat_at"]
    if row["owner"] is None or beat is None:
        return "running?"   # a run from before gt.db recorded owners: running, or killed
    if alive is None and now - beat > 2 * LEASE_TTL_S:
        return "died"
    return "running"


def mark_dead_runs(conn: sqlite3.Connection) -> int:
    """Write 'died' on running runs whose process is gone (call inside a write transaction)."""
    rows = conn.execute(
        """SELECT r.id, r.status, r.owner, r.heartbeat_at,
                  (SELECT COUNT(*) FROM batch_jobs j WHERE j.run_id = r.id
                     AND j.state NOT IN ('collected', 'failed', 'expired', 'cancelled')) AS open_jobs
           FROM label_runs r WHERE r.status = 'running' AND r.owner IS NOT NULL""").fetchall()
    dead = [r["id"] for r in rows if run_state(r, open_jobs=r["open_jobs"]) == "died"]
    for run_id in dead:
        conn.execute("UPDATE label_runs SET status = 'died', finished_at = COALESCE(finished_at, "
                     "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')) WHERE id = ?", (run_id,))
    return len(dead)

