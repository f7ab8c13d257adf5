"""LoRA regression training throughput on one CUDA GPU: Qwen2.5-1.5B and Qwen2.5-7B shapes.

Random weights built from the public config.json values (nothing can be downloaded on the GPU
machine), a regression head with one output per dimension, LoRA on every projection, bf16
autocast, gradient checkpointing and AdamW: the same recipe stages/train.py uses on a GPU.
Random token ids stand in for text (throughput does not depend on which tokens they are).

    python3 bench/gpu_train.py                 # on a GPU: both models, JSON to $OUT or bench/out
    python3 bench/gpu_train.py --tiny          # CPU smoke test with shrunken configs
"""
from __future__ import annotations

import os
import sys

# run as `python3 bench/gpu_train.py`, bench/ is first on sys.path and bench/select.py would shadow
# the standard library's select (which torch's subprocess use needs)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path

import torch

# Values copied from the public config.json of Qwen/Qwen2.5-1.5B-Instruct and Qwen/Qwen2.5-7B-Instruct.
QWEN25_CONFIGS = {
    "Qwen2.5-1.5B": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=True, rms_norm_eps=1e-6,
        hidden_act="silu", max_window_layers=21, sliding_window=32768, use_sliding_window=False,
        attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151645,
    ),
    "Qwen2.5-7B": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=False, rms_norm_eps=1e-6,
        hidden_act="silu", max_window_layers=28, sliding_window=131072, use_sliding_window=False,
        attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151645,
    ),
}
# Batch sizes chosen to fit an 80 GB H100 at 512 tokens with gradient checkpointing; halved on OOM.
GPU_BATCH_SIZES = {"Qwen2.5-1.5B": 32, "Qwen2.5-7B": 16}
PAD_TOKEN_ID = 151643  # Qwen's <|endoftext|>, the pad token stages/train.py sets
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shrink(config_values: dict) -> dict:
    """A tiny config of the same family, for the CPU smoke test."""
    return {**config_values, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2}


def build_model(name: str, config_values: dict, num_labels: int, lora_r: int, device: torch.device):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, Qwen2Config

    config = Qwen2Config(**config_values, num_labels=num_labels, problem_type="regression",
                         pad_token_id=PAD_TOKEN_ID, use_cache=False)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:  # initialise directly on the GPU: a 7B random init on the CPU takes minutes
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05,
                      target_modules=LORA_TARGETS)
    model = get_peft_model(model, lora)
    model.to(device)
    return model


def measure(name: str, config_values: dict, *, batch_size: int, seq_len: int, num_labels: int,
            lora_r: int, warmup_steps: int, max_steps: int, max_seconds: float,
            device: torch.device) -> dict:
    model = build_model(name, config_values, num_labels, lora_r, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = config_values["vocab_size"]
    model.train()

    def step() -> float:
        # ids below the special-token range, so no sequence contains the pad id
        input_ids = torch.randint(0, min(vocab, PAD_TOKEN_ID), (batch_size, seq_len), generator=generator)
        labels = torch.rand((batch_size, num_labels), generator=generator)
        input_ids, labels = input_ids.to(device), labels.to(device)
        attention_mask = torch.ones_like(input_ids)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup_steps):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    steps = 0
    loss = None
    while steps < max_steps and time.perf_counter() - started < max_seconds:
        loss = step()
        steps += 1
        if steps % 10 == 0:
            sync()  # keep the time box honest: queued kernels count against the step that queued them
    sync()
    elapsed = time.perf_counter() - started
    result = {
        "model": name, "batch_size": batch_size, "seq_len": seq_len, "num_labels": num_labels,
        "lora_r": lora_r, "lora_targets": LORA_TARGETS, "trainable_params": trainable,
        "total_params": total, "warmup_steps": warmup_steps, "measured_steps": steps,
        "measured_seconds": round(elapsed, 2),
        "samples_per_s": round(steps * batch_size / elapsed, 2),
        "tokens_per_s": round(steps * batch_size * seq_len / elapsed, 1),
        "seconds_per_step": round(elapsed / max(steps, 1), 4),
        "final_loss": float(loss) if loss is not None else None,
    }
    if device.type == "cuda":
        # peak over the measured steps, weights included (they stay allocated)
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    del model, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="shrink the configs (CPU smoke test)")
    parser.add_argument("--models", default=",".join(QWEN25_CONFIGS), help="comma-separated config names")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sample")
    parser.add_argument("--num-labels", type=int, default=8, help="regression outputs (dimensions)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps run before timing starts")
    parser.add_argument("--max-steps", type=int, default=250, help="measured steps per model, at most")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="measured seconds per model, at most")
    parser.add_argument("--batch-size", type=int, default=None, help="override the per-model batch size")
    parser.add_argument("--output", default=None,
                        help="JSON path (default $OUT/gpu_train.json, else bench/out/gpu_train.json)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("error: no CUDA GPU visible, bench/gpu_train.py (run with --tiny for the CPU smoke test)",
              file=sys.stderr)
        return 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    seq_len = 64 if args.tiny and args.seq_len == 512 else args.seq_len
    import peft
    import transformers
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "tiny": args.tiny, "dtype": "bf16 autocast, bf16 base weights" if device.type == "cuda" else "fp32",
        "gradient_checkpointing": True, "optimizer": "torch AdamW (fused on CUDA)", "results": [],
    }
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        config_values = shrink(QWEN25_CONFIGS[name]) if args.tiny else QWEN25_CONFIGS[name]
        batch_size = args.batch_size or (2 if args.tiny else GPU_BATCH_SIZES[name])
        while True:
            print(f"{name}: batch {batch_size} x {seq_len} tokens ...", flush=True)
            try:
                result = measure(name, config_values, batch_size=batch_size, seq_len=seq_len,
                                 num_labels=args.num_labels, lora_r=args.lora_r,
                                 warmup_steps=2 if args.tiny else args.warmup_steps,
                                 max_steps=3 if args.tiny else args.max_steps,
                                 max_seconds=args.max_seconds, device=device)
                break
            except torch.cuda.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
                if batch_size == 1:
                    result = {"model": name, "error": "out of memory at batch size 1"}
                    break
                batch_size //= 2
                print(f"{name}: out of memory, retrying with batch {batch_size}", flush=True)
            except Exception as exc:  # one model failing must not lose the other's figures
                result = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
                break
        report["results"].append(result)
        print(json.dumps(result), flush=True)

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "out"
    output = Path(args.output) if args.output else out_dir / "gpu_train.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(output)
    print(f"\nwrote {output}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['model']:>14}: {r['error']}")
        else:
            mem = f", peak {r['peak_gpu_memory_gib']} GiB" if "peak_gpu_memory_gib" in r else ""
            print(f"{r['model']:>14}: {r['samples_per_s']} samples/s, {r['tokens_per_s']} tokens/s "
                  f"(batch {r['batch_size']}, {r['measured_steps']} steps in {r['measured_seconds']} s){mem}")
    return 0 if all("error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
