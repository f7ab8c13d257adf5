-- gt.db schema, version 2: an index for the read stages (coverage, select) that look up, for up
-- to millions of labels, each labelled article's source and duplicate flag. In `articles` those
-- columns sit after the article text, which spills onto overflow pages for most real articles,
-- so without this covering index every lookup walks the text's overflow chain.
CREATE INDEX articles_source ON articles(id, dup_of, source);
