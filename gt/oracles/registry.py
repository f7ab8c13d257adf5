"""The oracle registry: names users type (`--llm gemini-pro`) -> an OracleSpec from oracles.yaml
-> a live Oracle from the matching provider module.

Providers declare themselves: every module of this package with a module-level `PROVIDER` (a
base.ProviderInfo) is a provider, and every provider table below is built from those declarations,
so adding a provider is adding its module. Provider modules import their SDK only where they use it,
so reading the declarations (and `--help`, and the offline oracles) never loads an SDK.

Keys and base URLs are read from the environment here, at the edge, and handed to the provider's
class as arguments: provider modules never read the environment nor import this module.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import re
from pathlib import Path
from typing import Any, Iterable, Mapping


from gt import PROJECT_ROOT
from gt.core.errors import NONNEGATIVE, POSITIVE, WHOLE_POSITIVE, FileProblems
from gt.core.text import yaml_document
from gt.oracles.base import Option, Oracle, OracleSpec, ProviderInfo
from gt.oracles.batch import BATCH_OPTIONS, CACHE_OPTIONS


def provider_modules() -> list[str]:
    """Every module of this package (each folder of its __path__, in name order): those declaring a
    PROVIDER are the providers."""
    package = importlib.import_module(__package__)
    return [f"{__package__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
            if not m.ispkg and m.name != __name__.rpartition(".")[2]]


def declarations(modules: Iterable[str]) -> dict[str, ProviderInfo]:
    """provider name -> its ProviderInfo, from the `PROVIDER` of each module that has one."""
    found: dict[str, ProviderInfo] = {}
    for module_name in modules:
        info = getattr(importlib.import_module(module_name), "PROVIDER", None)
        if not isinstance(info, ProviderInfo):
            continue
        if info.name in found:
            raise ImportError(f"{module_name}: provider '{info.name}' is already declared by another module "
                              f"(give one of them another name)")
        found[info.name] = info
    return found


# provider name -> declaration; the tables below are views of it, kept under the names other code imports
PROVIDER_INFO: dict[str, ProviderInfo] = declarations(provider_modules())
PROVIDERS = tuple(PROVIDER_INFO)
_PROVIDER_CLASSES = {name: info.oracle_class for name, info in PROVIDER_INFO.items()}
BASE_URL_ENV = {name: info.base_url_env for name, info in PROVIDER_INFO.items() if info.base_url_env}
OFFLINE_PROVIDERS = tuple(name for name, info in PROVIDER_INFO.items() if info.offline)   # no network, no key
STAND_IN_PROVIDERS = tuple(name for name, info in PROVIDER_INFO.items() if info.stand_in)  # not a real LLM
BATCH_ADAPTERS = {name: info.batch_adapter for name, info in PROVIDER_INFO.items() if info.batch_adapter}
PATTERN = "<model>"
DEFAULT_PATH = PROJECT_ROOT / "oracles.yaml"

_FIELDS = {f.name: f for f in dataclasses.fields(OracleSpec)}
_NUMBER_FIELDS = {"input_per_m", "output_per_m", "batch_input_per_m", "batch_output_per_m",
                  "cache_read_per_m", "cache_write_per_m", "rpm", "tpm", "timeout_s"}
_OPTIONAL = {"batch_input_per_m", "batch_output_per_m", "cache_read_per_m", "cache_write_per_m",
             "rpm", "tpm", "base_url", "api_key_env"}
_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def known_options(provider: str) -> dict[str, Option]:
    """The options.<name> an entry of `provider` may set: the provider's own, the prompt-cache
    option of every remote provider, and the batch options of providers with a batch service."""
    info = PROVIDER_INFO[provider]
    common = {} if info.offline else dict(CACHE_OPTIONS)
    return {**common, **(BATCH_OPTIONS if info.batch_adapter else {}), **info.options}


class OracleConfigError(Exception):
    """A problem a user fixes in oracles.yaml, on the command line or in the environment. The
    message is one line: what is wrong, where, and what to do."""


class RegistryError(FileProblems, OracleConfigError):
    """oracles.yaml is malformed; `problems` holds one line per problem."""


class UnknownOracle(OracleConfigError):
    pass


class MissingKey(OracleConfigError):
    pass


def load_registry(path: str | Path = DEFAULT_PATH) -> dict[str, OracleSpec]:
    """Read and validate oracles.yaml; raise RegistryError listing every problem found."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(path, ["file not found (copy oracles.yaml from the project root)"])
    doc = yaml_document(path, RegistryError)
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
    info = PROVIDER_INFO.get(provider) if isinstance(provider, str) else None
    if info is None:
        problems.append(f"{where}: provider must be one of {', '.join(PROVIDER_INFO)} (got {provider!r})")
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
        else:
            rng = POSITIVE if key in ("timeout_s", "rpm", "tpm") else NONNEGATIVE   # a price may be 0, a limit not
            problem = rng.problem(key, v)
            if problem:   # NaN or infinity too: a price that cannot be stored would leave paid calls unrecorded
                problems.append(f"{where}: {problem}{' (or null)' if key in _OPTIONAL else ''}")
            else:
                values[key] = float(v)
    if "max_output_tokens" in entry:
        problem = WHOLE_POSITIVE.problem("max_output_tokens", entry["max_output_tokens"])
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            values["max_output_tokens"] = entry["max_output_tokens"]
    base_url = entry.get("base_url")
    if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
        problems.append(f"{where}: base_url must start with http:// or https://")
    options = dict(entry.get("options") or {}) if isinstance(entry.get("options") or {}, dict) else None
    if options is None:
        problems.append(f"{where}: options must be a mapping")
        options = {}
    elif info is not None:
        problems += _option_problems(where, provider, options)
    if "api_key_env" in entry:     # the entry's own variables (null: this entry needs no key)
        key_env = entry["api_key_env"]
    else:                          # the provider's declared ones
        key_env = list(info.key_envs) if info is not None and info.key_envs else None
    env_names = [key_env] if isinstance(key_env, str) else key_env
    if key_env is not None and not (isinstance(env_names, list) and env_names
                                    and all(isinstance(n, str) and n for n in env_names)):
        problems.append(f"{where}: api_key_env must be a variable name, a list of names, or null")
        env_names = None
    if info is not None and info.key_required and not env_names:
        problems.append(f"{where}: provider {provider} needs a key: remove api_key_env: null (the provider's "
                        f"{' or '.join(info.key_envs) or 'variable'} is used) or name the variable")
    if env_names and len(env_names) > 1:
        options["api_key_env_alternatives"] = list(env_names[1:])
    if len(problems) > before:
        return None
    return OracleSpec(name=name, provider=provider, model=model, base_url=base_url,
                      api_key_env=env_names[0] if env_names else None, options=options, **values)


