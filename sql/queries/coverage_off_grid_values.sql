-- coverage: how many distinct scores of one dimension (across all of label_scores) are not whole
-- or half points. A loose index scan over label_scores(dimension, score): one index seek per
-- distinct value, so it costs microseconds however many labels there are. Zero (the usual case,
-- every oracle answer is validated to halves) means packed scores are exact.
-- Parameter: :dimension.
WITH RECURSIVE distinct_scores(score) AS (
    SELECT MIN(score) FROM label_scores WHERE dimension = :dimension
    UNION ALL
    SELECT (SELECT MIN(s.score) FROM label_scores s WHERE s.dimension = :dimension AND s.score > d.score)
    FROM distinct_scores d
    WHERE d.score IS NOT NULL
)
SELECT COUNT(*) FROM distinct_scores WHERE score IS NOT NULL AND score * 2 <> ROUND(score * 2);
