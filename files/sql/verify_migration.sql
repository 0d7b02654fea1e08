-- verify_migration.sql: the capital-tracking migration's own test suite (the guide's second file).
--
-- Run:  psql -X -v ON_ERROR_STOP=1 -f verify_migration.sql      (libpq environment names the database)
-- Expects: a database the migration has been applied to (docs/design.md, "Schema the migration adds").
-- Leaves: nothing. Everything happens in one transaction that ends in ROLLBACK: fixtures (a user, two
--   juntas, shares, fines, loans, payments, all with ids starting 'zz-verify-') and every movement they
--   cause disappear again. The first failed check raises an exception naming it ("FAILED <check>: ..."),
--   ON_ERROR_STOP turns that into a non-zero exit; each passed check prints a NOTICE "ok: <check>".
-- Locks: row locks on the fixture juntas only, plus the ordinary ROW EXCLUSIVE locks of INSERT/UPDATE/
--   DELETE on the tables involved. It never runs TRUNCATE or DDL on shared tables (the TRUNCATE guard of
--   the ledger is checked in the catalog, not by truncating), and lock_timeout keeps it from queueing
--   behind a long lock holder. Safe on a live database.

\set QUIET on
-- Results of the check calls are empty; only the NOTICEs (stderr) and the final \echo say anything.
\o /dev/null
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '120s';
-- Deferred constraint triggers would otherwise fire only at a COMMIT that never comes.
SET CONSTRAINTS ALL IMMEDIATE;
SET LOCAL client_min_messages = notice;

-- ---------------------------------------------------------------------------------------------------
-- Helpers (temporary: pg_temp functions vanish with the session and, being created in this
-- transaction, with its ROLLBACK).
-- ---------------------------------------------------------------------------------------------------

-- Fail unless two values are equal (IS NOT DISTINCT FROM: NULL must match NULL).
CREATE FUNCTION pg_temp.expect_eq(check_name text, actual anyelement, expected anyelement)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    IF actual IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'FAILED %: expected %, got %', check_name, expected, actual;
    END IF;
    RAISE NOTICE 'ok: %', check_name;
END
$fn$;

-- Fail unless a condition holds.
CREATE FUNCTION pg_temp.expect_true(check_name text, condition boolean, detail text DEFAULT '')
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    IF condition IS NOT TRUE THEN
        RAISE EXCEPTION 'FAILED %: %', check_name, coalesce(nullif(detail, ''), 'condition is false');
    END IF;
    RAISE NOTICE 'ok: %', check_name;
END
$fn$;

-- Fail unless the statement raises an error whose SQLSTATE is one of `states` and whose message
-- contains every string in `needles`. The statement runs in a subtransaction, so a statement that
-- wrongly succeeds is undone before the failure is raised.
CREATE FUNCTION pg_temp.expect_error(check_name text, stmt text, states text[], needles text[] DEFAULT '{}')
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    got_state text;
    got_message text;
    got_detail text;
    needle text;
BEGIN
    BEGIN
        EXECUTE stmt;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS got_state = RETURNED_SQLSTATE, got_message = MESSAGE_TEXT,
                                got_detail = PG_EXCEPTION_DETAIL;
        IF NOT (got_state = ANY (states)) THEN
            RAISE EXCEPTION 'FAILED %: expected an error with SQLSTATE in %, got % (%)',
                check_name, states, got_state, got_message;
        END IF;
        FOREACH needle IN ARRAY needles LOOP
            IF position(needle IN got_message || ' ' || coalesce(got_detail, '')) = 0 THEN
                RAISE EXCEPTION 'FAILED %: the error message does not name "%": %', check_name, needle, got_message;
            END IF;
        END LOOP;
        RAISE NOTICE 'ok: % (rejected with %: %)', check_name, got_state, got_message;
        RETURN got_message;
    END;
    RAISE EXCEPTION 'FAILED %: the statement was accepted: %', check_name, stmt;
END
$fn$;

