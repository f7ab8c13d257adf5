"""Anthropic Message Batches through the anthropic SDK: `messages.batches.create(requests=[{custom_id,
params}])`, `retrieve`, `results` (a JSONL stream: succeeded / errored / canceled / expired per
item), `list`.

REST: POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET {results_url}
(/v1/messages/batches/{id}/results), GET /v1/messages/batches. Limits: 100,000 requests or 256 MB
per batch; a batch ends within 24 h (unfinished items expire); results stay available for 29 days.
custom_id must match ^[a-zA-Z0-9_-]{1,64}$. `params` are the sync call's parameters, so the rubric
keeps its `cache_control: ephemeral` block and cache reads are billed at the cached rate.
Batches carry no name or metadata: see `find`.
"""
from __future__ import annotations

from datetime import timezone

from gt.oracles.base import OracleRequest
from gt.oracles.batch import SdkBatches, ItemResult, RemoteState, provider_error

MAX_REQUESTS = 100_000
MAX_BYTES = 256_000_000
ADOPT_WINDOW_S = 60.0   # a batch created this long after our attempt may be the one we sent


class AnthropicBatches(SdkBatches):   # on an AnthropicOracle: client, request_params, parser
    provider = "anthropic"
    # the documented turnaround, for --dry-run and the summary
    turnaround = "most batches within 1 h, at most 24 h (Anthropic Message Batches)"
    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES

    def item(self, custom_id: str, request: OracleRequest) -> dict:
        return {"custom_id": custom_id, "params": self.oracle.request_params(request)}

    async def submit(self, items: list[dict], tag: str) -> str:
        try:
            batch = await self._client.messages.batches.create(requests=items)
        except Exception as e:   # noqa: BLE001 - mapped to the oracle layer's errors
            raise self.oracle._map_error(e) from None
        return batch.id

    async def find(self, tag: str, *, request_count: int, attempted_at: float, known: set[str]) -> str | None:
        """No name or metadata to match: the one batch created within ADOPT_WINDOW_S after our
        attempt, holding as many requests, that no other job recorded; None if there is not exactly
        one (the job is then resent, at worst paying twice, never losing a label)."""
        candidates = []
        try:
            async for batch in self._client.messages.batches.list(limit=100):
                created = batch.created_at.replace(tzinfo=batch.created_at.tzinfo or timezone.utc).timestamp()
                if created < attempted_at - 5.0:
                    break   # newest first: older ones cannot be ours
                counts = batch.request_counts
                total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
                if batch.id not in known and total == request_count and created <= attempted_at + ADOPT_WINDOW_S:
                    candidates.append(batch.id)
        except Exception as e:   # noqa: BLE001
            raise self.oracle._map_error(e) from None
        return candidates[0] if len(candidates) == 1 else None

    async def poll(self, remote_id: str) -> RemoteState:
        try:
            batch = await self._client.messages.batches.retrieve(remote_id)
        except Exception as e:   # noqa: BLE001
            raise provider_error(self.oracle, e, remote_id) from None
        c = batch.request_counts
        detail = (f"{batch.processing_status}: {c.succeeded} succeeded, {c.errored} errored, {c.expired} expired, "
                  f"{c.canceled} canceled, {c.processing} processing")
        if batch.processing_status == "ended":
            return RemoteState("ended", detail)
        return RemoteState("running" if c.succeeded or c.errored else "submitted", detail)

    async def results(self, remote_id: str) -> list[ItemResult]:
        out = []
        try:
            async for line in await self._client.messages.batches.results(remote_id):
                result = line.result
                if result.type == "succeeded":
                    out.append(ItemResult(line.custom_id, completion=self.oracle._completion(result.message, 0.0)))
                elif result.type == "errored":
                    err = getattr(result.error, "error", None)
                    out.append(ItemResult(line.custom_id, failure="errored",
                                          message=f"{getattr(err, 'type', '')}: {getattr(err, 'message', '')}"))
                else:   # expired | canceled
                    out.append(ItemResult(line.custom_id, failure=result.type, message=f"the item was {result.type}"))
        except Exception as e:   # noqa: BLE001
            raise provider_error(self.oracle, e, remote_id) from None
        return out

    async def aclose(self) -> None:
        await self.oracle.aclose()
