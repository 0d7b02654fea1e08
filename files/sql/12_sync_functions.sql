-- 12_sync_functions.sql -- expand, step 3 (2 of 4): the sync trigger functions and the shadow loan upsert
-- they share with the backfill.
--
-- Expects: 10 and 11 applied (the functions reference the new columns) and 12_model_functions.sql.
--          CREATE OR REPLACE only: no lock on legacy tables, safe to rerun.
BEGIN;

-- Upserts the shadow row of one loan from the legacy tables (remaining_amount
-- from the legacy "PagoPrestamo" rows: the shadow payments may be incomplete
-- during the backfill). Caller holds the junta lock. loan_number: kept while
-- the junta is unchanged; otherwise max+1 in the junta once the ledger is live
-- and the junta has no unnumbered loan left (else NULL, numbered in order by
-- the backfill sweep). capital_at_time is set once and never changed.
CREATE OR REPLACE FUNCTION capital_shadow_loan_sync(p_id text, p_capital_before numeric) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p "Prestamo"%ROWTYPE;
    v_old "PrestamoNew"%ROWTYPE;
    v_num integer;
BEGIN
    SELECT * INTO p FROM "Prestamo" WHERE id = p_id;
    IF NOT FOUND THEN
        DELETE FROM "PrestamoNew" WHERE id = p_id;
        RETURN;
    END IF;
    SELECT * INTO v_old FROM "PrestamoNew" WHERE id = p_id;
    IF FOUND AND v_old.junta_id = p.junta_id THEN
        v_num := v_old.loan_number;
    ELSIF capital_ledger_live() AND NOT EXISTS (
            SELECT 1 FROM "PrestamoNew" n
             WHERE n.junta_id = p.junta_id AND n.loan_number IS NULL AND n.id <> p_id) THEN
        SELECT coalesce(max(n.loan_number), 0) + 1 INTO v_num FROM "PrestamoNew" n WHERE n.junta_id = p.junta_id;
    ELSE
        v_num := NULL;
    END IF;
    INSERT INTO "PrestamoNew" AS t
        (id, original_prestamo_id, junta_id, member_id, amount, description, status,
         approved, rejected, paid, remaining_amount, loan_number, capital_at_time, created_at, updated_at)
    VALUES (
        p.id, p.id, p.junta_id, p.member_id, capital_cents(p.amount), p.description, p.status,
        capital_status_approved(p.status), p.status = 'REJECTED', p.status = 'PAID',
        capital_cents(p.amount) - coalesce(
            (SELECT sum(capital_cents(pp.amount)) FROM "PagoPrestamo" pp WHERE pp.prestamo_id = p.id), 0),
        v_num, p_capital_before, p.created_at, p.updated_at)
    ON CONFLICT (id) DO UPDATE SET
        junta_id = EXCLUDED.junta_id,
        member_id = EXCLUDED.member_id,
        amount = EXCLUDED.amount,
        description = EXCLUDED.description,
        status = EXCLUDED.status,
        approved = EXCLUDED.approved,
        rejected = EXCLUDED.rejected,
        paid = EXCLUDED.paid,
        remaining_amount = EXCLUDED.remaining_amount,
        loan_number = EXCLUDED.loan_number,
        capital_at_time = coalesce(t.capital_at_time, EXCLUDED.capital_at_time),
        created_at = EXCLUDED.created_at,
        updated_at = EXCLUDED.updated_at;
END
$$;

