#!/usr/bin/env bash
# LoRA regression training throughput on one CUDA GPU (Qwen2.5-1.5B and -7B shapes, random weights).
# Uses the machine's own python3 (torch, transformers, peft installed); writes $OUT/gpu_train.json
# (or bench/out/gpu_train.json). Took 277 s on an H100 (bench/results/gpu_train_h100.json). CPU smoke test: add --tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 480 python3 bench/gpu_train.py "$@"
