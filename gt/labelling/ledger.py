"""The ledger: one answer judged, priced and stored.

`outcome_from_completion` turns one provider completion into a `LabelOutcome` (valid = fits the
schema we sent; a refusal or an answer that does not fit is 'invalid', with its raw text) priced from
the usage the provider reported. `store_outcome` stores it in one transaction: the label, its cost,
tokens and billed calls added to the run's ledger (`label_runs`), and the unit's lease released. A
paid answer that lost a race to another process is still added to the ledger (as `unstored`): the
ledger is what the provider bills, never less. Every message stored or printed is one clipped
line with API key values masked (`clip`, `scrub_secrets`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sqlite3
from dataclasses import dataclass

from gt.core import store
from gt.core.filters import AnswerError, Filter
from gt.labelling.leases import LabelKey, release_unit
from gt.oracles import registry
from gt.oracles.base import Completion, OracleSpec


# ---- what calls used and cost ---------------------------------------------------------------------

@dataclass(kw_only=True)
class Usage:
    """The tokens and dollars of billed calls: one answer's (LabelOutcome), a sync run's
    (LabelRunSummary) or a batch run's (BatchSummary). The one record of these counters."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    def add_usage(self, other: "Usage") -> None:
        """Add another record's tokens and cost to this one."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd


def usage_sum(*records: Usage) -> dict:
    """The counters of several records added up, as keyword arguments of a Usage."""
    return {f.name: sum(getattr(r, f.name) for r in records) for f in dataclasses.fields(Usage)}


# ---- one label -----------------------------------------------------------------------------------

@dataclass
class LabelOutcome(Usage):
    """Everything stored for one label. `calls` is how many billed responses it took (a corrective
    retry makes two); their cost, tokens and count go to the run's ledger with the label."""
    status: str
    scores: dict | None = None
    content_type: str | None = None
    evidence: dict | None = None
    raw_response: str | None = None
    error: str | None = None
    latency_ms: float = 0.0
    attempts: int = 0
    calls: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)



# ---- one answer ----------------------------------------------------------------------------------

def judge_answer(filt: Filter, raw: str | None) -> tuple[LabelOutcome | None, str | None]:
    """(an 'ok' outcome, None) for a valid answer, else (None, what is wrong)."""
    try:
        scores, content_type, evidence = filt.parse_answer(raw)
    except AnswerError as e:
        return None, str(e)
    return LabelOutcome("ok", scores=scores, content_type=content_type, evidence=evidence, raw_response=raw), None


def completion_cost(spec: OracleSpec, completion: Completion, *, batch: bool = False) -> float:
    return spec.cost(completion.input_tokens or 0, completion.output_tokens or 0, completion.cached_tokens or 0,
                     batch=batch, cache_write_tokens=completion.cache_write_tokens or 0)


def outcome_from_completion(filt: Filter, spec: OracleSpec, completion: Completion, *,
                            batch: bool = False, corrective: bool = False,
                            first_problem: str | None = None) -> tuple[LabelOutcome, str | None]:
    """Turn one completion into an outcome with its cost. Returns (outcome, problem): problem is
    set when the answer is invalid (outcome.status 'invalid') and a corrective retry may help."""
    usage = dict(input_tokens=completion.input_tokens or 0, output_tokens=completion.output_tokens or 0,
                 cached_tokens=completion.cached_tokens or 0)
    common = dict(cost_usd=completion_cost(spec, completion, batch=batch), latency_ms=completion.latency_ms or 0.0,
                  attempts=1, calls=1, **usage)
    if completion.refusal:
        return LabelOutcome("invalid", raw_response=completion.refusal,
                            error=f"refused: {completion.refusal}"[:500], **common), None
    ok, problem = judge_answer(filt, completion.text)
    if ok is not None:
        return dataclasses.replace(ok, **common), None
    if corrective:
        reason = f"invalid after one corrective retry: {problem} (first answer: {first_problem})"
    else:
        reason = f"invalid answer: {problem}"
    # an empty answer is stored as '' (the model said nothing), never as a missing value
    return LabelOutcome("invalid", raw_response=completion.text or "", error=reason, **common), problem


def merge_outcomes(first: LabelOutcome, second: LabelOutcome) -> LabelOutcome:
    """The outcome of a corrective retry, with the cost, tokens and calls of both."""
    return dataclasses.replace(second, **usage_sum(first, second), latency_ms=first.latency_ms + second.latency_ms,
                               attempts=first.attempts + second.attempts, calls=first.calls + second.calls)


def off_grid(scores: dict | None, step: float = 0.5) -> bool:
    """True when a score is not a multiple of `step` (valid, stored as given, counted in summaries)."""
    return bool(scores) and any(abs(v / step - round(v / step)) > 1e-9 for v in scores.values())


# ---- storing: label, ledger and lease in one transaction -----------------------------------------

