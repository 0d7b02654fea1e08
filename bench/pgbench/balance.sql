-- Read a random junta's balance (all its columns: the capital columns once the migration added them).
\set j random(1, :npick)
SELECT j.* FROM "Junta" j WHERE j.id = (SELECT junta_id FROM bench_pick WHERE n = :j);
