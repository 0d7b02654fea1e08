-- quality_balance: the two kinds of quality.sql's list that follow money through time, overpaid_loans and
-- overdrawn_juntas (the rows of %(kinds)s that are these two), judged like the migration books money
-- (domain.md §3: float8 -> numeric, round to cents). A file of its own so that it can run beside quality.sql
-- on a second connection in the same snapshot (capital_preflight_connections).
WITH
-- Cents of the loans and payments, computed where they are read (joining amounts back by (src, id)
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
found AS (
  SELECT 'overpaid_loans' AS kind, ref FROM overpaid
  UNION ALL SELECT 'overdrawn_juntas', ref FROM overdrawn
)
SELECT k.kind,
       count(f.ref) AS count,
       coalesce((array_agg(f.ref ORDER BY f.ref) FILTER (WHERE f.ref IS NOT NULL))[1:5], '{}') AS sample_ids
  FROM unnest(string_to_array(%(kinds)s, ',')) WITH ORDINALITY AS k(kind, ord)
  LEFT JOIN found f ON f.kind = k.kind
 WHERE k.kind = ANY (ARRAY['overpaid_loans', 'overdrawn_juntas'])
 GROUP BY k.kind, k.ord
 ORDER BY k.ord;
