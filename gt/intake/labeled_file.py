"""Labelled JSONL files: the spec's `labeled_articles.jsonl`, read and written.

One shape is written (`export_labeled_file`), one line per labelled article:

    {"id": ..., "title": ..., "text": ..., "source": ..., "url": ..., "published_date": ...,
     "<filter name>_analysis": {
         "dimensions": {"<dim>": {"score": 7.0, "evidence": "..."}, ...},
         "content_type": "...", "overall_score": 6.1, "tier": "connection",
         "analyzed_by": "<oracle>", "model": "<model id>", "prompt_sha256": "<hash>",
         "analyzed_at": "2026-01-01T00:00:00Z"}}

The reader (`parse_analysis`) accepts that shape and the looser ones other tools write: scores as
keys of the analysis itself, `"scores": {dim: x}`, `"dimensions": {dim: x}` or
`"dimensions": {dim: {"score": x, "reasoning": "..."}}`, evidence under `evidence`/`reasoning`.

Imported labels keep the file's `prompt_sha256` when it has one; otherwise they get
`import_prompt_sha256(filt)` = "import:" + sha256(filter id): stable across re-imports, and never
equal to a real prompt hash, so labels made with an unknown prompt are not mixed with ours.
Imported scores may be any number in 0-10 (other tools' oracles are not held to our half-point
rule). An analysis that lacks a dimension or has an out-of-range or non-numeric score is stored as
status 'invalid' with the raw analysis JSON and no scores (never zeros).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gt.core import store
from gt.core.bands import SCORE_MAX, SCORE_MIN
from gt.core.filters import Filter
from gt.core.report import write_atomic
from gt.core.text import sha256_text

if TYPE_CHECKING:
    import sqlite3

    from gt.intake.ingestion import IngestSummary

ANALYSIS_SUFFIX = "_analysis"
IMPORTED_ORACLE = "imported"  # oracle name for analyses that do not say who made them
ARTICLE_FIELDS = ("id", "title", "text", "source", "url", "published_date")


def analysis_key(filt: Filter) -> str:
    return f"{filt.name}{ANALYSIS_SUFFIX}"


def import_prompt_sha256(filt: Filter) -> str:
    """The prompt hash given to imported labels whose file does not carry one."""
    return "import:" + sha256_text(filt.id)


@dataclass
class ParsedAnalysis:
    """One `<filter>_analysis` object, read into what a label row needs."""
    oracle: str
    model: str | None
    prompt_sha256: str
    status: str  # 'ok' | 'invalid'
    scores: dict[str, float] | None
    content_type: str | None
    evidence: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    raw: str = ""


def _score_of(value: Any) -> Any:
    return value.get("score") if isinstance(value, dict) else value


def _evidence_of(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("evidence", "reasoning", "rationale"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def parse_analysis(filt: Filter, analysis: Any) -> ParsedAnalysis:
    """Read an analysis object in any accepted shape. Never raises on bad content: a broken
    analysis comes back with status 'invalid' and the reason in `error`."""
    if isinstance(analysis, str):
        try:
            analysis = json.loads(analysis)
        except json.JSONDecodeError:
            pass
    raw = json.dumps(analysis, ensure_ascii=False, sort_keys=True, default=str)
    if not isinstance(analysis, dict):
        return ParsedAnalysis(IMPORTED_ORACLE, None, import_prompt_sha256(filt), "invalid", None, None,
                              error=f"{analysis_key(filt)} is a {type(analysis).__name__}, expected an object", raw=raw)
    oracle = str(analysis.get("analyzed_by") or analysis.get("oracle") or IMPORTED_ORACLE)
    model = analysis.get("model")
    model = str(model) if model is not None else None
    prompt = analysis.get("prompt_sha256")
    prompt = str(prompt) if prompt else import_prompt_sha256(filt)
    content_type = analysis.get("content_type")
    content_type = str(content_type) if content_type is not None else None

    holder = analysis
    for key in ("dimensions", "scores"):
        if isinstance(analysis.get(key), dict):
            holder = analysis[key]
            break
    loose_evidence = {}
    for key in ("evidence", "reasoning"):
        if isinstance(analysis.get(key), dict):
            loose_evidence = analysis[key]
            break

    scores: dict[str, float] = {}
    evidence: dict[str, str] = {}
    problems: list[str] = []
    for name in filt.dimension_names:
        value = holder.get(name)
        score = _score_of(value)
        ev = _evidence_of(value) or (loose_evidence.get(name) if isinstance(loose_evidence.get(name), str) else None)
        if ev is not None:
            evidence[name] = ev
        if score is None:
            problems.append(f"missing dimension {name}")
        elif isinstance(score, bool) or not isinstance(score, (int, float)):
            problems.append(f"{name} score {score!r} is not a number")
        elif not math.isfinite(score) or not SCORE_MIN <= score <= SCORE_MAX:
            problems.append(f"{name} score {score!r} is outside {SCORE_MIN:g}-{SCORE_MAX:g}")
        else:
            scores[name] = float(score)
    if problems:
        return ParsedAnalysis(oracle, model, prompt, "invalid", None, content_type, evidence,
                              error="; ".join(problems), raw=raw)
    return ParsedAnalysis(oracle, model, prompt, "ok", scores, content_type, evidence, raw=raw)


class LabelImporter:
    """Writes imported analyses as labels: one label run (purpose and mode 'import') per oracle,
    prompt hash and model, created only when it gets a new label, so a re-import adds nothing."""

    def __init__(self, conn: "sqlite3.Connection", filt: Filter, source: str):
        self.conn = conn
        self.filt = filt
        self.source = source
        self.runs: dict[tuple[str, str, str | None], int] = {}
        self.imported = 0
        self.invalid = 0
        self.already_present = 0
        self._registered = False

    def add(self, article_id: str, analysis: Any) -> ParsedAnalysis | None:
        """Import one analysis for an article already in gt.db; returns it parsed, or None where an
        equal label (same article, oracle, prompt hash) was already there."""
        parsed = parse_analysis(self.filt, analysis)
        exists = self.conn.execute(
            """SELECT 1 FROM labels WHERE article_id = ? AND filter_id = ? AND oracle = ? AND prompt_sha256 = ?
                   AND repeat = 0""",
            (article_id, self.filt.id, parsed.oracle, parsed.prompt_sha256),
        ).fetchone()
        if exists:
            self.already_present += 1
            return None
        run_id = self._run(parsed)
        label_id = store.insert_label(
            self.conn, run_id=run_id, article_id=article_id, filt=self.filt, oracle=parsed.oracle,
            status=parsed.status, scores=parsed.scores, content_type=parsed.content_type,
            evidence=parsed.evidence or None, raw_response=parsed.raw, error=parsed.error,
            prompt_sha256=parsed.prompt_sha256,
        )
        if label_id is None:
            self.already_present += 1
            return None
        if parsed.status == "ok":
            self.imported += 1
        else:
            self.invalid += 1
        return parsed

    def _run(self, parsed: ParsedAnalysis) -> int:
        key = (parsed.oracle, parsed.prompt_sha256, parsed.model)
        if key not in self.runs:
            if not self._registered:
                store.register_filter(self.conn, self.filt)
                self._registered = True
            run_id = store.start_run(self.conn, purpose="import", filt=self.filt, oracle=parsed.oracle,
                                     provider=None, model=parsed.model, mode="import",
                                     params={"source": self.source})
            # start_run records the filter's current prompt hash; an import keeps the file's own
            self.conn.execute("UPDATE label_runs SET prompt_sha256 = ? WHERE id = ?", (parsed.prompt_sha256, run_id))
            self.runs[key] = run_id
        return self.runs[key]

    def finish(self) -> None:
        for run_id in self.runs.values():
            store.finish_run(self.conn, run_id)


def import_labeled_file(conn: "sqlite3.Connection", filt: Filter, path: str | os.PathLike) -> "IngestSummary":
    """Ingest a labelled JSONL file: its articles go in like any ingest (cleaning, duplicates,
    near-duplicates) and its `<filter>_analysis` objects become labels. Re-importing adds nothing."""
    from gt.intake.ingestion import ingest_files

    return ingest_files(conn, [str(path)], filt=filt)


def export_labeled_file(conn: "sqlite3.Connection", filt: Filter, path: str | os.PathLike,
                        oracle: str | None = None, prompt_sha256: str | None = None) -> int:
    """Write the valid labels of one oracle and prompt version (by default the set with the most
    labels, see store.choose_label_set) as a labelled JSONL file; returns the number of lines.
    The file appears whole or not at all (written to a temp name, then renamed)."""
    if oracle is None or prompt_sha256 is None:
        chosen_oracle, chosen_prompt = store.choose_label_set(conn, filt, oracle)
        oracle = oracle or chosen_oracle
        prompt_sha256 = prompt_sha256 or chosen_prompt
    where = """l.filter_id = ? AND l.oracle = ? AND l.prompt_sha256 = ? AND l.status = 'ok' AND l.repeat = 0
               AND a.dup_of IS NULL"""
    args = (filt.id, oracle, prompt_sha256)
    scores: dict[int, dict[str, float]] = {}
    for label_id, dim, score in conn.execute(
        f"""SELECT s.label_id, s.dimension, s.score FROM label_scores s JOIN labels l ON l.id = s.label_id
            JOIN articles a ON a.id = l.article_id WHERE {where}""", args):
        scores.setdefault(label_id, {})[dim] = score
    rows = conn.execute(
        f"""SELECT a.id, a.title, a.text, a.source, a.url, a.published_at, l.id AS label_id, l.content_type,
                   l.evidence_json, l.created_at, r.model
            FROM labels l JOIN articles a ON a.id = l.article_id JOIN label_runs r ON r.id = l.run_id
            WHERE {where} ORDER BY a.id""", args)

    key = analysis_key(filt)
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                s = scores.get(r["label_id"], {})
                if any(n not in s for n in filt.dimension_names):
                    continue  # a label whose filter gained a dimension since: not a complete answer
                evidence = json.loads(r["evidence_json"]) if r["evidence_json"] else {}
                overall = filt.overall(s, r["content_type"])
                line = {
                    "id": r["id"], "title": r["title"], "text": r["text"], "source": r["source"],
                    "url": r["url"], "published_date": r["published_at"],
                    key: {
                        "dimensions": {n: {"score": s[n], "evidence": evidence.get(n, "")} for n in filt.dimension_names},
                        "content_type": r["content_type"],
                        "overall_score": round(overall, 4),
                        "tier": filt.tier(overall),
                        "analyzed_by": oracle,
                        "model": r["model"],
                        "prompt_sha256": prompt_sha256,
                        "analyzed_at": r["created_at"],
                    },
                }
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += 1
    write_atomic(path, write)
    return count
