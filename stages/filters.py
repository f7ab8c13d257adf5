"""Filter packages: load and validate `filters/<name>/v<N>/` (config.yaml + prompt.md), render the
prompt, build the JSON schema of a valid answer, validate answers, and compute overall score and
tier from scores + config. A filter package is data only: nothing in it is ever executed.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from stages.text import head_tail_truncate, sha256_text

SCORE_MIN, SCORE_MAX = 0.0, 10.0
ANSWER_KEYS = ("scores", "content_type", "evidence")
_TOP_KEYS = {
    "name", "version", "description", "min_chars", "max_article_chars", "dimensions",
    "gatekeepers", "content_types", "content_type_caps", "tiers", "prefilter",
}
_DIM_KEYS = {"name", "weight", "description", "low", "anchors"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ANCHOR_KEY = re.compile(r"^(\d{1,2})(?:-(\d{1,2}))?$")


class FilterError(Exception):
    """A filter package is malformed. `problems` holds one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class AnswerError(ValueError):
    """An oracle answer does not match the filter's schema; the message says what is wrong."""


@dataclass(frozen=True)
class Dimension:
    name: str
    weight: float
    description: str
    low: str
    anchors: dict[str, str]  # "0-2" -> text

    def anchor_ranges(self) -> list[tuple[float, float, str]]:
        out = []
        for key, text in self.anchors.items():
            m = _ANCHOR_KEY.match(str(key))
            lo = float(m.group(1))
            hi = float(m.group(2) or m.group(1))
            out.append((lo, hi, text))
        return sorted(out)


@dataclass(frozen=True)
class Gatekeeper:
    dimension: str
    below: float
    max_overall: float


@dataclass(frozen=True)
class Tier:
    name: str
    min_overall: float
    description: str = ""


@dataclass(frozen=True)
class PrefilterRule:
    pattern: re.Pattern
    unless: tuple[re.Pattern, ...]
    reason: str