-- Sync triggers (AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW). Each one
-- states the wanted contribution of the row as it is now and lets
-- capital_apply append the difference, so inserts, updates (amount, flag,
-- status, junta) and deletes are all exact, including rows that existed
-- before the migration and have not been backfilled yet.
CREATE OR REPLACE FUNCTION capital_sync_accion() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR OLD.id <> NEW.id) THEN
        PERFORM capital_apply('ACCION', OLD.id, NULL, 0, OLD.created_at, OLD.type);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM capital_apply('ACCION', NEW.id, NEW.junta_id,
            capital_contribution('ACCION', NEW.amount, NEW.affects_capital), NEW.created_at, NEW.type);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION capital_sync_multa() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR OLD.id <> NEW.id) THEN
        PERFORM capital_apply('MULTA', OLD.id, NULL, 0, OLD.created_at, OLD.description);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM capital_apply('MULTA', NEW.id, NEW.junta_id,
            capital_contribution('MULTA', NEW.amount, NEW.affects_capital), NEW.created_at, NEW.description);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION capital_sync_prestamo() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_before numeric;
    pg record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM capital_lock_juntas(ARRAY[OLD.junta_id]);
        PERFORM capital_apply('PRESTAMO', OLD.id, NULL, 0, OLD.created_at, OLD.description);
        DELETE FROM "PrestamoNew" WHERE id = OLD.id;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM capital_lock_juntas(ARRAY[NEW.junta_id]);
    ELSE
        PERFORM capital_lock_juntas(ARRAY[OLD.junta_id, NEW.junta_id]);
        IF OLD.id <> NEW.id THEN
            PERFORM capital_apply('PRESTAMO', OLD.id, NULL, 0, OLD.created_at, OLD.description);
            DELETE FROM "PrestamoNew" WHERE id = OLD.id;
        END IF;
    END IF;
    -- Read after the junta lock: a phase flip committed before we got the
    -- lock is visible here (new statement, new snapshot).
    IF TG_OP = 'INSERT' AND capital_ledger_live() THEN
        SELECT available_capital INTO v_before FROM "Junta" WHERE id = NEW.junta_id;
    END IF;
    PERFORM capital_apply('PRESTAMO', NEW.id, NEW.junta_id,
        capital_contribution('PRESTAMO', NEW.amount, NEW.status IS DISTINCT FROM 'REJECTED'),
        NEW.created_at, NEW.description);
    IF TG_OP = 'UPDATE' AND OLD.junta_id IS DISTINCT FROM NEW.junta_id THEN
        -- The loan's payments belong to its junta: move their movements too.
        FOR pg IN
            SELECT pp.id, pp.amount, pp.date FROM "PagoPrestamo" pp
             WHERE pp.prestamo_id = NEW.id ORDER BY pp.id FOR UPDATE
        LOOP
            PERFORM capital_apply('PAGO', pg.id, NEW.junta_id,
                capital_contribution('PAGO', pg.amount, true), pg.date, NULL);
        END LOOP;
    END IF;
    PERFORM capital_shadow_loan_sync(NEW.id, v_before);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION capital_sync_pago() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_new_junta text;
    v_old_junta text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT junta_id INTO v_old_junta FROM "Prestamo" WHERE id = OLD.prestamo_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT junta_id INTO v_new_junta FROM "Prestamo" WHERE id = NEW.prestamo_id;
    END IF;
    -- The junta lock also serialises remaining_amount recomputations of a loan.
    PERFORM capital_lock_juntas(ARRAY[v_old_junta, v_new_junta]);
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.id <> NEW.id) THEN
        PERFORM capital_apply('PAGO', OLD.id, NULL, 0, OLD.date, NULL);
        DELETE FROM "PagoPrestamoNew" WHERE id = OLD.id;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM capital_shadow_loan_sync(OLD.prestamo_id, NULL);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;
    PERFORM capital_apply('PAGO', NEW.id, v_new_junta,
        capital_contribution('PAGO', NEW.amount, true), NEW.date, NULL);
    PERFORM capital_shadow_loan_sync(NEW.prestamo_id, NULL);
    INSERT INTO "PagoPrestamoNew" AS t (id, original_pago_id, prestamo_id, amount, date)
    VALUES (NEW.id, NEW.id, NEW.prestamo_id, capital_cents(NEW.amount), NEW.date)
    ON CONFLICT (id) DO UPDATE SET
        prestamo_id = EXCLUDED.prestamo_id, amount = EXCLUDED.amount, date = EXCLUDED.date;
    RETURN NULL;
END
$$;

COMMIT;
