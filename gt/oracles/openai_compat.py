"""Any OpenAI-compatible chat-completions server: OpenAI, DeepSeek, Ollama, vLLM, llama.cpp.

The rubric goes in the system message and the article in the user message, so servers with
automatic prefix caching (OpenAI, DeepSeek) bill the rubric at the cached rate after the first
call. Answers are constrained with `response_format` json_schema (strict); a server that answers
that it lacks json_schema is asked again with json_object, and the oracle remembers that.

spec.options: see PROVIDER at the end. The SDK is imported inside the methods that use it, so
reading the declaration loads no SDK.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from gt.oracles.base import Failure, classify_failure
from gt.oracles.base import (Completion, FatalError, Option, OracleRequest, OracleSpec, ProviderInfo,
                                 TransientError, parse_retry_after,
                                 sdk_error_message, scrub_secret)
from gt.oracles.batch_openai import OpenAIBatches

if TYPE_CHECKING:   # the SDK loads where it is used: declaring the provider must not load it
    import httpx2
    import openai
    from openai.types.chat import ChatCompletion

SCHEMA_NAME = "filter_answer"
# a local server needs no key, but the SDK insists on one; a placeholder also stops the SDK from
# falling back to OPENAI_API_KEY and sending the user's real key to some other server
NO_KEY = "no-key-needed"
# what chat.completions.create passes with its POST: the API key as a bearer token
_POST_OPTIONS = {"security": {"bearer_auth": True}}


class OpenAICompatOracle:
    def __init__(self, spec: OracleSpec, *, api_key: str | None = None, base_url: str | None = None):
        import openai

        self.spec = spec
        self._api_key = api_key or NO_KEY
        self.base_url = base_url
        self.response_format = spec.options.get("response_format", "json_schema")
        if self.response_format not in ("json_schema", "json_object"):
            raise FatalError(f"oracle '{spec.name}': options.response_format must be json_schema or json_object")
        self._client = openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url,
                                          max_retries=0, timeout=spec.timeout_s)

    async def complete(self, request: OracleRequest) -> Completion:
        import openai

        started = time.perf_counter()
        try:
            response = await self._create(request)
        except openai.BadRequestError as e:
            if self.response_format != "json_schema" or not _json_schema_unsupported(e):
                raise self._map_error(e) from None
            self.response_format = "json_object"   # remembered for every later request
            try:
                response = await self._create(request)
            except Exception as e2:   # noqa: BLE001
                raise self._map_error(e2) from None
        except Exception as e:   # noqa: BLE001 - every SDK/transport failure becomes one of ours
            raise self._map_error(e) from None
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            body = json.loads(response.content)
        except ValueError as e:   # a 200 whose body is not JSON (empty, truncated)
            raise self._map_error(e) from None
        return self._completion(body, latency_ms)

    async def _create(self, request: OracleRequest) -> httpx2.Response:
        # the same POST that chat.completions.create sends (tests check the body is identical),
        # minus its per-call walk of every parameter, the JSON schema included, against the SDK's
        # TypedDicts, and minus building a ChatCompletion model tree from the answer: those two
        # were the largest CPU costs of a label. HTTP errors still raise the SDK's exceptions.
        import httpx2

        return await self._client.post("/chat/completions", cast_to=httpx2.Response,
                                       body=self.request_params(request), options=_POST_OPTIONS)

    def request_params(self, request: OracleRequest) -> dict[str, Any]:
        """The chat.completions parameters for one request (also a Batch API line's `body`)."""
        messages: list[dict[str, str]] = [{"role": "system", "content": request.rubric},
                                          {"role": "user", "content": request.article}]
        for answer, correction in request.followups:
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": correction}]
        if self.response_format == "json_schema":
            response_format: dict[str, Any] = {"type": "json_schema", "json_schema": {
                "name": SCHEMA_NAME, "schema": request.schema, "strict": True}}
        else:
            response_format = {"type": "json_object"}
        kwargs: dict[str, Any] = {self.spec.options.get("max_tokens_param", "max_tokens"): self.spec.max_output_tokens}
        if "temperature" in self.spec.options:
            kwargs["temperature"] = self.spec.options["temperature"]
        return dict(model=self.spec.model, messages=messages, response_format=response_format, **kwargs)

    def _completion(self, response: dict | ChatCompletion, latency_ms: float) -> Completion:
        """One Completion from a chat completion: its JSON body (a dict), or the SDK's
        ChatCompletion (Batch API results)."""
        body = response if isinstance(response, dict) else response.model_dump()
        if not isinstance(body, dict):
            raise TransientError(f"{self.spec.name}: unreadable response: the body is not a chat completion")
        choices = body.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise TransientError(f"{self.spec.name}: the server answered with no choices")
        choice = choices[0]
        message = _mapping(choice.get("message"))
        usage = _mapping(body.get("usage"))
        cached = _mapping(usage.get("prompt_tokens_details")).get("cached_tokens") or 0
        cached = cached or usage.get("prompt_cache_hit_tokens") or 0   # DeepSeek's field
        refusal = message.get("refusal")
        finish_reason = choice.get("finish_reason")
        if not refusal and finish_reason == "content_filter":
            refusal = "the server's content filter stopped the answer"
        return Completion(
            text=None if refusal else message.get("content"),
            input_tokens=usage.get("prompt_tokens") or 0,
            output_tokens=usage.get("completion_tokens") or 0,
            cached_tokens=int(cached),
            latency_ms=latency_ms,
            refusal=refusal,
            finish_reason=finish_reason,
        )

    def _map_error(self, e: Exception) -> Exception:
        import openai

        message = self._scrub(sdk_error_message(e))
        if isinstance(e, openai.APITimeoutError):
            failure = Failure("timeout")
        elif isinstance(e, openai.APIConnectionError):
            failure = Failure("connection", message)
        elif isinstance(e, openai.APIStatusError):
            status, code = e.status_code, str(getattr(e, "code", "") or "")
            quota = status == 402 or code == "insufficient_quota" or (status == 429 and _is_daily(message.lower()))
            failure = Failure("status", message, status, quota=quota, quota_detail=message[:200],
                              retry_after=_retry_after(e.response))
        else:   # a 200 whose body is not a chat completion (empty, truncated, not JSON)
            failure = Failure("unreadable", message)
        return classify_failure(f"{self.spec.name} ({self.spec.model})", failure, self.spec.timeout_s, PROVIDER)

    def _scrub(self, text: str) -> str:
        return scrub_secret(text, self._api_key if self._api_key != NO_KEY else None)

    async def aclose(self) -> None:
        await self._client.close()


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _json_schema_unsupported(e: openai.BadRequestError) -> bool:
    text = f"{getattr(e, 'param', '')} {sdk_error_message(e)}".lower()
    return "json_schema" in text or "response_format" in text


def _is_daily(lowered: str) -> bool:
    return any(s in lowered for s in ("per day", "daily", "insufficient_quota", "exceeded your current quota",
                                      "billing"))


def _retry_after(response) -> float | None:
    headers = getattr(response, "headers", None) or {}
    ms = parse_retry_after(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    return parse_retry_after(headers.get("retry-after"))


PROVIDER = ProviderInfo(
    name="openai",
    oracle_class=OpenAICompatOracle,
    key_envs=("OPENAI_API_KEY",),
    key_required=False,          # a local server (ollama/<model>) needs none
    base_url_env="OPENAI_BASE_URL",
    batch_adapter=OpenAIBatches,
    options={
        "response_format": Option(("json_schema", "json_object"),
                                  "how answers are constrained (default json_schema; json_object for servers "
                                  "without json_schema, e.g. DeepSeek)"),
        "temperature": Option(float, "sampling temperature, sent only when set"),
        "max_tokens_param": Option(str, "the parameter name the output limit is sent as (default max_tokens; "
                                        "newer OpenAI models want max_completion_tokens)"),
    },
)
