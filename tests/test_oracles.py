"""The oracle layer through the real SDK clients against the loopback fake provider server: the
answers and token usage users get, how every provider failure surfaces, credentials checked before
any request, keys never leaked, and the offline local-embed oracle."""
from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from gt.core.filters import AnswerError
from gt.oracles import registry
from gt.oracles.base import (Completion, FatalError, OracleRequest, ProviderInfo, QuotaExhausted, RateLimited,
                                 TransientError)
from tests.conftest import ROOT
from tests.conftest import sample_articles as sample
from tests.fakes import FakeProviderServer, expected_answer

SECRET = "sk-test-SECRET-never-leak-0123456789"
REMOTE = ["gemini-flash", "claude-haiku", "gpt-4o-mini", "deepseek"]
PROVIDER_OF = {"gemini-flash": "gemini", "claude-haiku": "anthropic", "gpt-4o-mini": "openai"}
SDKS = ("google.genai", "anthropic", "openai", "httpx2")


def request_for(filt, article: dict, followups=()) -> OracleRequest:
    rubric, part = filt.prompt_parts(article["title"], article["text"])
    return OracleRequest(rubric=rubric, article=part, schema=filt.answer_schema(), followups=tuple(followups),
                         title=article["title"], text=article["text"], filter=filt, request_id=f"{article['id']}#0")


def spec_of(name: str, **changes):
    return dataclasses.replace(registry.resolve(name, registry.load_registry()), **changes)


async def call(spec, requests):
    oracle = registry.make_oracle(spec)
    try:
        out = []
        for r in requests:
            try:
                out.append(await oracle.complete(r))
            except Exception as e:   # noqa: BLE001 - the test inspects what came back
                out.append(e)
        return out
    finally:
        await oracle.aclose()


def run(spec, requests):
    return asyncio.run(call(spec, requests))


@pytest.fixture(scope="module")
def server():
    with FakeProviderServer(retry_after_s=2.0, slow_s=2.0) as srv:
        yield srv


@pytest.fixture
def fake(server, monkeypatch):
    server.reset()
    server.models_without_json_schema.clear()
    for k, v in server.env(api_key=SECRET).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    return server


# ---- answers and usage ----------------------------------------------------------------------

@pytest.mark.parametrize("name", REMOTE)
def test_each_provider_returns_the_servers_answer_with_token_usage(name, fake, uplifting):
    articles = sample(3)
    spec = spec_of(name)
    completions = run(spec, [request_for(uplifting, a) for a in articles])
    for article, c in zip(articles, completions):
        assert isinstance(c, Completion), c
        assert json.loads(c.text) == expected_answer(uplifting, article["title"], article["text"])
        uplifting.parse_answer(c.text)   # valid for the filter
        assert c.input_tokens > 0 and c.output_tokens > 0 and c.refusal is None
        assert spec.cost(c.input_tokens, c.output_tokens, c.cached_tokens, cache_write_tokens=c.cache_write_tokens) > 0
    # the static rubric is sent first and identical each time, so the provider caches it
    assert completions[0].cached_tokens == 0
    assert all(c.cached_tokens > 0 for c in completions[1:])
    if name == "claude-haiku":
        assert completions[0].cache_write_tokens > 0   # Anthropic bills the first write of the cached rubric
    assert fake.requests == 3


def test_followups_are_sent_as_conversation_turns(fake, uplifting):
    article = sample(1)[0]
    plain = run(spec_of("gpt-4o-mini"), [request_for(uplifting, article)])[0]
    correction = uplifting.corrective_message("scores/agency: missing")
    again = run(spec_of("gpt-4o-mini"), [request_for(uplifting, article, [('{"scores": {}}', correction)])])[0]
    assert json.loads(again.text) == json.loads(plain.text)
    extra_chars = len('{"scores": {}}') + len(correction)
    assert again.input_tokens - plain.input_tokens >= extra_chars // 4 - 2