@dataclass(frozen=True)
class Filter:
    path: str
    name: str
    version: str
    description: str
    dimensions: tuple[Dimension, ...]
    gatekeepers: tuple[Gatekeeper, ...]
    content_types: tuple[str, ...]
    content_type_caps: dict[str, float]
    tiers: tuple[Tier, ...]  # highest min_overall first
    prefilter: tuple[PrefilterRule, ...]
    min_chars: int
    max_article_chars: int
    prompt_template: str
    config: dict = field(repr=False)

    # ---- identity -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version}"

    @property
    def view_name(self) -> str:
        return f"scores_{self.name}_v{self.version}"

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @functools.cached_property
    def prompt_sha256(self) -> str:
        """Hash of everything that shapes the oracle's answer: the prompt, the dimension list and
        the answer schema. Labels made under different hashes are never mixed. Computed once per
        loaded filter (the label stage reads it for every label)."""
        return sha256_text(self.prompt_template + "\n" + json.dumps(self.answer_schema(), sort_keys=True))

    # ---- prompt ---------------------------------------------------------------------------
    def prompt_parts(self, title: str, text: str) -> tuple[str, str]:
        """(static rubric, article part): providers cache the first and bill the second."""
        title = _neutralise(title or "")
        body = _neutralise(head_tail_truncate(text or "", self.max_article_chars))
        cut = _first_placeholder(self.prompt_template)
        static, dynamic = self.prompt_template[:cut], self.prompt_template[cut:]
        dynamic = dynamic.replace("{title}", title, 1).replace("{text}", body, 1)
        return static, dynamic

    def render_prompt(self, title: str, text: str) -> str:
        static, dynamic = self.prompt_parts(title, text)
        prompt = static + dynamic
        # the article must provably reach the prompt (a template bug once sent the rubric alone)
        body = _neutralise(head_tail_truncate(text or "", self.max_article_chars))
        if (body.strip() and body not in prompt) or (title and _neutralise(title) not in prompt):
            raise AssertionError(f"{self.id}: the article did not reach the rendered prompt")
        return prompt

    def corrective_message(self, problem: str) -> str:
        names = ", ".join(self.dimension_names)
        return (
            f"Your previous answer was not valid: {problem}. Answer again with one JSON object only, "
            f'with keys "scores" (numbers 0-10 for {names}), "content_type" (one of '
            f'{", ".join(self.content_types)}) and "evidence" (one sentence for each dimension).'
        )

    def prefilter_reason(self, title: str, text: str) -> str | None:
        blob = f"{title}\n{text}"
        for rule in self.prefilter:
            if rule.pattern.search(blob) and not any(u.search(blob) for u in rule.unless):
                return rule.reason
        return None

    # ---- answers --------------------------------------------------------------------------
    def answer_schema(self) -> dict:
        names = self.dimension_names
        return {
            "type": "object",
            "properties": {
                "scores": {
                    "type": "object",
                    "properties": {n: {"type": "number", "minimum": SCORE_MIN, "maximum": SCORE_MAX} for n in names},
                    "required": names,
                    "additionalProperties": False,
                },
                "content_type": {"type": "string", "enum": list(self.content_types)},
                "evidence": {
                    "type": "object",
                    "properties": {n: {"type": "string"} for n in names},
                    "required": names,
                    "additionalProperties": False,
                },
            },
            "required": list(ANSWER_KEYS),
            "additionalProperties": False,
        }

    def validate_answer(self, answer: Any) -> tuple[dict[str, float], str, dict[str, str]]:
        """Return (scores, content_type, evidence) or raise AnswerError saying what is wrong."""
        if not isinstance(answer, Mapping):
            raise AnswerError(f"answer is {type(answer).__name__}, expected a JSON object")
        validator = _answer_validator(self)
        errors = sorted(validator.iter_errors(answer), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.absolute_path) or "answer"
            msg = e.message
            if e.validator == "required":
                missing = [k for k in e.validator_value if k not in e.instance]
                msg = f"missing {', '.join(missing)}"
            elif e.validator == "additionalProperties":
                msg = f"unexpected key(s): {', '.join(sorted(set(e.instance) - set(e.schema.get('properties', {}))))}"
            raise AnswerError(f"{where}: {msg}")
        scores: dict[str, float] = {}
        for name in self.dimension_names:
            v = answer["scores"][name]
            if isinstance(v, bool) or not math.isfinite(float(v)):
                raise AnswerError(f"scores/{name}: {v!r} is not a number")
            if float(v) * 2 != int(float(v) * 2):
                raise AnswerError(f"scores/{name}: {v} is not a whole or half point")
            scores[name] = float(v)
        return scores, answer["content_type"], {n: answer["evidence"][n] for n in self.dimension_names}

    def parse_answer(self, raw: str | None) -> tuple[dict[str, float], str, dict[str, str]]:
        """Parse raw model text (JSON, possibly fenced or wrapped in prose) and validate it."""
        if raw is None or not raw.strip():
            raise AnswerError("empty answer")
        return self.validate_answer(extract_json(raw))

    # ---- overall score and tier -----------------------------------------------------------
    def overall(self, scores: Mapping[str, float], content_type: str | None = None) -> float:
        value = 0.0
        for d in self.dimensions:
            value = value + d.weight * scores[d.name]
        for g in self.gatekeepers:
            if scores[g.dimension] < g.below:
                value = min(value, g.max_overall)
        if content_type in self.content_type_caps:
            value = min(value, self.content_type_caps[content_type])
        return value

    def tier(self, overall: float) -> str:
        for t in self.tiers:
            if overall >= t.min_overall:
                return t.name
        return self.tiers[-1].name

    def overall_sql(self) -> str:
        """The same arithmetic as `overall`, as an SQL expression over the view's columns."""
        expr = "0.0" + "".join(f" + {d.weight!r} * \"{d.name}\"" for d in self.dimensions)
        expr = f"({expr})"
        for g in self.gatekeepers:
            expr = f"(CASE WHEN \"{g.dimension}\" < {g.below!r} THEN MIN({expr}, {g.max_overall!r}) ELSE {expr} END)"
        if self.content_type_caps:
            cases = " ".join(
                f"WHEN '{ct}' THEN MIN({expr}, {cap!r})" for ct, cap in sorted(self.content_type_caps.items())
            )
            expr = f"(CASE content_type {cases} ELSE {expr} END)"
        return expr

    def tier_sql(self, column: str = "overall") -> str:
        whens = " ".join(f"WHEN {column} >= {t.min_overall!r} THEN '{t.name}'" for t in self.tiers[:-1])
        return f"(CASE {whens} ELSE '{self.tiers[-1].name}' END)" if whens else f"'{self.tiers[-1].name}'"


