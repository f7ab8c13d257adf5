"""How fast a student scores a feed: `python -m stages.score` against a naive loop, both measured here.

    .venv/bin/python bench/score.py [--articles 10000] [--model-dir models/uplifting_minilm_demo]

The feed: --articles news-length articles made from data/sample (article i is sample article
i mod 360 with its paragraphs in a seeded order, so lengths follow the sample's and no two texts are
the same). The student: the CPU student `make demo` trains (MiniLM + LoRA, 256 tokens), or
--model-dir. Measured, each in its own process under /usr/bin/time -v (wall seconds include loading
the model, peak RSS is the process's):
- naive: a transformers loop in input order, batches of 32, the LoRA adapter unmerged (PeftModel),
  padded to each batch's longest, torch.no_grad; the same input ids as the student's (head+tail);
- score: `python -m stages.score` (reading, cleaning, journal, LoRA merged, token-budget batches,
  overall and tier, the output file);
- shards: `--shard 0/2` and `--shard 1/2` as two processes at once (one thread each), then `--merge`;
- the embedding pass of the picking probe (frozen MiniLM, 256 tokens): the engine's batches against
  the fixed batches of 64 it used before.
`--runtimes N` instead compares the merged student in torch fp32 with dynamic int8 (torch) and
ONNX Runtime fp32 and int8 (optional packages) on N articles: speed and score difference.
Prints articles/s, the speed-up (target >= 3x the naive loop on a CPU), the largest score difference
(target <= 1e-4) and whether the merged shards equal the single run.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_feed(path: Path, n: int, seed: int) -> None:
    sample = [json.loads(line) for line in open(ROOT / "data" / "sample" / "articles.jsonl", encoding="utf-8")]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            a = sample[i % len(sample)]
            paragraphs = [p for p in a["text"].split("\n") if p.strip()]
            if i >= len(sample):
                rng.shuffle(paragraphs)
            f.write(json.dumps({"id": f"bench-{i}", "title": a["title"], "text": "\n".join(paragraphs)}) + "\n")


def naive(model_dir: str, feed: str, out: str) -> None:
    """The baseline loop (runs in its own process)."""
    import torch

    from gt.core.text import clean_text
    from gt.student.model import Student

    student = Student.load(model_dir, "cpu", merge=False)
    rows = [json.loads(line) for line in open(feed, encoding="utf-8")]
    pad = student.tokenizer.pad_token_id
    with open(out, "w", encoding="utf-8") as f, torch.no_grad():
        for start in range(0, len(rows), 32):
            batch = rows[start:start + 32]
            ids = student.encoder.encode_many([(clean_text(r["title"]), clean_text(r["text"])) for r in batch])
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
            logits = student.model(input_ids=input_ids, attention_mask=mask).logits.numpy()
            for r, s in zip(batch, student.scaler.to_scores(logits)):
                f.write(json.dumps({"id": r["id"], "scores": s.tolist()}) + "\n")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, subprocess.Popen]:
    """Start `cmd` under /usr/bin/time -v."""
    started = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return started, 0, proc


def finish(started: float, proc: subprocess.Popen) -> tuple[float, int]:
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args}: exit {proc.returncode}\n{err[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) // 1024
    return seconds, rss


def embedding_pass(texts: list[str]) -> tuple[float, float, float]:
    """Articles/s of the picking probe's embeddings: fixed sorted batches of 64 (before) and the
    engine (now); and the largest difference between the two."""
    import torch

    from gt.student.embeddings import Embedder

    emb = Embedder()
    model = emb._load()
    ids = emb._encoder.encode_many([("", t) for t in texts])
    pad = emb._tokenizer.pad_token_id
    started = time.perf_counter()
    before = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in idx])
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in idx])
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            before[idx] = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1).numpy()
    old = time.perf_counter() - started
    started = time.perf_counter()
    now = emb.embed(texts)
    new = time.perf_counter() - started
    return len(texts) / old, len(texts) / new, float(np.abs(now - before).max())


def runtimes(model_dir: str, n: int) -> None:
    """--runtimes: the merged student in torch fp32 against torch dynamic int8, and ONNX Runtime
    fp32 and dynamic int8 (exported with torch.onnx; needs `pip install onnx onnxruntime`, which the
    project does not install), on n sample articles in the engine's batches: articles/s and the mean
    and largest score difference against torch fp32."""
    import torch

    from gt.core.text import clean_text
    from gt.student.engine import padded, token_batches
    from gt.student.model import Student

    rows = [json.loads(line) for line in open(ROOT / "data" / "sample" / "articles.jsonl", encoding="utf-8")][:n]
    student = Student.load(model_dir, "cpu")
    encoded = student.encoder.encode_many([(clean_text(r["title"]), clean_text(r["text"])) for r in rows])
    batches = token_batches([len(e) for e in encoded], 8192)

    def run(forward) -> tuple[float, np.ndarray]:
        out = np.zeros((len(encoded), student.model.config.num_labels))
        started = time.perf_counter()
        for idx in batches:
            ids, mask = padded([encoded[i] for i in idx], student.tokenizer.pad_token_id)
            out[idx] = forward(ids, mask)
        return len(encoded) / (time.perf_counter() - started), student.scaler.to_scores(out)

    def torch_forward(model):
        def forward(ids, mask):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).logits.numpy()
        return forward

    rate, ref = run(torch_forward(student.model))
    print(f"runtimes on {n} sample articles: torch fp32 (merged) {rate:.1f} articles/s")
    q = torch.ao.quantization.quantize_dynamic(student.model, {torch.nn.Linear}, dtype=torch.qint8)
    rate, got = run(torch_forward(q))
    print(f"  torch dynamic int8: {rate:.1f} articles/s, score difference mean {np.abs(got - ref).mean():.3f} "
          f"max {np.abs(got - ref).max():.3f}")
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("  ONNX Runtime: not installed (pip install onnx onnxruntime to measure it)")
        return

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as work:
        fp32, int8 = f"{work}/student.onnx", f"{work}/student-int8.onnx"
        example = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long))
        torch.onnx.export(Logits(student.model), example, fp32, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamo=False, opset_version=17,
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        for name, path in (("ONNX Runtime fp32", fp32), ("ONNX Runtime dynamic int8", int8)):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            rate, got = run(lambda ids, mask: session.run(None, {"input_ids": ids.numpy(),
                                                                 "attention_mask": mask.numpy()})[0])
            print(f"  {name}: {rate:.1f} articles/s, score difference mean {np.abs(got - ref).mean():.3f} "
                  f"max {np.abs(got - ref).max():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=10_000)
    ap.add_argument("--model-dir", default="models/uplifting_minilm_demo")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--embed-articles", type=int, default=1000)
    ap.add_argument("--runtimes", type=int, metavar="N", help="only compare torch fp32/int8 and ONNX Runtime "
                                                                 "fp32/int8 on N sample articles")
    ap.add_argument("--naive-worker", nargs=3, metavar=("MODEL_DIR", "FEED", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.naive_worker:
        return naive(*a.naive_worker)
    if a.runtimes:
        return runtimes(a.model_dir, a.runtimes)
    if not (ROOT / a.model_dir / "training_config.json").is_file():
        raise SystemExit(f"{a.model_dir} holds no trained student: run `make demo` first (or pass --model-dir)")
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-score-") as work:
        work = Path(work)
        feed = work / "feed.jsonl"
        make_feed(feed, a.articles, a.seed)
        n = a.articles
        print(f"{n:,} articles from data/sample, student {a.model_dir}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)

        s, _, p = timed([py, str(Path(__file__).resolve()), "--naive-worker", a.model_dir, str(feed), str(work / "naive.jsonl")])
        naive_s, naive_rss = finish(s, p)
        print(f"naive loop:  {n / naive_s:7.1f} articles/s ({naive_s:.0f} s, peak RSS {naive_rss:,} MiB)", flush=True)

        s, _, p = timed([py, "-m", "stages.score", "--model-dir", a.model_dir, "--source", str(feed),
                         "--output", str(work / "single.jsonl"), "--device", "cpu"])
        score_s, score_rss = finish(s, p)
        print(f"stages.score: {n / score_s:7.1f} articles/s ({score_s:.0f} s, peak RSS {score_rss:,} MiB): "
              f"{naive_s / score_s:.2f}x the naive loop (target >= 3x)", flush=True)

        dims = json.loads((ROOT / a.model_dir / "dimensions.json").read_text())
        single = [json.loads(line) for line in open(work / "single.jsonl", encoding="utf-8")]
        base = [json.loads(line) for line in open(work / "naive.jsonl", encoding="utf-8")]
        assert [r["id"] for r in single] == [r["id"] for r in base]
        diff = np.abs(np.array([[r[d] for d in dims] for r in single]) - np.array([r["scores"] for r in base])).max()
        print(f"largest score difference, score vs naive: {diff:.2e} (target <= 1e-4)", flush=True)

        one_thread = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        started = time.perf_counter()
        procs = [timed([py, "-m", "stages.score", "--model-dir", a.model_dir, "--source", str(feed), "--output",
                        str(work / f"part{i}.jsonl"), "--shard", f"{i}/2", "--device", "cpu"], one_thread)
                 for i in range(2)]
        rss = [finish(s, p)[1] for s, _, p in procs]
        subprocess.run([py, "-m", "stages.score", "--merge", str(work / "part0.jsonl"), str(work / "part1.jsonl"),
                        "--output", str(work / "merged.jsonl")], cwd=ROOT, check=True, capture_output=True)
        shards_s = time.perf_counter() - started
        merged = [json.loads(line) for line in open(work / "merged.jsonl", encoding="utf-8")]
        same_order = [r["id"] for r in merged] == [r["id"] for r in single]
        mdiff = np.abs(np.array([[r[d] for d in dims] for r in merged]) - np.array([[r[d] for d in dims] for r in single])).max()
        print(f"2 shards at once (1 thread each) + merge: {n / shards_s:7.1f} articles/s ({shards_s:.0f} s, peak RSS "
              f"{max(rss):,} MiB each); merged = single run: order {'identical' if same_order else 'DIFFERENT'}, "
              f"largest score difference {mdiff:.2e}", flush=True)

    texts = [json.loads(line)["text"] for line in open(ROOT / "data" / "sample" / "articles.jsonl", encoding="utf-8")]
    texts = [f"{t} ({i})" for i in range(-(-a.embed_articles // len(texts))) for t in texts][:a.embed_articles]
    old, new, ediff = embedding_pass(texts)
    print(f"embedding pass (picking probe, {len(texts):,} articles): before {old:.1f} articles/s, engine {new:.1f} "
          f"articles/s ({new / old:.2f}x), largest difference {ediff:.1e}")


if __name__ == "__main__":
    main()