def test_openai_requests_are_what_the_sdks_chat_completions_create_sends(fake, uplifting):
    # the oracle posts its prebuilt body through the SDK client (cheaper than create()'s per-call
    # parameter transformation): the server must see the very same request either way
    article = sample(1)[0]
    request = request_for(uplifting, article, [('{"scores": {}}', uplifting.corrective_message("scores: missing"))])
    spec = spec_of("gpt-4o-mini")
    spec = dataclasses.replace(spec, options={**spec.options, "temperature": 0.0,
                                              "max_tokens_param": "max_completion_tokens"})

    async def go():
        oracle = registry.make_oracle(spec)
        sent = []

        async def capture(http_request):
            sent.append((http_request.url.path, http_request.headers, json.loads(http_request.content)))
        oracle._client._client.event_hooks["request"].append(capture)
        ours = await oracle.complete(request)
        via_create = await oracle._client.chat.completions.create(**oracle.request_params(request))
        await oracle.aclose()
        return sent, ours, via_create

    sent, ours, via_create = asyncio.run(go())
    (path, headers, body), (create_path, create_headers, create_body) = sent
    assert (path, body) == (create_path, create_body)
    assert body["response_format"]["json_schema"]["schema"] == uplifting.answer_schema()
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["temperature"] == 0.0 and body["max_completion_tokens"] == spec.max_output_tokens
    for name in ("authorization", "content-type", "accept"):
        assert headers.get(name) == create_headers.get(name), name
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert ours.text == via_create.choices[0].message.content
    assert (ours.input_tokens, ours.output_tokens) == (via_create.usage.prompt_tokens, via_create.usage.completion_tokens)
    assert ours.finish_reason == via_create.choices[0].finish_reason == "stop"


# ---- failures -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PROVIDER_OF))
def test_rate_limits_carry_the_providers_retry_hint(name, fake, uplifting):
    fake.inject("rate_limit")
    err = run(spec_of(name), [request_for(uplifting, sample(1)[0])])[0]
    assert isinstance(err, RateLimited)
    # Retry-After header (OpenAI, Anthropic) or RetryInfo.retryDelay in the body (Gemini)
    assert err.retry_after == pytest.approx(2.0)


@pytest.mark.parametrize("name", list(PROVIDER_OF))
def test_a_spent_daily_quota_stops_with_a_resume_hint(name, fake, uplifting):
    fake.inject("quota")
    err = run(spec_of(name), [request_for(uplifting, sample(1)[0])])[0]
    assert isinstance(err, QuotaExhausted)
    assert "re-run" in err.resume_hint


@pytest.mark.parametrize("name", list(PROVIDER_OF))
@pytest.mark.parametrize("fault, expected", [
    ("server_error", TransientError), ("unavailable", TransientError), ("slow", TransientError),
    ("disconnect", TransientError), ("empty_body", TransientError),
    ("auth", FatalError), ("bad_request", FatalError),
])
def test_http_faults_map_to_retryable_or_fatal_errors(name, fault, expected, fake, uplifting):
    fake.inject(fault)
    err = run(spec_of(name, timeout_s=0.4), [request_for(uplifting, sample(1)[0])])[0]
    assert type(err) is expected, err
    assert err.retryable == (expected is TransientError)


@pytest.mark.parametrize("name", list(PROVIDER_OF))
def test_bad_answers_come_back_as_text_the_filter_rejects(name, fake, uplifting):
    articles = sample(4)
    faults = ["malformed", "missing_dimension", "out_of_range", "empty"]
    for a, fault in zip(articles, faults):
        a["text"] += f" FAULT:{fault}"
    completions = run(spec_of(name), [request_for(uplifting, a) for a in articles])
    for fault, c in zip(faults, completions):
        assert isinstance(c, Completion), (fault, c)
        with pytest.raises(AnswerError):
            uplifting.parse_answer(c.text)


@pytest.mark.parametrize("name", list(PROVIDER_OF))
def test_a_refusal_is_reported_not_raised(name, fake, uplifting):
    fake.inject("refusal")
    c = run(spec_of(name), [request_for(uplifting, sample(1)[0])])[0]
    assert isinstance(c, Completion) and c.text is None and c.refusal


def test_an_article_marker_with_a_count_faults_only_the_first_tries(fake, uplifting):
    article = sample(1)[0]
    article["text"] += " FAULT:server_error:1"
    first, second = run(spec_of("claude-haiku"), [request_for(uplifting, article)] * 2)
    assert isinstance(first, TransientError)
    assert json.loads(second.text) == expected_answer(uplifting, article["title"], article["text"])


def test_the_servers_rpm_limit_answers_429_with_the_wait(uplifting, monkeypatch):
    with FakeProviderServer(rpm=2, rate_window_s=30) as limited:
        for k, v in limited.env().items():
            monkeypatch.setenv(k, v)
        results = run(spec_of("gemini-flash"), [request_for(uplifting, a) for a in sample(3)])
    assert [type(r).__name__ for r in results] == ["Completion", "Completion", "RateLimited"]
    assert 0 < results[2].retry_after <= 30


