"""Batch endpoints of the loopback fake provider server: Gemini batch mode, Anthropic Message
Batches and the OpenAI Batch API, in the REST shapes the real SDKs call.

Paths (as the installed SDKs send them):
  Gemini     POST /v1beta/models/{model}:batchGenerateContent   GET /v1beta/batches/{id}   GET /v1beta/batches
  Anthropic  POST /v1/messages/batches   GET /v1/messages/batches/{id}   GET /v1/messages/batches/{id}/results
             GET /v1/messages/batches
  OpenAI     POST /v1/files (multipart, purpose=batch)   GET /v1/files/{id}/content   POST /v1/batches
             GET /v1/batches/{id}   GET /v1/batches

A job is answered item by item through the server's synchronous handler (`answer`), so a batch
label equals a sync label for the same article. A job finishes after `polls_to_finish` status
polls (or `finish_after_s` seconds); faults: `fail_every` errors every n-th item the first time
the server sees it (a batch that partly fails; with `fail_always`, every time), `expire_next` makes the next n jobs expire with
half their items done. `creates` counts job creations per provider (double submission shows).
"""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

# answer(provider, model, request_body) -> (http_status, response_body): the sync endpoint's logic
Answer = Callable[[str, str, dict], tuple[int, dict]]
Reply = tuple[int, str, bytes]  # (status, content type, body)

_GEMINI_CREATE = re.compile(r"^/v1(?:beta|alpha)?/models/([^/:]+):batchGenerateContent$")
_BATCH_ID = re.compile(r"^/v1(?:beta|alpha)?/batches/([^/:]+)$")      # Gemini and OpenAI
_BATCH_LIST = re.compile(r"^/v1(?:beta|alpha)?/batches$")
_FAKE_CONTROL = re.compile(r"^/_fake/batches$")
_ANTHROPIC_LIST = re.compile(r"^(?:/v1)?/messages/batches$")
_ANTHROPIC_ID = re.compile(r"^(?:/v1)?/messages/batches/([^/]+)$")
_ANTHROPIC_RESULTS = re.compile(r"^(?:/v1)?/messages/batches/([^/]+)/results$")
_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_OPENAI_FILES = re.compile(r"^(?:/v1)?/files$")
_OPENAI_FILE_CONTENT = re.compile(r"^(?:/v1)?/files/([^/]+)/content$")

ANTHROPIC_MAX_REQUESTS = 100_000
OPENAI_MAX_REQUESTS = 50_000


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Job:
    provider: str
    id: str
    model: str
    items: list[tuple[str, dict]]          # (custom id / key, request body)
    created: float
    display_name: str = ""
    metadata: dict = field(default_factory=dict)
    input_file_id: str = ""
    polls: int = 0
    expire: bool = False
    done: bool = False
    # custom id -> ("succeeded", response body) | ("errored", (status, error body)) | ("expired", None)
    results: dict[str, tuple[str, Any]] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished: float | None = None


