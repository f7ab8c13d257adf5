-- gt.db schema, version 5: which articles the label stage chose to buy, and why (`label --pick`).
-- One round per pick: the method, the scorer that predicted the unlabelled articles' scores and how
-- many labels it was fitted on, and what the picks were predicted to add. One row per picked
-- article with its reason ('gap': its predicted profile fills a (dimension, bin) cell the labels
-- so far leave short, named in `cell`; 'explore': the seeded random share; 'uncertain': where the
-- scorer's ensemble disagrees most; 'listed': from an ids file; 'random': a random round of `make loop`)
-- and the predicted scores. A killed
-- run resumes its round's picks instead of picking again, so the sample's design stays queryable:
--   SELECT reason, COUNT(*) FROM label_picks GROUP BY reason;
CREATE TABLE pick_rounds (
    id            INTEGER PRIMARY KEY,
    filter_id     TEXT NOT NULL REFERENCES filters(id),
    oracle        TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    method        TEXT NOT NULL CHECK (method IN ('random', 'gaps', 'uncertain', 'ids')),
    loop_key      TEXT,                    -- the `make loop` run this round belongs to; NULL for one label run
    round_no      INTEGER,                 -- 1.. within its loop
    requested     INTEGER NOT NULL,        -- articles asked for
    explore_share REAL NOT NULL DEFAULT 0,
    seed          INTEGER,
    scorer        TEXT,                    -- what predicted the scores (probe / student), in words
    labels_seen   INTEGER,                 -- labels of this oracle the scorer was fitted on
    params_json   TEXT,                    -- bins, quotas and the predicted gain of the picks
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX pick_rounds_key ON pick_rounds(filter_id, oracle, prompt_sha256, method, loop_key);

CREATE TABLE label_picks (
    round_id       INTEGER NOT NULL REFERENCES pick_rounds(id) ON DELETE CASCADE,
    article_id     TEXT NOT NULL REFERENCES articles(id),
    rank           INTEGER NOT NULL,       -- the order the label run takes them in
    reason         TEXT NOT NULL CHECK (reason IN ('gap', 'explore', 'uncertain', 'listed', 'random')),
    cell           TEXT,                   -- 'dimension:bin' a gap pick was meant to fill
    predicted_json TEXT,                   -- the scorer's predicted scores {dimension: score}
    uncertainty    REAL,                   -- the ensemble's spread (uncertain picks)
    PRIMARY KEY (round_id, article_id)
) WITHOUT ROWID;
CREATE INDEX label_picks_article ON label_picks(article_id);
