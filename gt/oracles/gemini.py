"""Gemini through `google-genai` (not the deprecated google-generativeai).

The rubric is the system instruction and the article the user turn: the static prefix comes first
so Gemini's implicit caching bills it at the cached rate. Answers are constrained natively with
response_mime_type application/json + response_json_schema. Thinking tokens are billed as output,
so they are counted as output here; spec.options.thinking_budget caps them (0 turns thinking off
on Flash).

spec.options: see PROVIDER at the end. google-genai is imported inside the methods that use it, so
reading the declaration loads no SDK.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gt.oracles.base import Failure, classify_failure
from gt.oracles.base import (Completion, Option, OracleRequest, OracleSpec, ProviderInfo,
                                 TransientError, parse_retry_after,
                                 scrub_secret)
from gt.oracles.batch_gemini import GeminiBatches

if TYPE_CHECKING:   # google-genai loads where it is used: declaring the provider must not load it
    from google.genai import errors as genai_errors
    from google.genai import types

_BLOCKED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}


class GeminiOracle:
    def __init__(self, spec: OracleSpec, *, api_key: str | None = None, base_url: str | None = None):
        from google import genai
        from google.genai import types

        self.spec = spec
        self._api_key = api_key
        self.base_url = base_url
        http_options = types.HttpOptions(
            base_url=self.base_url,
            timeout=int(spec.timeout_s * 1000),                 # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),   # the label stage owns retrying
        )
        self._client = genai.Client(api_key=self._api_key, http_options=http_options)
        config: dict[str, Any] = {"response_mime_type": "application/json",
                                  "max_output_tokens": spec.max_output_tokens}
        if "thinking_budget" in spec.options:
            config["thinking_config"] = types.ThinkingConfig(thinking_budget=int(spec.options["thinking_budget"]))
        if "temperature" in spec.options:
            config["temperature"] = float(spec.options["temperature"])
        self._base_config = config

    def request_parts(self, request: OracleRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
        """(contents, config) of one generate_content call (also a batch mode inlined request)."""
        from google.genai import types

        contents = [types.Content(role="user", parts=[types.Part(text=request.article)])]
        for answer, correction in request.followups:
            contents += [types.Content(role="model", parts=[types.Part(text=answer)]),
                         types.Content(role="user", parts=[types.Part(text=correction)])]
        config = types.GenerateContentConfig(system_instruction=request.rubric,
                                             response_json_schema=request.schema, **self._base_config)
        return contents, config

    async def complete(self, request: OracleRequest) -> Completion:
        contents, config = self.request_parts(request)
        started = time.perf_counter()
        try:
            response = await self._client.aio.models.generate_content(
                model=self.spec.model, contents=contents, config=config)
        except Exception as e:   # noqa: BLE001 - every SDK/transport failure becomes one of ours
            raise self._map_error(e) from None
        return self._completion(response, (time.perf_counter() - started) * 1000)

    def _completion(self, response: types.GenerateContentResponse, latency_ms: float) -> Completion:
        usage = response.usage_metadata
        input_tokens = (usage.prompt_token_count or 0) if usage else 0
        output_tokens = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        cached = (usage.cached_content_token_count or 0) if usage else 0
        feedback = response.prompt_feedback
        candidate = response.candidates[0] if response.candidates else None
        finish = _enum_name(candidate.finish_reason) if candidate else None
        refusal = None
        if feedback is not None and feedback.block_reason:
            refusal = f"prompt blocked: {_enum_name(feedback.block_reason)}"
            if feedback.block_reason_message:
                refusal += f" ({feedback.block_reason_message})"
        elif candidate is None:   # neither an answer nor a block reason: a broken response
            raise TransientError(f"{self.spec.name} ({self.spec.model}): response without candidates")
        elif finish in _BLOCKED:
            refusal = f"answer blocked: {finish}"
        text = None
        if refusal is None and candidate.content and candidate.content.parts:
            text = "".join(p.text for p in candidate.content.parts if p.text and not p.thought)
        return Completion(text=text, input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached,
                          latency_ms=latency_ms, refusal=refusal, finish_reason=finish)

    def _map_error(self, e: Exception) -> Exception:
        import httpx2
        from google.genai import errors as genai_errors

        if isinstance(e, httpx2.TimeoutException):
            failure = Failure("timeout")
        elif isinstance(e, httpx2.TransportError):
            failure = Failure("connection", type(e).__name__)
        elif isinstance(e, genai_errors.APIError):
            status = int(e.code or 0)
            message = f"{e.status}: " * bool(e.status) + self._scrub(str(e.message or ""))
            details = _details(e)
            quota_ids = [v.get("quotaId", "") for d in details if d.get("@type", "").endswith("QuotaFailure")
                         for v in d.get("violations", []) if isinstance(v, dict)]
            per_day = [q for q in quota_ids if "PerDay" in q]
            delay = next((parse_retry_after(d.get("retryDelay")) for d in details
                          if d.get("@type", "").endswith("RetryInfo")), None)
            failure = Failure("status", message, status, quota=status == 429 and bool(per_day),
                              quota_detail=", ".join(per_day),
                              retry_after=delay if delay is not None else parse_retry_after(_header(e, "retry-after")))
        else:   # a 200 the SDK could not read (empty or truncated body)
            failure = Failure("unreadable", f"{type(e).__name__}: {self._scrub(str(e))}")
        return classify_failure(f"{self.spec.name} ({self.spec.model})", failure, self.spec.timeout_s, PROVIDER)

    def _scrub(self, text: str) -> str:
        return scrub_secret(text, self._api_key)

    async def aclose(self) -> None:
        await self._client.aio.aclose()


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "name", value))


def _details(e: genai_errors.APIError) -> list[dict]:
    body = e.details if isinstance(e.details, dict) else {}
    inner = body.get("error", body)
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _header(e: genai_errors.APIError, name: str) -> str | None:
    headers = getattr(getattr(e, "response", None), "headers", None)
    return headers.get(name) if headers is not None else None


PROVIDER = ProviderInfo(
    name="gemini",
    oracle_class=GeminiOracle,
    key_envs=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    key_required=True,
    base_url_env="GEMINI_BASE_URL",
    batch_adapter=GeminiBatches,
    quota_hint="Gemini per-day quotas reset at midnight Pacific time",
    options={
        "thinking_budget": Option(int, "thinking tokens allowed per answer (0 turns thinking off on Flash)"),
        "temperature": Option(float, "sampling temperature, sent only when set"),
    },
)
