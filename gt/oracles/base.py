"""The contract between the label stage and every oracle (remote provider or offline model).

An oracle turns one `OracleRequest` into one `Completion` (the raw answer text plus reported token
usage) or raises one of the errors below; the label stage owns concurrency, rate limits, retries,
validation and storage. Keeping providers this thin means adding one is one small module, which
says what it is in one `ProviderInfo` (its module-level `PROVIDER`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Protocol


class Option(NamedTuple):
    """One `options.<name>` an oracles.yaml entry may set: its kind (int, float, str, bool, or a
    tuple of the allowed values) and what it does, in a few words."""
    kind: type | tuple
    help: str


@dataclass(frozen=True)
class ProviderInfo:
    """What one provider module declares about itself, as its module-level `PROVIDER`. The registry
    builds every provider table from these declarations: the names oracles.yaml accepts, the class
    to build, the variables holding keys (masked in every stored error) and base URLs, the offline
    and stand-in sets, the batch adapters and the options each entry may set.

    The module must not import its SDK at import time (import it inside the methods that use it),
    so that reading the declarations loads no SDK. The registry builds remote oracles as
    `oracle_class(spec, api_key=..., base_url=...)` and offline ones as `oracle_class(spec)`; a
    provider module never reads the environment nor imports the registry."""
    name: str                                 # the `provider:` value of oracles.yaml entries
    oracle_class: type                        # implements the Oracle protocol below
    key_envs: tuple[str, ...] = ()            # the variables its keys usually live in
    key_required: bool = False                # an entry may not turn the key off (api_key_env: null)
    base_url_env: str | None = None           # redirects the entries without a base_url of their own
    offline: bool = False                     # needs no network and no key
    stand_in: bool = False                    # an offline stand-in, no substitute for a real LLM
    batch_adapter: type | None = None         # its batch service (a batch.BatchAdapter), None: none
    quota_hint: str = "the provider's quota or billing balance must be raised or reset"
    options: Mapping[str, Option] = field(default_factory=dict)   # its own options.<name>


@dataclass(frozen=True)
class OracleSpec:
    """One entry of oracles.yaml: the name users type and everything needed to call and price it."""
    name: str
    provider: str                 # a ProviderInfo.name: gemini | anthropic | openai | local-embed | ...
    model: str
    input_per_m: float = 0.0      # USD per 1M input tokens, synchronous
    output_per_m: float = 0.0
    batch_input_per_m: float | None = None   # None: the provider sells no batch mode for it
    batch_output_per_m: float | None = None
    cache_read_per_m: float | None = None    # cached input tokens (prompt caching)
    cache_write_per_m: float | None = None
    rpm: float | None = None      # requests per minute (None: unlimited)
    tpm: float | None = None      # tokens per minute
    base_url: str | None = None
    api_key_env: str | None = None
    max_output_tokens: int = 2048
    timeout_s: float = 120.0
    options: dict = field(default_factory=dict)

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, batch: bool = False,
             cache_write_tokens: int = 0) -> float:
        """USD for one call from reported usage. `input_tokens` includes cached ones."""
        pin = self.batch_input_per_m if batch and self.batch_input_per_m is not None else self.input_per_m
        pout = self.batch_output_per_m if batch and self.batch_output_per_m is not None else self.output_per_m
        pcache = self.cache_read_per_m if self.cache_read_per_m is not None else pin
        if batch and self.batch_input_per_m is not None and self.cache_read_per_m is not None:
            pcache = self.cache_read_per_m * (self.batch_input_per_m / self.input_per_m if self.input_per_m else 1.0)
        pwrite = self.cache_write_per_m if self.cache_write_per_m is not None else pin
        if batch and self.batch_input_per_m is not None and self.cache_write_per_m is not None and self.input_per_m:
            # batch discounts apply to cache writes too (Anthropic: 50% off all usage in a batch)
            pwrite = self.cache_write_per_m * (self.batch_input_per_m / self.input_per_m)
        uncached = max(input_tokens - cached_tokens - cache_write_tokens, 0)
        return (uncached * pin + cached_tokens * pcache + cache_write_tokens * pwrite + output_tokens * pout) / 1e6


@dataclass(frozen=True)
class OracleRequest:
    """One article to score. `rubric` is the static part of the prompt (cacheable), `article` the
    part holding the delimited article; `schema` the JSON schema of a valid answer. `followups`
    holds (assistant_answer, user_correction) turns for the one corrective retry."""
    rubric: str
    article: str
    schema: dict
    followups: tuple[tuple[str, str], ...] = ()
    # offline oracles work on the article itself and the filter's scale anchors
    title: str = ""
    text: str = ""
    filter: Any = None
    request_id: str = ""          # stable id: '<article_id>#<repeat>'

    @property
    def prompt(self) -> str:
        return self.rubric + self.article


@dataclass
class Completion:
    text: str | None              # the raw answer (JSON text); None with a refusal
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float = 0.0
    refusal: str | None = None    # set when the model declined; stored as an invalid label
    finish_reason: str | None = None


class OracleError(Exception):
    """Base of errors an oracle raises. `retryable` says whether the label stage may try again."""
    retryable = False


class RateLimited(OracleError):
    """429 / RESOURCE_EXHAUSTED that will clear: wait `retry_after` seconds (from Retry-After or
    Gemini's RetryInfo.retryDelay) or back off."""
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExhausted(OracleError):
    """A per-day (or billing) quota is spent: stop the run cleanly; `resume_hint` says when/how."""

    def __init__(self, message: str, resume_hint: str = ""):
        super().__init__(message)
        self.resume_hint = resume_hint


class TransientError(OracleError):
    """5xx, timeouts, dropped connections: retried with exponential backoff and jitter."""
    retryable = True


class FatalError(OracleError):
    """Auth failures, bad requests, unknown models: fail fast, retrying would only cost money."""


class NotAnswerable(OracleError):
    """This one request has no answer and never will (a replayed oracle never labelled the
    article): stored as an `error` label, the run goes on, nothing is billed."""


class Oracle(Protocol):
    spec: OracleSpec

    async def complete(self, request: OracleRequest) -> Completion:
        ...

    async def aclose(self) -> None:
        ...


# ---- helpers shared by the provider modules (added with the providers) -------------------------

def parse_retry_after(value: Any) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date) or a protobuf Duration
    string such as Gemini's RetryInfo.retryDelay ("13s", "0.5s"); None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(float(value), 0.0)
    text = str(value).strip()
    if not text:
        return None
    try:
        return max(float(text[:-1] if text.endswith("s") else text), 0.0)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def daily_quota_hint(info: ProviderInfo, detail: str = "") -> str:
    """The resume hint a QuotaExhausted carries: when the quota resets (the provider's own
    quota_hint) and how to resume."""
    extra = f" ({detail})" if detail else ""
    return f"{info.quota_hint}{extra}; re-run the same command to resume where it stopped"


