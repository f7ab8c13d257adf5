"""The circuit breaker: stops a label run that can only waste money (most recent answers invalid or
failed), and says why in one message: the most frequent reasons, with a raw answer where one came."""
from __future__ import annotations

import collections
import re

from gt.labelling.ledger import clip

# numbers standing alone ("429", "12.5", "-3") vary from answer to answer; digits inside a name
# (gpt-4o-mini, gemini-2.5-flash, claude-haiku-4-5) do not and stay as they are
_NUMBERS = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?![\w.])")


class Breaker:
    """Stops a run that can only waste money: over the last `window` answers (billed responses and
    failed calls alike; rate-limit waits do not count), more than half bad (invalid or failed)."""

    def __init__(self, window: int = 20):
        self.window = window
        self.recent: collections.deque[bool] = collections.deque(maxlen=window)
        self.reasons: collections.Counter = collections.Counter()
        self.examples: dict[str, str] = {}
        self.tripped = False

    def record(self, good: bool, reason: str | None = None, raw: str | None = None) -> bool:
        """Count one answer; True when the breaker trips now."""
        if self.window <= 0:
            return False
        self.recent.append(good)
        if not good:
            kind = _NUMBERS.sub("N", (reason or "unknown").split(" (first answer:")[0])[:160]
            self.reasons[kind] += 1
            if kind not in self.examples and raw is not None:
                self.examples[kind] = raw
        bad = sum(1 for g in self.recent if not g)
        if not self.tripped and bad > self.window // 2:
            self.tripped = True
            return True
        return False

    def message(self) -> str:
        bad = sum(1 for g in self.recent if not g)
        parts = []
        for kind, n in self.reasons.most_common(3):
            ex = self.examples.get(kind)
            example = f"; e.g. raw answer {clip(ex, 160)!r}" if ex is not None else ""
            parts.append(f"{n}x {kind}{example}")
        return (f"circuit breaker: {bad} of the last {len(self.recent)} answers were invalid or failed, so the run "
                f"stopped before spending more. Most frequent: " + " | ".join(parts))
