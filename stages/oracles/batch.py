"""Provider batch services, as the label stage's batch engine (stages/label_batch.py) sees them:
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

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from stages.oracles.base import Completion, FatalError, OracleRequest, OracleSpec

# what a provider says about a job, normalised (adapters map their own states onto these)
REMOTE_WAITING = ("submitted", "running")
REMOTE_ENDED = ("ended", "failed", "expired", "cancelled")

# provider -> (module, class) of the batch adapters, imported lazily (SDKs load only when used)
_ADAPTERS = {
    "gemini": ("stages.oracles.batch_gemini", "GeminiBatches"),
    "anthropic": ("stages.oracles.batch_anthropic", "AnthropicBatches"),
    "openai": ("stages.oracles.batch_openai", "OpenAIBatches"),
}
# documented turnaround of each batch service (for --dry-run and the summary)
TURNAROUND = {
    "gemini": "target 24 h, usually much sooner (Gemini batch mode)",
    "anthropic": "most batches within 1 h, at most 24 h (Anthropic Message Batches)",
    "openai": "within the 24 h completion window, often sooner (OpenAI Batch API)",
}
MAX_TURNAROUND_H = 24.0


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
    """What batch mode needs from a provider; one small module per provider implements it."""
    provider: str
    max_requests: int | None       # per job
    max_bytes: int                 # per job, of the serialised items

    def item(self, custom_id: str, request: OracleRequest) -> dict: ...
    async def submit(self, items: list[dict], tag: str) -> str: ...
    async def find(self, tag: str, *, request_count: int, attempted_at: float, known: set[str]) -> str | None: ...
    async def poll(self, remote_id: str) -> RemoteState: ...
    async def results(self, remote_id: str) -> list[ItemResult]: ...
    async def aclose(self) -> None: ...


def check_batch_support(spec: OracleSpec) -> None:
    if spec.provider not in _ADAPTERS:
        raise BatchUnavailable(f"oracle '{spec.name}' ({spec.provider}) runs locally and has no batch mode")
    if spec.batch_input_per_m is None or spec.batch_output_per_m is None:
        raise BatchUnavailable(
            f"oracle '{spec.name}' has no batch prices in oracles.yaml (its provider sells no batch mode, e.g. "
            f"DeepSeek or a local server)")


def make_adapter(spec: OracleSpec, oracle: Any = None) -> BatchAdapter:
    """The batch adapter for `spec`, built on the provider's sync oracle (its client, its request
    builder and its response parser), so batch requests are the sync requests."""
    check_batch_support(spec)
    if oracle is None:
        from stages.oracles.registry import make_oracle
        oracle = make_oracle(spec)   # raises MissingKey before any work
    module, cls = _ADAPTERS[spec.provider]
    return getattr(importlib.import_module(module), cls)(spec, oracle)


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


BATCH_PROVIDERS = tuple(_ADAPTERS)   # providers with a batch service
