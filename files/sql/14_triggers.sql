-- 14_triggers.sql -- expand, step 5: the sync triggers on the legacy tables.
--
-- Expects: 10-13 applied (functions of 12, index of 13).
-- Leaves:  trigger capital_sync (AFTER INSERT OR UPDATE OR DELETE, FOR EACH
--          ROW) on "Accion", "Multa", "Prestamo", "PagoPrestamo": from here on
--          every write keeps the ledger, the "Junta" columns and the shadow
--          tables right; phase 'expanded'.
-- Locks:   CREATE TRIGGER takes SHARE ROW EXCLUSIVE on its table (blocks
--          writes while waiting): one table per transaction, under
--          lock_timeout, retried by the runner.
BEGIN;
CREATE OR REPLACE TRIGGER capital_sync AFTER INSERT OR UPDATE OR DELETE ON "Accion"
    FOR EACH ROW EXECUTE FUNCTION capital_sync_accion();
COMMIT;
BEGIN;
CREATE OR REPLACE TRIGGER capital_sync AFTER INSERT OR UPDATE OR DELETE ON "Multa"
    FOR EACH ROW EXECUTE FUNCTION capital_sync_multa();
COMMIT;
BEGIN;
CREATE OR REPLACE TRIGGER capital_sync AFTER INSERT OR UPDATE OR DELETE ON "Prestamo"
    FOR EACH ROW EXECUTE FUNCTION capital_sync_prestamo();
COMMIT;
BEGIN;
CREATE OR REPLACE TRIGGER capital_sync AFTER INSERT OR UPDATE OR DELETE ON "PagoPrestamo"
    FOR EACH ROW EXECUTE FUNCTION capital_sync_pago();
COMMIT;
BEGIN;
UPDATE capital_migration_state SET phase = 'expanded', updated_at = now() WHERE phase = 'expanding';
COMMIT;