def store_outcome(conn: sqlite3.Connection, *, run_id: int, filt: Filter, oracle: str, article_id: str,
                  repeat: int, outcome: LabelOutcome, owner: str | None = None,
                  key: LabelKey | None = None) -> int | None:
    """One transaction: the label (replacing an earlier 'error' label of the unit), the cost, tokens
    and billed calls of the answer added to the run's ledger, and the unit's lease released.
    Returns the label id, or None when the unit already had a label (another process answered it
    first: the answer is paid, so it still goes into the ledger, counted as unstored)."""
    key = key or LabelKey.of(filt, oracle)
    with store.transaction(conn):
        store.replace_failed_label(conn, article_id, filt, oracle, repeat, prompt_sha256=key.prompt_sha256)
        label_id = store.insert_label(
            conn, run_id=run_id, article_id=article_id, filt=filt, oracle=oracle, status=outcome.status,
            repeat=repeat, scores=outcome.scores if outcome.status == "ok" else None,
            content_type=outcome.content_type, evidence=outcome.evidence, raw_response=outcome.raw_response,
            error=outcome.error, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens,
            cached_tokens=outcome.cached_tokens, cost_usd=outcome.cost_usd, latency_ms=outcome.latency_ms,
            attempts=max(outcome.attempts, 1), prompt_sha256=key.prompt_sha256)
        store.add_to_ledger(conn, run_id, cost_usd=outcome.cost_usd, input_tokens=outcome.input_tokens,
                            output_tokens=outcome.output_tokens, cached_tokens=outcome.cached_tokens,
                            calls=outcome.calls, unstored=1 if label_id is None and outcome.calls else 0)
        release_unit(conn, key, article_id, repeat, owner)
    return label_id


def record_completion(conn: sqlite3.Connection, *, run_id: int, filt: Filter, spec: OracleSpec,
                      article_id: str, repeat: int, completion: Completion, batch: bool = True,
                      owner: str | None = None) -> LabelOutcome:
    """Validate one returned answer (a provider batch item) and store it, priced at batch rates.
    Batch results get no corrective retry: an invalid answer is stored 'invalid' with its raw text."""
    outcome, _ = outcome_from_completion(filt, spec, completion, batch=batch)
    store_outcome(conn, run_id=run_id, filt=filt, oracle=spec.name, article_id=article_id, repeat=repeat,
                  outcome=outcome, owner=owner)
    return outcome


# ---- spend ---------------------------------------------------------------------------------------

def recorded_spend(conn: sqlite3.Connection, filter_id: str, oracle: str) -> float:
    """All spend gt.db records for a filter and an oracle (every run, every prompt version)."""
    row = conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM label_runs WHERE filter_id = ? AND oracle = ?",
                       (filter_id, oracle)).fetchone()
    return float(row[0])


class Budget:
    """--max-cost and --max-total-cost: spent (reported usage x prices) plus a worst-case reserve
    for every call in flight must stay within each limit before a call may start. `recorded` is
    what gt.db already records for the filter and oracle (it counts toward the total limit)."""

    def __init__(self, limit: float | None, total_limit: float | None = None, recorded: float = 0.0):
        self.limit, self.total_limit, self.recorded = limit, total_limit, recorded
        self.spent = 0.0
        self.reserved = 0.0

    def refusal(self, amount: float) -> str | None:
        """None when `amount` more may be reserved, else which limit stops it ('budget'/'total_budget')."""
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-12:
            return "budget"
        if self.total_limit is not None and self.recorded + self.spent + self.reserved + amount > self.total_limit + 1e-12:
            return "total_budget"
        return None

    def try_reserve(self, amount: float) -> bool:
        if self.refusal(amount) is not None:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual

    def stop_message(self, which: str, reserve: float, filter_id: str, oracle: str) -> str:
        """Why a run stopped when the limit `which` refused the next call's worst case `reserve`."""
        if which == "budget":
            return (f"stopped before exceeding --max-cost ${self.limit:g}, this command's own limit (spent "
                    f"${self.spent:.4f} in this run; the next label could cost up to ${reserve:.4f}); the same "
                    f"command with --max-cost spends up to that much again (--max-total-cost caps all recorded spend)")
        return (f"stopped before the spend gt.db records for {filter_id} with {oracle} passes --max-total-cost "
                f"${self.total_limit:g} (recorded ${self.recorded + self.spent:.4f}; the next label could cost up "
                f"to ${reserve:.4f})")


# ---- messages --------------------------------------------------------------------------------------

def clip(text: str, n: int = 500) -> str:
    """One line of at most n characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def scrub_secrets(text: str | None, spec: OracleSpec | None = None) -> str | None:
    """Remove any API key value from a message before it is stored or printed (SDK errors can
    echo request details): the values of every variable that may hold a key (the registry's
    key_variables: each provider's declared ones and every oracles.yaml entry's), and `spec`'s own."""
    if not text:
        return text
    names = _known_key_variables() | (registry.key_variables([spec]) if spec is not None else frozenset())
    for name in names:
        value = os.environ.get(name, "").strip()
        if len(value) >= 6 and value in text:
            text = text.replace(value, "***")
    return text


@functools.lru_cache(maxsize=1)
def _known_key_variables() -> frozenset[str]:
    """Read once per process: it loads oracles.yaml, and a run scrubs many messages."""
    return registry.key_variables()
