"""The label stage's dry run: what a run would send, what it would cost and how long it would take.

`estimate_run` walks the same plan as the sync and batch engines (gt/labelling/planning.py), with every
answer assumed valid: tokens from the real prompts' length (characters / 4) and a typical answer,
cost at sync and batch prices, with and without the prompt cache, and the time the oracle's rate
limits impose. `dry_run_lines` says it; when the pool of articles cannot make the target, it also
projects the target itself from the pool's measured prompt sizes. Nothing is called or written.
"""
from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Sequence

from gt.core.filters import Filter
from gt.oracles import batch as batch_services
from gt.oracles.base import OracleSpec
from gt.oracles.ratelimit import RateLimiter
from gt.labelling.planning import (CHARS_PER_TOKEN, article_text, build_request, existing_labels, expected_output_tokens,
                             format_duration, plan_items)


@dataclass
class Estimate:
    requests: int
    articles: int
    input_tokens: int
    output_tokens: int
    cost_sync: float
    cost_batch: float | None
    seconds_at_limit: float | None
    already_valid: int


def estimate_run(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, article_ids: Sequence[str], *,
                 repeats: int = 1, target_valid: int | None = None) -> Estimate:
    """What a label run would send (the same planner as the sync and batch engines, every answer
    assumed valid): tokens from the real prompts' length (characters / 4), cost at sync and batch
    prices, and the time the rate limits impose. Calls nothing, writes nothing."""
    existing = existing_labels(conn, filt, spec.name)
    ok = sum(1 for a in article_ids if existing.get((a, 0)) == "ok")
    requests = articles = input_chars = 0
    for item in plan_items(article_ids, existing, repeats=repeats, target=target_valid):
        if item.primary and ok + articles >= target_valid:
            continue
        found = article_text(conn, item.article_id)
        if found is None or filt.prefilter_reason(*found):
            continue
        try:
            request = build_request(filt, item.article_id, 0, *found)
        except Exception:  # noqa: BLE001 - the real run stores it as an 'error' label
            continue
        if item.primary or (target_valid is None and 0 in item.repeats):
            articles += 1
        requests += len(item.repeats)
        input_chars += (len(request.rubric) + len(request.article)) * len(item.repeats)
    input_tokens = math.ceil(input_chars / CHARS_PER_TOKEN)
    output_tokens = expected_output_tokens(filt) * requests
    cost_sync = spec.cost(input_tokens, output_tokens)
    cost_batch = spec.cost(input_tokens, output_tokens, batch=True) if spec.batch_input_per_m is not None else None
    limiter = RateLimiter(spec.rpm, spec.tpm, headroom=1.0)
    seconds = limiter.seconds_for(requests, input_tokens + output_tokens) if limiter.limited else None
    return Estimate(requests, articles, input_tokens, output_tokens, cost_sync, cost_batch, seconds, ok)


def dry_run_lines(conn: sqlite3.Connection, filt: Filter, spec: OracleSpec, ids: Sequence[str], *, repeats: int,
                  target: int | None, db: str, pool_valid: int | None = None) -> list[str]:
    """What `--dry-run` says: the requests, tokens, cost by mode and time a run would take. `ids` are
    the articles the run would send; `pool_valid`, where they are picks, the valid labels the whole
    eligible pool already has (the picks themselves have none)."""
    est = estimate_run(conn, filt, spec, ids, repeats=repeats, target_valid=target)
    limits = ", ".join(x for x in (f"{spec.rpm:g} RPM" if spec.rpm else "", f"{spec.tpm:g} TPM" if spec.tpm else "") if x)
    batch = f"; batch mode ${est.cost_batch:.2f}" if est.cost_batch is not None else "; no batch prices for it"
    out = [f"dry run, nothing was called: {spec.name} ({spec.provider} {spec.model}) on {filt.id}, "
           f"{est.already_valid if pool_valid is None else pool_valid} articles already have a valid label",
           f"  would send {est.requests} requests ({est.articles} new articles x {repeats} repeat(s), "
           f"assuming every answer is valid)",
           f"  expected tokens: {est.input_tokens:,} input (prompt characters / {CHARS_PER_TOKEN:g}) + "
           f"{est.output_tokens:,} output (~{expected_output_tokens(filt)} per answer)",
           f"  expected cost: ${est.cost_sync:.2f} sync{batch}"]
    out += cost_by_mode_lines(spec, filt, requests=est.requests, input_tokens=est.input_tokens,
                                     output_tokens=est.output_tokens, seconds_at_limit=est.seconds_at_limit)
    if est.seconds_at_limit is not None:
        out.append(f"  time at the rate limit ({limits}): {format_duration(est.seconds_at_limit)}")
    else:
        out.append("  time: no rate limit configured; bounded by the oracle's speed and --concurrency")
    if target is not None and est.already_valid + est.articles < target:
        out += _short_pool_lines(spec, filt, est, target, repeats, len(ids), db)
    return out