# one compiled validator per answer shape: building a Draft202012Validator costs more than using it
_VALIDATORS: dict[tuple[tuple[str, ...], tuple[str, ...]], jsonschema.Draft202012Validator] = {}


def _answer_validator(filt: Filter) -> jsonschema.Draft202012Validator:
    # answer_schema() depends on the dimension names and content types only, so they are the key
    key = (tuple(filt.dimension_names), tuple(filt.content_types))
    validator = _VALIDATORS.get(key)
    if validator is None:
        validator = _VALIDATORS[key] = jsonschema.Draft202012Validator(filt.answer_schema())
    return validator


def extract_json(raw: str) -> Any:
    """The first JSON object in `raw`: tolerates code fences and prose around it."""
    text = raw.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    while start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
            return obj
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    raise AnswerError("no JSON object in the answer")


def _neutralise(s: str) -> str:
    # the article may not close our delimiters and smuggle text outside them
    return re.sub(r"</?\s*(article|title|text)\s*>", lambda m: m.group(0).replace("<", "‹").replace(">", "›"), s, flags=re.I)


def _first_placeholder(template: str) -> int:
    positions = [template.find(p) for p in ("{title}", "{text}")]
    first = min(p for p in positions if p >= 0)
    # cut at the start of the line holding the first placeholder's enclosing block
    block = template.rfind("<article>", 0, first)
    return block if block >= 0 else template.rfind("\n", 0, first) + 1


# ---- loading ----------------------------------------------------------------------------------

