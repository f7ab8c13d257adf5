-- coverage: exact scores of the labels in coverage_labels holding a score that is not a whole or
-- half point (read only when coverage_off_grid_values.sql found such scores).
SELECT s.label_id, s.dimension, s.score
FROM coverage_labels c
JOIN label_scores s ON s.label_id = c.label_id
WHERE c.label_id IN (
    SELECT x.label_id FROM label_scores x WHERE x.score * 2 <> ROUND(x.score * 2)
)
ORDER BY s.label_id;
