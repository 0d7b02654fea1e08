-- A share purchase of 10.00 in a random junta.
\set j random(1, :npick)
INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
SELECT gen_random_uuid()::text, 'COMPRA', 10.0, localtimestamp, junta_id, member_id FROM bench_pick WHERE n = :j;
