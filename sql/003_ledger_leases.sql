-- gt.db schema, version 3: the label stage's ledger and leases (every dollar accounted for).
--
-- The ledger: label_runs.cost_usd (and its tokens and calls) grows in the same transaction that
-- stores what a billed response brought back, so SUM(label_runs.cost_usd) is what the providers
-- would invoice at every moment, up to the requests in flight, whatever happens to the process.
-- Nothing ever subtracts from it (a retried 'error' label is replaced, its cost stays in its run).
ALTER TABLE label_runs ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE label_runs ADD COLUMN calls INTEGER NOT NULL DEFAULT 0;          -- billed responses
ALTER TABLE label_runs ADD COLUMN unstored INTEGER NOT NULL DEFAULT 0;       -- billed answers not kept: the unit was labelled by another run first
ALTER TABLE label_runs ADD COLUMN owner TEXT;                                -- host:pid:start of the process running it
ALTER TABLE label_runs ADD COLUMN heartbeat_at REAL;                         -- unix time, renewed while it runs
ALTER TABLE label_runs ADD COLUMN stopped_reason TEXT;                       -- budget | total_budget | quota | interrupted | locked | breaker | fatal

-- Runs closed before version 3 had their cost rolled up from their labels at the end; a run that
-- was killed kept 0. Give every old run at least what its surviving labels cost.
UPDATE label_runs SET
    cost_usd = MAX(cost_usd, (SELECT COALESCE(SUM(cost_usd), 0) FROM labels WHERE run_id = label_runs.id)),
    input_tokens = MAX(input_tokens, (SELECT COALESCE(SUM(input_tokens), 0) FROM labels WHERE run_id = label_runs.id)),
    output_tokens = MAX(output_tokens, (SELECT COALESCE(SUM(output_tokens), 0) FROM labels WHERE run_id = label_runs.id)),
    cached_tokens = (SELECT COALESCE(SUM(cached_tokens), 0) FROM labels WHERE run_id = label_runs.id),
    calls = (SELECT COALESCE(SUM(attempts), 0) FROM labels WHERE run_id = label_runs.id AND input_tokens > 0);

-- Leases: before a request is sent its unit is claimed here, so concurrent processes (on this
-- machine or another one sharing the file) never pay for the same unit. A process renews its
-- leases while it runs; a lease whose owner died is taken over (at once on the same host, where
-- the owner's pid can be checked; after expires_at elsewhere). Units inside an open provider batch
-- job are leased by the job (owner 'job:<id>') until it is collected.
CREATE TABLE label_leases (
    filter_id     TEXT NOT NULL,
    oracle        TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    article_id    TEXT NOT NULL,
    "repeat"      INTEGER NOT NULL,
    owner         TEXT NOT NULL,
    run_id        INTEGER,
    expires_at    REAL NOT NULL,                 -- unix time
    PRIMARY KEY (filter_id, oracle, prompt_sha256, article_id, "repeat")
) WITHOUT ROWID;
CREATE INDEX label_leases_owner ON label_leases(owner);

-- Answers a run could not write because gt.db stayed locked past its patience are kept in a file
-- beside the database and stored by the next run; each file is applied once.
CREATE TABLE label_spills (
    name       TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    records    INTEGER NOT NULL
);
