-- quality: every kind of dirty data of %(kinds)s but the two of quality_balance.sql (overpaid_loans,
-- overdrawn_juntas), which may run at the same time on another connection in the same snapshot. Money is
-- judged the way the migration books it (domain.md §3): float8 -> numeric, round to cents; NULL, NaN and
-- infinite amounts cannot be booked at all (kind null_amounts).
WITH amounts AS (
  -- Every booked amount once, in cents, read by one step only, so it is not materialized: a CTE read twice
  -- kept all of the million rows in a tuple store (spilled to disk past work_mem) and scanned it twice.
  SELECT src, id, amount,
         CASE WHEN amount IS NULL OR amount IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
              THEN NULL ELSE round(amount::numeric, 2) END AS cents
    FROM (SELECT 'Accion' AS src, id, amount FROM "Accion"
          UNION ALL SELECT 'Multa', id, amount FROM "Multa"
          UNION ALL SELECT 'Prestamo', id, amount FROM "Prestamo"
          UNION ALL SELECT 'PagoPrestamo', id, amount FROM "PagoPrestamo") s
  OFFSET 0  -- cents computed once per row: inlined, the filter below evaluated the rounding up to three times
),
amount_findings AS (
  -- Only the rows something is wrong with (few) are kept, for the two kinds below.
  SELECT src || ':' || id AS ref,
         CASE WHEN cents IS NULL THEN 'null_amounts'
              WHEN cents = 0 THEN 'zero_amounts'
              WHEN cents < 0 THEN 'negative_amounts' END AS kind,
         -- A float that is not a whole number of cents (0.30000000000000004): the migration rounds it once.
         cents IS NOT NULL AND amount <> cents::float8 AS artefact
    FROM amounts
   WHERE cents IS NULL OR cents <= 0 OR amount <> cents::float8
),
bad_amounts AS (
  SELECT kind, ref FROM amount_findings WHERE kind IS NOT NULL
),
orphans AS (
  SELECT 'Junta.created_by_id:' || x.id AS ref FROM "Junta" x
   WHERE NOT EXISTS (SELECT 1 FROM "User" u WHERE u.id = x.created_by_id)
  UNION ALL SELECT 'Prestamo.junta_id:' || x.id FROM "Prestamo" x
   WHERE NOT EXISTS (SELECT 1 FROM "Junta" j WHERE j.id = x.junta_id)
  UNION ALL SELECT 'Prestamo.member_id:' || x.id FROM "Prestamo" x
   WHERE NOT EXISTS (SELECT 1 FROM "User" u WHERE u.id = x.member_id)
  UNION ALL SELECT 'PagoPrestamo.prestamo_id:' || x.id FROM "PagoPrestamo" x
   WHERE NOT EXISTS (SELECT 1 FROM "Prestamo" p WHERE p.id = x.prestamo_id)
  UNION ALL SELECT 'Accion.junta_id:' || x.id FROM "Accion" x
   WHERE NOT EXISTS (SELECT 1 FROM "Junta" j WHERE j.id = x.junta_id)
  UNION ALL SELECT 'Accion.member_id:' || x.id FROM "Accion" x
   WHERE NOT EXISTS (SELECT 1 FROM "User" u WHERE u.id = x.member_id)
  UNION ALL SELECT 'Multa.junta_id:' || x.id FROM "Multa" x
   WHERE NOT EXISTS (SELECT 1 FROM "Junta" j WHERE j.id = x.junta_id)
  UNION ALL SELECT 'Multa.member_id:' || x.id FROM "Multa" x
   WHERE NOT EXISTS (SELECT 1 FROM "User" u WHERE u.id = x.member_id)
),
unknown_status AS (
  SELECT 'Prestamo:' || id AS ref FROM "Prestamo"
   WHERE status IS NULL OR NOT (status = ANY (string_to_array(%(prestamo_status)s, ',')))
  UNION ALL
  SELECT 'Multa:' || id FROM "Multa"
   WHERE status IS NULL OR NOT (status = ANY (string_to_array(%(multa_status)s, ',')))
),
artefacts AS (
  SELECT ref FROM amount_findings WHERE artefact
),
same_time AS (
  -- Rows after the first (by id) with the same junta and timestamp: ledger order among them is by id. Each
  -- table is grouped first on a narrow key (the junta's hash and the timestamp; payments: the date alone,
  -- before their loans are joined), which finds every such group and, rarely, a few others; only the rows of
  -- those candidates are read again and grouped exactly. Grouping every row on the text ids hashed a
  -- million wide keys (2.9 s of 7.4 s on medium).
  SELECT 'Accion:' || x.id AS ref
    FROM "Accion" x
    JOIN (SELECT junta_id, created_at, min(id) AS first
            FROM "Accion"
           WHERE (hashtext(junta_id), created_at) IN (SELECT hashtext(junta_id), created_at FROM "Accion"
                                                        GROUP BY 1, 2 HAVING count(*) > 1)
           GROUP BY 1, 2 HAVING count(*) > 1) d
      ON d.junta_id = x.junta_id AND d.created_at = x.created_at AND x.id > d.first
  UNION ALL
  SELECT 'Multa:' || x.id
    FROM "Multa" x
    JOIN (SELECT junta_id, created_at, min(id) AS first
            FROM "Multa"
           WHERE (hashtext(junta_id), created_at) IN (SELECT hashtext(junta_id), created_at FROM "Multa"
                                                        GROUP BY 1, 2 HAVING count(*) > 1)
           GROUP BY 1, 2 HAVING count(*) > 1) d
      ON d.junta_id = x.junta_id AND d.created_at = x.created_at AND x.id > d.first
  UNION ALL
  SELECT 'Prestamo:' || x.id
    FROM "Prestamo" x
    JOIN (SELECT junta_id, created_at, min(id) AS first
            FROM "Prestamo"
           WHERE (hashtext(junta_id), created_at) IN (SELECT hashtext(junta_id), created_at FROM "Prestamo"
                                                        GROUP BY 1, 2 HAVING count(*) > 1)
           GROUP BY 1, 2 HAVING count(*) > 1) d
      ON d.junta_id = x.junta_id AND d.created_at = x.created_at AND x.id > d.first
  UNION ALL
  SELECT 'PagoPrestamo:' || x.id
    FROM (SELECT g.id, p.junta_id, g.date
            FROM "PagoPrestamo" g JOIN "Prestamo" p ON p.id = g.prestamo_id
           WHERE g.date IN (SELECT date FROM "PagoPrestamo" GROUP BY 1 HAVING count(*) > 1)) x
    JOIN (SELECT p.junta_id, g.date, min(g.id) AS first
            FROM "PagoPrestamo" g JOIN "Prestamo" p ON p.id = g.prestamo_id
           WHERE g.date IN (SELECT date FROM "PagoPrestamo" GROUP BY 1 HAVING count(*) > 1)
           GROUP BY 1, 2 HAVING count(*) > 1) d
      ON d.junta_id = x.junta_id AND d.date = x.date AND x.id > d.first
),
found AS (
  SELECT kind, ref FROM bad_amounts
  UNION ALL SELECT 'float_artefacts', ref FROM artefacts
  UNION ALL SELECT 'identical_timestamps', ref FROM same_time
  UNION ALL SELECT 'orphans', ref FROM orphans
  UNION ALL SELECT 'unknown_status', ref FROM unknown_status
)
SELECT k.kind,
       count(f.ref) AS count,
       coalesce((array_agg(f.ref ORDER BY f.ref) FILTER (WHERE f.ref IS NOT NULL))[1:5], '{}') AS sample_ids
  FROM unnest(string_to_array(%(kinds)s, ',')) WITH ORDINALITY AS k(kind, ord)
  LEFT JOIN found f ON f.kind = k.kind
 WHERE k.kind <> ALL (ARRAY['overpaid_loans', 'overdrawn_juntas'])
 GROUP BY k.kind, k.ord
 ORDER BY k.ord;
