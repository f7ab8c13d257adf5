"""The oracle registry: names users type (`--llm gemini-pro`) -> an OracleSpec from oracles.yaml
-> a live Oracle from the matching provider module.

Keys and base URLs are read from the environment here, at the edge, so provider modules receive
them as arguments and nothing else ever sees a key.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from stages.oracles.base import Oracle, OracleSpec

PROVIDERS = ("gemini", "anthropic", "openai", "local-embed", "local-llm", "replay")
# provider -> (module, class); imported lazily so `--help` and the offline oracles never load SDKs
_PROVIDER_CLASSES = {
    "gemini": ("stages.oracles.gemini", "GeminiOracle"),
    "anthropic": ("stages.oracles.anthropic_provider", "AnthropicOracle"),
    "openai": ("stages.oracles.openai_compat", "OpenAICompatOracle"),
    "local-embed": ("stages.oracles.local_embed", "LocalEmbedOracle"),
    "local-llm": ("stages.oracles.local_llm", "LocalLLMOracle"),
    "replay": ("stages.oracles.replay", "ReplayOracle"),
}
BASE_URL_ENV = {"gemini": "GEMINI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
OFFLINE_PROVIDERS = ("local-embed", "local-llm", "replay")   # need no network and no key
STAND_IN_PROVIDERS = ("local-embed", "local-llm")            # offline stand-ins, not substitutes for a real LLM
PATTERN = "<model>"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "oracles.yaml"

_FIELDS = {f.name: f for f in dataclasses.fields(OracleSpec)}
_NUMBER_FIELDS = {"input_per_m", "output_per_m", "batch_input_per_m", "batch_output_per_m",
                  "cache_read_per_m", "cache_write_per_m", "rpm", "tpm", "timeout_s"}
_OPTIONAL = {"batch_input_per_m", "batch_output_per_m", "cache_read_per_m", "cache_write_per_m",
             "rpm", "tpm", "base_url", "api_key_env"}


class OracleConfigError(Exception):
    """A problem a user fixes in oracles.yaml, on the command line or in the environment. The
    message is one line: what is wrong, where, and what to do."""


class RegistryError(OracleConfigError):
    """oracles.yaml is malformed; `problems` holds one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class UnknownOracle(OracleConfigError):
    pass


class MissingKey(OracleConfigError):
    pass