def _short_pool_lines(spec: OracleSpec, filt: Filter, est: Estimate, target: int, repeats: int, eligible: int,
                      db: str) -> list[str]:
    """The pool cannot make the target: say so, and what the target itself would cost, from the
    pool's own measured prompt sizes."""
    out = [f"the pool is short of the target: at most {est.already_valid + est.articles:,} of the {target:,} valid "
           f"labels asked for can come from the {eligible:,} eligible articles in {db} (ingest more with "
           f"--source); a run stops there"]
    if est.requests:
        per_in = est.input_tokens / est.requests
        per_out = est.output_tokens / est.requests
        requests = (target - est.already_valid) * repeats
        tin, tout = math.ceil(per_in * requests), math.ceil(per_out * requests)
        limiter = RateLimiter(spec.rpm, spec.tpm, headroom=1.0)
        seconds = limiter.seconds_for(requests, tin + tout) if limiter.limited else None
        out.append(f"  for the target: {requests:,} requests at this pool's measured size ({per_in:,.0f} input + "
                   f"~{per_out:,.0f} output tokens per request): {tin:,} input + {tout:,} output tokens")
        out += cost_by_mode_lines(spec, filt, requests=requests, input_tokens=tin, output_tokens=tout,
                                         seconds_at_limit=seconds)
    return out


def cost_by_mode_lines(spec: OracleSpec, filt: Filter, *, requests: int, input_tokens: int, output_tokens: int,
                  seconds_at_limit: float | None, chars_per_token: float = 4.0) -> list[str]:
    """Sync vs batch vs batch + prompt cache for this many requests and tokens, and when each finishes."""
    rubric, _ = filt.prompt_parts("", "")
    prefix = math.ceil(len(rubric) / chars_per_token)
    cached = batch_services.cached_share(spec, prefix, requests)
    write = prefix if cached and spec.cache_write_per_m is not None else 0
    sync = spec.cost(input_tokens, output_tokens)
    sync_cached = spec.cost(input_tokens, output_tokens, cached, cache_write_tokens=write)
    out = [f"  cost by mode: sync {_usd(sync)}, sync + prompt cache {_usd(sync_cached)}"]
    minimum = batch_services.cache_min_tokens(spec)
    if spec.batch_input_per_m is not None and spec.provider in batch_services.BATCH_PROVIDERS:
        batch = spec.cost(input_tokens, output_tokens, batch=True)
        batch_cached = spec.cost(input_tokens, output_tokens, cached, batch=True, cache_write_tokens=write)
        out[0] += f", batch {_usd(batch)}, batch + prompt cache {_usd(batch_cached)}"
        sync_time = (f"{format_duration(seconds_at_limit)} at the rate limit" if seconds_at_limit
                     else "bounded by the oracle's speed and --concurrency")
        out.append(f"  completion time: sync {sync_time}; batch {batch_services.TURNAROUND[spec.provider]}")
    else:
        out.append("  no batch mode for this oracle (no batch prices in oracles.yaml)")
    if minimum is not None and prefix < minimum:
        out.append(f"  prompt cache: the rubric is ~{prefix} tokens, below {spec.name}'s {minimum}-token minimum "
                   f"cacheable prefix, so no cache discount is expected (a longer rubric would be cached)")
    elif cached:
        out.append(f"  prompt cache: ~{prefix} rubric tokens per request read from cache after the first "
                   f"(best case; cache hits are not guaranteed, least of all in batch mode)")
    return out


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"
