-- 13_indexes.sql -- expand, step 4: indexes on legacy tables the triggers need.
--
-- Expects: 10-12 applied (capital_index_statements of 12).
-- Leaves:  capital_pagoprestamo_prestamo_id_idx on "PagoPrestamo"(prestamo_id), valid:
--          the loan triggers recompute remaining_amount and move a loan's
--          payments from the legacy payments of one loan.
-- Locks:   CREATE INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE (reads and
--          writes go on) and then waits for the transactions already writing
--          the table; it cannot run inside a transaction, so this runs on its
--          own (autocommit). A build that was killed, or gave up after
--          lock_timeout, leaves an INVALID index behind: it is dropped
--          (CONCURRENTLY) and rebuilt here, never trusted, on every attempt.
SELECT capital_index_statements('capital_pagoprestamo_prestamo_id_idx',
    'CREATE INDEX CONCURRENTLY capital_pagoprestamo_prestamo_id_idx ON "PagoPrestamo" (prestamo_id)')
\gexec
