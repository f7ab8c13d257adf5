-- gt.db schema, version 4: the splits a dataset ships with (EmoBank's train/dev/test), so that
-- selection, learning curves and evaluation can hold out the same test articles the dataset's
-- authors did. Written by `ingest --split-column COLUMN` (scheme name: --split-name, default
-- 'official'); one row per article and scheme, so several schemes live side by side.
-- The source file's own words are mapped once, at ingest: train -> 'train'; dev, val, valid,
-- validation -> 'val'; test -> 'test' (the names selection_members uses).
CREATE TABLE article_splits (
    split_name TEXT NOT NULL,                        -- the scheme, e.g. 'official'
    article_id TEXT NOT NULL REFERENCES articles(id),
    split      TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
    PRIMARY KEY (split_name, article_id)
) WITHOUT ROWID;
CREATE INDEX article_splits_article ON article_splits(article_id);
