-- gt.db schema, version 1: the whole pipeline's tables. Applied by stages/store.py when
-- PRAGMA user_version < 1. Every stage writes rows here first; files are exports.

-- One row per ingested record. Duplicates stay (dup_of -> the kept article) so users see what was
-- dropped and why; stages read only rows with dup_of IS NULL.
CREATE TABLE articles (
    id               TEXT PRIMARY KEY,
    title            TEXT NOT NULL DEFAULT '',
    text             TEXT NOT NULL,
    source           TEXT,
    url              TEXT,
    published_at     TEXT,
    language         TEXT,
    content_hash     TEXT NOT NULL,            -- sha256 of the normalised title+text
    dup_of           TEXT REFERENCES articles(id),
    near_dup_cluster TEXT,                     -- id of the cluster's first article; NULL = alone
    chars            INTEGER NOT NULL,
    too_short        INTEGER NOT NULL DEFAULT 0,
    ingested_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    origin           TEXT                      -- file the record came from
);
CREATE INDEX articles_content_hash ON articles(content_hash);
CREATE INDEX articles_cluster ON articles(near_dup_cluster) WHERE near_dup_cluster IS NOT NULL;
CREATE INDEX articles_dup_of ON articles(dup_of) WHERE dup_of IS NOT NULL;

-- MinHash signatures of ingested articles, kept so a later ingest clusters new articles against
-- old ones without re-hashing the whole table.
CREATE TABLE article_minhash (
    article_id TEXT PRIMARY KEY REFERENCES articles(id) ON DELETE CASCADE,
    signature  BLOB NOT NULL
);

-- A filter package as it was when labels were made (config and prompt hash): labels point here.
CREATE TABLE filters (
    id              TEXT PRIMARY KEY,          -- 'uplifting/v1'
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    config_json     TEXT NOT NULL,
    prompt_sha256   TEXT NOT NULL,
    dimensions_json TEXT NOT NULL,             -- dimension names in label order
    registered_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

-- One invocation of label / calibrate / an import: who labelled, with which prompt, at what cost.
CREATE TABLE label_runs (
    id            INTEGER PRIMARY KEY,
    purpose       TEXT NOT NULL CHECK (purpose IN ('calibrate', 'label', 'import')),
    filter_id     TEXT NOT NULL REFERENCES filters(id),
    oracle        TEXT NOT NULL,
    provider      TEXT,
    model         TEXT,
    prompt_sha256 TEXT NOT NULL,
    mode          TEXT NOT NULL DEFAULT 'sync' CHECK (mode IN ('sync', 'batch', 'import')),
    params_json   TEXT,
    seed          INTEGER,
    started_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    finished_at   TEXT,
    status        TEXT NOT NULL DEFAULT 'running',   -- running | done | stopped | failed
    cost_usd      REAL NOT NULL DEFAULT 0,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0
);

-- One oracle answer. A label is never half-written: the row and its scores go in one transaction.
-- An invalid answer keeps its raw text and has no scores (never zeros).
CREATE TABLE labels (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER NOT NULL REFERENCES label_runs(id),
    article_id     TEXT NOT NULL REFERENCES articles(id),
    filter_id      TEXT NOT NULL REFERENCES filters(id),
    oracle         TEXT NOT NULL,
    prompt_sha256  TEXT NOT NULL,
    repeat         INTEGER NOT NULL DEFAULT 0,
    status         TEXT NOT NULL CHECK (status IN ('ok', 'invalid', 'error')),
    content_type   TEXT,
    evidence_json  TEXT,
    raw_response   TEXT,
    error          TEXT,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    cached_tokens  INTEGER,
    cost_usd       REAL,
    latency_ms     REAL,
    attempts       INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    UNIQUE (article_id, filter_id, oracle, prompt_sha256, repeat)
);
CREATE INDEX labels_run ON labels(run_id);
CREATE INDEX labels_lookup ON labels(filter_id, oracle, prompt_sha256, status);

CREATE TABLE label_scores (
    label_id  INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
    dimension TEXT NOT NULL,
    score     REAL NOT NULL CHECK (score >= 0 AND score <= 10),
    PRIMARY KEY (label_id, dimension)
) WITHOUT ROWID;
CREATE INDEX label_scores_dimension ON label_scores(dimension, score);

-- A chosen training subset; several live side by side.
CREATE TABLE selections (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    filter_id     TEXT NOT NULL REFERENCES filters(id),
    oracle        TEXT NOT NULL,
    strategy      TEXT NOT NULL,
    params_json   TEXT,
    size          INTEGER NOT NULL,
    objective     REAL,
    bound         REAL,
    solver_status TEXT,
    seconds       REAL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE selection_members (
    selection_id INTEGER NOT NULL REFERENCES selections(id) ON DELETE CASCADE,
    article_id   TEXT NOT NULL REFERENCES articles(id),
    split        TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
    PRIMARY KEY (selection_id, article_id)
) WITHOUT ROWID;

-- A trained student and its predictions (the feedback loop for active learning).
CREATE TABLE models (
    id           TEXT PRIMARY KEY,              -- the model's name, e.g. 'uplifting_minilm_v1'
    base_model   TEXT NOT NULL,
    filter_id    TEXT REFERENCES filters(id),
    selection_id INTEGER REFERENCES selections(id),
    params_json  TEXT,
    metrics_json TEXT,
    path         TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE predictions (
    model_id   TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    article_id TEXT NOT NULL REFERENCES articles(id),
    dimension  TEXT NOT NULL,
    score      REAL NOT NULL,
    PRIMARY KEY (model_id, article_id, dimension)
) WITHOUT ROWID;

-- Remote provider batch jobs: recorded before we wait on them, so a restart polls, never resubmits.
CREATE TABLE batch_jobs (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES label_runs(id),
    provider      TEXT NOT NULL,
    remote_id     TEXT,
    state         TEXT NOT NULL,                -- preparing | submitted | running | succeeded | failed | expired | cancelled | collected
    submitted_at  TEXT,
    completed_at  TEXT,
    request_count INTEGER NOT NULL,
    requests_json TEXT,                         -- [[custom_id, article_id, repeat], ...]
    error         TEXT
);
CREATE INDEX batch_jobs_open ON batch_jobs(state);
