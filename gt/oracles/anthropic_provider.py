"""Claude through `anthropic` (module named so it does not shadow the SDK package).

Structured answers by forced tool use: one tool, `record_scores`, whose input_schema is the
filter's answer schema, and tool_choice forcing it; the answer text is the tool input as JSON. The
rubric is a system block marked `cache_control: ephemeral`, so after the first call it is billed at
the cache-read rate; the article is the user message.

spec.options: see PROVIDER at the end. The SDK is imported inside the methods that use it, so
reading the declaration loads no SDK.
"""
from __future__ import annotations

import json
import time
from typing import Any

from gt.oracles.base import Failure, classify_failure
from gt.oracles.base import (Completion, Option, OracleRequest, OracleSpec, ProviderInfo,
                                 parse_retry_after,
                                 sdk_error_message, scrub_secret)
from gt.oracles.batch_anthropic import AnthropicBatches

TOOL_NAME = "record_scores"
TOOL_DESCRIPTION = "Record the scores, content type and evidence for the article, exactly as the rubric asks."
_QUOTA_PHRASES = ("usage limit", "credit balance", "spend limit", "billing")


class AnthropicOracle:
    def __init__(self, spec: OracleSpec, *, api_key: str | None = None, base_url: str | None = None):
        import anthropic

        self.spec = spec
        self._api_key = api_key
        self.base_url = base_url
        self.tool_name = spec.options.get("tool_name", TOOL_NAME)
        self._client = anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self.base_url,
                                                max_retries=0, timeout=spec.timeout_s)

    def request_params(self, request: OracleRequest) -> dict[str, Any]:
        """The Messages API parameters for one request (also a Message Batches item's `params`)."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.article}]
        for answer, correction in request.followups:
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": correction}]
        params: dict[str, Any] = dict(
            model=self.spec.model,
            max_tokens=self.spec.max_output_tokens,
            system=[{"type": "text", "text": request.rubric, "cache_control": {"type": "ephemeral"}}],
            messages=messages,
            tools=[{"name": self.tool_name, "description": TOOL_DESCRIPTION, "input_schema": request.schema}],
            tool_choice={"type": "tool", "name": self.tool_name},
        )
        if "temperature" in self.spec.options:
            params["temperature"] = float(self.spec.options["temperature"])
        return params

    async def complete(self, request: OracleRequest) -> Completion:
        started = time.perf_counter()
        try:
            message = await self._client.messages.create(**self.request_params(request))
        except Exception as e:   # noqa: BLE001 - every SDK/transport failure becomes one of ours
            raise self._map_error(e) from None
        return self._completion(message, (time.perf_counter() - started) * 1000)

    def _completion(self, message, latency_ms: float) -> Completion:
        usage = message.usage
        cache_read = (getattr(usage, "cache_read_input_tokens", None) or 0) if usage else 0
        cache_write = (getattr(usage, "cache_creation_input_tokens", None) or 0) if usage else 0
        uncached = (usage.input_tokens or 0) if usage else 0
        text = None
        refusal = None
        if message.stop_reason == "refusal":
            refusal = "the model declined to answer (stop_reason refusal)"
        else:
            tool = next((b for b in message.content if b.type == "tool_use" and b.name == self.tool_name), None)
            if tool is not None:
                text = json.dumps(tool.input)
            else:   # no tool call: pass on whatever text came back, validation will judge it
                text = "".join(getattr(b, "text", "") for b in message.content if b.type == "text") or None
        return Completion(
            text=text,
            input_tokens=uncached + cache_read + cache_write,   # Anthropic reports these three apart
            output_tokens=(usage.output_tokens or 0) if usage else 0,
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
            latency_ms=latency_ms,
            refusal=refusal,
            finish_reason=message.stop_reason,
        )

    def _map_error(self, e: Exception) -> Exception:
        import anthropic

        if isinstance(e, anthropic.APITimeoutError):
            failure = Failure("timeout")
        elif isinstance(e, anthropic.APIConnectionError):
            failure = Failure("connection", type(e).__name__)
        elif isinstance(e, anthropic.APIStatusError):
            message = self._scrub(sdk_error_message(e))
            quota = e.status_code in (400, 402, 403) and any(p in message.lower() for p in _QUOTA_PHRASES)
            failure = Failure("status", message, e.status_code, quota=quota, quota_detail=message[:200],
                              retry_after=parse_retry_after(e.response.headers.get("retry-after")))
        else:
            failure = Failure("unreadable", f"{type(e).__name__}: {self._scrub(str(e))}")
        return classify_failure(f"{self.spec.name} ({self.spec.model})", failure, self.spec.timeout_s, PROVIDER)

    def _scrub(self, text: str) -> str:
        return scrub_secret(text, self._api_key)

    async def aclose(self) -> None:
        await self._client.close()


PROVIDER = ProviderInfo(
    name="anthropic",
    oracle_class=AnthropicOracle,
    key_envs=("ANTHROPIC_API_KEY",),
    key_required=True,
    base_url_env="ANTHROPIC_BASE_URL",
    batch_adapter=AnthropicBatches,
    quota_hint="the Anthropic spend limit or credit balance must be raised in the console",
    options={
        "temperature": Option(float, "sampling temperature, sent only when set"),
        "tool_name": Option(str, f"name of the forced tool the answer comes through (default {TOOL_NAME})"),
    },
)
