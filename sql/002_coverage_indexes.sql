-- gt.db schema, version 2: covering indexes for the read stages (coverage, select) that gather a
-- label set (one filter, oracle, prompt version and repeat) of up to millions of labels.
-- Measured on 1M labels (bench/coverage.py), materialising the label set took 1.9 s CPU without
-- them and 0.8 s with them.

-- A label set straight from the index: without it every label's row is read (rows carry the
-- evidence and the raw answer, ~1-2 KB each) just to check its repeat and get its article and
-- content type.
CREATE INDEX labels_label_set ON labels(filter_id, oracle, prompt_sha256, status, "repeat", article_id, content_type);

-- Each labelled article's duplicate flag and source: in `articles` those columns sit after the
-- text, which spills onto overflow pages for most real articles, so without this index every
-- lookup walks the text's overflow chain.
CREATE INDEX articles_source ON articles(id, dup_of, source);