def _option_problems(where: str, provider: str, options: Mapping[str, Any]) -> list[str]:
    """One line per unknown option or option of the wrong kind."""
    known = known_options(provider)
    problems = []
    for key, value in options.items():
        option = known.get(key)
        if option is None:
            problems.append(f"{where}: unknown option '{key}' (provider {provider} knows: "
                            f"{', '.join(sorted(known)) or 'none'})")
        elif not _is_kind(value, option.kind):
            wanted = (f"one of {', '.join(map(str, option.kind))}" if isinstance(option.kind, tuple)
                      else _KIND_WORDS.get(option.kind, option.kind.__name__))
            problems.append(f"{where}: options.{key} must be {wanted} (got {value!r}): {option.help}")
    return problems


def _is_kind(value: Any, kind: type | tuple) -> bool:
    if isinstance(kind, tuple):
        return value in kind
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


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


def key_variables(specs: Iterable[OracleSpec] | None = None) -> frozenset[str]:
    """Every variable that may hold an API key: each provider's declared key_envs, plus each spec's
    api_key_env and its alternatives (`specs` None: every entry of the default oracles.yaml, or
    none where it does not load). Their values are masked in every error that is stored or printed."""
    if specs is None:
        try:
            specs = load_registry().values()
        except OracleConfigError:
            specs = ()
    names = {name for info in PROVIDER_INFO.values() for name in info.key_envs}
    for spec in specs:
        names.update(api_key_env_names(spec))
    return frozenset(names)


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
    info = PROVIDER_INFO.get(spec.provider)
    env = info.base_url_env if info else None
    return (os.environ.get(env, "").strip() if env else "") or None


def entry_base_url_env(spec: OracleSpec) -> str:
    """The variable that redirects one entry: 'deepseek' -> DEEPSEEK_BASE_URL, 'ollama/x' -> OLLAMA_BASE_URL."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", spec.name.split("/")[0]).strip("_").upper()
    return f"{stem}_BASE_URL"


def make_oracle(spec: OracleSpec) -> Oracle:
    """A live oracle for `spec`: checks credentials first, then builds the provider's class, handing
    a remote one its key and base URL."""
    check_credentials(spec)
    info = PROVIDER_INFO[spec.provider]
    if info.offline:
        return info.oracle_class(spec)
    return info.oracle_class(spec, api_key=api_key(spec), base_url=base_url(spec))