class FakeBatches:
    """The batch half of the fake server; `route` answers a request or returns None (not ours)."""

    def __init__(self, answer: Answer, *, polls_to_finish: int = 2, finish_after_s: float | None = None):
        self.answer = answer
        self.polls_to_finish = polls_to_finish
        self.finish_after_s = finish_after_s
        self.fail_every: int | None = None
        self.fail_always = False
        self.expire_next = 0
        self.stall_s = 0.0              # every batch request waits this long before it is answered (timeouts)
        self.creates: Counter = Counter()
        self.polls: Counter = Counter()
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, bytes] = {}
        self._seen_bodies: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # ---- control ---------------------------------------------------------------------------
    def configure(self, **settings: Any) -> None:
        """Set polls_to_finish, finish_after_s, fail_every, fail_always, expire_next (also via POST /_fake/batches)."""
        with self._lock:
            for key, value in settings.items():
                if key not in ("polls_to_finish", "finish_after_s", "fail_every", "fail_always", "expire_next",
                               "stall_s"):
                    raise KeyError(key)
                setattr(self, key, value)

    def reset(self) -> None:
        with self._lock:
            self.fail_every, self.expire_next, self.fail_always = None, 0, False
            self.polls_to_finish, self.finish_after_s = 2, None
            self.stall_s = 0.0
            self.creates.clear()
            self.polls.clear()
            self.jobs.clear()
            self.files.clear()
            self._seen_bodies.clear()

    def stats(self) -> dict:
        with self._lock:
            return {"creates": dict(self.creates), "polls": dict(self.polls),
                    "jobs": {j.id: {"provider": j.provider, "items": len(j.items), "done": j.done,
                                    "polls": j.polls} for j in self.jobs.values()}}

    # ---- dispatch --------------------------------------------------------------------------
    def match(self, method: str, path: str, headers: Any, base_url: str) -> Callable[[bytes], Reply] | None:
        """The handler for a batch (or batch-file) request, or None when the path is not ours.
        The caller reads the body only for a match, so other routes still get theirs."""
        from urllib.parse import parse_qs, urlsplit
        parts = urlsplit(path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        # google-genai sends GET /v1/batches/... as OpenAI does: its key header tells them apart
        gemini = _header(headers, "x-goog-api-key") is not None
        routes: list[tuple[str, re.Pattern, Callable[..., Reply], bool]] = [
            ("POST", _FAKE_CONTROL, lambda m, b: self._control(b), True),
            ("POST", _GEMINI_CREATE, lambda m, b: self._gemini_create(m.group(1), _load(b)), True),
            ("GET", _BATCH_ID, lambda m, b: (self._gemini_get(m.group(1)) if gemini or self._provider_of(m.group(1)) == "gemini"
                                             else self._openai_get(m.group(1))), True),
            ("GET", _BATCH_LIST, lambda m, b: self._gemini_list(query) if gemini else self._openai_list(query), True),
            ("POST", _ANTHROPIC_LIST, lambda m, b: self._anthropic_create(_load(b)), True),
            ("GET", _ANTHROPIC_LIST, lambda m, b: self._anthropic_list(query, base_url), True),
            ("GET", _ANTHROPIC_RESULTS, lambda m, b: self._anthropic_results(m.group(1)), True),
            ("GET", _ANTHROPIC_ID, lambda m, b: self._anthropic_get(m.group(1), base_url), True),
            ("POST", _OPENAI_FILES, lambda m, b: self._openai_upload(headers, b), True),
            ("GET", _OPENAI_FILE_CONTENT, lambda m, b: self._openai_file(m.group(1)), True),
            ("POST", _BATCH_LIST, lambda m, b: self._openai_create(_load(b)), True),
        ]
        for verb, pattern, handler, applies in routes:
            m = pattern.match(path)
            if m and verb == method and applies:
                def run(body: bytes, m=m, handler=handler) -> Reply:
                    if self.stall_s and handler is not routes[0][2]:   # the control route never stalls
                        time.sleep(self.stall_s)
                    with self._lock:
                        try:
                            return handler(m, body)
                        except (ValueError, KeyError, TypeError, AttributeError) as e:
                            return _json(400, {"error": {"code": 400, "message": f"bad request: {e}",
                                                         "type": "invalid_request_error"}})
                return run
        return None

    def route(self, method: str, path: str, headers: Any, body: bytes, base_url: str) -> Reply | None:
        handler = self.match(method, path, headers, base_url)
        return handler(body) if handler else None

    def _provider_of(self, job_id: str) -> str:
        job = self.jobs.get(job_id)
        return job.provider if job else ""

    def _control(self, body: bytes) -> Reply:
        settings = _load(body)
        if settings.pop("reset", False):
            self.reset()
        self.configure(**settings)
        return _json(200, self.stats())

    # ---- shared job life cycle ---------------------------------------------------------------
    def _new_job(self, provider: str, prefix: str, model: str, items: list[tuple[str, dict]], **extra: Any) -> Job:
        job_id = f"{prefix}{next(self._ids):04d}{hashlib.sha1(str(time.time()).encode()).hexdigest()[:8]}"
        job = Job(provider=provider, id=job_id, model=model, items=items, created=time.time(), **extra)
        if self.expire_next > 0:
            job.expire = True
            self.expire_next -= 1
        self.jobs[job_id] = job
        self.creates[provider] += 1
        return job

    def _poll(self, job: Job) -> None:
        """Count one status poll; run the job's items once it is due."""
        job.polls += 1
        self.polls[job.provider] += 1
        if job.done:
            return
        due = job.polls >= self.polls_to_finish
        if self.finish_after_s is not None:
            due = time.time() - job.created >= self.finish_after_s
        if due:
            self._run(job)

    def _run(self, job: Job) -> None:
        cut = len(job.items) // 2 if job.expire else len(job.items)
        for i, (cid, request) in enumerate(job.items):
            if i >= cut:
                job.results[cid] = ("expired", None)
                continue
            key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
            first_time = key not in self._seen_bodies
            self._seen_bodies.add(key)
            if self.fail_every and (first_time or self.fail_always) and i % self.fail_every == self.fail_every - 1:
                job.results[cid] = ("errored", (500, {"message": "injected batch item failure"}))
                continue
            status, payload = self.answer(job.provider, job.model, request)
            job.results[cid] = ("succeeded", payload) if status == 200 else ("errored", (status, payload))
        job.done = True
        job.finished = time.time()

    # ---- Gemini ------------------------------------------------------------------------------
    def _gemini_create(self, model: str, body: dict) -> Reply:
        batch = body.get("batch") or {}
        reqs = (((batch.get("inputConfig") or {}).get("requests") or {}).get("requests"))
        if not isinstance(reqs, list) or not reqs:
            return _gemini_error(400, "INVALID_ARGUMENT", "batch.inputConfig.requests.requests must list requests")
        items = []
        for i, r in enumerate(reqs):
            key = str(((r.get("metadata") or {}).get("key")) or i)
            items.append((key, r.get("request") or {}))
        job = self._new_job("gemini", "", model, items, display_name=batch.get("displayName", ""))
        return _json(200, self._gemini_operation(job))

    def _gemini_operation(self, job: Job) -> dict:
        if not job.done:
            state = "BATCH_STATE_PENDING" if job.polls == 0 else "BATCH_STATE_RUNNING"
        else:
            state = "BATCH_STATE_EXPIRED" if job.expire else "BATCH_STATE_SUCCEEDED"
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "name": f"batches/{job.id}", "model": f"models/{job.model}", "displayName": job.display_name,
            "state": state, "createTime": _iso(job.created), "updateTime": _iso(job.finished or job.created),
            "batchStats": {"requestCount": str(len(job.items))},
        }
        if job.done:
            meta["endTime"] = _iso(job.finished)
        if job.done and not job.expire:
            responses = []
            for cid, _ in job.items:
                kind, payload = job.results[cid]
                if kind == "succeeded":
                    responses.append({"response": payload, "metadata": {"key": cid}})
                else:
                    status, err = payload if payload else (504, {})
                    responses.append({"error": {"code": status, "message": _message(err), "status": "INTERNAL"},
                                      "metadata": {"key": cid}})
            meta["output"] = {"inlinedResponses": {"inlinedResponses": responses}}
        return {"name": f"batches/{job.id}", "metadata": meta, "done": job.done}

    def _gemini_get(self, job_id: str) -> Reply:
        job = self.jobs.get(job_id)
        if job is None or job.provider != "gemini":
            return _gemini_error(404, "NOT_FOUND", f"batch {job_id} not found")
        self._poll(job)
        return _json(200, self._gemini_operation(job))

    def _gemini_list(self, query: dict[str, list[str]]) -> Reply:
        jobs = [j for j in self.jobs.values() if j.provider == "gemini"]
        return _json(200, {"operations": [self._gemini_operation(j) for j in reversed(jobs)]})

    # ---- Anthropic ---------------------------------------------------------------------------
    def _anthropic_create(self, body: dict) -> Reply:
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs or len(reqs) > ANTHROPIC_MAX_REQUESTS:
            return _anthropic_error(400, "requests: between 1 and 100,000 requests are required")
        seen: set[str] = set()
        items = []
        for r in reqs:
            cid = r.get("custom_id", "")
            if not _ANTHROPIC_CUSTOM_ID.match(cid) or cid in seen:
                return _anthropic_error(400, f"custom_id {cid!r} must match ^[a-zA-Z0-9_-]{{1,64}}$ and be unique")
            seen.add(cid)
            items.append((cid, r.get("params") or {}))
        job = self._new_job("anthropic", "msgbatch_", items[0][1].get("model", ""), items)
        return _json(200, self._anthropic_batch(job, ""))

    def _anthropic_batch(self, job: Job, base_url: str) -> dict:
        counts = Counter(kind for kind, _ in job.results.values())
        return {
            "id": job.id, "type": "message_batch",
            "processing_status": "ended" if job.done else "in_progress",
            "request_counts": {"processing": 0 if job.done else len(job.items), "succeeded": counts["succeeded"],
                               "errored": counts["errored"], "canceled": 0, "expired": counts["expired"]},
            "created_at": _iso(job.created), "expires_at": _iso(job.created + 86400),
            "ended_at": _iso(job.finished) if job.done else None, "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{job.id}/results" if job.done else None,
        }

    def _anthropic_get(self, job_id: str, base_url: str) -> Reply:
        job = self.jobs.get(job_id)
        if job is None or job.provider != "anthropic":
            return _anthropic_error(404, f"message batch {job_id} not found", "not_found_error")
        self._poll(job)
        return _json(200, self._anthropic_batch(job, base_url))

    def _anthropic_results(self, job_id: str) -> Reply:
        job = self.jobs.get(job_id)
        if job is None or not job.done:
            return _anthropic_error(404, f"results of {job_id} are not available yet", "not_found_error")
        lines = []
        for cid, _ in job.items:
            kind, payload = job.results[cid]
            if kind == "succeeded":
                result = {"type": "succeeded", "message": payload}
            elif kind == "expired":
                result = {"type": "expired"}
            else:
                status, err = payload
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error" if status >= 500 else "invalid_request_error", "message": _message(err)}}}
            lines.append(json.dumps({"custom_id": cid, "result": result}))
        return 200, "application/binary", ("\n".join(lines) + "\n").encode()

    def _anthropic_list(self, query: dict[str, list[str]], base_url: str) -> Reply:
        jobs = [self._anthropic_batch(j, base_url) for j in reversed(list(self.jobs.values()))
                if j.provider == "anthropic"]
        return _json(200, {"data": jobs, "has_more": False,
                           "first_id": jobs[0]["id"] if jobs else None, "last_id": jobs[-1]["id"] if jobs else None})

    # ---- OpenAI ------------------------------------------------------------------------------
    def _openai_upload(self, headers: Any, body: bytes) -> Reply:
        ctype = _header(headers, "content-type") or ""
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields or fields.get("purpose", (None, b""))[1].decode() != "batch":
            return _openai_error(400, "multipart upload needs 'file' and purpose=batch")
        file_id = f"file-{next(self._ids):04d}{hashlib.sha1(fields['file'][1]).hexdigest()[:12]}"
        self.files[file_id] = fields["file"][1]
        return _json(200, {"id": file_id, "object": "file", "bytes": len(fields["file"][1]),
                           "created_at": int(time.time()), "filename": fields["file"][0] or "batch.jsonl",
                           "purpose": "batch", "status": "processed"})

    def _openai_file(self, file_id: str) -> Reply:
        if file_id not in self.files:
            return _openai_error(404, f"file {file_id} not found")
        return 200, "application/octet-stream", self.files[file_id]

    def _openai_create(self, body: dict) -> Reply:
        file_id = body.get("input_file_id", "")
        if file_id not in self.files:
            return _openai_error(400, f"input_file_id {file_id!r} is not an uploaded file")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _openai_error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        items, seen = [], set()
        for n, line in enumerate(self.files[file_id].decode().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("method") != "POST" or row.get("url") != "/v1/chat/completions" or row["custom_id"] in seen:
                return _openai_error(400, f"line {n}: method POST, url /v1/chat/completions, unique custom_id")
            seen.add(row["custom_id"])
            items.append((row["custom_id"], row["body"]))
        if len(items) > OPENAI_MAX_REQUESTS:
            return _openai_error(400, "a batch holds at most 50,000 requests")
        job = self._new_job("openai", "batch_", items[0][1].get("model", "") if items else "", items,
                            metadata=dict(body.get("metadata") or {}), input_file_id=file_id)
        return _json(200, self._openai_batch(job))

    def _openai_batch(self, job: Job) -> dict:
        if job.done and job.output_file_id is None and job.error_file_id is None:
            self._openai_write_files(job)
        counts = Counter(kind for kind, _ in job.results.values())
        status = ("expired" if job.expire else "completed") if job.done else (
            "validating" if job.polls == 0 else "in_progress")
        done_at = int(job.finished) if job.done else None
        return {
            "id": job.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": job.input_file_id, "completion_window": "24h", "status": status,
            "output_file_id": job.output_file_id, "error_file_id": job.error_file_id,
            "created_at": int(job.created), "in_progress_at": int(job.created),
            "expires_at": int(job.created) + 86400,
            "completed_at": done_at if status == "completed" else None,
            "expired_at": done_at if status == "expired" else None,
            "request_counts": {"total": len(job.items), "completed": counts["succeeded"],
                               "failed": counts["errored"] + counts["expired"]},
            "metadata": job.metadata or None, "model": job.model,
        }

    def _openai_write_files(self, job: Job) -> None:
        out, err = [], []
        for n, (cid, _) in enumerate(job.items):
            kind, payload = job.results[cid]
            rid = f"batch_req_{job.id}_{n}"
            if kind == "succeeded":
                out.append({"id": rid, "custom_id": cid, "error": None,
                            "response": {"status_code": 200, "request_id": rid, "body": payload}})
            elif kind == "expired":
                err.append({"id": rid, "custom_id": cid, "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}})
            else:
                status, body = payload
                err.append({"id": rid, "custom_id": cid, "error": None,
                            "response": {"status_code": status, "request_id": rid,
                                         "body": {"error": {"message": _message(body), "type": "server_error"}}}})
        for rows, attr in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                file_id = f"file-{next(self._ids):04d}{attr[:3]}{job.id[-8:]}"
                self.files[file_id] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
                setattr(job, attr, file_id)

    def _openai_get(self, job_id: str) -> Reply:
        job = self.jobs.get(job_id)
        if job is None or job.provider != "openai":
            return _openai_error(404, f"batch {job_id} not found")
        self._poll(job)
        return _json(200, self._openai_batch(job))

    def _openai_list(self, query: dict[str, list[str]]) -> Reply:
        jobs = [self._openai_batch(j) for j in reversed(list(self.jobs.values())) if j.provider == "openai"]
        return _json(200, {"object": "list", "data": jobs, "has_more": False,
                           "first_id": jobs[0]["id"] if jobs else None, "last_id": jobs[-1]["id"] if jobs else None})


def _load(body: bytes) -> dict:
    return json.loads(body or b"{}")


def answer_like_sync(server: Any, provider: str, model: str, body: dict) -> tuple[int, dict]:
    """One batch item answered exactly as the sync endpoint would answer the same request body:
    the same parse, deterministic answer, article fault markers, token counts and prefix cache."""
    from tests.fakes import server as srv
    from tests.fakes.answers import article_block, corrupt, deterministic_answer, schema_shape
    dialect = {"gemini": srv.GeminiDialect, "anthropic": srv.AnthropicDialect, "openai": srv.OpenAIDialect}[provider]
    req = dialect.parse(body, model)
    article = article_block(req.user_text)
    fault = server._choose_fault(article)
    if fault in ("rate_limit", "quota", "server_error", "unavailable", "auth", "bad_request", "disconnect", "slow",
                 "empty_body"):
        status = {"bad_request": 400, "auth": 401, "rate_limit": 429, "quota": 429}.get(fault, 500)
        return status, {"error": {"message": f"injected fault {fault}"}}
    shape = schema_shape(req.schema) or server._default_shape
    answer = deterministic_answer(article, *shape)
    text = corrupt(answer, fault) if fault in srv.ANSWER_FAULTS else json.dumps(answer)
    cacheable = req.system and (dialect is not srv.AnthropicDialect or req.extra.get("cacheable"))
    cached = cache_write = 0
    if cacheable:
        if server._prefix_cached(req.system):
            cached = srv._tokens(req.system)
        elif dialect is srv.AnthropicDialect:
            cache_write = srv._tokens(req.system)
    usage = {"input": srv._tokens(req.extra.get("all_text", req.user_text)), "output": srv._tokens(text),
             "cached": cached, "cache_write": cache_write}
    server._record(srv.Exchange(provider, model, "batch", 200, fault, srv.article_key(article), time.monotonic(),
                                0.0, usage["input"], usage["output"], cached, cache_write))
    return 200, dialect.ok(req, text, usage, fault)


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    for key in (name, name.title(), name.lower()):
        value = headers.get(key)
        if value is not None:
            return value
    return None


def _message(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message", inner))
        return str(inner)
    return str(body)


def _json(status: int, payload: Any) -> Reply:
    return status, "application/json", json.dumps(payload).encode()


def _gemini_error(status: int, code: str, message: str) -> Reply:
    return _json(status, {"error": {"code": status, "message": message, "status": code}})


def _anthropic_error(status: int, message: str, kind: str = "invalid_request_error") -> Reply:
    return _json(status, {"type": "error", "error": {"type": kind, "message": message}})


def _openai_error(status: int, message: str) -> Reply:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})
