"""The export step: a trained student as a standalone Hugging Face model folder others can load.

    python -m stages.export --model-dir models/student --output exports/uplifting_student
    python -m stages.export ... --push-to-hub org/uplifting-student      # HF_TOKEN from the environment

The folder holds the LoRA weights merged into the base (model.safetensors), the tokenizer, and a
config.json with `problem_type: "regression"`, `num_labels` and `id2label` = the filter's
dimensions, so `AutoModelForSequenceClassification` (and serving stacks that read the config:
vLLM's pooling runner, text-embeddings-inference, where they support the architecture) returns the
raw outputs with no softmax. The student's target scaling (x * std + mean) is folded into the
regression head where it has a bias (encoders such as BERT/MiniLM): the raw outputs are then the
0-10 scores themselves, to be clipped to 0-10. A head without a bias (decoders such as Qwen2)
keeps standardised outputs and config.json says how to map them (`gt_student.score_scaling`). The
input rule (title, blank line, text; the oracle's character cut; head+tail on tokens) is in
config.json's `gt_student` block and in the model card (README.md) with code. The card also names
the filter and its prompt hash, the oracle and the training selection (from gt.db with --db), the
metrics of `make evaluate` with the mean predictor and the floor, the intended use and the limits.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


from gt.core import report, store
from gt.core.bands import SCORE_MAX, SCORE_MIN
from gt.core.errors import UsageError
from gt.core.text import HEAD_SHARE
from gt.student.model import StudentError, read_model_folder


@dataclass
class ExportOptions:
    """The flags of `python -m stages.export`."""
    model_dir: str = "models/student"
    output: str | None = None
    db: str | None = None              # for the card: the oracle and prompt the training selection used
    push_to_hub: str | None = None     # a Hub repo id; the token comes from HF_TOKEN
    private: bool = False

    def check(self) -> None:
        if not self.output:
            raise UsageError("pass --output FOLDER (where the standalone model goes)")
        if self.push_to_hub and not os.environ.get("HF_TOKEN"):
            raise UsageError("--push-to-hub needs HF_TOKEN set (a write token of the Hub account; it is never stored)")


@dataclass
class ExportResult:
    output: Path
    model_id: str
    scores_folded: bool
    pushed_to: str | None = None


def fold_scaling(model, mean: list[float], std: list[float]) -> bool:
    """Fold the target scaling into the regression head (W' = std x W, b' = std x b + mean), so the
    raw outputs are scores. Returns False where the head has no bias to hold the mean (left as is)."""
    import torch

    head = model.classifier if hasattr(model, "classifier") else model.score
    linear = head if isinstance(head, torch.nn.Linear) else getattr(head, "out_proj", None)
    if not isinstance(linear, torch.nn.Linear) or linear.bias is None:
        return False
    scale = torch.tensor(std, dtype=linear.weight.dtype)
    with torch.no_grad():
        linear.weight.mul_(scale[:, None])
        linear.bias.copy_(linear.bias * scale + torch.tensor(mean, dtype=linear.bias.dtype))
    return True


def input_rule(config: dict, prefix: list[int], suffix: list[int]) -> dict:
    """How an article becomes input ids, as config.json records it."""
    room = config["max_length"] - len(prefix) - len(suffix)
    head = int(room * HEAD_SHARE)
    return {"text": "title + '\\n\\n' + text (stripped)", "max_article_chars": config.get("max_article_chars"),
            "max_length": config["max_length"], "token_budget": room, "head_tokens": head, "tail_tokens": room - head,
            "special_tokens": {"prefix": prefix, "suffix": suffix}}


def export(o: ExportOptions) -> ExportResult:
    """Write the standalone folder (a temporary folder renamed into place) and, with
    --push-to-hub, upload it."""
    from gt.student.evaluate import load_student

    o.check()
    model_dir, output = Path(o.model_dir), Path(o.output)
    config, dims = read_model_folder(model_dir)
    student = load_student(model_dir, "cpu")   # fp32, LoRA merged
    model = student.model
    folded = fold_scaling(model, config["target_mean"], config["target_std"])
    model.config.problem_type = "regression"
    model.config.num_labels = len(dims)
    model.config.id2label = dict(enumerate(dims))
    model.config.label2id = {d: i for i, d in enumerate(dims)}
    model.config.gt_student = {
        "name": config["name"], "filter": config.get("filter"), "dimensions": dims,
        "outputs": "scores" if folded else "standardised",
        "score_scaling": None if folded else {"mean": config["target_mean"], "std": config["target_std"]},
        "clip": [SCORE_MIN, SCORE_MAX],
        "input": input_rule(config, student.encoder.prefix, student.encoder.suffix),
    }
    provenance = training_provenance(o.db, config)
    evaluation = _read_json(model_dir / "evaluation.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    try:
        model.save_pretrained(str(work), safe_serialization=True)
        student.tokenizer.save_pretrained(str(work))
        report.write_text_atomic(work / "README.md", model_card(config, dims, folded, provenance, evaluation))
        report.follow_umask(work)
        if output.exists():
            shutil.rmtree(output)
        os.replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = ExportResult(output, config["name"], folded)
    if o.push_to_hub:
        result.pushed_to = push(output, o.push_to_hub, private=o.private)
    return result


def push(folder: Path, repo_id: str, *, private: bool) -> str:
    """Create the Hub repo (if new) and upload the folder as one commit; the token is HF_TOKEN's."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=os.environ["HF_TOKEN"])
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"gt export of {folder.name}")
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "no answer"
        raise StudentError(f"push to {repo_id} at {api.endpoint} failed ({status}: {str(e).splitlines()[0]}); check "
                           f"the repo id and that HF_TOKEN may write to it") from None
    return str(url)


