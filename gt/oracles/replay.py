"""The `replay/<oracle>` oracle: answers from the labels another oracle already has in gt.db
(imported human labels, last year's 20k run), priced as oracles.yaml's `replay/<model>` entry says
(or `label --replay-price IN,OUT`).

It makes a labelling strategy testable offline on real labels (`label --pick gaps
--llm replay/human-mean` buys, at a stated price, exactly the labels the humans gave) and answers
"what would aiming have saved on our last run?". It goes through the whole label stage (plan,
leases, ledger, picks, breaker), so everything recorded is what a paid run would have recorded.

The provider never touches gt.db: the label stage reads the source oracle's labels
(`gt.labelling.planning.replay_answers`) and hands them over as {(article_id, repeat): answer}. An article the
source never labelled is answered with `NotAnswerable` and stored as an `error` label ("not in the
replayed set"); nothing is billed for it. Token counts are the source label's own where it has
them (a real LLM run), else estimated the way `--dry-run` does (characters / 4).
"""
from __future__ import annotations

import dataclasses
import math

from gt.core.errors import NONNEGATIVE
from gt.oracles.base import Completion, FatalError, NotAnswerable, OracleRequest, OracleSpec, ProviderInfo

CHARS_PER_TOKEN = 4.0


class ReplayOracle:
    def __init__(self, spec: OracleSpec, answers: dict[tuple[str, int], dict] | None = None):
        if answers is None:
            raise FatalError(f"oracle '{spec.name}' answers from the labels {spec.model} has in gt.db: run it through "
                             f"the label stage (make label LLM={spec.name})")
        self.spec = spec
        self.answers = answers

    async def complete(self, request: OracleRequest) -> Completion:
        article_id, _, repeat = request.request_id.rpartition("#")
        answer = self.answers.get((article_id, int(repeat or 0)))
        if answer is None:
            raise NotAnswerable(f"not in the replayed set: {self.spec.model} has no valid label of this article "
                                f"(repeat {repeat or 0})")
        text = answer["text"]
        return Completion(
            text=text,
            input_tokens=answer.get("input_tokens") or math.ceil(len(request.prompt) / CHARS_PER_TOKEN),
            output_tokens=answer.get("output_tokens") or math.ceil(len(text) / CHARS_PER_TOKEN),
            latency_ms=0.0, finish_reason="replay")

    async def aclose(self) -> None:
        return None


# offline, but no stand-in: its answers are real labels another oracle (or people) gave
PROVIDER = ProviderInfo(name="replay", oracle_class=ReplayOracle, offline=True)


def replay_priced(spec: OracleSpec, text: str) -> OracleSpec:
    """`--replay-price IN,OUT` (USD per 1M input and output tokens) applied to a replay oracle."""
    if spec.provider != "replay":
        raise ValueError(f"--replay-price is for replay/<oracle> oracles; {spec.name} is priced in oracles.yaml")
    try:
        pin, pout = (float(x) for x in text.split(","))
        if not (NONNEGATIVE.admits(pin) and NONNEGATIVE.admits(pout)):   # NaN or infinity: unstorable cost
            raise ValueError
    except ValueError:
        raise ValueError(f"--replay-price '{text}': pass USD per 1M input and output tokens, e.g. 0.30,2.50") from None
    return dataclasses.replace(spec, input_per_m=pin, output_per_m=pout)
