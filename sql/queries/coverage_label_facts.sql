-- coverage: per label (in label_id order, matching coverage_packed_scores.sql) the facts that are
-- not scores: the content type, which caps the overall score and so decides the tier.
SELECT content_type FROM coverage_labels ORDER BY label_id;