def test_json_schema_falls_back_to_json_object_and_remembers(fake, uplifting):
    fake.models_without_json_schema.add("legacy")
    articles = sample(2)
    oracle_spec = spec_of("ollama/legacy")

    async def go():
        oracle = registry.make_oracle(oracle_spec)
        first = await oracle.complete(request_for(uplifting, articles[0]))
        after_first = fake.requests
        second = await oracle.complete(request_for(uplifting, articles[1]))
        await oracle.aclose()
        return oracle.response_format, first, after_first, second

    fmt, first, after_first, second = asyncio.run(go())
    assert fmt == "json_object"
    assert after_first == 2 and fake.requests == 3   # one refused json_schema request, then none
    for a, c in zip(articles, (first, second)):
        assert json.loads(c.text) == expected_answer(uplifting, a["title"], a["text"])


# ---- credentials, names, configuration ------------------------------------------------------

@pytest.mark.parametrize("name, env", [("gpt-4o-mini", "OPENAI_API_KEY"), ("claude-sonnet", "ANTHROPIC_API_KEY"),
                                       ("gemini-pro", "GEMINI_API_KEY"), ("deepseek", "DEEPSEEK_API_KEY")])
def test_a_missing_key_fails_in_one_line_before_any_request(name, env, fake, monkeypatch):
    monkeypatch.delenv(env)
    with pytest.raises(registry.MissingKey) as info:
        registry.make_oracle(spec_of(name))
    message = str(info.value)
    assert env in message and "\n" not in message
    assert fake.requests == 0


def test_gemini_also_accepts_google_api_key(fake, monkeypatch, uplifting):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", SECRET)
    c = run(spec_of("gemini-flash"), [request_for(uplifting, sample(1)[0])])[0]
    assert isinstance(c, Completion)


def test_the_api_key_never_reaches_the_log_or_error_messages(fake, uplifting):
    errors = []
    for name in PROVIDER_OF:
        for fault in ("auth", "bad_request", "rate_limit", "server_error", "quota"):
            fake.inject(fault)
            errors += run(spec_of(name), [request_for(uplifting, sample(1)[0])])
    assert all(isinstance(e, Exception) for e in errors)
    assert fake.requests == 15
    text = repr(fake.log) + repr(fake.counts) + " ".join(f"{e} {e!r} {getattr(e, 'resume_hint', '')}" for e in errors)
    assert SECRET not in text and SECRET[-10:] not in text


def test_without_a_key_the_server_answers_401_and_the_oracle_fails_fast(fake, uplifting):
    # a key the SDK sends but the server rejects reads as a fatal auth error, not a retry
    fake.inject("auth")
    err = run(spec_of("deepseek"), [request_for(uplifting, sample(1)[0])])[0]
    assert isinstance(err, FatalError) and "401" in str(err)


def test_an_unknown_name_lists_the_known_oracles():
    with pytest.raises(registry.UnknownOracle) as info:
        registry.resolve("gpt-5-ultra", registry.load_registry())
    message = str(info.value)
    for known in ("gemini-flash", "gemini-pro", "claude-sonnet", "claude-haiku", "gpt-4o-mini", "deepseek",
                  "ollama/<model>", "local-embed", "local-llm"):
        assert known in message


def test_ollama_names_fill_the_pattern_and_need_no_key(monkeypatch):
    monkeypatch.delenv("OLLAMA_BASE_URL", raising=False)
    spec = registry.resolve("ollama/qwen2.5:7b", registry.load_registry())
    assert (spec.name, spec.provider, spec.model) == ("ollama/qwen2.5:7b", "openai", "qwen2.5:7b")
    assert registry.base_url(spec) == "http://localhost:11434/v1"
    assert spec.cost(10_000, 1_000) == 0
    registry.check_credentials(spec)   # no key needed: does not raise


