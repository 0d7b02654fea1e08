-- quality: money is judged the way the migration books it (domain.md §3): float8 -> numeric, round
-- to cents; NULL, NaN and infinite amounts cannot be booked at all (kind null_amounts).
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
-- Cents of the loans and payments, computed where they are read (joining the amounts CTE back by (src, id)
-- hashed a million rows once per use: 18 s of the pass on medium, BENCHMARKS.md).
loans AS (
  SELECT p.id, p.junta_id, p.created_at, p.status,
         CASE WHEN p.amount IS NULL OR p.amount IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
              THEN NULL ELSE round(p.amount::numeric, 2) END AS cents
    FROM "Prestamo" p
),
payments AS (
  SELECT g.id, g.prestamo_id, g.date,
         CASE WHEN g.amount IS NULL OR g.amount IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
              THEN NULL ELSE round(g.amount::numeric, 2) END AS cents
    FROM "PagoPrestamo" g
),
overpaid AS (
  SELECT 'Prestamo:' || l.id AS ref
    FROM loans l
    JOIN (SELECT prestamo_id, sum(cents) AS paid FROM payments GROUP BY prestamo_id) s ON s.prestamo_id = l.id
   WHERE s.paid > l.cents
),
movements AS (
  SELECT x.junta_id, x.created_at AS at,
         CASE WHEN x.amount IS NULL OR x.amount IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
              THEN NULL ELSE round(x.amount::numeric, 2) END AS delta
    FROM "Accion" x
  UNION ALL
  SELECT x.junta_id, x.created_at,
         CASE WHEN x.amount IS NULL OR x.amount IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
              THEN NULL ELSE round(x.amount::numeric, 2) END
    FROM "Multa" x
  UNION ALL
  SELECT l.junta_id, l.created_at, -l.cents FROM loans l WHERE l.status IS DISTINCT FROM 'REJECTED'
  UNION ALL
  SELECT p.junta_id, g.date, g.cents FROM payments g JOIN "Prestamo" p ON p.id = g.prestamo_id
),
running AS (
  SELECT junta_id,
         sum(delta) OVER (PARTITION BY junta_id ORDER BY at, delta DESC
                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS balance
    FROM movements
   WHERE delta IS NOT NULL
),
overdrawn AS (
  SELECT 'Junta:' || junta_id AS ref FROM running GROUP BY junta_id HAVING min(balance) < 0
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
  UNION ALL SELECT 'overpaid_loans', ref FROM overpaid
  UNION ALL SELECT 'overdrawn_juntas', ref FROM overdrawn
  UNION ALL SELECT 'unknown_status', ref FROM unknown_status
)
SELECT k.kind,
       count(f.ref) AS count,
       coalesce((array_agg(f.ref ORDER BY f.ref) FILTER (WHERE f.ref IS NOT NULL))[1:5], '{}') AS sample_ids
  FROM unnest(string_to_array(%(kinds)s, ',')) WITH ORDINALITY AS k(kind, ord)
  LEFT JOIN found f ON f.kind = k.kind
 GROUP BY k.kind, k.ord
 ORDER BY k.ord;