-- The figures the capital model (domain.md §3) gives a junta, recomputed from the raw rows. The legacy tables
-- have no junta index, so each is read once per call (a CTE read twice is materialized once): the shares, the
-- fines, the junta's loans; its payments are found by their loans' ids. Reading "Accion" twice and joining
-- every payment to its loan made this 2.5 of the suite's 3.5 s on medium.
CREATE FUNCTION pg_temp.model_capital(j text, OUT base numeric, OUT current numeric)
LANGUAGE sql AS $fn$
    WITH shares AS (
        SELECT coalesce(sum(round(amount::numeric, 2)), 0) AS cents FROM "Accion" WHERE junta_id = j AND affects_capital
    ), loans AS (
        SELECT id, amount, status FROM "Prestamo" WHERE junta_id = j
    )
    SELECT (SELECT cents FROM shares),
           (SELECT cents FROM shares)
         + coalesce((SELECT sum(round(amount::numeric, 2)) FROM "Multa" WHERE junta_id = j AND affects_capital), 0)
         - coalesce((SELECT sum(round(amount::numeric, 2)) FROM loans WHERE status <> 'REJECTED'), 0)
         + coalesce((SELECT sum(round(g.amount::numeric, 2)) FROM "PagoPrestamo" g
                      WHERE g.prestamo_id IN (SELECT id FROM loans)), 0)
$fn$;

-- One junta checked every way: the three columns against expected figures, the columns against the
-- ledger, the raw-row model and calculate_available_capital().
CREATE FUNCTION pg_temp.expect_capital(check_name text, j text, base numeric, current numeric)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    col record;
    ledger_base numeric;
    ledger_balance numeric;
    model record;
BEGIN
    SELECT base_capital, current_capital, available_capital INTO STRICT col FROM "Junta" WHERE id = j;
    SELECT coalesce(sum(amount) FILTER (WHERE type = 'ACCION' AND direction = 'INCREASE'), 0)
         - coalesce(sum(amount) FILTER (WHERE type = 'ACCION' AND direction = 'DECREASE'), 0),
           coalesce(sum(CASE direction WHEN 'INCREASE' THEN amount ELSE -amount END), 0)
      INTO ledger_base, ledger_balance
      FROM capital_movements WHERE junta_id = j;
    model := pg_temp.model_capital(j);
    IF (col.base_capital, col.current_capital, col.available_capital) IS DISTINCT FROM (base, current, current)
       OR (ledger_base, ledger_balance) IS DISTINCT FROM (base, current)
       OR (model.base, model.current) IS DISTINCT FROM (base, current)
       OR calculate_available_capital(j) IS DISTINCT FROM current THEN
        RAISE EXCEPTION 'FAILED %: junta % expected base/current/available %/%/%; '
            'columns %/%/%, ledger base/balance %/%, raw-row model %/%, calculate_available_capital %',
            check_name, j, base, current, current,
            col.base_capital, col.current_capital, col.available_capital, ledger_base, ledger_balance,
            model.base, model.current, calculate_available_capital(j);
    END IF;
    RAISE NOTICE 'ok: % (junta %: base %, current %, available %)', check_name, j, base, current, current;
END
$fn$;

-- ---------------------------------------------------------------------------------------------------
-- 1. Schema objects
-- ---------------------------------------------------------------------------------------------------

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['capital_movements', 'PrestamoNew', 'PagoPrestamoNew',
                             'capital_migration_history', 'capital_migration_state',
                             'capital_backfill_progress'] LOOP
        PERFORM pg_temp.expect_true('table ' || t || ' exists',
            to_regclass(format('public.%I', t)) IS NOT NULL, 'table public.' || t || ' is missing');
    END LOOP;
END
$$;

-- Every money column the migration creates is exact NUMERIC(14,2) and every new column has the shape
-- of docs/design.md.
DO $$
DECLARE
    want record;
    got record;
