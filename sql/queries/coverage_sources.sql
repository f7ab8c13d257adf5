-- coverage: labels per source (the `source` field of the article), most first.
SELECT COALESCE(source, '(no source)') AS source, COUNT(*) AS labels
FROM coverage_labels
GROUP BY 1
ORDER BY labels DESC, source;
