"""Gemini batch mode through google-genai: `client.aio.batches.create(model, src=[inlined
requests], config={display_name})`, `batches.get`, `batches.list`; answers come back inline
(`dest.inlined_responses`, each a GenerateContentResponse or an error, with our metadata key).

REST (Gemini Developer API): POST /{version}/models/{model}:batchGenerateContent, GET
/{version}/batches/{id}, GET /{version}/batches. Limit: inlined requests must keep the whole create
request under 20 MB (larger jobs would go through the File API, not used here: jobs are split
instead). Job states JOB_STATE_PENDING / RUNNING / SUCCEEDED / FAILED / CANCELLED / EXPIRED (a job
pending or running for 48 h expires, without results).
"""
from __future__ import annotations

import json
from typing import Any

from gt.oracles.base import OracleRequest, TransientError
from gt.oracles.batch import SdkBatches, ItemResult, RemoteState, provider_error

INLINE_MAX_BYTES = 20_000_000 - 200_000   # the documented 20 MB, less room for the request envelope

_STATES = {
    "JOB_STATE_QUEUED": "submitted", "JOB_STATE_PENDING": "submitted", "JOB_STATE_RUNNING": "running",
    "JOB_STATE_UPDATING": "running", "JOB_STATE_PAUSED": "running", "JOB_STATE_CANCELLING": "running",
    "JOB_STATE_SUCCEEDED": "ended", "JOB_STATE_PARTIALLY_SUCCEEDED": "ended", "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_EXPIRED": "expired",
}


class GeminiBatches(SdkBatches):   # on a GeminiOracle: its client, request builder and parser
    provider = "gemini"
    # the documented turnaround, for --dry-run and the summary
    turnaround = "target 24 h, usually much sooner (Gemini batch mode)"
    max_requests = None
    max_bytes = INLINE_MAX_BYTES

    def item(self, custom_id: str, request: OracleRequest) -> dict:
        contents, config = self.oracle.request_parts(request)
        return {"contents": [c.model_dump(mode="json", exclude_none=True) for c in contents],
                "config": config.model_dump(mode="json", exclude_none=True),
                "metadata": {"key": custom_id}}

    async def submit(self, items: list[dict], tag: str) -> str:
        try:
            job = await self._client.aio.batches.create(model=self.spec.model, src=items,
                                                         config={"display_name": tag})
        except Exception as e:   # noqa: BLE001 - mapped to the oracle layer's errors
            raise self.oracle._map_error(e) from None
        return job.name

    async def find(self, tag: str, *, request_count: int, attempted_at: float, known: set[str]) -> str | None:
        try:
            pager = await self._client.aio.batches.list(config={"page_size": 100})
            async for job in pager:
                if job.display_name == tag and job.name not in known:
                    return job.name
        except Exception as e:   # noqa: BLE001
            raise self.oracle._map_error(e) from None
        return None

    async def _get(self, remote_id: str):
        try:
            return await self._client.aio.batches.get(name=remote_id)
        except Exception as e:   # noqa: BLE001
            raise provider_error(self.oracle, e, remote_id) from None

    async def poll(self, remote_id: str) -> RemoteState:
        job = await self._get(remote_id)
        name = str(getattr(job.state, "name", job.state))
        return RemoteState(_STATES.get(name, "running"), name)

    async def results(self, remote_id: str) -> list[ItemResult]:
        job = await self._get(remote_id)
        responses = (job.dest.inlined_responses if job.dest is not None else None) or []
        out = []
        for n, r in enumerate(responses):
            key = str((r.metadata or {}).get("key", n))
            if r.error is not None or r.response is None:
                out.append(ItemResult(key, failure="errored", message=_error_text(r.error)))
                continue
            try:
                out.append(ItemResult(key, completion=self.oracle._completion(r.response, 0.0)))
            except TransientError as e:   # a response without candidates
                out.append(ItemResult(key, failure="errored", message=str(e)))
        return out

    async def aclose(self) -> None:
        await self.oracle.aclose()


def _error_text(error: Any) -> str:
    if error is None:
        return "no response"
    if hasattr(error, "model_dump"):
        error = error.model_dump(exclude_none=True)
    if isinstance(error, dict):
        return f"{error.get('code', '')} {error.get('message', '')}".strip() or json.dumps(error)[:300]
    return str(error)[:300]
