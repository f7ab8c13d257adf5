"""A real HTTP server on loopback that speaks the Gemini, Anthropic and OpenAI REST shapes, so
tests and benchmarks drive the real SDK clients (which use httpx2: no mocking library intercepts
them, a real socket does).

    with FakeProviderServer(latency_s=0.2, rpm=600) as server:
        os.environ.update(server.env())          # base URLs + dummy keys for all three SDKs
        ...                                      # run the oracles / the label stage
        server.counts, server.log                # what it saw (never the API key)

Routes: Gemini  POST /v1[beta]/models/{model}:generateContent  (key: x-goog-api-key; google-genai
                3.x calls /v1/ by default)
        Anthropic POST /v1/messages                          (key: x-api-key)
        OpenAI  POST /v1/chat/completions                    (key: Authorization: Bearer)

Answers: valid JSON for the schema the client sent (dimension names and content types are read
from it), with scores derived from the article's hash: `answers.expected_answer(filter, title,
text)` predicts them; a model id containing `noise<N>` moves each score by up to N points
(answers.model_variant), so two models can disagree. Usage: tokens = characters // 4; a rubric seen before is reported as cached.

Faults (see FAULTS), chosen per request by, in order:
  1. a marker in the article text: `FAULT:<name>` (always) or `FAULT:<name>:<n>` (first n times);
  2. `server.inject(name, count)`: the next `count` requests, whatever the article;
  3. `faults={name: probability}` at construction, drawn from a seeded RNG.
An RPM limit (`rpm=`) answers 429 with Retry-After (Gemini: RetryInfo.retryDelay in the body).
"""
from __future__ import annotations

import collections
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fakes.answers import (article_block, article_key, corrupt, deterministic_answer, fault_markers,
                                 model_variant, schema_shape)
from tests.fakes.batches import FakeBatches, answer_like_sync

FAULTS = (
    "rate_limit",         # 429 with a retry hint (Retry-After header; Gemini: RetryInfo.retryDelay)
    "quota",              # per-day quota / billing exhausted
    "server_error",       # 500
    "unavailable",        # 503 (Anthropic: 529 overloaded)
    "slow",               # answers after `slow_s`, past a client's timeout
    "malformed",          # 200, answer text is cut-off JSON
    "missing_dimension",  # 200, the first dimension's score is missing
    "out_of_range",       # 200, the first dimension scores 14
    "off_grid",           # 200, schema-valid scores off the half-point grid (8.1, 3.8)
    "refusal",            # 200, the model declines
    "empty",              # 200, empty answer text
    "empty_body",         # 200 with a zero-length HTTP body
    "auth",               # 401
    "bad_request",        # 400
    "disconnect",         # the connection closes without a response
)
ANSWER_FAULTS = {"malformed", "missing_dimension", "out_of_range", "empty", "off_grid"}
ROOT = Path(__file__).resolve().parents[2]
FAKE_KEY = "fake-key-for-loopback-tests"


@dataclass
class Exchange:
    """One request as the server saw it (no headers, no key)."""
    provider: str
    model: str
    path: str
    status: int
    fault: str | None
    article: str          # sha256 of the article block
    started: float
    seconds: float
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass
class ParsedRequest:
    provider: str
    model: str
    system: str
    user_text: str
    schema: dict | None
    extra: dict = field(default_factory=dict)


