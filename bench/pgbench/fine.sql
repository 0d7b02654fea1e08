-- A fine of 5.00 in a random junta.
\set j random(1, :npick)
INSERT INTO "Multa" (id, amount, description, status, created_at, junta_id, member_id)
SELECT gen_random_uuid()::text, 5.0, 'bench', 'PENDING', localtimestamp, junta_id, member_id FROM bench_pick WHERE n = :j;
