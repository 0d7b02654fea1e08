-- rollback_capital_tracking.sql -- the reverse migration.
--
-- Operators:  psql -X -v ON_ERROR_STOP=1 -f files/sql/rollback_capital_tracking.sql
-- Ansible:    the capital_rollback module runs the same units (BEGIN ... COMMIT
--             blocks and lone statements), each under lock_timeout with
--             retries on 55P03/40P01, holding the migration's advisory lock.
--
-- Expects: any state the migration can leave: not applied, partly applied (a
--          killed run, a half-done backfill), applied, or an earlier partial
--          rollback. Only objects the migration creates are touched: the
--          tables it creates by name, and on the legacy tables only triggers,
--          constraints, indexes named capital_* and the columns it adds.
-- Leaves:  the baseline schema (domain.md section 1) with every legacy row,
--          including rows the application wrote after the migration. Refusing
--          to drop shadow rows that exist nowhere else is the caller's job
--          (the rollback role counts them first).
-- Locks:   DROP TRIGGER, DROP CONSTRAINT and DROP COLUMN take ACCESS EXCLUSIVE
--          on one legacy table, briefly (catalog-only, no rewrite): one table
--          per transaction, under lock_timeout. DROP INDEX CONCURRENTLY takes
--          SHARE UPDATE EXCLUSIVE and runs outside a transaction. The new
--          tables are dropped together: only the migration uses them.

-- Session helpers (pg_temp: gone when the session ends, nothing to clean up).
BEGIN;
CREATE OR REPLACE FUNCTION pg_temp.capital_undo_table(p_table text, p_columns text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_rel regclass := to_regclass(format('%I', p_table));
    r record;
BEGIN
    IF v_rel IS NULL THEN
        RETURN;
    END IF;
    FOR r IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = v_rel AND NOT tgisinternal AND tgname LIKE 'capital\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, v_rel);
    END LOOP;
    FOR r IN SELECT conname FROM pg_constraint
              WHERE conrelid = v_rel AND conname LIKE 'capital\_%' LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v_rel, r.conname);
    END LOOP;
    FOR r IN SELECT attname FROM pg_attribute
              WHERE attrelid = v_rel AND attnum > 0 AND NOT attisdropped
                AND attname = ANY (p_columns) LOOP
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', v_rel, r.attname);
    END LOOP;
END
$$;
COMMIT;

-- Triggers first: from here on no application write touches the new objects.
BEGIN;
SELECT pg_temp.capital_undo_table('Prestamo', '{}');
COMMIT;
BEGIN;
SELECT pg_temp.capital_undo_table('PagoPrestamo', '{}');
COMMIT;
BEGIN;
SELECT pg_temp.capital_undo_table('Accion', '{affects_capital}');
COMMIT;
BEGIN;
SELECT pg_temp.capital_undo_table('Multa', '{affects_capital}');
COMMIT;
BEGIN;
SELECT pg_temp.capital_undo_table('Junta', '{base_capital,current_capital,available_capital}');
COMMIT;
BEGIN;
SELECT pg_temp.capital_undo_table('User', '{}');
COMMIT;

-- Indexes the migration built on legacy tables (valid or left INVALID by a killed build).
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %s', i.indexrelid::regclass)
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid IN (SELECT to_regclass(format('%I', t))
                        FROM unnest(ARRAY['Prestamo', 'PagoPrestamo', 'Accion', 'Multa', 'Junta', 'User']) AS t)
   AND c.relname LIKE 'capital\_%'
\gexec

-- The migration's own tables: nothing outside the migration depends on them.
BEGIN;
DROP TABLE IF EXISTS "PagoPrestamoNew", "PrestamoNew", capital_movements, capital_backfill_progress,
    capital_enforce_violations, capital_migration_state, capital_migration_history;
COMMIT;

-- Functions and procedures: calculate_available_capital and everything named capital_*.
BEGIN;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS sig, p.prokind
               FROM pg_proc p
              WHERE p.pronamespace = current_schema()::regnamespace
                AND (p.proname = 'calculate_available_capital' OR p.proname LIKE 'capital\_%') LOOP
        EXECUTE format('DROP %s %s', CASE r.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, r.sig);
    END LOOP;
END
$$;
COMMIT;
