"""One answer from an oracle: the rate limiter, bounded retries with backoff, and a timeout.

Transient failures (5xx, timeouts, dropped connections) back off exponentially with jitter; a rate
limit pauses the shared limiter for everyone for what the provider asks (or a backoff) and has its
own, larger bound. The sync label engine (gt/labelling/sync.py) makes every provider call here.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from gt.oracles.base import Completion, Oracle, OracleRequest, QuotaExhausted, RateLimited, TransientError
from gt.oracles.ratelimit import RateLimiter
from gt.labelling.planning import estimate_input_tokens


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: transient failures (5xx, timeouts) back off exponentially with jitter;
    rate limits wait what the provider asks (or back off) and have their own, larger bound."""
    attempts: int = 5
    rate_limit_attempts: int = 12
    initial_s: float = 1.0
    max_s: float = 60.0
    jitter_s: float = 1.0
    max_wait_s: float = 600.0     # no answer at all for this long (a 429 storm, a provider down): stop the run


class Abort(Exception):
    """The run is stopping: a call not yet answered is not sent again."""


class Starved(QuotaExhausted):
    """No call of the run has been answered for RetryPolicy.max_wait_s: the run stops cleanly (as for a
    spent quota: nothing is lost, the same command resumes) and says why, instead of waiting on."""


class Caller:
    """The provider calls of one run: every worker task calls `call`, and all share one rate
    limiter. `stopping()` is asked before every attempt (a stopping run sends nothing more: Abort);
    `count_answer(good, reason)` hears of every attempt that failed (the circuit breaker counts
    them); `calls` counts every attempt sent. `output_tokens` is a typical answer's length, for the
    token-rate limiter's estimate."""

    def __init__(self, oracle: Oracle, limiter: RateLimiter, retry: RetryPolicy, timeout_s: float, *,
                 output_tokens: int, stopping: Callable[[], bool],
                 count_answer: Callable[[bool, str | None], None]):
        self.oracle, self.limiter, self.retry, self.timeout_s = oracle, limiter, retry, timeout_s
        self.output_tokens = output_tokens
        self.stopping, self.count_answer = stopping, count_answer
        self.calls = 0
        self.last_answer = time.monotonic()   # the run's start, then its latest answered call

    def backoff(self, attempt: int) -> float:
        r = self.retry
        return min(r.max_s, r.initial_s * 2 ** (attempt - 1)) + random.uniform(0, r.jitter_s)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return 0.0  # the limiter is paused for everyone; acquire() waits it out
        return self.backoff(state.attempt_number)

    async def call(self, request: OracleRequest) -> tuple[Completion, int]:
        """One answer, with rate limiting and bounded retries. Returns (completion, calls made).
        Raises Abort when the run stops between attempts, the last TransientError or RateLimited
        when the retries are spent, and any other error of the oracle at once."""
        counts = {"transient": 0, "rate": 0, "calls": 0}

        def stop(state: RetryCallState) -> bool:
            if isinstance(state.outcome.exception(), RateLimited):
                counts["rate"] += 1
                return counts["rate"] >= self.retry.rate_limit_attempts
            counts["transient"] += 1
            return counts["transient"] >= self.retry.attempts

        estimate = estimate_input_tokens(request) + self.output_tokens
        retrying = AsyncRetrying(retry=retry_if_exception_type((TransientError, RateLimited)), stop=stop,
                                 wait=self._wait, reraise=True)
        async for attempt in retrying:
            with attempt:
                if self.stopping():
                    raise Abort()
                await self.limiter.acquire(estimate)
                if self.stopping():
                    raise Abort()
                counts["calls"] += 1
                self.calls += 1
                completion = await self._attempt(request, counts["rate"])
                self.limiter.settle(estimate, (completion.input_tokens or 0) + (completion.output_tokens or 0))
                return completion, counts["calls"]
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _starving(self, e: Exception) -> None:
        waited = time.monotonic() - self.last_answer
        if waited >= self.retry.max_wait_s:
            raise Starved(f"no call was answered for {waited:.0f} s (--max-wait {self.retry.max_wait_s:g}): the "
                          f"provider keeps refusing ({e})",
                          resume_hint="re-run the same command when the provider answers again") from None

    async def _attempt(self, request: OracleRequest, rate_limited: int) -> Completion:
        t0 = time.perf_counter()
        try:
            # the SDK enforces the timeout; this is the safety net if a client ignores it
            completion = await asyncio.wait_for(self.oracle.complete(request), self.timeout_s + 5.0)
        except asyncio.TimeoutError:
            self.count_answer(False, f"transient error: no answer within {self.timeout_s:g}s")
            raise TransientError(f"no answer within {self.timeout_s:g}s") from None
        except RateLimited as e:
            self._starving(e)
            self.limiter.pause(e.retry_after if e.retry_after is not None else self.backoff(rate_limited + 1))
            raise
        except TransientError as e:
            self.count_answer(False, f"transient error: {e}")
            self._starving(e)
            raise
        self.last_answer = time.monotonic()
        if not completion.latency_ms:
            completion.latency_ms = (time.perf_counter() - t0) * 1000.0
        return completion