class FakeProviderServer:
    def __init__(self, latency_s: float = 0.0, rpm: float | None = None, faults: dict[str, float] | None = None,
                 *, seed: int = 0, retry_after_s: float = 1.0, slow_s: float = 10.0, rate_window_s: float = 60.0,
                 json_schema_supported: bool = True, filter_path: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, keep_log: bool = True):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        self.latency_s = latency_s
        self.rpm = rpm
        self.fault_rates = dict(faults or {})
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.rate_window_s = rate_window_s
        self.json_schema_supported = json_schema_supported
        self.models_without_json_schema: set[str] = set()
        self.keep_log = keep_log
        self.log: list[Exchange] = []
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._scheduled: collections.deque[str] = collections.deque()
        self._marker_uses: collections.Counter = collections.Counter()
        self._window: collections.deque[float] = collections.deque()
        self._seen_prefixes: set[int] = set()
        self._stopping = threading.Event()
        self._default_shape = _filter_shape(filter_path or ROOT / "filters" / "uplifting" / "v1")
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        # the providers' batch endpoints (tests/fakes/batches.py), answering items like the sync routes
        self.batches = FakeBatches(lambda provider, model, body: answer_like_sync(self, provider, model, body))

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "FakeProviderServer":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server((self._host, self._port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-provider-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeProviderServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def env(self, api_key: str = FAKE_KEY) -> dict[str, str]:
        """Environment that points every provider SDK (via the registry) at this server."""
        return {
            "GEMINI_BASE_URL": self.url, "ANTHROPIC_BASE_URL": self.url, "OPENAI_BASE_URL": f"{self.url}/v1",
            "DEEPSEEK_BASE_URL": f"{self.url}/v1", "OLLAMA_BASE_URL": f"{self.url}/v1",
            "GEMINI_API_KEY": api_key, "ANTHROPIC_API_KEY": api_key, "OPENAI_API_KEY": api_key,
            "DEEPSEEK_API_KEY": api_key,
        }

    # ---- control -------------------------------------------------------------------------
    def inject(self, fault: str, count: int = 1) -> None:
        """The next `count` requests (any provider, any article) get `fault`."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._scheduled.extend([fault] * count)

    def reset(self, drain_s: float = 10.0) -> None:
        """Forget every request. A slow request a client gave up on may still be sleeping in a
        handler thread: wait for it first, so it is not counted in the next test."""
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self.log.clear()
            self.counts.clear()
            self._scheduled.clear()
            self._marker_uses.clear()
            self._window.clear()
            self._seen_prefixes.clear()

    @property
    def requests(self) -> int:
        return self.counts["requests"]

    def bill(self, spec) -> float:
        """What a provider would invoice for the answers this server sent (status 200), at `spec`'s
        sync prices: the figure a ledger must match (needs keep_log)."""
        with self._lock:
            answered = [ex for ex in self.log if ex.status == 200]
        return sum(spec.cost(ex.input_tokens, ex.output_tokens, ex.cached_tokens,
                             cache_write_tokens=ex.cache_write_tokens) for ex in answered)

    def answered(self) -> int:
        """Billed answers (status 200) so far."""
        with self._lock:
            return sum(1 for ex in self.log if ex.status == 200)

    # ---- decisions (called from handler threads) ------------------------------------------
    def _choose_fault(self, article: str) -> str | None:
        with self._lock:
            for name, limit in fault_markers(article):
                if name not in FAULTS:
                    continue
                key = (article_key(article), name)
                if limit is None or self._marker_uses[key] < limit:
                    self._marker_uses[key] += 1
                    return name
            if self._scheduled:
                return self._scheduled.popleft()
            for name, p in self.fault_rates.items():
                if self._rng.random() < p:
                    return name
        return None

    def _rate_limited(self) -> float | None:
        """Seconds until a request slot frees when the RPM limit is reached, else None (and the
        request is counted)."""
        if not self.rpm:
            return None
        now = time.monotonic()
        with self._lock:
            while self._window and now - self._window[0] >= self.rate_window_s:
                self._window.popleft()
            if len(self._window) >= self.rpm:
                return max(self.rate_window_s - (now - self._window[0]), 0.001)
            self._window.append(now)
        return None

    def _prefix_cached(self, prefix: tuple) -> bool:
        h = hash(prefix)
        with self._lock:
            seen = h in self._seen_prefixes
            self._seen_prefixes.add(h)
        return seen

    def _record(self, ex: Exchange) -> None:
        with self._lock:
            self.counts["requests"] += 1
            self.counts[f"status_{ex.status}"] += 1
            self.counts[f"provider_{ex.provider}"] += 1
            if ex.fault:
                self.counts[f"fault_{ex.fault}"] += 1
            if self.keep_log:
                self.log.append(ex)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def _filter_shape(path: Path | str) -> tuple[list[str], list[str]]:
    from gt.core.filters import load_filter
    f = load_filter(path)
    return f.dimension_names, list(f.content_types)


# ---- provider dialects ----------------------------------------------------------------------
# Each dialect reads its request shape and writes its response and error shapes. A new endpoint
# (e.g. batch jobs) is a new entry in _Handler.routes plus methods here.

def _tokens(text: str) -> int:
    return max(len(text) // 4, 1) if text else 0


def _texts(content: Any) -> str:
    """Text of a message content: a string or a list of parts/blocks with 'text'."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class OpenAIDialect:
    name = "openai"

    @staticmethod
    def parse(body: dict, path_model: str | None) -> ParsedRequest:
        messages = body.get("messages") or []
        system = "\n".join(_texts(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
        user = "\n".join(_texts(m.get("content")) for m in messages if m.get("role") == "user")
        rf = body.get("response_format") or {}
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
        return ParsedRequest("openai", str(body.get("model", "")), system, user, schema,
                             {"response_format": rf.get("type"), "all_text": system + "\n" + "\n".join(
                                 _texts(m.get("content")) for m in messages if m.get("role") not in ("system", "developer"))})

    @staticmethod
    def ok(req: ParsedRequest, text: str | None, usage: dict, fault: str | None) -> dict:
        refusal = "I'm sorry, I can't help with that request." if fault == "refusal" else None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": None if refusal else text, "refusal": refusal}}],
            "usage": {"prompt_tokens": usage["input"], "completion_tokens": usage["output"],
                      "total_tokens": usage["input"] + usage["output"],
                      "prompt_tokens_details": {"cached_tokens": usage["cached"]},
                      "completion_tokens_details": {"reasoning_tokens": 0}},
        }

    @staticmethod
    def error(status: int, kind: str, message: str, retry_after: float | None) -> tuple[dict, dict]:
        codes = {"rate_limit": ("requests", "rate_limit_exceeded"), "quota": ("insufficient_quota", "insufficient_quota"),
                 "auth": ("invalid_request_error", "invalid_api_key"), "schema": ("invalid_request_error", None)}
        etype, code = codes.get(kind, ("server_error" if status >= 500 else "invalid_request_error", None))
        body = {"error": {"message": message, "type": etype, "param": "response_format" if kind == "schema" else None,
                          "code": code}}
        headers = {"retry-after": f"{math.ceil(retry_after)}", "retry-after-ms": f"{int(retry_after * 1000)}"} \
            if retry_after is not None else {}
        return body, headers


class AnthropicDialect:
    name = "anthropic"

    @staticmethod
    def parse(body: dict, path_model: str | None) -> ParsedRequest:
        system_blocks = body.get("system") or ""
        system = _texts(system_blocks)
        cacheable = isinstance(system_blocks, list) and any(isinstance(b, dict) and b.get("cache_control")
                                                            for b in system_blocks)
        messages = body.get("messages") or []
        user = "\n".join(_texts(m.get("content")) for m in messages if m.get("role") == "user")
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        tool = next((t for t in tools if t.get("name") == choice.get("name")), tools[0] if tools else None)
        schema = tool.get("input_schema") if tool else None
        return ParsedRequest("anthropic", str(body.get("model", "")), system, user, schema,
                             {"tool": tool.get("name") if tool else None, "cacheable": cacheable,
                              "all_text": system + "\n" + "\n".join(_texts(m.get("content")) for m in messages)})

    @staticmethod
    def ok(req: ParsedRequest, text: str | None, usage: dict, fault: str | None) -> dict:
        if fault == "refusal":
            content, stop = [], "refusal"
        elif req.extra.get("tool") and fault not in ("malformed", "empty"):
            content, stop = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": req.extra["tool"],
                              "input": json.loads(text)}], "tool_use"
        else:
            content, stop = ([{"type": "text", "text": text}] if text else []), "end_turn"
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": req.model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": usage["input"] - usage["cached"] - usage["cache_write"],
                      "output_tokens": usage["output"], "cache_read_input_tokens": usage["cached"],
                      "cache_creation_input_tokens": usage["cache_write"]},
        }

    @staticmethod
    def error(status: int, kind: str, message: str, retry_after: float | None) -> tuple[dict, dict]:
        etype = {429: "rate_limit_error", 401: "authentication_error", 400: "invalid_request_error",
                 529: "overloaded_error", 404: "not_found_error"}.get(status, "api_error")
        headers = {"retry-after": f"{math.ceil(retry_after)}"} if retry_after is not None else {}
        return {"type": "error", "error": {"type": etype, "message": message}}, headers


