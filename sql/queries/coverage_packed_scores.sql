-- coverage: one row per label of coverage_labels (in label_id order) with its scores on the
-- dimensions of one chunk packed into one integer: round(2 x score) + 1 is a digit in base 22 at
-- the dimension's place (22^k), so a label's eight scores come back as one integer instead of
-- eight rows, and a digit 0 shows a dimension the label has no score for. Exact for whole and
-- half points; labels holding other values (imported files may carry any 0-10 number) are read
-- again exactly with coverage_exact_scores.sql.
-- Parameter: :chunk (coverage_dimensions holds each dimension's chunk and place).
SELECT SUM((CAST(ROUND(s.score * 2) AS INTEGER) + 1) * d.place) AS packed
FROM coverage_labels c
JOIN label_scores s ON s.label_id = c.label_id
JOIN coverage_dimensions d ON d.dimension = s.dimension AND d.chunk = :chunk
GROUP BY c.label_id
ORDER BY c.label_id;
