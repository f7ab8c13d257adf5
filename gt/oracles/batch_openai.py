"""OpenAI Batch API through the openai SDK: upload a JSONL file (`files.create(purpose="batch")`),
`batches.create(input_file_id, endpoint="/v1/chat/completions", completion_window="24h",
metadata={"gt_tag": ...})`, `batches.retrieve`, `batches.list`, and the results from
`files.content(output_file_id)` (answers) and `files.content(error_file_id)` (failed and expired
requests).

REST: POST /v1/files (multipart), POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches,
GET /v1/files/{id}/content. Limits: 50,000 requests and 200 MB per input file. Statuses:
validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled. Only
servers that implement the Batch API (OpenAI itself) can run it: an OpenAI-compatible server
without batch prices in oracles.yaml is refused before anything is sent.
"""
from __future__ import annotations

import io
import json

from gt.oracles.base import OracleRequest, TransientError
from gt.oracles.batch import SdkBatches, ItemResult, RemoteState, provider_error

MAX_REQUESTS = 50_000
MAX_BYTES = 200_000_000
ENDPOINT = "/v1/chat/completions"

_STATES = {"validating": "submitted", "in_progress": "running", "finalizing": "running", "cancelling": "running",
           "completed": "ended", "failed": "failed", "expired": "expired", "cancelled": "cancelled"}


class OpenAIBatches(SdkBatches):   # on an OpenAICompatOracle: client, request_params, parser
    provider = "openai"
    # the documented turnaround, for --dry-run and the summary
    turnaround = "within the 24 h completion window, often sooner (OpenAI Batch API)"
    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES

    def item(self, custom_id: str, request: OracleRequest) -> dict:
        return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": self.oracle.request_params(request)}

    async def submit(self, items: list[dict], tag: str) -> str:
        data = "".join(json.dumps(i, ensure_ascii=False, separators=(",", ":")) + "\n" for i in items).encode("utf-8")
        try:
            uploaded = await self._client.files.create(file=(f"{tag}.jsonl", io.BytesIO(data)), purpose="batch")
            batch = await self._client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT,
                                                      completion_window="24h", metadata={"gt_tag": tag})
        except Exception as e:   # noqa: BLE001 - mapped to the oracle layer's errors
            raise self.oracle._map_error(e) from None
        return batch.id

    async def find(self, tag: str, *, request_count: int, attempted_at: float, known: set[str]) -> str | None:
        try:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get("gt_tag") == tag and batch.id not in known:
                    return batch.id
                if batch.created_at < attempted_at - 3600:
                    break   # newest first
        except Exception as e:   # noqa: BLE001
            raise self.oracle._map_error(e) from None
        return None

    async def _retrieve(self, remote_id: str):
        try:
            return await self._client.batches.retrieve(remote_id)
        except Exception as e:   # noqa: BLE001
            raise provider_error(self.oracle, e, remote_id) from None

    async def poll(self, remote_id: str) -> RemoteState:
        batch = await self._retrieve(remote_id)
        c = batch.request_counts
        detail = batch.status + (f": {c.completed} completed, {c.failed} failed of {c.total}" if c else "")
        if batch.status == "failed" and batch.errors and batch.errors.data:
            detail += "; " + "; ".join(f"{e.code}: {e.message}" for e in batch.errors.data[:3])
        return RemoteState(_STATES.get(batch.status, "running"), detail)

    async def results(self, remote_id: str) -> list[ItemResult]:
        from openai.types.chat import ChatCompletion
        batch = await self._retrieve(remote_id)
        out = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                text = (await self._client.files.content(file_id)).text
            except Exception as e:   # noqa: BLE001
                raise provider_error(self.oracle, e, remote_id) from None
            for line in text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                cid = row.get("custom_id", "")
                response, error = row.get("response") or {}, row.get("error")
                if error:
                    expired = error.get("code") == "batch_expired"
                    out.append(ItemResult(cid, failure="expired" if expired else "errored",
                                          message=f"{error.get('code')}: {error.get('message')}"))
                elif response.get("status_code") == 200:
                    try:
                        completion = self.oracle._completion(ChatCompletion.model_validate(response["body"]), 0.0)
                    except (TransientError, ValueError) as e:
                        out.append(ItemResult(cid, failure="errored", message=str(e)[:300]))
                        continue
                    out.append(ItemResult(cid, completion=completion))
                else:
                    body = response.get("body") or {}
                    message = (body.get("error") or {}).get("message", "") if isinstance(body, dict) else str(body)
                    out.append(ItemResult(cid, failure="errored", message=f"HTTP {response.get('status_code')}: {message}"))
        return out

    async def aclose(self) -> None:
        await self.oracle.aclose()
