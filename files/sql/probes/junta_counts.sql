-- junta_counts: the per-junta counts the guide's query means to show, one aggregate per table (linear),
-- and how many rows the guide's own query would build (it joins every loan, fine and share of a junta
-- with each other, so its counts are those products).
SELECT j.id, j.name,
       coalesce(p.n, 0) AS prestamos_count, coalesce(m.n, 0) AS multas_count,
       coalesce(a.n, 0) AS acciones_count,
       greatest(coalesce(p.n, 0), 1) * greatest(coalesce(m.n, 0), 1) * greatest(coalesce(a.n, 0), 1)
         AS guide_rows
  FROM "Junta" j
  LEFT JOIN (SELECT junta_id, count(*) AS n FROM "Prestamo" GROUP BY junta_id) p ON p.junta_id = j.id
  LEFT JOIN (SELECT junta_id, count(*) AS n FROM "Multa" GROUP BY junta_id) m ON m.junta_id = j.id
  LEFT JOIN (SELECT junta_id, count(*) AS n FROM "Accion" GROUP BY junta_id) a ON a.junta_id = j.id
 ORDER BY j.id;
