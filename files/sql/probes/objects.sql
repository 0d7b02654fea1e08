-- objects: every object of the migration, for the state check. The capital_migrate module's
-- state_before looks only at the ledger and its bookkeeping tables (and is not returned when another
-- run holds the lock); this list also sees a run killed after its first columns or shadow tables.
SELECT to_regclass('public.capital_movements') IS NOT NULL AS has_ledger,
       coalesce(has_table_privilege(to_regclass('public.capital_migration_history'), 'SELECT'), false) AS has_history,
       array_remove(ARRAY[
         CASE WHEN to_regclass('public.capital_movements') IS NOT NULL THEN 'capital_movements' END,
         CASE WHEN to_regclass('public."PrestamoNew"') IS NOT NULL THEN 'PrestamoNew' END,
         CASE WHEN to_regclass('public."PagoPrestamoNew"') IS NOT NULL THEN 'PagoPrestamoNew' END,
         CASE WHEN to_regclass('public.capital_migration_history') IS NOT NULL THEN 'capital_migration_history' END,
         CASE WHEN to_regclass('public.capital_migration_state') IS NOT NULL THEN 'capital_migration_state' END,
         CASE WHEN to_regclass('public.capital_backfill_progress') IS NOT NULL THEN 'capital_backfill_progress' END,
         CASE WHEN EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = to_regclass('public."Junta"')
                              AND attname IN ('base_capital', 'current_capital', 'available_capital')
                              AND NOT attisdropped) THEN 'Junta capital columns' END,
         CASE WHEN EXISTS (SELECT 1 FROM pg_proc
                            WHERE proname = 'calculate_available_capital'
                              AND pronamespace = 'public'::regnamespace) THEN 'calculate_available_capital()' END
       ], NULL) AS objects_present;
