"""The never-blocking writer of a sync label run, and its spill files.

Database writes of a sync run go through `DbWriter`, one thread with its own connection that
commits the event loop's work in groups, so a lock held by another process never stalls the loop:
answers wait in memory (at most one per worker) until the lock goes, and past a patience limit
they are kept in a spill file beside gt.db that the next run stores (`apply_spills`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import json
import os
import queue
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gt.core import store
from gt.core.filters import Filter
from gt.labelling.leases import HEARTBEAT_S, LabelKey
from gt.labelling.ledger import LabelOutcome, store_outcome


def db_file(conn: sqlite3.Connection) -> str:
    """The file behind a connection (the writer thread opens its own)."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            if not row[2]:
                raise ValueError("the label stage needs gt.db in a file (an in-memory database cannot be shared "
                                 "with its writer thread)")
            return row[2]
    raise ValueError("no main database")


# ---- the writer thread ---------------------------------------------------------------------------

class WriterStopped(Exception):
    """The writer gave up (the run stopped past its patience): nothing more is written."""


class Spilled(Exception):
    """The work was not written to gt.db but kept in the spill file `path` (the next run stores it)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future
    spill: Callable[[], dict] | None = None   # for work that carries a paid answer: its spill record
    queued: bool = True                       # counted in DbWriter._queued


class DbWriter:
    """Runs small pieces of work (`fn(conn)`) for the event loop, each all or nothing, without ever
    making the loop wait for another process's lock. The fast path runs a piece at once on the
    loop's own write connection with no busy wait: gt.db is free nearly always, and a local
    transaction takes a fraction of a millisecond. When the lock is held elsewhere the piece goes
    to a thread with its own connection, which keeps trying (blocked_for() says how long) and
    commits what waits in groups, each piece in its own savepoint; until that queue is empty every
    new piece follows it, so pieces stay in order. `abandon()` puts the pending paid answers into a
    spill file and fails the rest. Call `open_inline()` from the loop's thread."""

    def __init__(self, path: str, *, heartbeat: Callable[[sqlite3.Connection], None] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, spill_path: str | None = None):
        self.path = path
        self.heartbeat = heartbeat
        self.heartbeat_s = heartbeat_s
        self.spill_path = spill_path or spill_file_name(path)
        self.queue: queue.Queue[_Op | None] = queue.Queue()
        self._blocked_since: float | None = None
        self._abandoned = threading.Event()
        self._queued = 0                 # pieces handed to the thread and not yet settled
        self._count_lock = threading.Lock()
        self.inline: sqlite3.Connection | None = None
        self.spilled = 0
        self.cpu_s = 0.0                 # the thread's own CPU time, when it has stopped
        self.transactions = 0            # commits: the thread's and the fast path's
        self.deferred = 0                # pieces that found gt.db locked and went to the thread
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="gt.db writer", daemon=True)
        self.thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error

    # -- the loop's side ---------------------------------------------------------------------------
    def open_inline(self) -> None:
        """The fast path's connection, owned by the calling (event loop) thread: no busy wait."""
        self.inline = store.connect(self.path)
        self.inline.execute("PRAGMA busy_timeout = 0")

    def submit(self, fn: Callable[[sqlite3.Connection], Any],
               spill: Callable[[], dict] | None = None) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._abandoned.is_set():
            self._fail([_Op(fn, fut, spill, queued=False)])
        else:
            with self._count_lock:
                self._queued += 1
            self.queue.put(_Op(fn, fut, spill))
        return fut

    async def run(self, fn: Callable[[sqlite3.Connection], Any], spill: Callable[[], dict] | None = None) -> Any:
        if self.inline is not None and not self._queued and not self._abandoned.is_set():
            done, value = self._try_inline(fn)
            if done:
                return value
            self.deferred += 1
        return await asyncio.wrap_future(self.submit(fn, spill))

    def _try_inline(self, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
        """(True, result) when the piece ran and committed; (False, None) when gt.db is locked."""
        conn = self.inline
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _is_busy(e):
                return False, None
            raise
        try:
            value = fn(conn)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if _is_busy(e):
                return False, None
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1
        return True, value

    def blocked_for(self) -> float:
        since = self._blocked_since
        return 0.0 if since is None else time.monotonic() - since

    def abandon(self) -> None:
        self._abandoned.set()

    def close(self, timeout: float | None = None) -> None:
        self.queue.put(None)
        self.thread.join(timeout)

    def close_inline(self) -> None:
        """Close the fast path's connection (from the thread that opened it)."""
        if self.inline is not None:
            self.inline.close()
            self.inline = None

    # -- the thread --------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.conn = store.connect(self.path)
            self.conn.execute("PRAGMA busy_timeout = 200")
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        last_beat = time.monotonic()
        stop = False
        try:
            while not stop:
                ops: list[_Op] = []
                try:
                    waiting = self.queue.get(timeout=self.heartbeat_s)
                except queue.Empty:
                    waiting = _IDLE
                if waiting is not _IDLE:
                    for op in self._drain(waiting):
                        if op is None:
                            stop = True
                        else:
                            ops.append(op)
                beat = self.heartbeat is not None and time.monotonic() - last_beat >= self.heartbeat_s
                if not ops and not beat:
                    continue
                if self._commit(ops, beat):
                    if beat:
                        last_beat = time.monotonic()
                else:
                    self._fail(ops)
            # anything queued after the stop marker
            rest = [op for op in self._drain(None)[1:] if op is not None]
            if rest and not self._commit(rest, False):
                self._fail(rest)
        finally:
            self.conn.close()
            self.cpu_s = time.thread_time()

    def _drain(self, first: _Op | None) -> list[_Op | None]:
        ops: list[_Op | None] = [first]
        while len(ops) < 512:
            try:
                ops.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return ops

    def _commit(self, ops: list[_Op], beat: bool) -> bool:
        """Run `ops` in one transaction, waiting out another process's lock; False when abandoned."""
        while True:
            if self._abandoned.is_set():
                return False
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    if self._blocked_since is None:
                        self._blocked_since = time.monotonic()
                    continue
                self._resolve_all(ops, e)
                return True
            self._blocked_since = None
            results: list[tuple[bool, Any]] = []
            try:
                for op in ops:
                    self.conn.execute("SAVEPOINT op")
                    try:
                        results.append((True, op.fn(self.conn)))
                        self.conn.execute("RELEASE op")
                    except Exception as e:  # noqa: BLE001 - the piece fails, the group goes on
                        self.conn.execute("ROLLBACK TO op")
                        self.conn.execute("RELEASE op")
                        results.append((False, e))
                if beat and self.heartbeat is not None:
                    self.heartbeat(self.conn)
                self.conn.execute("COMMIT")
                self.transactions += 1
            except sqlite3.OperationalError as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if _is_busy(e):
                    continue
                self._resolve_all(ops, e)
                return True
            for op, (ok, value) in zip(ops, results):
                self._settled(op)
                if op.future.done():
                    continue
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)
            return True

    def _settled(self, op: _Op) -> None:
        if op.queued:
            op.queued = False
            with self._count_lock:
                self._queued = max(self._queued - 1, 0)

    def _resolve_all(self, ops: list[_Op], error: BaseException) -> None:
        for op in ops:
            self._settled(op)
            if not op.future.done():
                op.future.set_exception(error)

    def _fail(self, ops: list[_Op]) -> None:
        """Abandoned: paid answers go to the spill file (fsynced), the rest fail."""
        spills = [op for op in ops if op.spill is not None]
        if spills:
            with open(self.spill_path, "a", encoding="utf-8") as f:
                for op in spills:
                    f.write(json.dumps(op.spill(), ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.spilled += len(spills)
        for op in ops:
            self._settled(op)
            if op.future.done():
                continue
            if op.spill is not None:
                op.future.set_exception(Spilled(self.spill_path))
            else:
                op.future.set_exception(WriterStopped("gt.db stayed locked; nothing more is written"))


_IDLE = object()


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


# ---- spill files ---------------------------------------------------------------------------------

def spill_file_name(db_path: str) -> str:
    return f"{db_path}.unsaved-{socket.gethostname()}-{os.getpid()}-{int(time.time())}.jsonl"


def spill_files(db_path: str) -> list[str]:
    return sorted(glob.glob(glob.escape(str(db_path)) + ".unsaved-*.jsonl"))


def spill_outcome(run_id: int, key: LabelKey, article_id: str, repeat: int, outcome: LabelOutcome) -> dict:
    return {"type": "outcome", "run_id": run_id, "filter_id": key.filter_id, "oracle": key.oracle,
            "prompt_sha256": key.prompt_sha256, "article_id": article_id, "repeat": repeat,
            "outcome": outcome.to_json()}


def spill_finish(run_id: int, status: str, reason: str | None) -> dict:
    return {"type": "finish", "run_id": run_id, "status": status, "reason": reason}


def apply_spills(conn: sqlite3.Connection, db_path: str, filters: dict[str, Filter]) -> list[str]:
    """Store the answers earlier runs kept in spill files (gt.db was locked past their patience),
    each file once (label_spills), then delete it. Returns one line per file applied."""
    notes = []
    for path in spill_files(db_path):
        name = Path(path).name
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            notes.append(f"spill file {path} could not be read ({e}); left in place")
            continue
        records, torn = [], []
        for n, line in enumerate(lines, 1):   # every complete line is a paid answer: keep it; report a torn one
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                torn.append(n)
        if torn:
            notes.append(f"spill file {path}: line {', '.join(map(str, torn))} torn (the process was killed while "
                         f"writing it); the {len(records)} complete record(s) are stored")
        needed = {r["filter_id"] for r in records if r.get("type") == "outcome"}
        if needed - set(filters):
            notes.append(f"spill file {path} holds labels of {', '.join(sorted(needed - set(filters)))}; "
                         f"run that filter's label command to store them")
            continue
        with store.transaction(conn):
            if conn.execute("SELECT 1 FROM label_spills WHERE name = ?", (name,)).fetchone():
                applied = False
            else:
                conn.execute("INSERT INTO label_spills (name, records) VALUES (?, ?)", (name, len(records)))
                applied = True
                for r in records:
                    if r.get("type") == "outcome":
                        filt = filters[r["filter_id"]]
                        o = LabelOutcome(**r["outcome"])
                        store_outcome(conn, run_id=r["run_id"], filt=filt, oracle=r["oracle"],
                                      article_id=r["article_id"], repeat=r["repeat"], outcome=o,
                                      key=LabelKey(r["filter_id"], r["oracle"], r["prompt_sha256"]))
                    elif r.get("type") == "finish":
                        store.finish_run(conn, r["run_id"], r["status"], r.get("reason"))
        os.unlink(path)
        if applied:
            notes.append(f"stored {sum(r.get('type') == 'outcome' for r in records)} answer(s) kept in {path} "
                         f"by a run that stopped while gt.db was locked")
    return notes

