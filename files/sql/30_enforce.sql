-- 30_enforce.sql -- enforce: the business rules of domain.md section 2.
--
-- Expects: the backfill complete (phase 'ledger_complete').
-- Leaves:  trigger capital_guard (BEFORE INSERT OR UPDATE) on the four source
--          tables (positive amounts on new writes; loan <= available capital,
--          race-free); CHECK (amount > 0) constraints on legacy tables where
--          no existing row violates them, VALIDATEd; every existing violation
--          recorded in capital_enforce_violations (never "fixed"); the shadow
--          payments' foreign key, validated; no NOT VALID constraint left
--          behind; phase 'enforced'.
-- Locks:   CREATE TRIGGER: SHARE ROW EXCLUSIVE; ADD CONSTRAINT ... NOT VALID:
--          ACCESS EXCLUSIVE, brief (no scan); VALIDATE CONSTRAINT: SHARE
--          UPDATE EXCLUSIVE (scan, writes go on). One per transaction, under
--          lock_timeout, retried by the runner.
BEGIN;
DO $$
BEGIN
    IF capital_phase() NOT IN ('ledger_complete', 'enforced') THEN
        RAISE EXCEPTION 'cannot enforce in phase %: the backfill is not complete', capital_phase()
            USING ERRCODE = '55000';
    END IF;
END
$$;
COMMIT;

BEGIN;
CREATE OR REPLACE TRIGGER capital_guard BEFORE INSERT OR UPDATE ON "Prestamo"
    FOR EACH ROW EXECUTE FUNCTION capital_guard();
COMMIT;
BEGIN;
CREATE OR REPLACE TRIGGER capital_guard BEFORE INSERT OR UPDATE ON "PagoPrestamo"
    FOR EACH ROW EXECUTE FUNCTION capital_guard();
COMMIT;
BEGIN;
CREATE OR REPLACE TRIGGER capital_guard BEFORE INSERT OR UPDATE ON "Accion"
    FOR EACH ROW EXECUTE FUNCTION capital_guard();
COMMIT;
BEGIN;
CREATE OR REPLACE TRIGGER capital_guard BEFORE INSERT OR UPDATE ON "Multa"
    FOR EACH ROW EXECUTE FUNCTION capital_guard();
COMMIT;

BEGIN;
SELECT capital_enforce_constraint('Accion', 'capital_accion_amount_positive', 'amount > 0', 'accion_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_validate_constraint('Accion', 'capital_accion_amount_positive', 'accion_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_enforce_constraint('Multa', 'capital_multa_amount_positive', 'amount > 0', 'multa_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_validate_constraint('Multa', 'capital_multa_amount_positive', 'multa_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_enforce_constraint('Prestamo', 'capital_prestamo_amount_positive', 'amount > 0',
                                  'prestamo_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_validate_constraint('Prestamo', 'capital_prestamo_amount_positive', 'prestamo_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_enforce_constraint('PagoPrestamo', 'capital_pagoprestamo_amount_positive', 'amount > 0',
                                  'pagoprestamo_amount_not_positive');
COMMIT;
BEGIN;
SELECT capital_validate_constraint('PagoPrestamo', 'capital_pagoprestamo_amount_positive',
                                   'pagoprestamo_amount_not_positive');
COMMIT;

-- The shadow payments' foreign key (see 10_expand_tables.sql): added NOT VALID (SHARE ROW EXCLUSIVE on
-- both shadow tables, brief, no scan), then validated in one pass (SHARE UPDATE EXCLUSIVE: the triggers'
-- writes go on). A no-op once it is there and valid.
BEGIN;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = '"PagoPrestamoNew"'::regclass AND conname = 'PagoPrestamoNew_prestamo_id_fkey') THEN
        ALTER TABLE "PagoPrestamoNew" ADD CONSTRAINT "PagoPrestamoNew_prestamo_id_fkey"
            FOREIGN KEY (prestamo_id) REFERENCES "PrestamoNew" (id) ON DELETE CASCADE NOT VALID;
    END IF;
END
$$;
COMMIT;
BEGIN;
ALTER TABLE "PagoPrestamoNew" VALIDATE CONSTRAINT "PagoPrestamoNew_prestamo_id_fkey";
COMMIT;

BEGIN;
SELECT capital_report_violations();
UPDATE capital_migration_state SET phase = 'enforced', updated_at = now() WHERE phase <> 'enforced';
COMMIT;
