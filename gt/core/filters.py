"""Filter packages: load and validate `filters/<name>/v<N>/` (config.yaml + prompt.md), render the
prompt, build the JSON schema of a valid answer, validate answers, and compute overall score and
tier from scores + config. A filter package is data only: nothing in it is ever executed.

Names from a package (filter name, version, dimensions, content types, tiers) end up in SQL views
and in the prompt, so `load_filter` holds them to safe identifier patterns, and every SQL text built
from them goes through `sql_literal`, `sql_identifier` and `sql_number` as well.
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
import numpy as np

from gt.core.bands import SCORE_MAX, SCORE_MIN
from gt.core.errors import FileProblems
from gt.core.text import head_tail_truncate, sha256_text, yaml_document

DEFAULT_FILTER = "filters/uplifting/v1"   # the filter package every command takes unless --filter names another
ANSWER_KEYS = ("scores", "content_type", "evidence")
_TOP_KEYS = {
    "name", "version", "description", "min_chars", "max_article_chars", "dimensions",
    "gatekeepers", "content_types", "content_type_caps", "tiers", "prefilter", "score_step",
}
_DIM_KEYS = {"name", "weight", "description", "low", "anchors"}
NAME_MAX_CHARS = 40
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NAME_RULE = f"lower-case letters, digits and underscores, starting with a letter, at most {NAME_MAX_CHARS} characters"
_VERSION = re.compile(r"^[0-9]+(?:[._][0-9a-z]+)*$")
_ANCHOR_KEY = re.compile(r"^(\d{1,2})(?:-(\d{1,2}))?$")
# the placeholders the label stage fills in prompt.md; any other `{word}` would reach the model as is
PLACEHOLDERS = ("title", "text")
_PLACEHOLDER_LIKE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_FILL = re.compile(r"\{(title|text)\}")
_GRID_TOLERANCE = 1e-9  # relative: 0.3 / 0.1 is 2.9999999999999996 in floating point


class FilterError(FileProblems):
    """A filter package is malformed. `problems` holds one line per problem."""


class AnswerError(ValueError):
    """An oracle answer does not match the filter's schema; the message says what is wrong."""


class PromptError(ValueError):
    """The prompt template cannot carry the article (its {title} and {text} placeholders are not
    each filled exactly once after the rubric). load_filter rejects such packages, so this only
    fires for a Filter built or altered in code."""