def training_provenance(db: str | None, config: dict) -> dict:
    """The oracle, prompt hash and selection the student's training data came from (gt.db), and the
    dataset card beside its split files."""
    data = config.get("data") or {}
    out: dict = {"selection_id": data.get("selection_id"), "source": data.get("source")}
    first = str(data.get("source") or "").split(", ")[0]
    card = Path(first).parent / "README.md" if first else None
    if card is not None and card.is_file():
        out["dataset_card"] = str(card)
    if db and data.get("selection_id") is not None:
        conn = store.connect(db, create=False)
        try:
            out["oracle"], out["prompt_sha256"] = store.selection_label_set(conn, data["selection_id"])
            row = conn.execute("SELECT params_json FROM selections WHERE id = ?", (data["selection_id"],)).fetchone()
            if row is not None:
                from gt.selection.report import test_split_words

                out["test"] = test_split_words(json.loads(row[0] or "{}"))
        finally:
            conn.close()
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metrics_section(evaluation: dict | None, dims: list[str], test_words: str | None) -> str:
    if not evaluation or not evaluation.get("test"):
        return "Not measured yet: run `make evaluate` on the student, then export again."
    which = f" The selection's test split: {test_words}." if test_words else ""
    test, mean = evaluation["test"], evaluation.get("mean_predictor") or {}
    floor = evaluation.get("inter_oracle") or {}
    rows = []
    for d in dims:
        t = test["per_dimension"][d]
        rows.append([d, t["mae"], (mean.get("per_dimension") or {}).get(d, {}).get("mae", "-"),
                     (floor.get("per_dimension") or {}).get(d, "-"),
                     t["spearman"] if t["spearman"] is not None else "-"])
    return (f"On {evaluation['test_file']} ({test['n']} articles): MAE {test['mae']:.2f}"
            + (f", the mean predictor's {mean['mae']:.2f}" if mean.get("mae") is not None else "")
            + (f", the floor (two raters apart) {floor['mae']:.2f}" if floor.get("mae") is not None else "")
            + f".{which} The mean predictor answers {mean.get('from', 'the training labels mean')}.\n\n"
            + report.md_table(["dimension", "MAE", "mean-predictor MAE", "floor", "Spearman"], rows))


def model_card(config: dict, dims: list[str], folded: bool, provenance: dict, evaluation: dict | None) -> str:
    rule = input_rule(config, config.get("special_tokens", {}).get("prefix", []),
                      config.get("special_tokens", {}).get("suffix", []))
    scaling = ("The outputs are the scores (the target scaling is folded into the head): clip them to 0-10."
               if folded else
               "The outputs are standardised: score = output x std + mean per dimension "
               "(config.json `gt_student.score_scaling`), then clip to 0-10.")
    oracle = (f"labels of **{provenance['oracle']}** with prompt sha256 `{provenance['prompt_sha256'][:16]}...`"
              if provenance.get("oracle") else "labels of the oracle of its training selection (export with --db "
                                               "gt.db to name it here)")
    card = f"dataset card `{provenance['dataset_card']}`" if provenance.get("dataset_card") else "no dataset card found"
    front = {"library_name": "transformers", "pipeline_tag": "text-classification",
             "tags": ["regression", "ground-truth-distillation", str(config.get("filter"))],
             "base_model": config["base_model"] if "/" in str(config["base_model"]) else None}
    yaml_lines = "\n".join(f"{k}: {json.dumps(v)}" for k, v in front.items() if v is not None)
    return f"""---
{yaml_lines}
---
# {config['name']}

A regression student for the **{config.get('filter')}** filter: {len(dims)} scores on a 0-10 scale
({', '.join(dims)}), distilled from {oracle}. Base model {config['base_model']}, LoRA merged into the
weights. Trained on selection {provenance.get('selection_id')} ({provenance.get('source')}; {card}).

## Metrics
{_metrics_section(evaluation, dims, provenance.get("test"))}

## Input: how an article becomes input ids
1. text = title + blank line + body, the body cut to {rule['max_article_chars']} characters head+tail
   (as the oracle's prompt cut it);
2. tokenize without special tokens; if longer than {rule['token_budget']} tokens, keep the first
   {rule['head_tokens']} and the last {rule['tail_tokens']} (leads and endings carry a news article's substance);
3. add the special tokens ({rule['special_tokens']['prefix']} before, {rule['special_tokens']['suffix']} after).

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tok = AutoTokenizer.from_pretrained(FOLDER)
model = AutoModelForSequenceClassification.from_pretrained(FOLDER).eval()
ids = tok(title + "\\n\\n" + text, add_special_tokens=False)["input_ids"]
if len(ids) > {rule['token_budget']}:
    ids = ids[:{rule['head_tokens']}] + ids[-{rule['tail_tokens']}:]
ids = {rule['special_tokens']['prefix']} + ids + {rule['special_tokens']['suffix']}
with torch.no_grad():
    out = model(input_ids=torch.tensor([ids])).logits[0]
scores = dict(zip(model.config.id2label.values(), out.clamp(0, 10).tolist()))
```
{scaling}

## Intended use and limits
- Scoring a feed of news articles for the filter's dimensions where calling the oracle for each is
  too costly; ranking and routing, with the oracle (or a person) checking what matters.
- The overall score and tier need the filter package's weights, gatekeepers and tiers
  (`python -m stages.score` computes them). The student predicts no content type, so the filter's
  content-type caps cannot apply to its overall score.
- Its error is the oracle's error plus its own: compare the MAE above with the floor, and expect it
  to be larger on articles unlike its training data (other languages, other kinds of text).
"""
