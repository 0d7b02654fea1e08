-- bench/pgbench/setup.sql -- the application's helpers, created before the migration (not part of it).
-- bench_pick: one row per junta (n = 1..N) with its creator as the member and one non-rejected loan for
-- payments; rich = the junta's signed capital (domain.md section 3, from the raw rows) is at least 1000.00,
-- so the load's small loans (2.00) stay within capital during and after the migration.
-- bench_loan(n): inserts a loan on the n-th rich junta and returns 'ok', or 'rejected' when the capital
-- rule (SQLSTATE CAP01, installed by the migration) refuses it: business behaviour, counted, not a failure.
\set ON_ERROR_STOP on
CREATE TABLE bench_pick AS
SELECT row_number() OVER (ORDER BY j.id)::int AS n, j.id AS junta_id, j.created_by_id AS member_id,
       (SELECT p.id FROM "Prestamo" p WHERE p.junta_id = j.id AND p.status <> 'REJECTED' ORDER BY p.id LIMIT 1)
           AS loan_id,
       coalesce((SELECT sum(round(a.amount::numeric, 2)) FROM "Accion" a WHERE a.junta_id = j.id), 0)
       + coalesce((SELECT sum(round(m.amount::numeric, 2)) FROM "Multa" m WHERE m.junta_id = j.id), 0)
       - coalesce((SELECT sum(round(p.amount::numeric, 2)) FROM "Prestamo" p
                    WHERE p.junta_id = j.id AND p.status <> 'REJECTED'), 0)
       + coalesce((SELECT sum(round(g.amount::numeric, 2)) FROM "PagoPrestamo" g JOIN "Prestamo" p
                     ON p.id = g.prestamo_id WHERE p.junta_id = j.id), 0) AS capital
  FROM "Junta" j;
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
