"""Human labels from a CSV or JSONL file: label columns mapped to a filter's dimensions, rescaled
from the file's scale to 0-10, stored as one oracle's label set (purpose and mode 'import').

    python -m stages.ingest --filter filters/emobank_vad/v1 --source emobank.csv.gz \\
        --labels V=valence,A=arousal,D=dominance --label-scale 1-5 --oracle human-mean

- `--labels COLUMN=DIMENSION,...` maps every dimension of the filter to a column of the file.
- `--label-scale LO-HI` is the file's scale, rescaled linearly to 0-10: (x - LO) / (HI - LO) * 10
  (1-5: (x - 1) * 2.5). A value that is not a number or lies outside LO-HI rejects its row.
- Several ratings of one article (one row per rating) become that oracle's `repeat` 0, 1, 2, ...:
  the rater slot. Without `--rater-column` the slot is the order of appearance of the article's
  rows in this import (all files of one invocation together); with it, each rater id keeps one slot
  number for good (the id -> slot map is kept in the import run's params_json, `raters`, and later
  imports of the same oracle reuse it).

Why one oracle with repeats, not one oracle per rater: an oracle names a kind of labeller (a model
and prompt, or a human protocol), and `repeat` already means "another independent answer from that
labeller for the same article" (an LLM asked again). Crowd raters such as EmoBank's differ from
sentence to sentence, so slot numbers are not people; `calibrate --models human-rater` then takes
one name whatever the number of raters, and its inter-rater statistics (Krippendorff's alpha,
one-way ICC, each rating against the mean of the others) do not depend on which slot a rating got.

Imported human labels get prompt_sha256 = human_prompt_sha256(oracle) = "human:" + sha256 of
"human:<oracle>": stable, documented, and never equal to a hash of a prompt we ran, so human
labels are never mixed with an LLM's; `store.choose_label_set` finds them by oracle name, so
coverage, select and train take them with `--oracle human-mean`.

Re-importing the same rows inserts nothing. A row whose slot already holds a rating of that oracle
with other values is rejected (import every rating of an oracle in one invocation, or give the
other file another --oracle). Labels go to the article id the row names (an exact duplicate's
row keeps its own labels; stages ignore duplicates).
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from gt.core import store
from gt.core.bands import SCORE_MAX
from gt.core.filters import Filter
from gt.core.text import sha256_text

HUMAN_PREFIX = "human:"
_ORACLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,79}$")
_SCALE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*[-:]\s*(-?\d+(?:\.\d+)?)\s*$")


def human_prompt_sha256(oracle: str) -> str:
    """The prompt hash of an imported human label set: 'human:' + sha256('human:<oracle>')."""
    return HUMAN_PREFIX + sha256_text(HUMAN_PREFIX + oracle)


def is_human(prompt_sha256: str | None) -> bool:
    return bool(prompt_sha256) and str(prompt_sha256).startswith(HUMAN_PREFIX)


@dataclass(frozen=True)
class Scale:
    """The file's rating scale, rescaled linearly onto 0-10."""
    low: float
    high: float

    @classmethod
    def parse(cls, text: str) -> "Scale":
        m = _SCALE.match(str(text))
        if not m:
            raise ValueError(f"--label-scale {text!r} must be LOW-HIGH, such as 1-5 or 0-10")
        low, high = float(m.group(1)), float(m.group(2))
        if not high > low:
            raise ValueError(f"--label-scale {text!r}: the high end must be above the low end")
        return cls(low, high)

    def __str__(self) -> str:
        return f"{self.low:g}-{self.high:g}"

    @property
    def formula(self) -> str:
        factor = SCORE_MAX / (self.high - self.low)
        shift = f"x - {self.low:g}" if self.low > 0 else (f"x + {-self.low:g}" if self.low < 0 else "x")
        return f"({shift}) * {factor:g}" if factor != 1 else f"({shift})"

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def rescale(self, x: float) -> float:
        value = (x - self.low) / (self.high - self.low) * SCORE_MAX
        return min(SCORE_MAX, max(0.0, round(value, 10)))  # 10 digits: (3.44 - 1) * 2.5 is 6.1, not 6.1000000000000005


