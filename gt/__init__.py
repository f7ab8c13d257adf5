"""gt, the library: every step of the pipeline as functions over one SQLite file (gt.db).

The commands in stages/ parse flags, call this library, print and exit; the library never imports
them. Its rooms, one folder each (ARCHITECTURE.md says what each holds and who may import whom):
core (gt.db, filters, text, bands, stats, report files), oracles (one module per provider),
intake (articles and labels into gt.db), labelling (the paid path: sync and batch engines, the
ledger, leases, picking, the loop), calibration, coverage, selection (the integer program and its
splits), student (the model, its training, evaluation and learning curves).
"""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]   # oracles.yaml, sql/, datasette/, data/ live here
DEFAULT_SEED = 42                                   # every random choice takes --seed; this unless told
