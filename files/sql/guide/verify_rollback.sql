-- Check system state
SELECT EXISTS (
    SELECT 1
    FROM information_schema.tables
    WHERE table_name = 'capital_movements'
) as migration_exists;