@dataclass(frozen=True)
class Failure:
    """What went wrong with one request, as a provider module reads it off its SDK's exception."""
    kind: str                          # timeout | connection | status | unreadable
    message: str = ""                  # the provider's own words, secrets scrubbed
    status: int = 0                    # the HTTP status, with kind 'status'
    quota: bool = False                # the provider says a daily or billing quota is spent
    quota_detail: str = ""             # what the resume hint quotes of it
    retry_after: float | None = None   # seconds the provider asks to wait (Retry-After, RetryInfo)


def classify_failure(where: str, f: Failure, timeout_s: float, info: ProviderInfo) -> OracleError:
    """The one ladder from a failed request to what the engines do with it, for every provider: a
    spent quota stops the run (QuotaExhausted, with when to resume); 429 waits (RateLimited); a
    timeout, a dropped connection, 408, 409, 5xx and an unreadable 200 are retried (TransientError);
    any other status is final (FatalError: retrying would only cost money)."""
    if f.kind == "timeout":
        return TransientError(f"{where}: timed out after {timeout_s:g} s")
    if f.kind == "connection":
        return TransientError(f"{where}: connection failed: {f.message}")
    if f.kind != "status":
        return TransientError(f"{where}: unreadable response: {f.message}")
    if f.quota:
        return QuotaExhausted(f"{where}: quota exhausted ({f.status}): {f.message}",
                              resume_hint=daily_quota_hint(info, f.quota_detail))
    if f.status == 429:
        return RateLimited(f"{where}: rate limited (429): {f.message}", retry_after=f.retry_after)
    if f.status >= 500 or f.status in (408, 409):
        return TransientError(f"{where}: server error {f.status}: {f.message}")
    return FatalError(f"{where}: request rejected ({f.status}): {f.message}")


def sdk_error_message(e: Exception) -> str:
    """The provider's own words from an SDK error (its JSON body's error.message when there is one)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return str(getattr(e, "message", None) or e) or type(e).__name__


def scrub_secret(text: str, secret: str | None, limit: int = 500) -> str:
    """Provider error text made safe to store and print: the key masked, the length bounded."""
    if secret:
        text = text.replace(secret, "***")
    return text[:limit]