def load_registry(path: str | Path = DEFAULT_PATH) -> dict[str, OracleSpec]:
    """Read and validate oracles.yaml; raise RegistryError listing every problem found."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(path, ["file not found (copy oracles.yaml from the project root)"])
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RegistryError(path, [f"YAML syntax error{line}: {getattr(e, 'problem', e)}"]) from None
    entries = doc.get("oracles") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(path, ["expected a top-level 'oracles:' mapping of name -> entry"])
    problems: list[str] = []
    registry: dict[str, OracleSpec] = {}
    for name, entry in entries.items():
        spec = _spec_from_entry(str(name), entry, problems)
        if spec is not None:
            registry[str(name)] = spec
    if problems:
        raise RegistryError(path, problems)
    return registry


def _spec_from_entry(name: str, entry: Any, problems: list[str]) -> OracleSpec | None:
    where = f"oracle '{name}'"
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a mapping of fields")
        return None
    before = len(problems)
    for key in sorted(set(entry) - set(_FIELDS) - {"name"}):
        problems.append(f"{where}: unknown field '{key}' (known: {', '.join(sorted(set(_FIELDS) - {'name'}))})")
    provider = entry.get("provider")
    if provider not in PROVIDERS:
        problems.append(f"{where}: provider must be one of {', '.join(PROVIDERS)} (got {provider!r})")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        problems.append(f"{where}: model (the provider's model id) is missing")
    if (PATTERN in name) != (isinstance(model, str) and PATTERN in model):
        problems.append(f"{where}: a pattern entry needs {PATTERN} in both its name and its model")
    values: dict[str, Any] = {}
    for key in _NUMBER_FIELDS:
        if key not in entry:
            continue
        v = entry[key]
        if v is None and key in _OPTIONAL:
            values[key] = None
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            problems.append(f"{where}: {key} must be a non-negative number{' or null' if key in _OPTIONAL else ''}")
        else:
            values[key] = float(v)
    if "timeout_s" in values and not values["timeout_s"]:
        problems.append(f"{where}: timeout_s must be positive")
    if "max_output_tokens" in entry:
        v = entry["max_output_tokens"]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            problems.append(f"{where}: max_output_tokens must be a positive integer")
        else:
            values["max_output_tokens"] = v
    base_url = entry.get("base_url")
    if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
        problems.append(f"{where}: base_url must start with http:// or https://")
    options = dict(entry.get("options") or {}) if isinstance(entry.get("options") or {}, dict) else None
    if options is None:
        problems.append(f"{where}: options must be a mapping")
        options = {}
    key_env = entry.get("api_key_env")
    env_names = [key_env] if isinstance(key_env, str) else key_env
    if key_env is not None and not (isinstance(env_names, list) and env_names
                                    and all(isinstance(n, str) and n for n in env_names)):
        problems.append(f"{where}: api_key_env must be a variable name, a list of names, or null")
        env_names = None
    if provider in ("gemini", "anthropic") and not env_names:
        problems.append(f"{where}: api_key_env is required for provider {provider}")
    if env_names and len(env_names) > 1:
        options["api_key_env_alternatives"] = list(env_names[1:])
    if len(problems) > before:
        return None
    return OracleSpec(name=name, provider=provider, model=model, base_url=base_url,
                      api_key_env=env_names[0] if env_names else None, options=options, **values)


def resolve(name: str, registry: dict[str, OracleSpec]) -> OracleSpec:
    """The spec for a name users type; `ollama/llama3.1` fills the `ollama/<model>` pattern."""
    if name in registry and PATTERN not in name:
        return registry[name]
    for pattern, spec in registry.items():
        if PATTERN not in pattern:
            continue
        prefix, _, suffix = pattern.partition(PATTERN)
        if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
            model = name[len(prefix):len(name) - len(suffix)]
            return dataclasses.replace(spec, name=name, model=spec.model.replace(PATTERN, model))
    raise UnknownOracle(
        f"unknown oracle '{name}', oracles.yaml knows {', '.join(sorted(registry))} "
        f"(pick one of these, or add an entry to oracles.yaml)")


def api_key_env_names(spec: OracleSpec) -> list[str]:
    if not spec.api_key_env:
        return []
    return [spec.api_key_env, *spec.options.get("api_key_env_alternatives", [])]


def api_key(spec: OracleSpec) -> str | None:
    """The key from the first of the spec's variables that is set; None when it needs none."""
    for env in api_key_env_names(spec):
        value = os.environ.get(env, "").strip()
        if value:
            return value
    return None


def check_credentials(spec: OracleSpec) -> None:
    """Raise MissingKey (one line: which variable to set) before any work starts."""
    names = api_key_env_names(spec)
    if names and api_key(spec) is None:
        alternatives = f" (or {' or '.join(names[1:])})" if len(names) > 1 else ""
        raise MissingKey(
            f"no API key for oracle '{spec.name}', {names[0]}{alternatives} is not set "
            f"(export {names[0]}=<your key> and run again)")


def base_url(spec: OracleSpec) -> str | None:
    """Where requests go. An entry with its own base_url (deepseek, ollama/<model>) can only be
    redirected by its own variable (DEEPSEEK_BASE_URL, OLLAMA_BASE_URL): a provider-wide
    OPENAI_BASE_URL set for OpenAI must never receive another provider's key. Entries without
    one follow GEMINI_BASE_URL / ANTHROPIC_BASE_URL / OPENAI_BASE_URL, else the SDK's default."""
    own = os.environ.get(entry_base_url_env(spec), "").strip()
    if own:
        return own
    if spec.base_url:
        return spec.base_url
    env = BASE_URL_ENV.get(spec.provider)
    return (os.environ.get(env, "").strip() if env else "") or None


def entry_base_url_env(spec: OracleSpec) -> str:
    """The variable that redirects one entry: 'deepseek' -> DEEPSEEK_BASE_URL, 'ollama/x' -> OLLAMA_BASE_URL."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", spec.name.split("/")[0]).strip("_").upper()
    return f"{stem}_BASE_URL"


def make_oracle(spec: OracleSpec) -> Oracle:
    """A live oracle for `spec`: checks credentials first, then builds the provider's client."""
    check_credentials(spec)
    module_name, class_name = _PROVIDER_CLASSES[spec.provider]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)
