-- 13_indexes.sql -- expand, step 4: indexes on legacy tables the triggers need.
--
-- Expects: 10-12 applied.
-- Leaves:  capital_pagoprestamo_prestamo_id_idx on "PagoPrestamo"(prestamo_id):
--          the loan triggers recompute remaining_amount and move a loan's
--          payments from the legacy payments of one loan.
-- Locks:   CREATE INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE (reads and
--          writes go on); it cannot run inside a transaction, so these
--          statements run on their own (autocommit). A run killed during the
--          build leaves an INVALID index behind: it is dropped (CONCURRENTLY)
--          and rebuilt here, never trusted.
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %s', i.indexrelid::regclass)
  FROM pg_index i
 WHERE i.indexrelid = to_regclass('capital_pagoprestamo_prestamo_id_idx') AND NOT i.indisvalid
\gexec
CREATE INDEX CONCURRENTLY IF NOT EXISTS capital_pagoprestamo_prestamo_id_idx ON "PagoPrestamo" (prestamo_id);
