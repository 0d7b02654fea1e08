-- 20_backfill.sql -- backfill: ledger, junta index, junta columns, shadow tables.
--
-- Expects: phase 'expanded' or later (the sync triggers are live, so writes
--          made by the application from now on are already tracked).
-- Leaves:  a seq 0 movement for every existing capital-affecting source row,
--          a shadow row for every legacy loan and payment, the ledger's junta
--          index (valid, vacuumed), the "Junta" columns recomputed from the
--          ledger, loan_number/capital_at_time filled; phase 'ledger_complete'.
-- Locks:   row locks only (FOR SHARE on a batch of source rows, FOR NO KEY
--          UPDATE on a batch of juntas), one transaction per batch; the index
--          build and VACUUM take SHARE UPDATE EXCLUSIVE on capital_movements
--          only (the application's writes go on).
--
-- Each batch is one capital_backfill_step() call in its own transaction;
-- progress is kept in capital_backfill_progress in the same transaction as
-- the batch, so a run killed at any point resumes exactly where it stopped.
--
-- "\set capital_unit batched" declares the statement after it a batched
-- loop. psql sets a variable and runs the CALL: capital_backfill_run() calls
-- capital_backfill_step() until it reports all_done, committing after every
-- batch. The capital_migrate module runs that loop itself instead
-- (module_utils/backfill.py), one transaction per batch, so every batch gets
-- its own statement_timeout (a CALL is one statement), its timing, lock
-- timeout retries with backoff, and a stop between batches on a signal. The
-- other statements it runs as they are, like psql.

-- 1. The ledger steps (Accion, Multa, Prestamo, PagoPrestamo). Returns early
--    when the next step needs the junta index and it is not built yet.
\set capital_unit batched
CALL capital_backfill_run(:batch_size);

-- 2. The junta index, built once over the complete ledger: the junta steps,
--    calculate_available_capital() and the guide's queries read the ledger by
--    junta. INCLUDE: the junta recompute and the sweep read only these columns
--    (index-only scans once VACUUM has set the visibility map). A build that
--    was killed or gave up after lock_timeout left it INVALID: rebuilt here.
SELECT capital_index_statements('capital_movements_junta_created_idx',
    'CREATE INDEX CONCURRENTLY capital_movements_junta_created_idx ON capital_movements (junta_id, created_at)'
    ' INCLUDE (type, direction, amount)')
\gexec
VACUUM (ANALYZE) capital_movements;

-- 3. The junta steps: "Junta" columns from the ledger (then phase
--    ledger_complete), loan_number/capital_at_time sweep.
\set capital_unit batched
CALL capital_backfill_run(:batch_size);