class GeminiDialect:
    name = "gemini"

    @staticmethod
    def parse(body: dict, path_model: str | None) -> ParsedRequest:
        system = _texts(((body.get("systemInstruction") or body.get("system_instruction") or {}).get("parts")))
        contents = body.get("contents") or []
        user = "\n".join(_texts(c.get("parts")) for c in contents if c.get("role", "user") == "user")
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        return ParsedRequest("gemini", path_model or "", system, user, schema,
                             {"all_text": system + "\n" + "\n".join(_texts(c.get("parts")) for c in contents)})

    @staticmethod
    def ok(req: ParsedRequest, text: str | None, usage: dict, fault: str | None) -> dict:
        meta = {"promptTokenCount": usage["input"], "candidatesTokenCount": usage["output"],
                "totalTokenCount": usage["input"] + usage["output"]}
        if usage["cached"]:
            meta["cachedContentTokenCount"] = usage["cached"]
        if fault == "refusal":
            return {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": meta, "modelVersion": req.model}
        parts = [{"text": text}] if text else []
        return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": meta, "modelVersion": req.model, "responseId": uuid.uuid4().hex[:20]}

    @staticmethod
    def error(status: int, kind: str, message: str, retry_after: float | None) -> tuple[dict, dict]:
        grpc = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(status, "UNKNOWN")
        details: list[dict] = []
        if status == 429:
            quota_id = ("GenerateRequestsPerDayPerProjectPerModel-FreeTier" if kind == "quota"
                        else "GenerateRequestsPerMinutePerProjectPerModel")
            details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": quota_id, "quotaDimensions": {"location": "global"}, "quotaValue": "1000"}]})
            details.append({"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]})
            if retry_after is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{retry_after:.3f}s".replace(".000s", "s")})
        # the real API puts the retry hint in the body only, not in a Retry-After header
        return {"error": {"code": status, "message": message, "status": grpc, "details": details}}, {}


_MESSAGES = {
    "rate_limit": "Rate limit reached: too many requests per minute. Please retry after the indicated delay.",
    "quota": {"openai": "You exceeded your current quota, please check your plan and billing details.",
              "anthropic": "You have reached your specified API usage limits. You will regain access on "
                           "2026-12-01 at 00:00 UTC.",
              "gemini": "You exceeded your current quota: generate_content requests per day per project per model."},
    "server_error": "An internal error has occurred.",
    "unavailable": "The model is overloaded. Please try again later.",
    "auth": "Invalid API key. Check the key you sent.",
    "bad_request": "Invalid request: a parameter was not accepted.",
    "schema": "response_format type 'json_schema' is not supported by this model.",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the SDKs' connection pools expect
    fake: FakeProviderServer
    routes: list[tuple[str, re.Pattern, type]] = [
        ("POST", re.compile(r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):generateContent$"), GeminiDialect),
        ("POST", re.compile(r"^/v1/messages$"), AnthropicDialect),
        ("POST", re.compile(r"^/v1/chat/completions$"), OpenAIDialect),
    ]

    def log_message(self, format: str, *args: Any) -> None:
        pass   # the default writes request lines to stderr; the log of record is fake.log (no keys)

    def do_POST(self) -> None:
        if self._serve_batch():
            return
        path = self.path.split("?", 1)[0]
        for method, pattern, dialect in self.routes:
            m = pattern.match(path)
            if m and method == "POST":
                return self._serve(dialect, m.groupdict().get("model"), path)
        self._send(404, {"error": {"message": f"no route for POST {path}"}}, {})

    def do_GET(self) -> None:
        if self._serve_batch():
            return
        self._send(404, {"error": {"message": f"no route for GET {self.path.split('?', 1)[0]}"}}, {})

    def _serve_batch(self) -> bool:
        handler = self.fake.batches.match(self.command, self.path, self.headers, self.fake.url)
        if handler is None:
            return False
        length = int(self.headers.get("content-length") or 0)
        status, content_type, data = handler(self.rfile.read(length) if length else b"")
        self._send_raw(status, data, content_type, {})
        return True

    def _key_present(self, dialect) -> bool:
        if dialect is GeminiDialect:
            return bool(self.headers.get("x-goog-api-key") or "key=" in self.path)
        if dialect is AnthropicDialect:
            return bool(self.headers.get("x-api-key") or self.headers.get("authorization"))
        auth = self.headers.get("authorization") or ""
        return auth.startswith("Bearer ") and len(auth) > len("Bearer ")

    def _serve(self, dialect, path_model: str | None, path: str) -> None:
        fake = self.fake
        started = time.monotonic()
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            status, fault, article, usage = self._answer(dialect, path_model, raw)
            # recorded before in_flight drops, so reset() can wait for stragglers to be counted
            fake._record(Exchange(dialect.name, path_model or "", path, status, fault, article_key(article),
                                  started, time.monotonic() - started, usage.get("input", 0), usage.get("output", 0),
                                  usage.get("cached", 0), usage.get("cache_write", 0)))
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _answer(self, dialect, path_model, raw: bytes) -> tuple[int, str | None, str, dict]:
        fake = self.fake
        try:
            body = json.loads(raw or b"{}")
            req = dialect.parse(body, path_model)
        except (ValueError, AttributeError, TypeError) as e:
            err, headers = dialect.error(400, "bad_request", f"Invalid JSON payload: {type(e).__name__}", None)
            self._send(400, err, headers)
            return 400, None, "", {}
        article = article_block(req.user_text)
        if not self._key_present(dialect):
            err, headers = dialect.error(401, "auth", "No API key was sent with the request.", None)
            self._send(401, err, headers)
            return 401, None, article, {}
        wait = fake._rate_limited()
        if wait is not None:
            err, headers = dialect.error(429, "rate_limit", _MESSAGES["rate_limit"], wait)
            self._send(429, err, headers)
            return 429, "rpm", article, {}
        if (dialect is OpenAIDialect and req.extra.get("response_format") == "json_schema"
                and (not fake.json_schema_supported or req.model in fake.models_without_json_schema)):
            err, headers = dialect.error(400, "schema", _MESSAGES["schema"], None)
            self._send(400, err, headers)
            return 400, "json_schema_unsupported", article, {}

        fault = fake._choose_fault(article)
        if fault in ("rate_limit", "quota", "server_error", "unavailable", "auth", "bad_request"):
            status = {"rate_limit": 429, "quota": 429, "server_error": 500, "auth": 401, "bad_request": 400,
                      "unavailable": 529 if dialect is AnthropicDialect else 503}[fault]
            if fault == "quota" and dialect is AnthropicDialect:
                status = 400   # Anthropic reports spend limits as invalid_request_error
            message = _MESSAGES[fault]
            if isinstance(message, dict):
                message = message[dialect.name]
            retry = fake.retry_after_s if fault in ("rate_limit", "quota") else None
            if fault == "quota" and dialect is not GeminiDialect:
                retry = None
            err, headers = dialect.error(status, fault, message, retry)
            self._send(status, err, headers)
            return status, fault, article, {}
        if fault == "disconnect":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return 0, fault, article, {}
        fake._sleep(fake.slow_s if fault == "slow" else fake.latency_s)

        shape = schema_shape(req.schema) or fake._default_shape
        answer = model_variant(deterministic_answer(article, *shape), article, req.model)
        text = corrupt(answer, fault) if fault in ANSWER_FAULTS else json.dumps(answer)
        cacheable = req.system and (dialect is not AnthropicDialect or req.extra.get("cacheable"))
        cached = cache_write = 0
        if cacheable:
            if fake._prefix_cached((dialect.name, req.model, req.system)):
                cached = _tokens(req.system)
            elif dialect is AnthropicDialect:
                cache_write = _tokens(req.system)
        usage = {"input": _tokens(req.extra.get("all_text", req.user_text)), "output": _tokens(text),
                 "cached": cached, "cache_write": cache_write}
        if fault == "empty_body":
            self._send_raw(200, b"", "application/json", {})
            return 200, fault, article, usage
        self._send(200, dialect.ok(req, text, usage, fault), {})
        return 200, fault, article, usage

    def _send(self, status: int, body: dict, headers: dict[str, str]) -> None:
        self._send_raw(status, json.dumps(body).encode("utf-8"), "application/json", headers)

    def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True   # the client gave up (e.g. its timeout passed)