def load_filter(path: str | Path) -> Filter:
    """Load and validate a filter package; raise FilterError listing every problem found."""
    root = Path(path)
    problems: list[str] = []
    cfg_path, prompt_path = root / "config.yaml", root / "prompt.md"
    if not root.is_dir():
        raise FilterError(root, ["not a directory: pass --filter filters/<name>/v<N>"])
    if not cfg_path.is_file():
        problems.append("config.yaml is missing")
    if not prompt_path.is_file():
        problems.append("prompt.md is missing")
    if problems:
        raise FilterError(root, problems)
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise FilterError(cfg_path, [f"YAML syntax error{line}: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(cfg, dict):
        raise FilterError(cfg_path, ["config must be a YAML mapping"])
    template = prompt_path.read_text(encoding="utf-8")

    for key in sorted(set(cfg) - _TOP_KEYS):
        problems.append(f"unknown key '{key}' (known: {', '.join(sorted(_TOP_KEYS))})")
    name = str(cfg.get("name", ""))
    if not _NAME.match(name):
        problems.append("name must be lower-case letters, digits and underscores")
    version = str(cfg.get("version", "")).lstrip("v")
    if not version:
        problems.append("version is missing")

    dims: list[Dimension] = []
    raw_dims = cfg.get("dimensions")
    if not isinstance(raw_dims, list) or not raw_dims:
        problems.append("dimensions must be a non-empty list")
        raw_dims = []
    seen: set[str] = set()
    for i, d in enumerate(raw_dims):
        if not isinstance(d, dict):
            problems.append(f"dimensions[{i}] must be a mapping")
            continue
        dname = str(d.get("name", ""))
        label = f"dimension '{dname or i}'"
        for key in sorted(set(d) - _DIM_KEYS):
            problems.append(f"{label}: unknown key '{key}'")
        if not _NAME.match(dname):
            problems.append(f"{label}: name must be lower-case letters, digits and underscores")
        if dname in seen:
            problems.append(f"{label}: listed twice")
        seen.add(dname)
        w = d.get("weight")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
            problems.append(f"{label}: weight must be a non-negative number")
            w = 0.0
        anchors = d.get("anchors")
        if not isinstance(anchors, dict) or not anchors:
            problems.append(f"{label}: has no scale (add anchors such as '0-2': ..., '9-10': ...)")
            anchors = {}
        else:
            for k in anchors:
                m = _ANCHOR_KEY.match(str(k))
                if not m or int(m.group(1)) > 10 or int(m.group(2) or m.group(1)) > 10:
                    problems.append(f"{label}: anchor key '{k}' must be a score or range within 0-10")
        if not d.get("low"):
            problems.append(f"{label}: 'low' (the 'score 0-2 if...' rule) is missing")
        if dname and dname not in template:
            problems.append(f"{label}: not mentioned in prompt.md")
        dims.append(Dimension(dname, float(w), str(d.get("description", "")), str(d.get("low", "")),
                              {str(k): str(v) for k, v in anchors.items()}))
    total = sum(d.weight for d in dims)
    if dims and abs(total - 1.0) > 1e-6:
        problems.append(f"dimension weights sum to {total:g}, they must sum to 1")

    gates: list[Gatekeeper] = []
    for i, g in enumerate(cfg.get("gatekeepers") or []):
        if not isinstance(g, dict) or g.get("dimension") not in seen:
            problems.append(f"gatekeepers[{i}]: dimension must be one of the dimensions")
            continue
        try:
            gates.append(Gatekeeper(g["dimension"], float(g["below"]), float(g["max_overall"])))
        except (KeyError, TypeError, ValueError):
            problems.append(f"gatekeepers[{i}]: needs numeric 'below' and 'max_overall'")

    ctypes = cfg.get("content_types") or []
    if not isinstance(ctypes, list) or not all(isinstance(c, str) and _NAME.match(c) for c in ctypes) or not ctypes:
        problems.append("content_types must be a non-empty list of lower_case names")
        ctypes = []
    for c in ctypes:
        if c not in template:
            problems.append(f"content type '{c}' is not mentioned in prompt.md")
    caps: dict[str, float] = {}
    for c, cap in (cfg.get("content_type_caps") or {}).items():
        if c not in ctypes:
            problems.append(f"content_type_caps: '{c}' is not one of content_types")
        elif not isinstance(cap, (int, float)):
            problems.append(f"content_type_caps: cap for '{c}' must be a number")
        else:
            caps[c] = float(cap)

    tiers: list[Tier] = []
    for i, t in enumerate(cfg.get("tiers") or []):
        if not isinstance(t, dict) or not t.get("name") or not isinstance(t.get("min_overall"), (int, float)):
            problems.append(f"tiers[{i}]: needs a name and a numeric min_overall")
            continue
        tiers.append(Tier(str(t["name"]), float(t["min_overall"]), str(t.get("description", ""))))
    if not tiers:
        problems.append("tiers must list at least one tier")
    elif [t.min_overall for t in tiers] != sorted((t.min_overall for t in tiers), reverse=True):
        problems.append("tiers must be listed from the highest min_overall to the lowest")

    rules: list[PrefilterRule] = []
    for i, r in enumerate(cfg.get("prefilter") or []):
        try:
            rules.append(PrefilterRule(re.compile(r["pattern"], re.I),
                                       tuple(re.compile(u, re.I) for u in r.get("unless", [])),
                                       str(r.get("reason", r["pattern"]))))
        except (KeyError, TypeError, re.error) as e:
            problems.append(f"prefilter[{i}]: {e}")

    for ph in ("{title}", "{text}"):
        n = template.count(ph)
        if n != 1:
            problems.append(f"prompt.md must contain the placeholder {ph} exactly once (found {n})")

    for key, default in (("min_chars", 300), ("max_article_chars", 12000)):
        v = cfg.get(key, default)
        if not isinstance(v, int) or v <= 0:
            problems.append(f"{key} must be a positive integer")
    if problems:
        raise FilterError(root, problems)
    return Filter(
        path=str(root), name=name, version=version, description=str(cfg.get("description", "")).strip(),
        dimensions=tuple(dims), gatekeepers=tuple(gates), content_types=tuple(ctypes),
        content_type_caps=caps, tiers=tuple(tiers), prefilter=tuple(rules),
        min_chars=int(cfg.get("min_chars", 300)), max_article_chars=int(cfg.get("max_article_chars", 12000)),
        prompt_template=template, config=cfg,
    )