def view_name(name: str, version: str) -> str:
    """The SQL view of a filter's scores in gt.db: scores_<name>_v<version>."""
    return f"scores_{name}_v{version}"


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
    score_step: float | None = None  # the scores' grid (config `score_step`), None: any number 0-10

    # ---- identity -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version}"

    @property
    def view_name(self) -> str:
        return view_name(self.name, self.version)

    def report_stem(self, what: str) -> str:
        """The name of a step's report files for this filter: '<name>_v<version>_<what>'."""
        return f"{self.name}_v{self.version}_{what}"

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @functools.cached_property
    def prompt_sha256(self) -> str:
        """Hash of everything that shapes the oracle's answer: the prompt (template and the grid
        sentence when `score_step` is set), the dimension list and the answer schema. Labels made
        under different hashes are never mixed. Computed once per loaded filter (the label stage
        reads it for every label)."""
        grid = "\n" + self.grid_sentence if self.score_step is not None else ""
        return sha256_text(self.prompt_template + grid + "\n" + json.dumps(self.answer_schema(), sort_keys=True))

    # ---- prompt ---------------------------------------------------------------------------
    @property
    def grid_sentence(self) -> str:
        """The rubric's sentence about the scores' grid ("" without `score_step`)."""
        if self.score_step is None:
            return ""
        return f"Scores must be multiples of {_num(self.score_step)} ({_grid_example(self.score_step)})."

    @functools.cached_property
    def _template_split(self) -> tuple[str, str]:
        """(rubric, article template): the template cut before the block holding the placeholders,
        the grid sentence appended to the rubric so it is cached with it."""
        cut = _first_placeholder(self.prompt_template)
        if cut is None:
            raise PromptError(f"{self.id}: the article did not reach the rendered prompt "
                              "(the template holds neither {title} nor {text})")
        static, dynamic = self.prompt_template[:cut], self.prompt_template[cut:]
        if self.score_step is not None:
            static = static.rstrip("\n") + "\n\n" + self.grid_sentence + "\n\n"
        return static, dynamic

    def prompt_parts(self, title: str, text: str) -> tuple[str, str]:
        """(static rubric, article part): providers cache the first and bill the second.

        The article template is filled in one pass, so a title or text holding `{text}`, `{title}`
        or any other braces is inserted as it is and never filled again. Raises PromptError unless
        {title} and {text} were each filled exactly once: the article must provably reach the
        prompt (a template bug once sent the rubric alone)."""
        values = {
            "title": _neutralise(title or ""),
            "text": _neutralise(head_tail_truncate(text or "", self.max_article_chars)),
        }
        static, dynamic = self._template_split
        filled = {name: 0 for name in PLACEHOLDERS}

        def fill(m: re.Match) -> str:
            filled[m.group(1)] += 1
            return values[m.group(1)]

        article = _FILL.sub(fill, dynamic)
        wrong = [f"{{{name}}} {n} times" for name, n in filled.items() if n != 1]
        if wrong:
            raise PromptError(f"{self.id}: the article did not reach the rendered prompt "
                              f"(the template's article part filled {', '.join(wrong)}, expected once each)")
        return static, article

    def render_prompt(self, title: str, text: str) -> str:
        """The whole prompt: rubric + article part (see prompt_parts, which raises PromptError)."""
        static, article = self.prompt_parts(title, text)
        return static + article

    def corrective_message(self, problem: str) -> str:
        names = ", ".join(self.dimension_names)
        values = (f"multiples of {_num(self.score_step)} from 0 to 10" if self.score_step is not None
                  else "numbers 0-10")
        return (
            f"Your previous answer was not valid: {problem}. Answer again with one JSON object only, "
            f'with keys "scores" ({values} for {names}), "content_type" (one of '
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
        """The JSON schema sent to the provider. An answer that fits it is valid (validate_answer
        checks exactly this schema); with `score_step` each score carries `multipleOf`. Built once
        per loaded filter, like the prompt's parts: every request carries this same dict, which no
        one may change."""
        return self._answer_schema

    @functools.cached_property
    def _answer_schema(self) -> dict:
        return self._schema(grid=True)

    def _schema(self, grid: bool) -> dict:
        names = self.dimension_names
        score: dict[str, Any] = {"type": "number", "minimum": SCORE_MIN, "maximum": SCORE_MAX}
        if grid and self.score_step is not None:
            score["multipleOf"] = self.score_step
        return {
            "type": "object",
            "properties": {
                "scores": {
                    "type": "object",
                    "properties": {n: dict(score) for n in names},
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
        """Return (scores, content_type, evidence) or raise AnswerError saying what is wrong.

        Valid means: fits answer_schema(). Scores are kept as the oracle gave them (3.8 stays 3.8);
        a `score_step` grid is checked here with a relative tolerance, because jsonschema's float
        arithmetic would reject 0.3 as a multiple of 0.1."""
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
            if self.score_step is not None and not on_grid(float(v), self.score_step):
                raise AnswerError(f"scores/{name}: {v} is not a multiple of {_num(self.score_step)}")
            scores[name] = float(v)
        return scores, answer["content_type"], {n: answer["evidence"][n] for n in self.dimension_names}

    def parse_answer(self, raw: str | None) -> tuple[dict[str, float], str, dict[str, str]]:
        """Parse raw model text (JSON, possibly fenced or wrapped in prose) and validate it."""
        if raw is None or not raw.strip():
            raise AnswerError("empty answer")
        return self.validate_answer(extract_json(raw))

    # ---- overall score and tier -----------------------------------------------------------
    def overall(self, scores: Mapping[str, Any], content_type: Any = None) -> Any:
        """The overall score: the weighted sum of the dimensions (in the package's order), capped at
        each gatekeeper's max_overall where its dimension is below its threshold, and at the content
        type's cap. For one article (floats, a content type or None: a float back) or for columns
        (numpy arrays and an array of content types: an array back). The one implementation:
        overall_sql is the same arithmetic for the score view, and the tests hold the two equal."""
        value: Any = 0.0
        for d in self.dimensions:
            value = value + d.weight * scores[d.name]
        for g in self.gatekeepers:
            value = np.where(np.asarray(scores[g.dimension]) < g.below, np.minimum(value, g.max_overall), value)
        if self.content_type_caps:
            types = np.asarray(content_type, dtype=object)
            for ct, cap in self.content_type_caps.items():
                value = np.where(types == ct, np.minimum(value, cap), value)
        return float(value) if np.ndim(value) == 0 else value

    def tier_index(self, overall: Any) -> Any:
        """Index into `tiers` of the first tier (highest threshold first) whose min_overall the
        overall score reaches; the last tier also takes every score below its own min_overall (it is
        usually 0). An int for one score, an array for a column (tier_sql is the same in SQL)."""
        last = len(self.tiers) - 1
        conditions = [np.asarray(overall) >= t.min_overall for t in self.tiers[:-1]]
        index = np.select(conditions, list(range(last)), default=last) if conditions else np.full(np.shape(overall), last)
        return int(index) if np.ndim(index) == 0 else index

    def tier(self, overall: float) -> str:
        return self.tiers[self.tier_index(overall)].name

    def overall_sql(self) -> str:
        """The same arithmetic as `overall`, as an SQL expression over the view's columns."""
        expr = "0.0" + "".join(f" + {sql_number(d.weight)} * {sql_identifier(d.name)}" for d in self.dimensions)
        expr = f"({expr})"
        for g in self.gatekeepers:
            expr = (f"(CASE WHEN {sql_identifier(g.dimension)} < {sql_number(g.below)} "
                    f"THEN MIN({expr}, {sql_number(g.max_overall)}) ELSE {expr} END)")
        if self.content_type_caps:
            cases = " ".join(
                f"WHEN {sql_literal(ct)} THEN MIN({expr}, {sql_number(cap)})"
                for ct, cap in sorted(self.content_type_caps.items())
            )
            expr = f"(CASE content_type {cases} ELSE {expr} END)"
        return expr

    def tier_sql(self, column: str = "overall") -> str:
        """The same choice as `tier`, as an SQL expression over `column` (an identifier)."""
        col = sql_identifier(column)
        last = sql_literal(self.tiers[-1].name)
        whens = " ".join(f"WHEN {col} >= {sql_number(t.min_overall)} THEN {sql_literal(t.name)}"
                         for t in self.tiers[:-1])
        return f"(CASE {whens} ELSE {last} END)" if whens else last


# ---- SQL text from package values ---------------------------------------------------------------
# SQLite views cannot take bound parameters, so every name and number from a filter package that
# reaches a view's SQL goes through one of these three (on top of load_filter's name patterns).

def sql_literal(value: str) -> str:
    """`value` as an SQL string literal ('' escapes a quote)."""
    value = str(value)
    if "\x00" in value:
        raise ValueError(f"NUL character in an SQL string literal: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """`name` as a quoted SQL identifier ("" escapes a double quote)."""
    name = str(name)
    if "\x00" in name:
        raise ValueError(f"NUL character in an SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def sql_number(value: float) -> str:
    """A finite number as an SQL real literal (repr of the float: exact round trip)."""
    if isinstance(value, bool):
        raise ValueError(f"not a number for SQL: {value!r}")
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"not a finite number for SQL: {value!r}")
    return repr(f)


# ---- score grid ---------------------------------------------------------------------------------

def on_grid(value: float, step: float) -> bool:
    """Whether `value` is a multiple of `step`, up to floating-point noise."""
    k = value / step
    return abs(k - round(k)) <= _GRID_TOLERANCE * max(1.0, abs(k))


def _num(x: float) -> str:
    return f"{x:.10g}"  # 3 * 0.1 prints as 0.3


def _grid_example(step: float) -> str:
    n = int(round(SCORE_MAX / step))
    ks = range(n + 1) if n <= 4 else [0, 1, 2, None, n]
    return ", ".join("..." if k is None else _num(k * step) for k in ks)


# one compiled validator per answer shape: building a Draft202012Validator costs more than using it
_VALIDATORS: dict[tuple[tuple[str, ...], tuple[str, ...]], jsonschema.Draft202012Validator] = {}


def _answer_validator(filt: Filter) -> jsonschema.Draft202012Validator:
    # the schema without its grid (validate_answer checks `multipleOf` itself, with a tolerance)
    # depends on the dimension names and content types only, so they are the key
    key = (tuple(filt.dimension_names), tuple(filt.content_types))
    validator = _VALIDATORS.get(key)
    if validator is None:
        validator = _VALIDATORS[key] = jsonschema.Draft202012Validator(filt._schema(grid=False))
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


def _first_placeholder(template: str) -> int | None:
    positions = [p for p in (template.find("{title}"), template.find("{text}")) if p >= 0]
    if not positions:
        return None
    first = min(positions)
    # cut at the start of the line holding the first placeholder's enclosing block
    block = template.rfind("<article>", 0, first)
    return block if block >= 0 else template.rfind("\n", 0, first) + 1


# ---- loading ----------------------------------------------------------------------------------

def load_filter(path: str | Path) -> Filter:
    """Load and validate a filter package; raise FilterError listing every problem found.

    Checked before anything is written or sent: names (filter, dimensions, content types, tiers)
    match `^[a-z][a-z0-9_]*$` (at most 40 characters) and the version is digits with optional dots
    or underscores, since they reach SQL views; weights, thresholds, caps and gatekeepers are
    finite and scores/overalls lie in 0-10; `score_step`, when set, divides 10; prompt.md holds
    {title} and {text} once each and no other `{placeholder}` (nothing would fill it)."""
    root = Path(path)
    cfg, template = _read_package(root)
    problems: list[str] = []
    for key in sorted(set(cfg) - _TOP_KEYS, key=str):
        problems.append(f"unknown key '{key}' (known: {', '.join(sorted(_TOP_KEYS))})")
    name, version = _name_and_version(cfg, problems)
    dims = _dimensions(cfg, template, problems)
    gates = _gatekeepers(cfg, {d.name for d in dims}, problems)
    ctypes = _content_types(cfg, template, problems)
    caps = _content_type_caps(cfg, ctypes, problems)
    tiers = _tiers(cfg, problems)
    step = cfg.get("score_step")
    if step is not None and not _divides_score_range(step):
        problems.append(f"score_step {step!r} must be a positive number that divides 10 (such as 0.5 or 1)")
    rules = _prefilter(cfg, problems)
    _check_placeholders(template, problems)
    for key, default in (("min_chars", 300), ("max_article_chars", 12000)):
        v = cfg.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(f"{key} must be a positive integer")
    if problems:
        raise FilterError(root, problems)
    return Filter(
        path=str(root), name=name, version=version, description=str(cfg.get("description", "")).strip(),
        dimensions=tuple(dims), gatekeepers=tuple(gates), content_types=tuple(ctypes),
        content_type_caps=caps, tiers=tuple(tiers), prefilter=tuple(rules),
        min_chars=int(cfg.get("min_chars", 300)), max_article_chars=int(cfg.get("max_article_chars", 12000)),
        prompt_template=template, config=cfg, score_step=None if step is None else float(step),
    )


def _read_package(root: Path) -> tuple[dict, str]:
    """(config, prompt template) of a package, or FilterError when either cannot be read."""
    cfg_path, prompt_path = root / "config.yaml", root / "prompt.md"
    if not root.is_dir():
        raise FilterError(root, ["not a directory: pass --filter filters/<name>/v<N>"])
    missing = [f"{p.name} is missing" for p in (cfg_path, prompt_path) if not p.is_file()]
    if missing:
        raise FilterError(root, missing)
    cfg = yaml_document(cfg_path, FilterError)
    if not isinstance(cfg, dict):
        raise FilterError(cfg_path, ["config must be a YAML mapping"])
    return cfg, prompt_path.read_text(encoding="utf-8")


def _name_and_version(cfg: dict, problems: list[str]) -> tuple[str, str]:
    name = str(cfg.get("name", ""))
    if not _is_name(name):
        problems.append(f"name {name!r} must be {_NAME_RULE}")
    raw_version = cfg.get("version")
    version = "" if raw_version is None else str(raw_version)
    version = version[1:] if version.startswith("v") else version
    if not version:
        problems.append("version is missing")
    elif isinstance(raw_version, bool) or len(version) > NAME_MAX_CHARS or not _VERSION.match(version):
        problems.append(f"version {raw_version!r} must be digits, optionally with dots or underscores "
                        "(such as 1, 2 or 1_1; a leading 'v' is dropped)")
    return name, version


def _dimensions(cfg: dict, template: str, problems: list[str]) -> list[Dimension]:
    raw_dims = cfg.get("dimensions")
    if not isinstance(raw_dims, list) or not raw_dims:
        problems.append("dimensions must be a non-empty list")
        raw_dims = []
    dims: list[Dimension] = []
    seen: set[str] = set()
    for i, d in enumerate(raw_dims):
        if not isinstance(d, dict):
            problems.append(f"dimensions[{i}] must be a mapping")
            continue
        dims.append(_dimension(d, i, template, seen, problems))
    total = sum(d.weight for d in dims)
    if dims and abs(total - 1.0) > 1e-6:
        problems.append(f"dimension weights sum to {total:g}, they must sum to 1")
    return dims


def _dimension(d: dict, i: int, template: str, seen: set[str], problems: list[str]) -> Dimension:
    dname = str(d.get("name", ""))
    label = f"dimension '{dname or i}'"
    for key in sorted(set(d) - _DIM_KEYS, key=str):
        problems.append(f"{label}: unknown key '{key}'")
    if not _is_name(dname):
        problems.append(f"{label}: name must be {_NAME_RULE}")
    if dname in seen:
        problems.append(f"{label}: listed twice")
    seen.add(dname)
    w = d.get("weight")
    if not _is_number(w) or w < 0:
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
    return Dimension(dname, float(w), str(d.get("description", "")), str(d.get("low", "")),
                     {str(k): str(v) for k, v in anchors.items()})


def _gatekeepers(cfg: dict, dimension_names: set[str], problems: list[str]) -> list[Gatekeeper]:
    gates: list[Gatekeeper] = []
    for i, g in enumerate(cfg.get("gatekeepers") or []):
        if not isinstance(g, dict) or g.get("dimension") not in dimension_names:
            problems.append(f"gatekeepers[{i}]: dimension must be one of the dimensions")
            continue
        if not _is_number(g.get("below")) or not _is_number(g.get("max_overall")):
            problems.append(f"gatekeepers[{i}]: needs numeric 'below' and 'max_overall'")
            continue
        bad = [f"{key} {g[key]!r}" for key in ("below", "max_overall") if not _in_score_range(g[key])]
        if bad:
            problems.append(f"gatekeepers[{i}]: {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} outside 0-10")
            continue
        gates.append(Gatekeeper(g["dimension"], float(g["below"]), float(g["max_overall"])))
    return gates


def _content_types(cfg: dict, template: str, problems: list[str]) -> list[str]:
    ctypes = cfg.get("content_types") or []
    if not isinstance(ctypes, list) or not ctypes:
        problems.append("content_types must be a non-empty list of names")
        ctypes = []
    good: list[str] = []
    for c in ctypes:
        if not isinstance(c, str) or not _is_name(c):
            problems.append(f"content type {c!r}: name must be {_NAME_RULE}")
        elif c in good:
            problems.append(f"content type '{c}': listed twice")
        else:
            good.append(c)
            if c not in template:
                problems.append(f"content type '{c}' is not mentioned in prompt.md")
    return good


def _content_type_caps(cfg: dict, ctypes: list[str], problems: list[str]) -> dict[str, float]:
    caps: dict[str, float] = {}
    raw_caps = cfg.get("content_type_caps") or {}
    if not isinstance(raw_caps, dict):
        problems.append("content_type_caps must be a mapping of content type to cap")
        raw_caps = {}
    for c, cap in raw_caps.items():
        if c not in ctypes:
            problems.append(f"content_type_caps: '{c}' is not one of content_types")
        elif not _is_number(cap):
            problems.append(f"content_type_caps: cap for '{c}' must be a number")
        elif not _in_score_range(cap):
            problems.append(f"content_type_caps: cap {cap!r} for '{c}' is outside 0-10")
        else:
            caps[c] = float(cap)
    return caps


def _tiers(cfg: dict, problems: list[str]) -> list[Tier]:
    tiers: list[Tier] = []
    raw_tiers = cfg.get("tiers") or []
    if not isinstance(raw_tiers, list):
        problems.append("tiers must be a list")
        raw_tiers = []
    for i, t in enumerate(raw_tiers):
        if not isinstance(t, dict) or not t.get("name") or not _is_number(t.get("min_overall")):
            problems.append(f"tiers[{i}]: needs a name and a numeric min_overall")
            continue
        tname = str(t["name"])
        if not _is_name(tname):
            problems.append(f"tiers[{i}]: name {tname!r} must be {_NAME_RULE}")
        elif tname in (x.name for x in tiers):
            problems.append(f"tiers[{i}]: '{tname}' is listed twice")
        elif not _in_score_range(t["min_overall"]):
            problems.append(f"tiers[{i}] '{tname}': min_overall {t['min_overall']!r} is outside 0-10")
        else:
            tiers.append(Tier(tname, float(t["min_overall"]), str(t.get("description", ""))))
    if not tiers and not raw_tiers:
        problems.append("tiers must list at least one tier")
    elif [t.min_overall for t in tiers] != sorted((t.min_overall for t in tiers), reverse=True):
        problems.append("tiers must be listed from the highest min_overall to the lowest")
    return tiers


def _prefilter(cfg: dict, problems: list[str]) -> list[PrefilterRule]:
    rules: list[PrefilterRule] = []
    for i, r in enumerate(cfg.get("prefilter") or []):
        try:
            rules.append(PrefilterRule(re.compile(r["pattern"], re.I),
                                       tuple(re.compile(u, re.I) for u in r.get("unless", [])),
                                       str(r.get("reason", r["pattern"]))))
        except (KeyError, TypeError, re.error) as e:
            problems.append(f"prefilter[{i}]: {e}")
    return rules


def _check_placeholders(template: str, problems: list[str]) -> None:
    for ph in PLACEHOLDERS:
        n = template.count(f"{{{ph}}}")
        if n != 1:
            problems.append(f"prompt.md must contain the placeholder {{{ph}}} exactly once (found {n})")
    unknown = sorted({m.group(0) for m in _PLACEHOLDER_LIKE.finditer(template)}
                     - {f"{{{ph}}}" for ph in PLACEHOLDERS})
    for ph in unknown:
        problems.append(f"prompt.md has the placeholder {ph}, which nothing fills "
                        "(only {title} and {text} are filled; remove it or write the text out)")


def _is_name(s: str) -> bool:
    return len(s) <= NAME_MAX_CHARS and _NAME.match(s) is not None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _in_score_range(v: Any) -> bool:
    return _is_number(v) and SCORE_MIN <= v <= SCORE_MAX


def _divides_score_range(step: Any) -> bool:
    if not _is_number(step) or not 0 < step <= SCORE_MAX:
        return False
    return on_grid(SCORE_MAX, float(step))
