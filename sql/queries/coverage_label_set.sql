-- coverage: the label set one coverage report describes, materialised once per run so every
-- figure is computed over exactly the same labels: the valid labels of one filter, oracle, prompt
-- version and repeat, on articles that are not duplicates.
-- Parameters: :filter_id, :oracle, :prompt_sha256, :repeat, and the label id range
-- [:id_from, :id_to), so that several connections can each gather one range in parallel.
CREATE TEMP TABLE coverage_labels (
    label_id     INTEGER PRIMARY KEY,
    article_id   TEXT NOT NULL,
    source       TEXT,
    content_type TEXT
);
INSERT INTO coverage_labels (label_id, article_id, source, content_type)
SELECT l.id, l.article_id, a.source, l.content_type
FROM labels l
JOIN articles a ON a.id = l.article_id
WHERE l.filter_id = :filter_id
  AND l.oracle = :oracle
  AND l.prompt_sha256 = :prompt_sha256
  AND l."repeat" = :repeat
  AND l.status = 'ok'
  AND +l.id >= :id_from AND +l.id < :id_to  -- unary +: keep the planner on the covering index labels_label_set
  AND a.dup_of IS NULL;
