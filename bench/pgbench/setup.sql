-- bench/pgbench/setup.sql -- the application's helpers, created before the migration (not part of it).
-- bench_pick: one row per junta (n = 1..N) with its creator as the member and one non-rejected loan for
-- payments; rich = the junta's signed capital (domain.md section 3, from the raw rows) is at least 1000.00,
-- so the load's small loans (2.00) stay within capital during and after the migration.
-- bench_loan(n): inserts a loan on the n-th rich junta and returns 'ok', or 'rejected' when the capital
-- rule (SQLSTATE CAP01, installed by the migration) refuses it: business behaviour, counted, not a failure.
\set ON_ERROR_STOP on
-- One aggregate per table (the legacy tables have no junta_id index: a subquery per junta scanned them once
-- per junta, minutes on medium).
CREATE TABLE bench_pick AS
WITH signed AS (
    SELECT a.junta_id, round(a.amount::numeric, 2) AS v FROM "Accion" a
    UNION ALL
    SELECT m.junta_id, round(m.amount::numeric, 2) FROM "Multa" m
    UNION ALL
    SELECT p.junta_id, -round(p.amount::numeric, 2) FROM "Prestamo" p WHERE p.status <> 'REJECTED'
    UNION ALL
    SELECT p.junta_id, round(g.amount::numeric, 2) FROM "PagoPrestamo" g JOIN "Prestamo" p ON p.id = g.prestamo_id
), capital AS (
    SELECT junta_id, sum(v) AS capital FROM signed GROUP BY junta_id
), first_loan AS (
    SELECT junta_id, min(id) AS loan_id FROM "Prestamo" WHERE status <> 'REJECTED' GROUP BY junta_id
)
SELECT row_number() OVER (ORDER BY j.id)::int AS n, j.id AS junta_id, j.created_by_id AS member_id, f.loan_id,
       coalesce(c.capital, 0) AS capital
  FROM "Junta" j
  LEFT JOIN first_loan f ON f.junta_id = j.id
  LEFT JOIN capital c ON c.junta_id = j.id;
DELETE FROM bench_pick WHERE loan_id IS NULL;
CREATE UNIQUE INDEX ON bench_pick (n);
CREATE TABLE bench_rich AS
SELECT row_number() OVER (ORDER BY n)::int AS r, junta_id, member_id FROM bench_pick WHERE capital >= 1000;
CREATE UNIQUE INDEX ON bench_rich (r);
CREATE TABLE bench_loan_outcome (outcome text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION bench_loan(p_r int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO "Prestamo" (id, amount, description, status, created_at, updated_at, junta_id, member_id)
    SELECT gen_random_uuid()::text, 2.0, 'bench', 'APPROVED', localtimestamp, localtimestamp, junta_id, member_id
      FROM bench_rich WHERE r = p_r;
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'CAP01' THEN
    INSERT INTO bench_loan_outcome (outcome) VALUES ('rejected');
    RETURN 'rejected';
END
$$;
ANALYZE bench_pick, bench_rich;
