-- 11_expand_columns.sql -- expand, step 2: new columns on legacy tables.
--
-- Expects: 10_expand_tables.sql (capital_add_column).
-- Leaves:  "Junta".base_capital/current_capital/available_capital NUMERIC(14,2)
--          NOT NULL DEFAULT 0 and "Accion"/"Multa".affects_capital BOOLEAN NOT
--          NULL DEFAULT true.
-- Locks:   ADD COLUMN takes ACCESS EXCLUSIVE on the table, but with a constant
--          default it is metadata-only (no rewrite), so the lock is brief. One
--          statement per transaction; the runner sets lock_timeout and retries
--          on 55P03/40P01 so a long-running transaction never queues traffic
--          behind us. A column that already exists takes no lock at all.
BEGIN;
SELECT capital_add_column('Junta', 'base_capital', 'numeric(14,2)', '0');
COMMIT;
BEGIN;
SELECT capital_add_column('Junta', 'current_capital', 'numeric(14,2)', '0');
COMMIT;
BEGIN;
SELECT capital_add_column('Junta', 'available_capital', 'numeric(14,2)', '0');
COMMIT;
BEGIN;
SELECT capital_add_column('Accion', 'affects_capital', 'boolean', 'true');
COMMIT;
BEGIN;
SELECT capital_add_column('Multa', 'affects_capital', 'boolean', 'true');
COMMIT;
