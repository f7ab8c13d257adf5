"""Provider batch services, as the label stage's batch engine (gt/labelling/batch.py) sees them:
one small adapter module per provider (batch_gemini, batch_anthropic, batch_openai) implements
`BatchAdapter` on top of the provider's sync oracle (its client, its request builder and its
response parser), so batch requests are the sync requests. This package knows providers and
prices, never gt.db: the engine records jobs, plans units and stores answers.

Prompt caching: the rubric is the prompt's static prefix (Filter.prompt_parts) and the article
comes last; Anthropic requests mark the rubric `cache_control: ephemeral`; Gemini and OpenAI cache
prefixes implicitly. Cached token counts come back per item and are priced at the cache-read price
(OracleSpec.cost with batch=True).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gt.oracles.base import Completion, FatalError, Option, OracleRequest, OracleSpec

# what a provider says about a job, normalised (adapters map their own states onto these)
REMOTE_WAITING = ("submitted", "running")
REMOTE_ENDED = ("ended", "failed", "expired", "cancelled")
MAX_TURNAROUND_H = 24.0

# the options.<name> read here, besides each provider's own (registry.known_options): the prompt
# cache's minimum for every remote provider, the job limits for every provider with a batch service
CACHE_OPTIONS = {"cache_min_tokens": Option(int, "the model's smallest cacheable prompt prefix, in tokens")}
BATCH_OPTIONS = {
    "batch_max_requests": Option(int, "at most this many requests per batch job (below the provider's limit)"),
    "batch_max_bytes": Option(int, "at most this many bytes of requests per batch job (below the provider's limit)"),
}


def __getattr__(name: str) -> Any:
    """BATCH_PROVIDERS (providers with a batch service) and TURNAROUND (provider -> its documented
    turnaround) come from the providers' declarations, read on first use: the registry imports the
    provider modules, whose batch adapters import this module."""
    if name not in ("BATCH_PROVIDERS", "TURNAROUND"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from gt.oracles.registry import BATCH_ADAPTERS
    if name == "BATCH_PROVIDERS":
        return tuple(BATCH_ADAPTERS)
    return {provider: adapter.turnaround for provider, adapter in BATCH_ADAPTERS.items()}


class BatchUnavailable(Exception):
    """The oracle cannot run in batch mode (no batch prices, or a provider without a batch API)."""


class JobNotFound(FatalError):
    """The provider no longer knows a recorded job (deleted, or its results purged: Anthropic keeps
    them 29 days). Its items are stored as 'error' labels and sent again."""


def provider_error(oracle: Any, e: Exception, remote_id: str) -> Exception:
    """An SDK error while reading a job, as the oracle layer's error (404: JobNotFound)."""
    status = getattr(e, "status_code", None) or getattr(e, "code", None)
    if status == 404:
        return JobNotFound(f"{oracle.spec.name}: batch {remote_id} is not known to the provider (404)")
    return oracle._map_error(e)


@dataclass
class ItemResult:
    """One item of an ended job: a completion, or why there is none."""
    custom_id: str
    completion: Completion | None = None
    failure: str | None = None     # 'errored' | 'expired' | 'canceled' | 'missing'
    message: str = ""


@dataclass
class RemoteState:
    state: str                     # one of REMOTE_WAITING + REMOTE_ENDED
    detail: str = ""               # the provider's own words: its state name and counts


class BatchAdapter(Protocol):
    """What batch mode needs from a provider; one small module per provider implements it, and the
    provider's declaration (ProviderInfo.batch_adapter) names it."""
    provider: str
    turnaround: str                # the documented turnaround, in words
    max_requests: int | None       # per job
    max_bytes: int                 # per job, of the serialised items

    def item(self, custom_id: str, request: OracleRequest) -> dict: ...
    async def submit(self, items: list[dict], tag: str) -> str: ...
    async def find(self, tag: str, *, request_count: int, attempted_at: float, known: set[str]) -> str | None: ...
    async def poll(self, remote_id: str) -> RemoteState: ...
    async def results(self, remote_id: str) -> list[ItemResult]: ...
    async def aclose(self) -> None: ...


class SdkBatches:
    """What the three SDK adapters share: each is built on its provider's sync oracle (the spec, the
    oracle's SDK client, its request builder and response parser), so batch requests are the sync
    requests."""

    def __init__(self, spec: OracleSpec, oracle: Any):
        self.spec, self.oracle = spec, oracle
        self._client = oracle._client


def check_batch_support(spec: OracleSpec) -> None:
    from gt.oracles.registry import BATCH_ADAPTERS
    if spec.provider not in BATCH_ADAPTERS:
        raise BatchUnavailable(f"oracle '{spec.name}' ({spec.provider}) runs locally and has no batch mode")
    if spec.batch_input_per_m is None or spec.batch_output_per_m is None:
        raise BatchUnavailable(
            f"oracle '{spec.name}' has no batch prices in oracles.yaml (its provider sells no batch mode, e.g. "
            f"DeepSeek or a local server)")


def make_adapter(spec: OracleSpec, oracle: Any = None) -> BatchAdapter:
    """The batch adapter for `spec`, built on the provider's sync oracle (its client, its request
    builder and its response parser), so batch requests are the sync requests."""
    from gt.oracles.registry import BATCH_ADAPTERS, make_oracle
    check_batch_support(spec)
    if oracle is None:
        oracle = make_oracle(spec)   # raises MissingKey before any work
    return BATCH_ADAPTERS[spec.provider](spec, oracle)


def limits(spec: OracleSpec, adapter: BatchAdapter) -> tuple[int | None, int]:
    """(requests, bytes) per job: the provider's limits, lowered by options.batch_max_requests /
    options.batch_max_bytes in oracles.yaml (smaller jobs finish and retry sooner)."""
    max_requests = adapter.max_requests
    if spec.options.get("batch_max_requests"):
        wanted = int(spec.options["batch_max_requests"])
        max_requests = min(max_requests, wanted) if max_requests else wanted
    max_bytes = min(adapter.max_bytes, int(spec.options.get("batch_max_bytes") or adapter.max_bytes))
    return max_requests, max_bytes


def cache_min_tokens(spec: OracleSpec) -> int | None:
    """The provider's smallest cacheable prefix for this model (options.cache_min_tokens in
    oracles.yaml); None when unknown."""
    value = spec.options.get("cache_min_tokens")
    return int(value) if value else None


def cached_share(spec: OracleSpec, prefix_tokens: int, requests: int) -> int:
    """Tokens read from the prompt cache over `requests` calls with a `prefix_tokens` static prefix:
    every call but the first, when the prefix reaches the provider's minimum (best case: the cache
    stays warm, which steady batch processing favours but no provider guarantees)."""
    minimum = cache_min_tokens(spec)
    if spec.cache_read_per_m is None or requests <= 1 or (minimum is not None and prefix_tokens < minimum):
        return 0
    return prefix_tokens * (requests - 1)
