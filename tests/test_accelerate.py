"""The train stage under `accelerate launch` with two processes (DDP over gloo on the CPU): what
`make train GPUS=2` runs on two GPUs. Both processes train, each on its half of every epoch;
process 0 alone writes the model folder and registers it in gt.db."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import ROOT
from tests.conftest import tiny_qwen_dir, train_args, write_splits

ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_model_that_process_zero_saves(tmp_path, uplifting):
    from gt.core import store
    from gt.student.model import Student

    splits = write_splits(tmp_path, uplifting.dimension_names)  # 12 train, 4 val, 4 test
    out = tmp_path / "models" / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "GT_DB"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    proc = subprocess.run([*launch, "-m", "stages.train", *train_args(
        splits, tmp_path / "gt.db", out, str(tiny_qwen_dir()), "--epochs", "2", "--batch-size", "4",
        "--max-length", "64", "--method", "lora", "--lora-r", "4", "--lr", "1e-3")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("process ")] == [
        f"process 1 of 2 done: process 0 saves the model and registers it in {tmp_path / 'gt.db'}"]
    [trained] = [line for line in lines if line.startswith("Trained ")]
    assert "(cpu x 2 processes)" in trained and "cpu x 2 processes (fp32)" in (out / "README.md").read_text()

    config = json.loads((out / "training_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["processes"] == 2
    # 12 articles, 4 a batch on each of 2 processes: 2 steps an epoch (one process alone takes 3)
    assert max(h["step"] for h in metrics["history"]) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["ddp"], "temporary model folders are left behind"
    conn = store.connect(tmp_path / "gt.db")
    assert [tuple(r) for r in conn.execute("SELECT id, path FROM models")] == [("ddp", str(out))]
    conn.close()

    rows = [json.loads(line) for line in splits["test"].read_text().splitlines()]
    scores = Student.load(out).predict([(r["title"], r["text"]) for r in rows])
    assert scores.shape == (4, len(uplifting.dimension_names))
    # the saved model is the one process 0 measured: the same test MAE from the reloaded folder
    truth = np.array([r["labels"] for r in rows])
    mae = float(np.mean(np.abs(scores - truth)))
    assert abs(mae - metrics["test"]["mae"]) < 1e-4
    for j, dim in enumerate(uplifting.dimension_names):   # and dimension by dimension, not only on average
        assert abs(np.mean(np.abs(scores[:, j] - truth[:, j])) - metrics["test"]["per_dimension"][dim]["mae"]) < 1e-4
    assert np.ptp(scores, axis=0).max() > 0 and ((scores >= 0) & (scores <= 10)).all()   # it tells articles apart
