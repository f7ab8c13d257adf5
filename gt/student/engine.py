"""The inference engine: one forward pass over many encoded articles, fast on one machine.

Every prediction of the project goes through `forward_batches`: the student's scores (score,
evaluate, train's own figures) and the frozen MiniLM's embeddings (the picking probe, the learning
curves). What makes it fast, measured by bench/score.py:
- batches formed by sorting the articles on token length (longest first) and filling each batch
  up to a budget of padded tokens (`max_tokens`) and `max_rows` articles: short articles travel in
  big batches, long ones in small, and almost no compute goes to padding; results come back in input
  order;
- `torch.inference_mode` (no autograd bookkeeping);
- a student's LoRA weights merged into the base once at load (gt.student.model.Student.load), so a
  forward pass is the plain base model's;
- on a GPU: bf16 where the GPU has it, the model built on the device (no CPU copy first).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

# padded tokens per batch: on a CPU the throughput is flat past a few thousand tokens, and a small
# batch keeps the work lost to a kill small; on a GPU big batches fill the device (FineWeb-Edu: 512 x 512)
CPU_MAX_TOKENS = 8192
GPU_MAX_TOKENS = 262_144
MAX_ROWS = 512
MAX_TOKENS_HELP = (f"padded tokens per forward pass (default: {CPU_MAX_TOKENS:,} on a CPU, {GPU_MAX_TOKENS:,} on a GPU; "
                   f"at most {MAX_ROWS} articles)")


def default_max_tokens(device: str) -> int:
    return GPU_MAX_TOKENS if str(device).startswith("cuda") else CPU_MAX_TOKENS


def token_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = MAX_ROWS) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches whose padded size (rows x the batch's
    longest) stays within max_tokens and whose rows stay within max_rows (an article longer than the
    budget travels alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]   # longest first: the first sets the width
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padded(ids: Sequence[Sequence[int]], pad_token_id: int):
    """Right-pad token id lists into (input_ids, attention_mask) tensors."""
    import torch

    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, i in enumerate(ids):
        input_ids[row, :len(i)] = torch.as_tensor(i, dtype=torch.long)
        mask[row, :len(i)] = 1
    return input_ids, mask


def autocast_dtype(model):
    """The dtype to autocast to (the weights' bf16/fp16), or None to run as the weights are."""
    import torch

    weights = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return weights if weights in (torch.bfloat16, torch.float16) else None


def forward_batches(model, encoded: Sequence[Sequence[int]], pad_token_id: int, width: int,
                    output: Callable, *, device: str = "cpu", max_tokens: int | None = None,
                    max_rows: int = MAX_ROWS, progress: bool = False) -> np.ndarray:
    """Run `model` over every encoded article in token-budget batches and return
    output(model_outputs, attention_mask) as float rows (`width` columns) in input order."""
    import torch

    out = np.zeros((len(encoded), width), dtype=np.float64)
    if not encoded:
        return out
    device_type = torch.device(device).type
    amp = autocast_dtype(model)
    model.eval()
    batches = token_batches([len(e) for e in encoded], max_tokens or default_max_tokens(device), max_rows)
    steps: Iterator = iter(batches)
    if progress:
        import sys

        from tqdm import tqdm
        steps = iter(tqdm(batches, desc="predict", unit="batch", file=sys.stderr))
    with torch.inference_mode():
        for idx in steps:
            ids, mask = padded([encoded[i] for i in idx], pad_token_id)
            ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            with torch.autocast(device_type=device_type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                values = output(model(input_ids=ids, attention_mask=mask), mask)
            out[idx] = values.float().cpu().numpy()
    return out


def logits(outputs, mask):
    """A sequence classifier's head outputs."""
    return outputs.logits


def mean_pooled_l2(outputs, mask):
    """Sentence-transformers' embedding: the mean of the token states under the mask, L2-normalised."""
    import torch

    hidden = outputs.last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=1)


def predict_scores(model, encoded: list[list[int]], pad_token_id: int, scaler, *, device: str = "cpu",
                   max_tokens: int | None = None, progress: bool = False) -> np.ndarray:
    """Scores on the 0-10 scale, one row per input, one column per dimension: the head's outputs
    mapped back by the student's TargetScaler (x * std + mean, clipped)."""
    raw = forward_batches(model, encoded, pad_token_id, model.config.num_labels, logits, device=device,
                          max_tokens=max_tokens, progress=progress)
    return scaler.to_scores(raw)


def load_dtype(device: str, trained_precision: str = "fp32"):
    """The dtype a model is built in for inference: bf16 on a GPU that has it (fp16 on one that has
    not, when the student trained in half precision); on a CPU the dtype it trained in where that is
    bf16, else fp32 (fp16 lacks CPU kernels)."""
    import torch

    if torch.device(device).type != "cuda":
        return torch.bfloat16 if trained_precision == "bf16" else torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if trained_precision in ("fp16", "bf16") else torch.float32