def test_base_url_comes_from_the_environment_then_the_entry(monkeypatch):
    known = registry.load_registry()
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("GEMINI_BASE_URL", raising=False)
    assert registry.base_url(known["deepseek"]) == "https://api.deepseek.com/v1"
    assert registry.base_url(known["gemini-flash"]) is None   # the SDK's default endpoint
    monkeypatch.delenv("DEEPSEEK_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert registry.base_url(known["gpt-4o-mini"]) == "http://127.0.0.1:9/v1"
    # OpenAI's override never redirects another provider's key
    assert registry.base_url(known["deepseek"]) == "https://api.deepseek.com/v1"
    monkeypatch.setenv("DEEPSEEK_BASE_URL", "http://127.0.0.1:8/v1")
    assert registry.base_url(known["deepseek"]) == "http://127.0.0.1:8/v1"


def test_a_malformed_registry_lists_every_problem_with_the_file(tmp_path):
    path = tmp_path / "oracles.yaml"
    path.write_text(
        "oracles:\n"
        "  a:\n    provider: mistral\n    model: m\n"
        "  b:\n    provider: openai\n    model: m\n    input_per_m: -1\n    colour: blue\n"
        "  c:\n    provider: gemini\n    model: gemini-x\n    api_key_env: null\n"
        "  d:\n    provider: gemini\n    model: gemini-y\n", encoding="utf-8")
    with pytest.raises(registry.RegistryError) as info:
        registry.load_registry(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(str(path)) for line in lines)
    joined = "\n".join(lines)
    for expected in ("'a'", "provider must be one of", "input_per_m", "unknown field 'colour'", "'c'",
                     "provider gemini needs a key"):
        assert expected in joined


def test_the_shipped_registry_prices_batch_and_cache_where_sold():
    known = registry.load_registry(ROOT / "oracles.yaml")
    for name in ("gemini-flash", "gemini-pro", "claude-sonnet", "claude-haiku", "gpt-4o-mini"):
        spec = known[name]
        assert spec.batch_input_per_m == pytest.approx(spec.input_per_m / 2)
        assert spec.batch_output_per_m == pytest.approx(spec.output_per_m / 2)
        assert 0 < spec.cache_read_per_m < spec.input_per_m
    assert known["deepseek"].batch_input_per_m is None


# ---- providers declare themselves -----------------------------------------------------------

ECHO_MODULES = {
    # a remote provider with a key, a base-URL variable, an option and a batch service
    "echo_remote": """
        from gt.oracles.base import Option, ProviderInfo

        class EchoBatches:
            provider = "echo"
            turnaround = "at once"

        class EchoOracle:
            def __init__(self, spec, *, api_key=None, base_url=None):
                self.spec, self.api_key, self.base_url = spec, api_key, base_url

        PROVIDER = ProviderInfo(name="echo", oracle_class=EchoOracle, key_envs=("ECHO_API_KEY", "ECHO_KEY"),
                                key_required=True, base_url_env="ECHO_BASE_URL", batch_adapter=EchoBatches,
                                options={"loudness": Option(int, "how loud")})
    """,
    # an offline stand-in without options
    "echo_local": """
        from gt.oracles.base import ProviderInfo

        class EchoLocal:
            def __init__(self, spec):
                self.spec = spec

        PROVIDER = ProviderInfo(name="echo-local", oracle_class=EchoLocal, offline=True, stand_in=True)
    """,
}
ECHO_YAML = """
oracles:
  echo-1: {provider: echo, model: e1, options: {loudness: 3}}
  echo-2: {provider: echo, model: e2, api_key_env: TEAM_ECHO_KEY}
  echo-offline: {provider: echo-local, model: e0}
"""
# run in a fresh interpreter whose gt.oracles package also holds the two modules above
ECHO_SCRIPT = """
import json, os, sys
import gt.oracles
gt.oracles.__path__.append(sys.argv[1])
from gt.oracles import batch, registry as r
specs = r.load_registry(sys.argv[2])
os.environ.update(ECHO_KEY="k-echo", ECHO_BASE_URL="http://127.0.0.1:7/echo")
oracle = r.make_oracle(specs["echo-1"])
problems = []
for entry in ("{provider: echo, model: e, api_key_env: null}", "{provider: echo, model: e, api_key_env: K, options: {loud: 1}}",
              "{provider: echo-local, model: e, options: {cache_min_tokens: 1}}"):
    with open(sys.argv[2], "w") as f:
        f.write("oracles:\\n  bad: " + entry + "\\n")
    try:
        r.load_registry(sys.argv[2])
    except r.RegistryError as e:
        problems += e.problems
print(json.dumps({
    "providers": r.PROVIDERS, "classes": {k: v.__name__ for k, v in r._PROVIDER_CLASSES.items()},
    "base_url_env": r.BASE_URL_ENV, "offline": r.OFFLINE_PROVIDERS, "stand_in": r.STAND_IN_PROVIDERS,
    "batch": batch.BATCH_PROVIDERS, "turnaround": batch.TURNAROUND.get("echo"),
    "keys": sorted(r.key_variables(specs.values())), "oracle": [type(oracle).__name__, oracle.api_key, oracle.base_url],
    "echo2_keys": r.api_key_env_names(specs["echo-2"]),
    "offline_oracle": type(r.make_oracle(specs["echo-offline"])).__name__, "problems": problems}))
"""


def test_a_provider_declared_in_a_new_module_joins_every_table(tmp_path):
    for name, source in ECHO_MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    yaml_path = tmp_path / "oracles.yaml"
    yaml_path.write_text(ECHO_YAML, encoding="utf-8")
    run_ = subprocess.run([sys.executable, "-c", ECHO_SCRIPT, str(tmp_path), str(yaml_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ECHO")})
    assert run_.returncode == 0, run_.stderr
    out = json.loads(run_.stdout)
    for shipped in ("gemini", "anthropic", "openai", "local-embed", "local-llm", "replay"):
        assert shipped in out["providers"]
    assert {"echo", "echo-local"} <= set(out["providers"])
    assert out["classes"]["echo"] == "EchoOracle" and out["classes"]["echo-local"] == "EchoLocal"
    assert out["base_url_env"]["echo"] == "ECHO_BASE_URL" and "echo-local" not in out["base_url_env"]
    assert "echo-local" in out["offline"] and "echo-local" in out["stand_in"]
    assert "echo" not in out["offline"] and "echo" not in out["stand_in"]
    assert "echo" in out["batch"] and "echo-local" not in out["batch"] and out["turnaround"] == "at once"
    assert {"ECHO_API_KEY", "ECHO_KEY"} <= set(out["keys"])
    # the registry hands the key (the first variable set) and the base URL to the class
    assert out["oracle"] == ["EchoOracle", "k-echo", "http://127.0.0.1:7/echo"]
    assert out["offline_oracle"] == "EchoLocal"
    # the declaration's key_required, options and offline flag are what oracles.yaml is checked against
    bad = out["problems"]
    assert len(bad) == 3, bad
    assert "provider echo needs a key" in bad[0]
    # an entry without api_key_env takes the provider's declared variables; one may name its own instead
    assert out["echo2_keys"] == ["TEAM_ECHO_KEY"]
    assert "unknown option 'loud'" in bad[1] and "loudness" in bad[1] and "batch_max_requests" in bad[1]
    assert "unknown option 'cache_min_tokens'" in bad[2] and "knows: none" in bad[2]


def test_each_provider_module_declares_its_provider_and_the_tables_show_it():
    from gt.oracles import batch
    shipped = {"gemini": "GeminiOracle", "anthropic_provider": "AnthropicOracle", "openai_compat": "OpenAICompatOracle",
               "local_embed": "LocalEmbedOracle", "local_llm": "LocalLLMOracle", "replay": "ReplayOracle"}
    for module_name, class_name in shipped.items():
        info = importlib.import_module(f"gt.oracles.{module_name}").PROVIDER
        assert isinstance(info, ProviderInfo) and registry.PROVIDER_INFO[info.name] is info
        assert registry._PROVIDER_CLASSES[info.name].__name__ == class_name
    assert set(registry.PROVIDERS) == {"gemini", "anthropic", "openai", "local-embed", "local-llm", "replay"}
    assert set(registry.OFFLINE_PROVIDERS) == {"local-embed", "local-llm", "replay"}
    assert set(registry.STAND_IN_PROVIDERS) == {"local-embed", "local-llm"}
    assert registry.BASE_URL_ENV == {"gemini": "GEMINI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL",
                                     "openai": "OPENAI_BASE_URL"}
    assert set(batch.BATCH_PROVIDERS) == set(batch.TURNAROUND) == {"gemini", "anthropic", "openai"}
    assert all("24 h" in t for t in batch.TURNAROUND.values())


def test_two_modules_declaring_one_name_are_refused():
    with pytest.raises(ImportError, match="provider 'gemini' is already declared"):
        registry.declarations(["gt.oracles.gemini", "gt.oracles.local_llm", "gt.oracles.gemini"])


def test_an_unknown_or_ill_typed_option_is_refused_in_one_line(tmp_path):
    path = tmp_path / "oracles.yaml"
    path.write_text(
        "oracles:\n"
        "  gem:\n    provider: gemini\n    model: g\n    api_key_env: K\n"
        "    options: {thinking_budjet: 0, thinking_budget: 0}\n"
        "  ds:\n    provider: openai\n    model: d\n    options: {response_format: xml, temperature: warm}\n"
        "  small:\n    provider: local-llm\n    model: s\n    options: {score_mode: greedy, threads: 2, dtype: auto}\n",
        encoding="utf-8")
    with pytest.raises(registry.RegistryError) as info:
        registry.load_registry(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: oracle '") for line in lines), lines
    typo = next(line for line in lines if "thinking_budjet" in line)
    assert "'gem'" in typo and "provider gemini knows:" in typo
    for known in ("thinking_budget", "temperature", "cache_min_tokens", "batch_max_requests", "batch_max_bytes"):
        assert known in typo
    assert any("'ds'" in line and "options.response_format must be one of json_schema, json_object (got 'xml')"
               in line for line in lines)
    assert any("'ds'" in line and "options.temperature must be a number (got 'warm')" in line for line in lines)


def test_every_shipped_entry_sets_only_options_its_provider_knows():
    known = registry.load_registry(ROOT / "oracles.yaml")   # raises on any unknown option
    assert len(known) >= 10
    for spec in known.values():
        user_options = set(spec.options) - {"api_key_env_alternatives"}
        assert user_options <= set(registry.known_options(spec.provider)), spec.name


def test_importing_the_registry_and_the_offline_oracles_loads_no_sdk():
    script = (
        "import sys\n"
        "from gt.oracles import batch, registry as r\n"
        "batch.TURNAROUND\n"
        "specs = r.load_registry()\n"
        "r.make_oracle(r.resolve('local-embed', specs)); r.make_oracle(r.resolve('local-llm', specs))\n"
        f"print(sorted(m for m in sys.modules if m.startswith({SDKS!r})))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def imported_modules(path) -> set[str]:
    """Every module a source file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_provider_modules_never_import_the_registry_nor_read_the_environment():
    modules = [sys.modules[info.oracle_class.__module__] for info in registry.PROVIDER_INFO.values()]
    modules += [sys.modules[info.batch_adapter.__module__] for info in registry.PROVIDER_INFO.values()
                if info.batch_adapter]
    assert len(modules) == 9
    for module in modules:
        path = ROOT / (module.__name__.replace(".", "/") + ".py")
        assert "gt.oracles.registry" not in imported_modules(path), path
        source = path.read_text(encoding="utf-8")
        assert "environ" not in source and "getenv" not in source, path


def test_key_variables_cover_every_providers_keys_and_each_entrys(tmp_path):
    everything = registry.key_variables()
    for info in registry.PROVIDER_INFO.values():
        assert set(info.key_envs) <= everything, info.name
    assert {"GEMINI_API_KEY", "GOOGLE_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"} <= everything
    assert "DEEPSEEK_API_KEY" in everything                     # an entry's own variable, from oracles.yaml
    path = tmp_path / "oracles.yaml"
    path.write_text("oracles:\n  mine: {provider: openai, model: m, api_key_env: [MY_KEY, MY_OTHER_KEY]}\n",
                    encoding="utf-8")
    mine = registry.key_variables(registry.load_registry(path).values())
    assert {"MY_KEY", "MY_OTHER_KEY", "OPENAI_API_KEY"} <= mine and "DEEPSEEK_API_KEY" not in mine
    assert "MY_KEY" not in everything


def test_the_fake_server_points_every_remote_provider_at_itself(server):
    env = server.env()
    for info in registry.PROVIDER_INFO.values():
        if not info.offline:
            assert env[info.base_url_env].startswith(server.url), info.name
            assert info.key_envs[0] in env, info.name


# ---- local-embed ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embed_run(uplifting):
    """Three clearly different articles labelled twice by local-embed (one model load)."""
    by_title = {a["title"]: a for a in sample(400, min_chars=300)}
    titles = [t for t in by_title if "collapse" in t.lower() or "killed" in t.lower()][:1] + \
             [t for t in by_title if "NASA" in t or "scientists" in t.lower()][:1] + \
             [t for t in by_title if "interview" in t.lower()][:1]
    articles = [by_title[t] for t in titles]
    spec = registry.resolve("local-embed", registry.load_registry())

    async def twice():
        oracle = registry.make_oracle(spec)
        try:
            first = await asyncio.gather(*[oracle.complete(request_for(uplifting, a)) for a in articles])
            second = [await oracle.complete(request_for(uplifting, a)) for a in articles]
        finally:
            await oracle.aclose()
        return first, second

    first, second = asyncio.run(twice())
    return articles, first, second


def test_local_embed_answers_are_valid_free_and_deterministic(embed_run, uplifting):
    articles, first, second = embed_run
    assert len(articles) == 3
    for c in first:
        scores, content_type, evidence = uplifting.parse_answer(c.text)
        assert set(scores) == set(uplifting.dimension_names)
        assert content_type in uplifting.content_types
        assert all(evidence.values())
        assert (c.input_tokens, c.output_tokens, c.refusal) == (0, 0, None)
    # batched together or one at a time, the same article gets the same answer
    assert [c.text for c in first] == [c.text for c in second]


def test_local_embed_scores_differ_between_different_articles(embed_run, uplifting):
    _, first, _ = embed_run
    answers = [uplifting.parse_answer(c.text) for c in first]
    score_vectors = [tuple(a[0].values()) for a in answers]
    assert len(set(score_vectors)) == 3
    # evidence sentences are quoted from the article itself
    articles = embed_run[0]
    for article, (_, _, evidence) in zip(articles, answers):
        blob = " ".join((article["title"] + " " + article["text"]).split())
        assert any(e.rstrip("…")[:40] in blob for e in evidence.values())


def test_local_embed_needs_the_article_in_the_request(uplifting):
    spec = registry.resolve("local-embed", registry.load_registry())
    bare = OracleRequest(rubric="r", article="a", schema=uplifting.answer_schema())
    err = run(spec, [bare])[0]
    assert isinstance(err, FatalError)
    assert "the request must carry the filter and the article's title/text" in str(err)


def test_local_embed_evidence_is_words_or_empty_never_a_stray_fragment(uplifting):
    """The sample's sentence splitter leaves closing quotes and brackets as 'sentences'; they must
    never be quoted as evidence (the demo once had 443 of 2,872 such fragments)."""
    import re
    spec = registry.resolve("local-embed", registry.load_registry())
    base = sample(30, min_chars=300)
    fragments = dict(base[0], id="frags", text='The council voted to fund the new clinic. " ] ” '
                     'The clinic opens next spring for every resident of the valley. ) ] "')
    articles = base + [fragments]

    async def go():
        oracle = registry.make_oracle(spec)
        try:
            return await asyncio.gather(*[oracle.complete(request_for(uplifting, a)) for a in articles])
        finally:
            await oracle.aclose()

    words = re.compile(r"[^\W\d_]{2,}")
    seen = 0
    for c in asyncio.run(go()):
        _, _, evidence = uplifting.parse_answer(c.text)
        for e in evidence.values():
            assert e == "" or len(words.findall(e)) >= 3, e
            seen += bool(e)
    assert seen >= len(articles) * len(uplifting.dimension_names) * 0.9


@pytest.mark.parametrize("field, value", [("input_per_m", ".nan"), ("output_per_m", ".inf"), ("batch_input_per_m", ".nan"),
                                          ("rpm", "0"), ("timeout_s", "-.inf"), ("max_output_tokens", "2.5")])
def test_a_price_or_limit_that_cannot_be_stored_or_kept_is_refused_before_any_call(tmp_path, field, value):
    """A price of NaN or infinity would make every paid call unstorable (the ledger's cost column); it is
    refused with the rest of oracles.yaml's problems, before anything is sent."""
    path = tmp_path / "oracles.yaml"
    path.write_text(f"oracles:\n  g:\n    provider: gemini\n    model: m\n    {field}: {value}\n", encoding="utf-8")
    with pytest.raises(registry.RegistryError) as info:
        registry.load_registry(path)
    assert len(info.value.problems) == 1 and f"{field} must be a " in info.value.problems[0]


@pytest.mark.parametrize("price", ["nan,nan", "inf,1", "-1,2", "1"])
def test_a_replay_price_that_is_not_a_finite_pair_is_refused(price):
    from gt.oracles.replay import replay_priced
    spec = registry.resolve("replay/human-mean", registry.load_registry())
    with pytest.raises(ValueError, match="pass USD per 1M input and output tokens"):
        replay_priced(spec, price)
