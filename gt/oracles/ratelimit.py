"""Client-side rate limiting shared by every request of a run: token buckets on requests per minute
and tokens per minute (from the oracle's spec), and a pause that holds everyone back when the
provider says "retry after N seconds" (one 429 means the whole client is too fast, not one task).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


class TokenBucket:
    """A bucket refilled at `rate` units per second up to `capacity`. A request larger than the
    capacity waits for a full bucket and then drives the level negative (debt), so big requests
    are delayed, never refused. `settle` corrects an estimate once the real size is known."""

    def __init__(self, rate: float, capacity: float, clock=time.monotonic):
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self.level = float(capacity)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._last) * self.rate)
        self._last = now

    def wait_time(self, n: float) -> float:
        """Seconds until `n` units may be taken (0: now)."""
        self._refill()
        need = min(n, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, n: float) -> None:
        self._refill()
        self.level -= n

    def settle(self, delta: float) -> None:
        """Charge (positive) or refund (negative) the difference between actual and estimate."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


@dataclass
class LimiterStats:
    waited_s: float = 0.0
    pauses: int = 0


class RateLimiter:
    """Requests pass `acquire(estimated_tokens)` in FIFO order; nothing passes while paused.

    `headroom` keeps the client just under the published limits: the provider counts in its own
    windows, and running exactly at the limit turns clock skew into 429s."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *, headroom: float = 0.98,
                 burst_s: float = 1.0, clock=time.monotonic):
        self._clock = clock
        self.requests = None
        self.tokens = None
        if rpm:
            rate = rpm * headroom / 60.0
            self.requests = TokenBucket(rate, max(1.0, rate * burst_s), clock)
        if tpm:
            rate = tpm * headroom / 60.0
            self.tokens = TokenBucket(rate, max(1.0, rate * burst_s), clock)
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.stats = LimiterStats()

    @property
    def limited(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds` from now (a Retry-After / retryDelay)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self.stats.pauses += 1

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self, tokens: float = 0.0) -> None:
        async with self._lock:  # FIFO: asyncio.Lock wakes waiters in arrival order
            while True:
                wait = self.paused_for()
                if self.requests is not None:
                    wait = max(wait, self.requests.wait_time(1))
                if self.tokens is not None and tokens:
                    wait = max(wait, self.tokens.wait_time(tokens))
                if wait <= 0:
                    break
                self.stats.waited_s += wait
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None and tokens:
                self.tokens.take(tokens)

    def settle(self, estimated_tokens: float, actual_tokens: float) -> None:
        """Correct the token bucket with the usage the provider reported."""
        if self.tokens is not None and actual_tokens:
            self.tokens.settle(actual_tokens - estimated_tokens)

    def seconds_for(self, requests: int, tokens: float) -> float:
        """Time `requests` requests totalling `tokens` tokens take at these limits (for --dry-run)."""
        t = 0.0
        if self.requests is not None:
            t = max(t, requests / self.requests.rate)
        if self.tokens is not None:
            t = max(t, tokens / self.tokens.rate)
        return t