BEGIN
    FOR want IN
        SELECT * FROM (VALUES
            ('Junta', 'base_capital', 'numeric(14,2)', true, '0'),
            ('Junta', 'current_capital', 'numeric(14,2)', true, '0'),
            ('Junta', 'available_capital', 'numeric(14,2)', true, '0'),
            ('Accion', 'affects_capital', 'boolean', true, 'true'),
            ('Multa', 'affects_capital', 'boolean', true, 'true'),
            ('capital_movements', 'id', 'bigint', true, NULL),
            ('capital_movements', 'junta_id', 'text', true, NULL),
            ('capital_movements', 'type', 'text', true, NULL),
            ('capital_movements', 'direction', 'text', true, NULL),
            ('capital_movements', 'amount', 'numeric(14,2)', true, NULL),
            ('capital_movements', 'description', 'text', NULL, NULL),
            ('capital_movements', 'created_at', 'timestamp without time zone', true, NULL),
            ('capital_movements', 'accion_id', 'text', false, NULL),
            ('capital_movements', 'multa_id', 'text', false, NULL),
            ('capital_movements', 'prestamo_id', 'text', false, NULL),
            ('capital_movements', 'pago_id', 'text', false, NULL),
            ('capital_movements', 'seq', 'integer', true, NULL),
            ('PrestamoNew', 'id', 'text', true, NULL),
            ('PrestamoNew', 'original_prestamo_id', 'text', true, NULL),
            ('PrestamoNew', 'junta_id', 'text', NULL, NULL),
            ('PrestamoNew', 'amount', 'numeric(14,2)', NULL, NULL),
            ('PrestamoNew', 'approved', 'boolean', NULL, NULL),
            ('PrestamoNew', 'rejected', 'boolean', NULL, NULL),
            ('PrestamoNew', 'paid', 'boolean', NULL, NULL),
            ('PrestamoNew', 'remaining_amount', 'numeric(14,2)', NULL, NULL),
            ('PrestamoNew', 'loan_number', 'integer', NULL, NULL),
            ('PrestamoNew', 'capital_at_time', 'numeric(14,2)', NULL, NULL),
            ('PagoPrestamoNew', 'id', 'text', true, NULL),
            ('PagoPrestamoNew', 'original_pago_id', 'text', true, NULL),
            ('PagoPrestamoNew', 'prestamo_id', 'text', NULL, NULL),
            ('PagoPrestamoNew', 'amount', 'numeric(14,2)', NULL, NULL)
        ) AS w(tbl, col, typ, not_null, dflt)
    LOOP
        SELECT format_type(a.atttypid, a.atttypmod) AS typ, a.attnotnull AS not_null,
               pg_get_expr(d.adbin, d.adrelid) AS dflt
          INTO got
          FROM pg_attribute a
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = to_regclass(format('public.%I', want.tbl))
           AND a.attname = want.col AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'FAILED column %.% exists: it is missing', want.tbl, want.col;
        END IF;
        IF got.typ <> want.typ THEN
            RAISE EXCEPTION 'FAILED column %.% is %: it is %', want.tbl, want.col, want.typ, got.typ;
        END IF;
        IF want.not_null IS NOT NULL AND got.not_null <> want.not_null THEN
            RAISE EXCEPTION 'FAILED column %.% NOT NULL is %: it is %', want.tbl, want.col, want.not_null,
                got.not_null;
        END IF;
        -- Defaults print as e.g. 0 or 0.00 or true; compare their values, not their text.
        IF want.dflt IS NOT NULL AND (got.dflt IS NULL OR trim(both '''' FROM split_part(got.dflt, '::', 1))::text
                NOT IN (want.dflt, want.dflt || '.00', want.dflt || '.0')) THEN
            RAISE EXCEPTION 'FAILED column %.% defaults to %: it defaults to %', want.tbl, want.col, want.dflt,
                got.dflt;
        END IF;
    END LOOP;
    RAISE NOTICE 'ok: new columns have their types (money NUMERIC(14,2)), NOT NULL and defaults';
END
$$;

-- Every shadow payment belongs to a shadow loan, and the database says so (validated, cascading).
SELECT pg_temp.expect_eq('shadow payments reference shadow loans (validated foreign key, ON DELETE CASCADE)',
    (SELECT format('%s %s %s', confrelid::regclass, convalidated, confdeltype)
       FROM pg_constraint
      WHERE conrelid = to_regclass('public."PagoPrestamoNew"') AND contype = 'f'),
    '"PrestamoNew" t c');

-- No floating point anywhere in what the migration creates.
SELECT pg_temp.expect_eq('no FLOAT column in the migration''s tables',
    (SELECT string_agg(format('%s.%s', a.attrelid::regclass, a.attname), ', ')
       FROM pg_attribute a
      WHERE a.attrelid IN (to_regclass('public.capital_movements'), to_regclass('public."PrestamoNew"'),
                           to_regclass('public."PagoPrestamoNew"'))
        AND a.attnum > 0 AND NOT a.attisdropped
        AND a.atttypid IN ('float4'::regtype, 'float8'::regtype)),
    NULL::text);

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['calculate_available_capital(text)', 'capital_backfill_batch(text,integer)'] LOOP
        PERFORM pg_temp.expect_true('function ' || f || ' exists',
            to_regprocedure('public.' || f) IS NOT NULL, 'function public.' || f || ' is missing');
    END LOOP;
    FOREACH f IN ARRAY ARRAY['capital_contribution', 'capital_migration_status'] LOOP
        PERFORM pg_temp.expect_true('function ' || f || ' exists',
            EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'public'::regnamespace),
            'function public.' || f || '(...) is missing');
    END LOOP;
END
$$;

-- Sync triggers: every legacy source table has enabled, non-internal row triggers for INSERT, UPDATE
-- and DELETE (one trigger or several); the ledger has guards for UPDATE, DELETE and TRUNCATE.
-- tgtype bits (pg_trigger.h): 1 ROW, 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE.
DO $$
DECLARE
    want record;
    have boolean;
BEGIN
    FOR want IN
        SELECT * FROM (VALUES
            ('Accion', 'INSERT', 4, 1), ('Accion', 'UPDATE', 16, 1), ('Accion', 'DELETE', 8, 1),
            ('Multa', 'INSERT', 4, 1), ('Multa', 'UPDATE', 16, 1), ('Multa', 'DELETE', 8, 1),
            ('Prestamo', 'INSERT', 4, 1), ('Prestamo', 'UPDATE', 16, 1), ('Prestamo', 'DELETE', 8, 1),
            ('PagoPrestamo', 'INSERT', 4, 1), ('PagoPrestamo', 'UPDATE', 16, 1),
            ('PagoPrestamo', 'DELETE', 8, 1),
            ('capital_movements', 'UPDATE', 16, NULL), ('capital_movements', 'DELETE', 8, NULL),
            ('capital_movements', 'TRUNCATE', 32, 0)
        ) AS w(tbl, event, bit, row_level)
    LOOP
        SELECT EXISTS (
            SELECT 1 FROM pg_trigger t
             WHERE t.tgrelid = to_regclass(format('public.%I', want.tbl))
               AND NOT t.tgisinternal
               AND t.tgenabled IN ('O', 'A')
               AND t.tgtype & want.bit <> 0
               AND (want.row_level IS NULL OR (t.tgtype & 1) = want.row_level))
          INTO have;
        IF NOT have THEN
            RAISE EXCEPTION 'FAILED trigger on % for %: no enabled trigger fires on % of "%"',
                want.tbl, want.event, want.event, want.tbl;
        END IF;
    END LOOP;
    RAISE NOTICE 'ok: sync triggers (INSERT/UPDATE/DELETE) on the four source tables and ledger guards present';
END
$$;

-- Every index the migration builds CONCURRENTLY is present and valid: a build that was killed, or gave up
-- after lock_timeout, leaves an INVALID index nothing uses (the triggers' lookups would scan whole tables).
SELECT pg_temp.expect_true('index ' || i || ' is valid',
           EXISTS (SELECT 1 FROM pg_index x
                    WHERE x.indexrelid = to_regclass('public.' || i) AND x.indisvalid AND x.indisready),
           'index public.' || i || ' is missing or INVALID: rerun migrate.yml, which rebuilds it')
  FROM unnest(ARRAY['capital_pagoprestamo_prestamo_id_idx', 'capital_movements_junta_created_idx']) AS i;

-- ---------------------------------------------------------------------------------------------------
-- 2. Fixtures
-- ---------------------------------------------------------------------------------------------------

SELECT pg_temp.expect_true('no leftover verification fixtures',
    NOT EXISTS (SELECT 1 FROM "User" WHERE id LIKE 'zz-verify-%')
    AND NOT EXISTS (SELECT 1 FROM "Junta" WHERE id LIKE 'zz-verify-%'),
    'rows with ids starting zz-verify- exist; an earlier run committed its fixtures: delete them by hand');

INSERT INTO "User" (id, username, full_name) VALUES ('zz-verify-user', 'zz-verify', 'verify_migration.sql');
INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id)
VALUES ('zz-verify-junta-a', 'verify A', '2024-01-01', 'zz-verify-user'),
       ('zz-verify-junta-b', 'verify B', '2024-01-01', 'zz-verify-user');

SELECT pg_temp.expect_capital('a new junta starts at zero', 'zz-verify-junta-a', 0, 0);

-- ---------------------------------------------------------------------------------------------------
-- 3. Triggers: INSERT
-- ---------------------------------------------------------------------------------------------------

-- A float artefact: 100.30000000000000004 is stored as the double nearest 100.3 and must enter the
-- ledger as exactly 100.30.
INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
VALUES ('zz-verify-accion-1', 'COMPRA', 100.30000000000000004, '2024-02-01 10:00:00.123',
        'zz-verify-junta-a', 'zz-verify-user');
SELECT pg_temp.expect_capital('share purchase adds its cents', 'zz-verify-junta-a', 100.30, 100.30);
SELECT pg_temp.expect_eq('share purchase: one ACCION INCREASE movement with the source timestamp',
    (SELECT array_agg(ROW(type, direction, amount, created_at, seq)::text)
       FROM capital_movements WHERE accion_id = 'zz-verify-accion-1'),
    ARRAY[ROW('ACCION', 'INCREASE', 100.30::numeric(14,2), '2024-02-01 10:00:00.123'::timestamp, 0)::text]);

-- 5.005 is 5.00499999999999989... as a double; the float8 -> numeric cast (15 significant digits)
-- gives 5.005, which rounds half away from zero to 5.01.
INSERT INTO "Multa" (id, amount, description, status, created_at, junta_id, member_id)
VALUES ('zz-verify-multa-1', 5.005, 'late', 'PENDING', '2024-02-02', 'zz-verify-junta-a', 'zz-verify-user');
SELECT pg_temp.expect_capital('fine adds its cents (float8 -> numeric, then half away from zero)',
    'zz-verify-junta-a', 100.30, 105.31);

INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id, affects_capital)
VALUES ('zz-verify-accion-2', 'COMPRA', 50, '2024-02-03', 'zz-verify-junta-a', 'zz-verify-user', false);
SELECT pg_temp.expect_capital('a share with affects_capital = false moves nothing',
    'zz-verify-junta-a', 100.30, 105.31);
SELECT pg_temp.expect_eq('a share with affects_capital = false has no movement',
    (SELECT count(*) FROM capital_movements WHERE accion_id = 'zz-verify-accion-2'), 0::bigint);

INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
VALUES ('zz-verify-prestamo-1', 60, 'APPROVED', '2024-02-04', '2024-02-04', 'zz-verify-junta-a',
        'zz-verify-user');
SELECT pg_temp.expect_capital('a loan takes its cents', 'zz-verify-junta-a', 100.30, 45.31);
SELECT pg_temp.expect_eq('a loan: one PRESTAMO DECREASE movement',
    (SELECT array_agg(ROW(type, direction, amount)::text) FROM capital_movements
      WHERE prestamo_id = 'zz-verify-prestamo-1'),
    ARRAY[ROW('PRESTAMO', 'DECREASE', 60.00::numeric(14,2))::text]);
SELECT pg_temp.expect_eq('a loan gets its shadow row (amount, flags, remaining, number, capital at the time)',
    (SELECT ROW(n.junta_id, n.amount, n.approved, n.rejected, n.paid, n.remaining_amount, n.loan_number,
                n.capital_at_time, n.status)::text
       FROM "PrestamoNew" n WHERE n.original_prestamo_id = 'zz-verify-prestamo-1'),
    ROW('zz-verify-junta-a', 60.00::numeric(14,2), true, false, false, 60.00::numeric(14,2), 1,
        105.31::numeric(14,2), 'APPROVED')::text);

INSERT INTO "PagoPrestamo" (id, amount, date, prestamo_id)
VALUES ('zz-verify-pago-1', 10.004, '2024-03-01 08:00', 'zz-verify-prestamo-1');
SELECT pg_temp.expect_capital('a payment gives its cents back', 'zz-verify-junta-a', 100.30, 55.31);
SELECT pg_temp.expect_eq('a payment: one PAGO INCREASE movement in its loan''s junta, dated by the payment',
    (SELECT array_agg(ROW(type, direction, amount, junta_id, created_at)::text) FROM capital_movements
      WHERE pago_id = 'zz-verify-pago-1'),
    ARRAY[ROW('PAGO', 'INCREASE', 10.00::numeric(14,2), 'zz-verify-junta-a',
              '2024-03-01 08:00'::timestamp)::text]);
SELECT pg_temp.expect_eq('a payment gets its shadow row and lowers the loan''s remaining amount',
    (SELECT ROW(g.amount, g.prestamo_id, n.remaining_amount)::text
       FROM "PagoPrestamoNew" g JOIN "PrestamoNew" n ON n.id = g.prestamo_id
      WHERE g.original_pago_id = 'zz-verify-pago-1'),
    ROW(10.00::numeric(14,2), 'zz-verify-prestamo-1', 50.00::numeric(14,2))::text);

-- ---------------------------------------------------------------------------------------------------
-- 4. Triggers: UPDATE and DELETE append corrections
-- ---------------------------------------------------------------------------------------------------

UPDATE "PagoPrestamo" SET amount = 20 WHERE id = 'zz-verify-pago-1';
SELECT pg_temp.expect_capital('updating a payment moves capital by the difference', 'zz-verify-junta-a',
    100.30, 65.31);
SELECT pg_temp.expect_eq('updating a payment appends a correction (seq 1), the original stays',
    (SELECT array_agg(ROW(seq, direction, amount)::text ORDER BY seq) FROM capital_movements
      WHERE pago_id = 'zz-verify-pago-1'),
    ARRAY[ROW(0, 'INCREASE', 10.00::numeric(14,2))::text, ROW(1, 'INCREASE', 10.00::numeric(14,2))::text]);
SELECT pg_temp.expect_eq('updating a payment updates its shadow row',
    (SELECT amount FROM "PagoPrestamoNew" WHERE original_pago_id = 'zz-verify-pago-1'), 20.00::numeric);

DELETE FROM "PagoPrestamo" WHERE id = 'zz-verify-pago-1';
SELECT pg_temp.expect_capital('deleting a payment takes its cents back', 'zz-verify-junta-a', 100.30, 45.31);
SELECT pg_temp.expect_eq('deleting a payment nets its movements to zero',
    (SELECT sum(CASE direction WHEN 'INCREASE' THEN amount ELSE -amount END) FROM capital_movements
      WHERE pago_id = 'zz-verify-pago-1'), 0.00::numeric);
SELECT pg_temp.expect_eq('deleting a payment removes its shadow row and restores the remaining amount',
    (SELECT ROW((SELECT count(*) FROM "PagoPrestamoNew" WHERE original_pago_id = 'zz-verify-pago-1'),
                remaining_amount)::text
       FROM "PrestamoNew" WHERE original_prestamo_id = 'zz-verify-prestamo-1'),
    ROW(0::bigint, 60.00::numeric(14,2))::text);

UPDATE "Prestamo" SET status = 'REJECTED' WHERE id = 'zz-verify-prestamo-1';
SELECT pg_temp.expect_capital('rejecting a loan gives its capital back', 'zz-verify-junta-a', 100.30, 105.31);
SELECT pg_temp.expect_eq('rejecting a loan updates the shadow flags',
    (SELECT ROW(approved, rejected, status)::text FROM "PrestamoNew"
      WHERE original_prestamo_id = 'zz-verify-prestamo-1'),
    ROW(false, true, 'REJECTED')::text);

UPDATE "Accion" SET affects_capital = true WHERE id = 'zz-verify-accion-2';
SELECT pg_temp.expect_capital('turning affects_capital on adds the share', 'zz-verify-junta-a', 150.30, 155.31);

UPDATE "Accion" SET junta_id = 'zz-verify-junta-b' WHERE id = 'zz-verify-accion-2';
SELECT pg_temp.expect_capital('moving a share to another junta takes it from the first', 'zz-verify-junta-a',
    100.30, 105.31);
SELECT pg_temp.expect_capital('moving a share to another junta gives it to the second', 'zz-verify-junta-b',
    50.00, 50.00);

UPDATE "Multa" SET status = 'PAID' WHERE id = 'zz-verify-multa-1';
SELECT pg_temp.expect_capital('paying a fine changes nothing (fines count whatever their status)',
    'zz-verify-junta-a', 100.30, 105.31);

DELETE FROM "Multa" WHERE id = 'zz-verify-multa-1';
SELECT pg_temp.expect_capital('deleting a fine takes its cents back', 'zz-verify-junta-a', 100.30, 100.30);

DELETE FROM "Accion" WHERE id = 'zz-verify-accion-2';
SELECT pg_temp.expect_capital('deleting a share takes its cents back', 'zz-verify-junta-b', 0, 0);

-- ---------------------------------------------------------------------------------------------------
-- 5. Business rules for new writes
-- ---------------------------------------------------------------------------------------------------

-- Junta A now has 100.30 available.
SELECT pg_temp.expect_error('a loan above the available capital is rejected, naming junta, amount and available',
    $sql$INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
         VALUES ('zz-verify-prestamo-2', 100.31, 'PENDING', '2024-04-01', '2024-04-01', 'zz-verify-junta-a',
                 'zz-verify-user')$sql$,
    ARRAY['CAP01', 'P0001', '23514'], ARRAY['zz-verify-junta-a', '100.31', '100.30']);

INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
VALUES ('zz-verify-prestamo-3', 100.30, 'PENDING', '2024-04-02', '2024-04-02', 'zz-verify-junta-a',
        'zz-verify-user');
SELECT pg_temp.expect_capital('a loan of exactly the available capital is granted', 'zz-verify-junta-a',
    100.30, 0);

INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
VALUES ('zz-verify-prestamo-4', 5000, 'REJECTED', '2024-04-03', '2024-04-03', 'zz-verify-junta-a',
        'zz-verify-user');
SELECT pg_temp.expect_capital('a rejected loan above the available capital is recorded and takes nothing',
    'zz-verify-junta-a', 100.30, 0);

SELECT pg_temp.expect_error('raising a loan above the available capital is rejected',
    $sql$UPDATE "Prestamo" SET amount = 100.31 WHERE id = 'zz-verify-prestamo-3'$sql$,
    ARRAY['CAP01', 'P0001', '23514'], ARRAY['zz-verify-junta-a']);

SELECT pg_temp.expect_error('un-rejecting a loan the junta cannot afford is rejected',
    $sql$UPDATE "Prestamo" SET status = 'APPROVED' WHERE id = 'zz-verify-prestamo-1'$sql$,
    ARRAY['CAP01', 'P0001', '23514'], ARRAY['zz-verify-junta-a']);

DO $$
DECLARE
    stmt record;
BEGIN
    FOR stmt IN
        SELECT * FROM (VALUES
            ('a zero share', $sql$INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
                VALUES ('zz-verify-accion-9', 'COMPRA', 0, now(), 'zz-verify-junta-a', 'zz-verify-user')$sql$),
            ('a negative share', $sql$INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
                VALUES ('zz-verify-accion-9', 'COMPRA', -1, now(), 'zz-verify-junta-a', 'zz-verify-user')$sql$),
            ('a zero fine', $sql$INSERT INTO "Multa" (id, amount, description, created_at, junta_id, member_id)
                VALUES ('zz-verify-multa-9', 0, 'x', now(), 'zz-verify-junta-a', 'zz-verify-user')$sql$),
            ('a negative fine', $sql$INSERT INTO "Multa" (id, amount, description, created_at, junta_id, member_id)
                VALUES ('zz-verify-multa-9', -0.01, 'x', now(), 'zz-verify-junta-a', 'zz-verify-user')$sql$),
            ('a zero loan', $sql$INSERT INTO "Prestamo" (id, amount, created_at, updated_at, junta_id, member_id)
                VALUES ('zz-verify-prestamo-9', 0, now(), now(), 'zz-verify-junta-a', 'zz-verify-user')$sql$),
            ('a negative loan', $sql$INSERT INTO "Prestamo" (id, amount, created_at, updated_at, junta_id, member_id)
                VALUES ('zz-verify-prestamo-9', -5, now(), now(), 'zz-verify-junta-a', 'zz-verify-user')$sql$),
            ('a zero payment', $sql$INSERT INTO "PagoPrestamo" (id, amount, prestamo_id)
                VALUES ('zz-verify-pago-9', 0, 'zz-verify-prestamo-3')$sql$),
            ('a negative payment', $sql$INSERT INTO "PagoPrestamo" (id, amount, prestamo_id)
                VALUES ('zz-verify-pago-9', -3, 'zz-verify-prestamo-3')$sql$),
            ('a share updated to a negative amount',
                $sql$UPDATE "Accion" SET amount = -100.30 WHERE id = 'zz-verify-accion-1'$sql$)
        ) AS s(what, sql)
    LOOP
        PERFORM pg_temp.expect_error(stmt.what || ' is rejected', stmt.sql, ARRAY['23514', 'P0001']);
    END LOOP;
END
$$;
SELECT pg_temp.expect_capital('rejected writes left no trace', 'zz-verify-junta-a', 100.30, 0);

-- The ledger is append-only.
SELECT pg_temp.expect_error('ledger UPDATE is rejected',
    $sql$UPDATE capital_movements SET amount = amount + 1 WHERE accion_id = 'zz-verify-accion-1'$sql$,
    ARRAY['CAP02', 'P0001', '42501', '55000']);
SELECT pg_temp.expect_error('ledger DELETE is rejected',
    $sql$DELETE FROM capital_movements WHERE accion_id = 'zz-verify-accion-1'$sql$,
    ARRAY['CAP02', 'P0001', '42501', '55000']);
-- TRUNCATE would take an ACCESS EXCLUSIVE lock on the ledger until our ROLLBACK, so its guard was
-- checked in the catalog above (section 1) instead of being exercised here.

-- Type, direction and amount lists are enforced on the ledger. A control movement that differs from
-- each bad one in one column only must be accepted (then undone), so the column is what is rejected.
DO $$
DECLARE
    bad record;
    got_state text;
    got_message text;
BEGIN
    BEGIN
        INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, accion_id, seq)
        VALUES ('zz-verify-junta-a', 'ACCION', 'INCREASE', 1.00, 'verify control', now(), 'zz-verify-accion-1', 99);
        RAISE EXCEPTION USING ERRCODE = 'ZZ001', MESSAGE = 'control accepted; undo it';
    EXCEPTION WHEN SQLSTATE 'ZZ001' THEN
        NULL;
    WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS got_message = MESSAGE_TEXT;
        RAISE EXCEPTION 'FAILED ledger lists enforced: the valid control movement was rejected: %', got_message;
    END;
    FOR bad IN
        SELECT * FROM (VALUES
            ('type outside the list', 'BOGUS', 'INCREASE', 1.00),
            ('direction outside the list', 'ACCION', 'SIDEWAYS', 1.00),
            ('zero amount', 'ACCION', 'INCREASE', 0.00),
            ('negative amount', 'ACCION', 'DECREASE', -1.00)
        ) AS b(what, typ, dir, amt)
    LOOP
        BEGIN
            INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at,
                                           accion_id, seq)
            VALUES ('zz-verify-junta-a', bad.typ, bad.dir, bad.amt, 'verify', now(), 'zz-verify-accion-1', 99);
            RAISE EXCEPTION USING ERRCODE = 'ZZ002', MESSAGE = format(
                'FAILED ledger movement with a %s is rejected: type %s, direction %s, amount %s was accepted',
                bad.what, bad.typ, bad.dir, bad.amt);
        EXCEPTION WHEN check_violation THEN
            GET STACKED DIAGNOSTICS got_message = MESSAGE_TEXT;
            RAISE NOTICE 'ok: ledger movement with a % is rejected (%)', bad.what, got_message;
        WHEN SQLSTATE 'ZZ002' THEN
            RAISE;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS got_state = RETURNED_SQLSTATE, got_message = MESSAGE_TEXT;
            RAISE EXCEPTION 'FAILED ledger movement with a % is rejected: expected a check violation, got % (%)',
                bad.what, got_state, got_message;
        END;
    END LOOP;
END
$$;

SELECT pg_temp.expect_error('a second original movement for the same source is rejected (unique)',
    $sql$INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, accion_id, seq)
         VALUES ('zz-verify-junta-a', 'ACCION', 'INCREASE', 1.00, 'verify', now(), 'zz-verify-accion-1', 0)$sql$,
    ARRAY['23505']);

-- ---------------------------------------------------------------------------------------------------
-- 6. calculate_available_capital agrees with the columns and the raw rows for every fixture junta
-- ---------------------------------------------------------------------------------------------------

SELECT pg_temp.expect_eq('calculate_available_capital agrees for every fixture junta',
    (SELECT string_agg(format('%s: function %s, column %s, model %s', j.id, calculate_available_capital(j.id),
                              j.available_capital, (pg_temp.model_capital(j.id)).current), '; ')
       FROM "Junta" j
      WHERE j.id LIKE 'zz-verify-%'
        AND (calculate_available_capital(j.id) IS DISTINCT FROM j.available_capital
             OR j.available_capital IS DISTINCT FROM (pg_temp.model_capital(j.id)).current)),
    NULL::text);

\echo 'verify_migration.sql: all checks passed; rolling back the fixtures'
ROLLBACK;
