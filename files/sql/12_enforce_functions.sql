-- 12_enforce_functions.sql -- expand, step 3 (4 of 4): the business rules - the guard trigger function,
-- constraint enforcement and validation, the violations report.
--
-- Expects: 10 and 11 applied (the functions reference the new columns) and 12_model_functions.sql.
--          CREATE OR REPLACE only: no lock on legacy tables, safe to rerun.
BEGIN;

-- Guard (BEFORE INSERT OR UPDATE, installed by 30_enforce.sql) on the four
-- source tables: new or changed amounts must be positive once rounded to
-- cents. Status-only updates of legacy rows are never blocked. On "Prestamo"
-- it also refuses a write that increases the loan's claim on capital
-- (insert of a non-rejected loan, amount increase, REJECTED -> other status,
-- move to another junta) beyond the junta's available capital, read under the
-- junta row lock so concurrent writers cannot both take the last capital.
-- Payments, shares and fines are never blocked by an overdrawn junta.
CREATE OR REPLACE FUNCTION capital_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_old_claim numeric := 0;
    v_new_claim numeric := 0;
    v_increase numeric;
    v_available numeric;
BEGIN
    IF TG_OP = 'INSERT' OR NEW.amount IS DISTINCT FROM OLD.amount THEN
        IF NEW.amount IS NULL OR capital_cents(NEW.amount) <= 0 THEN
            RAISE EXCEPTION '%.amount must be positive (at least 0.01), got % (id %)',
                TG_TABLE_NAME, NEW.amount, NEW.id
                USING ERRCODE = '23514', HINT = 'capital_amount_positive';
        END IF;
    END IF;
    IF TG_TABLE_NAME <> 'Prestamo' THEN
        RETURN NEW;
    END IF;
    IF NEW.status IS DISTINCT FROM 'REJECTED' THEN
        v_new_claim := greatest(capital_cents(NEW.amount), 0);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.junta_id = NEW.junta_id AND OLD.status IS DISTINCT FROM 'REJECTED' THEN
        v_old_claim := greatest(capital_cents(OLD.amount), 0);
    END IF;
    v_increase := v_new_claim - v_old_claim;
    IF v_increase <= 0 THEN
        RETURN NEW;
    END IF;
    SELECT available_capital INTO v_available FROM "Junta" WHERE id = NEW.junta_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports the missing junta
    END IF;
    IF v_increase > v_available THEN
        RAISE EXCEPTION 'loan % of % exceeds the available capital % of junta %',
            NEW.id, v_increase, v_available, NEW.junta_id
            USING ERRCODE = 'CAP01',
                  DETAIL = format('junta_id=%s amount=%s available_capital=%s', NEW.junta_id, v_increase, v_available),
                  HINT = 'capital_insufficient: lend at most the junta''s available_capital.';
    END IF;
    RETURN NEW;
END
$$;

-- Enforce one CHECK constraint on a legacy table only where the data allows:
-- counts the existing violations; with none, adds the constraint NOT VALID
-- (brief ACCESS EXCLUSIVE, no scan); with some, records them and makes sure
-- no NOT VALID constraint is left behind (new writes are covered by
-- capital_guard). Returns what it did.
CREATE OR REPLACE FUNCTION capital_enforce_constraint(p_table text, p_name text, p_expr text, p_kind text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
    v_sample text[];
    v_exists boolean;
    v_action text;
BEGIN
    EXECUTE format('SELECT count(*) FROM %I WHERE NOT (%s)', p_table, p_expr) INTO v_count;
    EXECUTE format('SELECT coalesce(array_agg(id), ''{}'') FROM (SELECT id FROM %I WHERE NOT (%s) ORDER BY id LIMIT 5) s',
                   p_table, p_expr) INTO v_sample;
    SELECT true INTO v_exists FROM pg_constraint
     WHERE conrelid = format('%I', p_table)::regclass AND conname = p_name;
    IF v_count > 0 THEN
        IF v_exists THEN
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', p_table, p_name);
        END IF;
        v_action := 'constraint_skipped';
    ELSE
        IF v_exists IS NULL THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%s) NOT VALID', p_table, p_name, p_expr);
        END IF;
        v_action := 'constraint_added';
    END IF;
    INSERT INTO capital_enforce_violations (kind, table_name, row_count, sample_ids, action, checked_at)
    VALUES (p_kind, p_table, v_count, v_sample, v_action, now())
    ON CONFLICT (kind) DO UPDATE SET
        table_name = EXCLUDED.table_name, row_count = EXCLUDED.row_count, sample_ids = EXCLUDED.sample_ids,
        action = EXCLUDED.action, checked_at = EXCLUDED.checked_at;
    RETURN v_action;
END
$$;

-- VALIDATE a constraint added NOT VALID (SHARE UPDATE EXCLUSIVE: reads and
-- writes go on). If a violating row appeared meanwhile, drop the constraint
-- instead of leaving it NOT VALID, and record the violation.
CREATE OR REPLACE FUNCTION capital_validate_constraint(p_table text, p_name text, p_kind text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = format('%I', p_table)::regclass AND conname = p_name AND NOT convalidated) THEN
        RETURN 'nothing to validate';
    END IF;
    BEGIN
        EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', p_table, p_name);
        UPDATE capital_enforce_violations SET action = 'constraint_validated', checked_at = now()
         WHERE kind = p_kind;
        RETURN 'validated';
    EXCEPTION WHEN check_violation THEN
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', p_table, p_name);
        UPDATE capital_enforce_violations SET action = 'constraint_skipped', checked_at = now()
         WHERE kind = p_kind;
        RETURN 'dropped';
    END;
END
$$;

-- Records existing rule breaks that no constraint covers (report only).
CREATE OR REPLACE FUNCTION capital_report_violations() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO capital_enforce_violations AS v (kind, table_name, row_count, sample_ids, action, checked_at)
    SELECT k.kind, k.table_name, k.row_count, k.sample_ids, 'reported', now()
      FROM (
          SELECT 'overdrawn_junta' AS kind, 'Junta' AS table_name, count(*) AS row_count,
                 coalesce((array_agg(id ORDER BY id))[1:5], '{}') AS sample_ids
            FROM "Junta" WHERE available_capital < 0
          UNION ALL
          SELECT 'overpaid_loan', 'PrestamoNew', count(*), coalesce((array_agg(id ORDER BY id))[1:5], '{}')
            FROM "PrestamoNew" WHERE remaining_amount < 0
          UNION ALL
          SELECT 'unknown_loan_status', 'Prestamo', count(*), coalesce((array_agg(id ORDER BY id))[1:5], '{}')
            FROM "Prestamo"
           WHERE status NOT IN ('PENDING', 'APPROVED', 'REJECTED', 'PAID', 'PARTIAL', 'ACTIVE')
          UNION ALL
          SELECT 'unknown_multa_status', 'Multa', count(*), coalesce((array_agg(id ORDER BY id))[1:5], '{}')
            FROM "Multa" WHERE status NOT IN ('PENDING', 'PAID')
      ) k
    ON CONFLICT (kind) DO UPDATE SET
        table_name = EXCLUDED.table_name, row_count = EXCLUDED.row_count, sample_ids = EXCLUDED.sample_ids,
        action = EXCLUDED.action, checked_at = EXCLUDED.checked_at;
END
$$;

COMMIT;
