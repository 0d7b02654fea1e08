-- A loan repayment of 1.50 on a random junta's loan.
\set j random(1, :npick)
INSERT INTO "PagoPrestamo" (id, amount, date, prestamo_id)
SELECT gen_random_uuid()::text, 1.5, localtimestamp, loan_id FROM bench_pick WHERE n = :j;