def parse_label_columns(text: str, filt: Filter) -> dict[str, str]:
    """'V=valence,A=arousal' -> {'V': 'valence', 'A': 'arousal'}; every dimension of the filter
    must be mapped once. Raises ValueError with one line saying what is wrong."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        column, sep, dim = (s.strip() for s in part.partition("="))
        if not sep or not column or not dim:
            raise ValueError(f"--labels {text!r}: '{part}' is not COLUMN=DIMENSION (e.g. V=valence)")
        if dim not in filt.dimension_names:
            raise ValueError(f"--labels: '{dim}' is not a dimension of {filt.id} (its dimensions: "
                             f"{', '.join(filt.dimension_names)})")
        if column in mapping:
            raise ValueError(f"--labels: column '{column}' is mapped twice")
        if dim in mapping.values():
            raise ValueError(f"--labels: dimension '{dim}' is mapped twice")
        mapping[column] = dim
    missing = [d for d in filt.dimension_names if d not in mapping.values()]
    if missing:
        raise ValueError(f"--labels maps no column to {', '.join(missing)} ({filt.id} labels carry every "
                         f"dimension: add e.g. {missing[0]}=<column>)")
    return mapping


def check_oracle_name(name: str) -> str:
    if not _ORACLE_NAME.match(name or ""):
        raise ValueError(f"--oracle {name!r}: give the label set a name of letters, digits and . _ - : / + "
                         "(e.g. human-mean)")
    return name


@dataclass(frozen=True)
class HumanLabelSpec:
    """What to read from each row: which columns are which dimension, on what scale, whose labels."""
    oracle: str
    columns: dict[str, str]           # file column -> dimension
    scale: Scale
    rater_column: str | None = None
    skip_unknown_ids: bool = False

    @property
    def prompt_sha256(self) -> str:
        return human_prompt_sha256(self.oracle)


def _field(record: dict, name: str) -> Any:
    if name in record:
        return record[name]
    lowered = name.lower()
    for key, value in record.items():
        if isinstance(key, str) and key.strip().lower() == lowered:
            return value
    return None


def read_values(record: dict, spec: HumanLabelSpec) -> tuple[dict[str, float], str | None] | str:
    """(scores on 0-10 by dimension, rater id or None) from one row, or the problem with it as one
    line (what is wrong, what to do)."""
    scores: dict[str, float] = {}
    for column, dim in spec.columns.items():
        raw = _field(record, column)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return f"no value in label column '{column}' (fill it, or drop the row)"
        if isinstance(raw, bool):
            return f"label column '{column}' holds {raw!r}, not a number"
        try:
            x = float(raw.strip()) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            return f"label column '{column}' holds {str(raw)[:40]!r}, not a number (fix the value)"
        if not math.isfinite(x):
            return f"label column '{column}' holds {raw!r}, not a finite number (fix the value)"
        if not spec.scale.contains(x):
            return (f"label column '{column}' holds {x:g}, outside the scale {spec.scale} "
                    f"(fix the value, or pass the file's scale with --label-scale)")
        scores[dim] = spec.scale.rescale(x)
    rater = None
    if spec.rater_column:
        raw = _field(record, spec.rater_column)
        rater = str(raw).strip() if raw is not None else ""
        if not rater:
            return f"no rater id in column '{spec.rater_column}' (fill it, or drop --rater-column)"
    return scores, rater


@dataclass
class HumanImportCounts:
    oracle: str = ""
    imported: int = 0            # new labels
    already_present: int = 0     # same article, slot and values already in gt.db
    rejected: int = 0            # rows with a problem line
    unknown_skipped: int = 0     # rows naming an article not in gt.db, with --skip-unknown-ids
    unknown_examples: list[str] = field(default_factory=list)
    slots: set[int] = field(default_factory=set)
    articles: set[str] = field(default_factory=set)
    run_id: int | None = None


class HumanLabelImporter:
    """Writes the rows of one import as labels of `spec.oracle`: one label run (purpose and mode
    'import'), created with the first new label, so a re-import adds nothing, not even a run."""

    def __init__(self, conn: sqlite3.Connection, filt: Filter, spec: HumanLabelSpec, source: str):
        self.conn = conn
        self.filt = filt
        self.spec = spec
        self.source = source
        self.counts = HumanImportCounts(oracle=spec.oracle)
        self.sha = spec.prompt_sha256
        self.existing: dict[tuple[str, int], dict[str, float]] = {}
        for label_id, article_id, rep, dim, score in conn.execute(
                """SELECT l.id, l.article_id, l."repeat", s.dimension, s.score FROM labels l
                   JOIN label_scores s ON s.label_id = l.id
                   WHERE l.filter_id = ? AND l.oracle = ? AND l.prompt_sha256 = ? AND l.status = 'ok'""",
                (filt.id, spec.oracle, self.sha)):
            self.existing.setdefault((article_id, int(rep)), {})[dim] = float(score)
        self.raters: dict[str, int] = {}       # rater id -> slot, from earlier imports of this oracle
        for (params,) in conn.execute(
                "SELECT params_json FROM label_runs WHERE filter_id = ? AND oracle = ? AND prompt_sha256 = ? "
                "AND purpose = 'import' ORDER BY id", (filt.id, spec.oracle, self.sha)):
            try:
                known = json.loads(params or "{}").get("raters") or {}
            except (json.JSONDecodeError, AttributeError):
                known = {}
            for rater, slot in known.items():
                self.raters.setdefault(str(rater), int(slot))
        self.new_raters: dict[str, int] = {}
        self.next_slot: dict[str, int] = {}    # article -> next slot by order of appearance (no rater column)
        self.seen: dict[tuple[str, int], str] = {}   # (article, slot) -> where this import put it

    def slot_of(self, article_id: str, rater: str | None) -> int:
        if rater is None:
            slot = self.next_slot.get(article_id, 0)
            self.next_slot[article_id] = slot + 1
            return slot
        if rater not in self.raters:
            slot = max(self.raters.values(), default=-1) + 1
            self.raters[rater] = slot
            self.new_raters[rater] = slot
        return self.raters[rater]

    def add(self, article_id: str, scores: dict[str, float], rater: str | None, where: str) -> str | None:
        """Store one rating of an article already in gt.db; returns the problem line (without
        `where`) when the row is rejected, else None."""
        slot = self.slot_of(article_id, rater)
        key = (article_id, slot)
        if key in self.seen:
            return (f"rater '{rater}' already rated article '{article_id}' at {self.seen[key]} "
                    "(keep one row per rater and article)")
        self.seen[key] = where
        old = self.existing.get(key)
        if old is not None:
            if all(abs(old.get(d, math.nan) - v) < 1e-9 for d, v in scores.items()):
                self.counts.already_present += 1
                return None
            who = f"rater '{rater}'" if rater is not None else f"rating {slot + 1} of this article"
            return (f"article '{article_id}' already has a {self.spec.oracle} label for {who} (repeat {slot}) with "
                    f"other values (import every rating of an oracle in one run, or use another --oracle)")
        label_id = store.insert_label(self.conn, run_id=self._run(), article_id=article_id, filt=self.filt,
                                      oracle=self.spec.oracle, status="ok", repeat=slot, scores=scores,
                                      prompt_sha256=self.sha)
        if label_id is None:   # another process stored it since we looked
            self.counts.already_present += 1
            return None
        self.existing[key] = dict(scores)
        self.counts.imported += 1
        self.counts.slots.add(slot)
        self.counts.articles.add(article_id)
        return None

    def _params(self) -> dict:
        spec = self.spec
        params = {"source": self.source, "columns": spec.columns, "scale": str(spec.scale),
                  "rescaled": f"{spec.scale.formula} onto 0-10", "rater_column": spec.rater_column,
                  "slots": "rater id -> repeat in 'raters'" if spec.rater_column else
                           "repeat = order of appearance of the article's rows in this import"}
        if spec.rater_column:
            params["raters"] = dict(self.new_raters)   # the slots this run gave out (earlier runs hold the others)
        return params

    def _run(self) -> int:
        if self.counts.run_id is None:
            store.register_filter(self.conn, self.filt)
            run_id = store.start_run(self.conn, purpose="import", filt=self.filt, oracle=self.spec.oracle,
                                     provider="human", model=None, mode="import", params=self._params())
            # start_run records the filter's prompt hash; human labels carry their own marker
            self.conn.execute("UPDATE label_runs SET prompt_sha256 = ? WHERE id = ?", (self.sha, run_id))
            self.counts.run_id = run_id
        return self.counts.run_id

    def sync(self) -> None:
        """Record the rater ids given a slot so far in the run's params (call it in the transaction
        that stored their labels: a killed import never leaves a slot without its rater id)."""
        if self.counts.run_id is not None and self.new_raters:
            self.conn.execute("UPDATE label_runs SET params_json = ? WHERE id = ?",
                              (json.dumps(self._params(), sort_keys=True), self.counts.run_id))

    def finish(self) -> None:
        if self.counts.run_id is not None:
            self.sync()
            store.finish_run(self.conn, self.counts.run_id)
