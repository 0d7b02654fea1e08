-- 12_functions.sql -- expand, step 3: the capital model as functions.
--
-- Expects: 10 and 11 applied (the functions reference the new columns).
-- Leaves:  contribution, sync trigger, shadow, backfill and guard functions.
--          CREATE OR REPLACE only: no lock on legacy tables, safe to rerun.
--
-- The capital model (domain.md section 3), in one place:
--   a source row's contribution is {junta_id: signed cents}, where cents =
--   round(amount::numeric, 2) (float8 -> numeric cast, half away from zero):
--     Accion (affects_capital)          +cents to its junta
--     Multa (affects_capital, any status) +cents to its junta
--     Prestamo (status <> 'REJECTED')   -cents to its junta
--     PagoPrestamo                      +cents to its loan's junta
--   0.00 gives no movement; a negative amount gives a movement in the opposite
--   direction for its absolute value.
BEGIN;

-- Exact cents of a legacy float amount; refuses NaN/Infinity instead of
-- letting them into the ledger. A plain SQL CASE, so the planner inlines it
-- into the batch queries (a PL/pgSQL body here cost a function call per row:
-- 0.3 s instead of 0.09 s per 400k rows, BENCHMARKS.md); only the refusal is
-- PL/pgSQL. Not STRICT: a STRICT function is never inlined (NULL gives NULL
-- all the same).
CREATE OR REPLACE FUNCTION capital_refuse_amount(p_amount double precision) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'amount % is not a finite number', p_amount USING ERRCODE = '22003';
END
$$;

CREATE OR REPLACE FUNCTION capital_cents(p_amount double precision) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_amount = 'NaN'::float8 OR p_amount IN ('Infinity'::float8, '-Infinity'::float8)
            THEN capital_refuse_amount(p_amount)
        ELSE round(p_amount::numeric, 2)
    END
$$;

-- Signed contribution of one source row to its junta's capital.
CREATE OR REPLACE FUNCTION capital_contribution(p_type text, p_amount double precision, p_counts boolean)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_counts IS NOT TRUE OR p_amount IS NULL THEN 0::numeric
        WHEN p_type = 'PRESTAMO' THEN -capital_cents(p_amount)
        ELSE capital_cents(p_amount)
    END
$$;

-- Brings the ledger of one source row to its wanted contribution: compares
-- the wanted {junta: cents} with the ledger's net per junta for this source
-- and appends one movement per non-zero difference (seq 0 when the source has
-- no movement yet, else the next seq), then adds the same delta to the
-- junta's columns. Movement first, junta second: the junta recompute of the
-- backfill relies on that order (see capital_backfill_step).
CREATE OR REPLACE FUNCTION capital_apply(
    p_type text, p_source text, p_junta text, p_wanted numeric, p_source_ts timestamp, p_description text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_seq integer;
BEGIN
    SELECT coalesce(max(m.seq) + 1, 0) INTO v_seq
      FROM capital_movements m
     WHERE coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) = p_source AND m.type = p_type;
    FOR r IN
        WITH net AS (
            SELECT m.junta_id,
                   sum(CASE m.direction WHEN 'INCREASE' THEN m.amount ELSE -m.amount END) AS net
              FROM capital_movements m
             WHERE coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) = p_source
               AND m.type = p_type
             GROUP BY m.junta_id
        ), want AS (
            SELECT p_junta AS junta_id, p_wanted AS want
             WHERE p_junta IS NOT NULL AND coalesce(p_wanted, 0) <> 0
        )
        SELECT coalesce(w.junta_id, n.junta_id) AS junta_id,
               coalesce(w.want, 0) - coalesce(n.net, 0) AS delta
          FROM want w FULL JOIN net n ON n.junta_id = w.junta_id
         WHERE coalesce(w.want, 0) - coalesce(n.net, 0) <> 0
         ORDER BY 1
    LOOP
        INSERT INTO capital_movements
            (junta_id, type, direction, amount, description, created_at,
             accion_id, multa_id, prestamo_id, pago_id, seq)
        VALUES (
            r.junta_id, p_type,
            CASE WHEN r.delta > 0 THEN 'INCREASE' ELSE 'DECREASE' END,
            abs(r.delta),
            CASE WHEN v_seq = 0 THEN p_description ELSE 'correction: ' || coalesce(p_description, p_type) END,
            CASE WHEN v_seq = 0 THEN p_source_ts ELSE localtimestamp END,
            CASE WHEN p_type = 'ACCION' THEN p_source END,
            CASE WHEN p_type = 'MULTA' THEN p_source END,
            CASE WHEN p_type = 'PRESTAMO' THEN p_source END,
            CASE WHEN p_type = 'PAGO' THEN p_source END,
            v_seq);
        v_seq := v_seq + 1;
        UPDATE "Junta"
           SET base_capital = base_capital + CASE WHEN p_type = 'ACCION' THEN r.delta ELSE 0 END,
               current_capital = current_capital + r.delta,
               available_capital = available_capital + r.delta
         WHERE id = r.junta_id;
    END LOOP;
END
$$;

-- The statements that leave the index p_name valid, for \gexec: none when it is valid; otherwise a DROP INDEX
-- CONCURRENTLY of an INVALID leftover (a build that was killed, or that gave up after lock_timeout while
-- waiting for an application transaction) followed by p_create. The caller runs them as ONE unit, so a
-- retried unit drops and rebuilds: CREATE INDEX CONCURRENTLY IF NOT EXISTS would skip the invalid index as
-- "already exists" and leave the triggers with an index nothing can use (test_migration_concurrency.py).
CREATE OR REPLACE FUNCTION capital_index_statements(p_name text, p_create text) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT s.statement FROM (
        SELECT 1 AS step, format('DROP INDEX CONCURRENTLY IF EXISTS %s', i.indexrelid::regclass) AS statement
          FROM pg_index i
         WHERE i.indexrelid = to_regclass(p_name) AND NOT i.indisvalid
        UNION ALL
        SELECT 2, p_create
         WHERE NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = to_regclass(p_name) AND i.indisvalid)
    ) s
    ORDER BY s.step
$$;

CREATE OR REPLACE FUNCTION capital_phase() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT phase FROM capital_migration_state $$;

-- True once the ledger backfill is complete: from then on the triggers can
-- number loans and record capital_at_time themselves.
CREATE OR REPLACE FUNCTION capital_ledger_live() RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT capital_phase() IN ('ledger_complete', 'enforced') $$;

-- Locks junta rows in id order (FOR NO KEY UPDATE: does not block the FK
-- checks of concurrent child inserts). Every writer of capital columns takes
-- this lock first, which serialises them per junta.
CREATE OR REPLACE FUNCTION capital_lock_juntas(p_ids text[]) RETURNS void
LANGUAGE sql AS $$
    SELECT count(*) FROM (
        SELECT 1 FROM "Junta" WHERE id = ANY (p_ids) ORDER BY id FOR NO KEY UPDATE
    ) locked
$$;

CREATE OR REPLACE FUNCTION capital_status_approved(p_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_status IN ('APPROVED', 'ACTIVE', 'PARTIAL', 'PAID') $$;

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

-- Recomputes a junta's capital from its ledger, from scratch.
CREATE OR REPLACE FUNCTION calculate_available_capital(p_junta_id text) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(CASE direction WHEN 'INCREASE' THEN amount ELSE -amount END), 0)::numeric(14, 2)
      FROM capital_movements WHERE junta_id = p_junta_id
$$;

-- One backfill batch of one step; see capital_backfill_step for the order.
-- Returns the number of rows the batch looked at.
--
-- The source steps (Accion, Multa, Prestamo, PagoPrestamo) write each source
-- row's seq 0 movement (and its shadow row) unless the sync trigger already
-- did: the first movement of a source is always seq 0 and the ledger is
-- append-only, so "the trigger did" means "the ledger holds a movement of this
-- source", and the unique (source, type, seq) index is the final arbiter.
-- Rows the trigger wrote before this batch's snapshot are left out by reading
-- what the ledger (and the shadow table) hold in the batch's id range
-- (last_id, the batch's last id, read just before]: rows of earlier batches
-- are below the range, so the range holds only the triggers' rows, a
-- handful, read through the unique index and hashed (NOT IN). The inserts then need no ON CONFLICT,
-- whose speculative insertion cost ~28 % of a batch (BENCHMARKS.md, the
-- rules table). A trigger that commits its row after the snapshot (an application
-- UPDATE of a row this batch then locks and re-reads) makes the plain insert
-- fail on the unique index: the batch is then rolled back to its savepoint
-- and run again with ON CONFLICT DO NOTHING, which skips it. (A NOT EXISTS
-- anti-join per row was planned as a scan of the whole ledger per batch:
-- quadratic, BENCHMARKS.md; the range read is bounded by the batch.)
-- Each source batch locks its rows FOR SHARE: an application UPDATE/DELETE of
-- such a row waits for the batch, and the batch waits for (and re-reads) a row
-- the application is changing, so trigger and backfill never both write a
-- row's seq 0 movement.
CREATE OR REPLACE FUNCTION capital_backfill_batch(p_source text, p_batch integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_last text;
    v_rows integer := 0;
    v_max text;
    v_ids text[];
    v_loans text[];
    v_numbers bigint[];
    v_befores numeric[];
    v_sql text;
    v_hi text;
    -- The ledger's movements of type %1$s whose source id is in this batch's range ($1 = last_id, $3 = the
    -- batch's last id, NULL for the last batch): the unique index's expression, so the read is a range scan
    -- of that index, planned with both bounds known (EXECUTE plans with the parameters' values).
    c_written constant text := $q$
        SELECT coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) FROM capital_movements m
         WHERE coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) > $1
           AND ($3 IS NULL OR coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) <= $3)
           AND m.type = %1$L$q$;
BEGIN
    SELECT last_id INTO v_last FROM capital_backfill_progress WHERE source = p_source FOR UPDATE;
    v_last := coalesce(v_last, '');
    -- Each statement: %1$s = the ledger insert's conflict clause, %2$s = the shadow insert's.
    IF p_source = 'Accion' THEN
        v_sql := $q$
        WITH b AS (
            SELECT a.id, a.junta_id, a.type, a.created_at,
                   capital_contribution('ACCION', a.amount, a.affects_capital) AS c
              FROM "Accion" a WHERE a.id > $1 ORDER BY a.id LIMIT $2 FOR SHARE
        ), ins AS (
            INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, accion_id, seq)
            SELECT b.junta_id, 'ACCION', CASE WHEN b.c > 0 THEN 'INCREASE' ELSE 'DECREASE' END, abs(b.c),
                   b.type, b.created_at, b.id, 0
              FROM b
             WHERE b.c <> 0 AND b.id NOT IN ($q$ || format(c_written, 'ACCION') || $q$)
            %1$s RETURNING 1
        )
        SELECT (SELECT count(*) FROM b), (SELECT max(id) FROM b)$q$;
    ELSIF p_source = 'Multa' THEN
        v_sql := $q$
        WITH b AS (
            SELECT x.id, x.junta_id, x.description, x.created_at,
                   capital_contribution('MULTA', x.amount, x.affects_capital) AS c
              FROM "Multa" x WHERE x.id > $1 ORDER BY x.id LIMIT $2 FOR SHARE
        ), ins AS (
            INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, multa_id, seq)
            SELECT b.junta_id, 'MULTA', CASE WHEN b.c > 0 THEN 'INCREASE' ELSE 'DECREASE' END, abs(b.c),
                   b.description, b.created_at, b.id, 0
              FROM b
             WHERE b.c <> 0 AND b.id NOT IN ($q$ || format(c_written, 'MULTA') || $q$)
            %1$s RETURNING 1
        )
        SELECT (SELECT count(*) FROM b), (SELECT max(id) FROM b)$q$;
    ELSIF p_source = 'Prestamo' THEN
        -- Also the loans' shadow rows (loan_number/capital_at_time NULL: the
        -- sweep fills them once the ledger is complete). A shadow row written by
        -- a trigger (the loan's or one of its payments') is at least as new as
        -- ours: left as it is.
        v_sql := $q$
        WITH b AS (
            SELECT p.*, capital_contribution('PRESTAMO', p.amount, p.status IS DISTINCT FROM 'REJECTED') AS c
              FROM "Prestamo" p WHERE p.id > $1 ORDER BY p.id LIMIT $2 FOR SHARE
        ), ins AS (
            INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, prestamo_id, seq)
            SELECT b.junta_id, 'PRESTAMO', CASE WHEN b.c > 0 THEN 'INCREASE' ELSE 'DECREASE' END, abs(b.c),
                   b.description, b.created_at, b.id, 0
              FROM b
             WHERE b.c <> 0 AND b.id NOT IN ($q$ || format(c_written, 'PRESTAMO') || $q$)
            %1$s RETURNING 1
        ), shadow AS (
            INSERT INTO "PrestamoNew"
                (id, original_prestamo_id, junta_id, member_id, amount, description, status,
                 approved, rejected, paid, remaining_amount, loan_number, capital_at_time, created_at, updated_at)
            SELECT b.id, b.id, b.junta_id, b.member_id, capital_cents(b.amount), b.description, b.status,
                   capital_status_approved(b.status), b.status = 'REJECTED', b.status = 'PAID',
                   capital_cents(b.amount) - coalesce(
                       (SELECT sum(capital_cents(pp.amount)) FROM "PagoPrestamo" pp WHERE pp.prestamo_id = b.id), 0),
                   NULL, NULL, b.created_at, b.updated_at
              FROM b
             WHERE b.id NOT IN (SELECT n.id FROM "PrestamoNew" n
                                 WHERE n.id > $1 AND ($3 IS NULL OR n.id <= $3))
            %2$s RETURNING 1
        )
        SELECT (SELECT count(*) FROM b), (SELECT max(id) FROM b)$q$;
    ELSIF p_source = 'PagoPrestamo' THEN
        -- Only the payment rows are locked (FOR SHARE OF pp). The payment's junta is its loan's junta: a
        -- loan moving to another junta meanwhile is safe without locking the loan row, because the loan's
        -- sync trigger locks the loan's payments FOR UPDATE before moving their movements (it waits for
        -- this batch, then moves what the batch wrote), and if it ran first its seq 0 movements keep this
        -- batch from writing them. Locking the loans too dirtied every loan page once per batch for nothing.
        v_sql := $q$
        WITH b AS (
            SELECT pp.id, pp.prestamo_id, pp.date, pp.amount, p.junta_id,
                   capital_contribution('PAGO', pp.amount, true) AS c
              FROM "PagoPrestamo" pp JOIN "Prestamo" p ON p.id = pp.prestamo_id
             WHERE pp.id > $1 ORDER BY pp.id LIMIT $2 FOR SHARE OF pp
        ), ins AS (
            INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, pago_id, seq)
            SELECT b.junta_id, 'PAGO', CASE WHEN b.c > 0 THEN 'INCREASE' ELSE 'DECREASE' END, abs(b.c),
                   NULL, b.date, b.id, 0
              FROM b
             WHERE b.c <> 0 AND b.id NOT IN ($q$ || format(c_written, 'PAGO') || $q$)
            %1$s RETURNING 1
        ), shadow AS (
            INSERT INTO "PagoPrestamoNew" (id, original_pago_id, prestamo_id, amount, date)
            SELECT b.id, b.id, b.prestamo_id, capital_cents(b.amount), b.date FROM b
             WHERE b.id NOT IN (SELECT n.id FROM "PagoPrestamoNew" n
                                 WHERE n.id > $1 AND ($3 IS NULL OR n.id <= $3))
            %2$s RETURNING 1
        )
        SELECT (SELECT count(*) FROM b), (SELECT max(id) FROM b)$q$;
    END IF;
    IF v_sql IS NOT NULL THEN
        -- The range's upper bound, read before the batch (no lock): if a row is deleted meanwhile the batch
        -- reaches past it, and a trigger row out there takes the ON CONFLICT path below.
        EXECUTE format('SELECT id FROM %I WHERE id > $1 ORDER BY id OFFSET $2 - 1 LIMIT 1', p_source)
           INTO v_hi USING v_last, p_batch;
        BEGIN
            EXECUTE format(v_sql, '', '') INTO v_rows, v_max USING v_last, p_batch, v_hi;
        EXCEPTION WHEN unique_violation THEN
            -- A trigger committed a row of this batch after its snapshot (see above): again, skipping it.
            RAISE NOTICE 'backfill batch of % after %: a sync trigger wrote one of its rows meanwhile; '
                'batch run again with ON CONFLICT DO NOTHING', p_source, v_last;
            EXECUTE format(v_sql, 'ON CONFLICT DO NOTHING', 'ON CONFLICT (id) DO NOTHING')
                INTO v_rows, v_max USING v_last, p_batch, v_hi;
        END;
    ELSIF p_source = 'Junta' THEN
        -- Recompute the junta columns from the ledger. Lock the juntas first
        -- (one statement), then read the ledger in a NEW statement (new
        -- snapshot under READ COMMITTED): a writer that appended a movement
        -- but has not yet updated its junta waits for our lock and adds its
        -- delta after us; a writer that already updated it has committed by
        -- the time we hold the lock, and its movement is in our snapshot.
        SELECT array_agg(id ORDER BY id) INTO v_ids FROM (
            SELECT id FROM "Junta" WHERE id > v_last ORDER BY id LIMIT p_batch FOR NO KEY UPDATE
        ) j;
        v_rows := coalesce(cardinality(v_ids), 0);
        v_max := v_ids[v_rows];
        UPDATE "Junta" j
           SET base_capital = s.base, current_capital = s.cur, available_capital = s.cur
          FROM (
              SELECT jj.id,
                     coalesce(sum(m.amount) FILTER (WHERE m.type = 'ACCION' AND m.direction = 'INCREASE'), 0)
                     - coalesce(sum(m.amount) FILTER (WHERE m.type = 'ACCION' AND m.direction = 'DECREASE'), 0)
                         AS base,
                     coalesce(sum(CASE m.direction WHEN 'INCREASE' THEN m.amount ELSE -m.amount END), 0) AS cur
                FROM unnest(v_ids) AS jj(id)
                LEFT JOIN capital_movements m ON m.junta_id = jj.id
               GROUP BY jj.id
          ) s
         WHERE j.id = s.id
           AND (j.base_capital, j.current_capital, j.available_capital) IS DISTINCT FROM (s.base, s.cur, s.cur);
    ELSIF p_source = 'PrestamoNew' THEN
        -- Barrier first: a trigger that read the phase before ledger_complete
        -- was committed left NULLs and may still be uncommitted. Such a
        -- transaction has an xid (it wrote the source row), so remember the
        -- xids in progress now (last_id holds them for this step) and wait,
        -- returning -1, until all of them have ended.
        IF v_last = '' THEN
            SELECT coalesce(array_agg(x)::text, '{}') INTO v_last FROM pg_snapshot_xip(pg_current_snapshot()) x;
            UPDATE capital_backfill_progress SET last_id = v_last, updated_at = now() WHERE source = p_source;
            RETURN -1;
        END IF;
        IF EXISTS (SELECT 1 FROM unnest(v_last::xid8[]) x WHERE pg_xact_status(x) = 'in progress') THEN
            RETURN -1;
        END IF;
        -- Sweep: juntas with loans still missing loan_number/capital_at_time.
        -- Lock them (so no trigger numbers a loan meanwhile), then number the
        -- unnumbered loans after the highest number, by (created_at, id), and
        -- set capital_at_time = the ledger sum of the junta's movements dated
        -- strictly before the loan's created_at (tie rule: movements with the
        -- same timestamp, including the loan's own, are not "before").
        SELECT array_agg(junta_id ORDER BY junta_id) INTO v_ids FROM (
            SELECT DISTINCT n.junta_id FROM "PrestamoNew" n
             WHERE n.loan_number IS NULL OR n.capital_at_time IS NULL
             ORDER BY n.junta_id LIMIT p_batch
        ) pending;
        v_rows := coalesce(cardinality(v_ids), 0);
        PERFORM capital_lock_juntas(v_ids);
        -- One ordered pass per junta over its movements and pending loans, and ONE update per loan setting
        -- both columns (an update per column wrote every shadow row twice). The pass is in (created_at,
        -- loan_id) order: a movement's loan_id is NULL and sorts after the loans of its timestamp, so at a
        -- loan the running sum (ROWS frame) holds exactly the movements dated strictly before it (loans add
        -- 0), and the running count of unnumbered loans is the loan's rank by (created_at, id): loan_number =
        -- the junta's highest number + that rank. One window instead of three (a running sum minus the sum of
        -- the loan's timestamp group, and the rank) cut the sweep's sort-and-window time (BENCHMARKS.md).
        -- (The correlated subquery before those cost O(loans x movements) per junta.)
        SELECT array_agg(s.loan_id), array_agg(s.base + s.rn), array_agg(s.before)
          INTO v_loans, v_numbers, v_befores
          FROM (
              SELECT e.loan_id, e.base,
                     CASE WHEN e.unnumbered THEN count(*) FILTER (WHERE e.unnumbered) OVER w END AS rn,
                     coalesce(sum(e.delta) OVER w, 0) AS before
                FROM (
                    SELECT m.junta_id, m.created_at,
                           CASE m.direction WHEN 'INCREASE' THEN m.amount ELSE -m.amount END AS delta,
                           NULL::text AS loan_id, false AS unnumbered, 0 AS base
                      FROM capital_movements m WHERE m.junta_id = ANY (v_ids)
                    UNION ALL
                    SELECT x.junta_id, x.created_at, 0, x.id, x.loan_number IS NULL,
                           (SELECT coalesce(max(y.loan_number), 0) FROM "PrestamoNew" y WHERE y.junta_id = x.junta_id)
                      FROM "PrestamoNew" x
                     WHERE x.junta_id = ANY (v_ids) AND (x.loan_number IS NULL OR x.capital_at_time IS NULL)
                ) e
              WINDOW w AS (PARTITION BY e.junta_id ORDER BY e.created_at, e.loan_id ROWS UNBOUNDED PRECEDING)
          ) s
         WHERE s.loan_id IS NOT NULL;
        -- Applied from arrays: joined to the window's output, the planner cannot tell loans from movements
        -- and walks the whole shadow table's primary key for a few hundred loans (BENCHMARKS.md).
        UPDATE "PrestamoNew" n
           SET loan_number = coalesce(n.loan_number, u.loan_number),
               capital_at_time = coalesce(n.capital_at_time, u.capital_at_time)
          FROM unnest(v_loans, v_numbers, v_befores) AS u(id, loan_number, capital_at_time)
         WHERE n.id = u.id;
    ELSE
        RAISE EXCEPTION 'unknown backfill source %', p_source USING ERRCODE = '22023';
    END IF;
    UPDATE capital_backfill_progress
       SET last_id = coalesce(v_max, last_id),
           rows_done = rows_done + v_rows,
           done = (v_rows < p_batch),  -- a source batch shorter than asked reached the end
           updated_at = now()
     WHERE source = p_source;
    RETURN v_rows;
END
$$;

-- The backfill as a state machine: each call runs ONE batch of the first
-- unfinished step and must be its own transaction (progress is committed
-- with the batch, so a killed run resumes exactly where it stopped).
-- Steps: Accion, Multa, Prestamo (+ shadow), PagoPrestamo (+ shadow), Junta
-- (recompute columns; then phase ledger_complete), PrestamoNew (sweep).
CREATE OR REPLACE FUNCTION capital_backfill_step(p_batch integer)
RETURNS TABLE (source text, rows_done integer, source_done boolean, all_done boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_phase text;
    v_source text;
    v_rows integer;
BEGIN
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', p_batch USING ERRCODE = '22023';
    END IF;
    SELECT s.phase INTO v_phase FROM capital_migration_state s FOR UPDATE;
    IF v_phase = 'expanding' THEN
        RAISE EXCEPTION 'the expand step is not complete (phase %); run the expand files first', v_phase
            USING ERRCODE = '55000';
    END IF;
    IF v_phase = 'expanded' THEN
        INSERT INTO capital_backfill_progress AS p (source, rows_total)
        SELECT t.source, greatest(c.reltuples, 0)::bigint
          FROM unnest(ARRAY['Accion', 'Multa', 'Prestamo', 'PagoPrestamo', 'Junta', 'PrestamoNew'])
               AS t(source)
          LEFT JOIN pg_class c ON c.oid = to_regclass(format('%I', t.source))
        ON CONFLICT (source) DO NOTHING;
        UPDATE capital_migration_state SET phase = 'backfilling', updated_at = now();
        v_phase := 'backfilling';
    END IF;
    SELECT p.source INTO v_source
      FROM capital_backfill_progress p
     WHERE NOT p.done
     ORDER BY array_position(ARRAY['Accion', 'Multa', 'Prestamo', 'PagoPrestamo', 'Junta', 'PrestamoNew'],
                             p.source)
     LIMIT 1;
    IF v_source IS NULL THEN
        RETURN QUERY SELECT 'complete'::text, 0, true, true;
        RETURN;
    END IF;
    -- The junta steps read each junta's movements through capital_movements_junta_created_idx, which
    -- 20_backfill.sql builds once the ledger steps are done (CONCURRENTLY, which no function can do). Until
    -- it is valid, return 'junta_index' (rows -2) and let the caller build it and call again.
    IF v_source IN ('Junta', 'PrestamoNew') AND NOT EXISTS (
           SELECT 1 FROM pg_index i
            WHERE i.indexrelid = to_regclass('capital_movements_junta_created_idx') AND i.indisvalid) THEN
        RETURN QUERY SELECT 'junta_index'::text, -2, false, false;
        RETURN;
    END IF;
    IF v_source = 'PrestamoNew' AND v_phase = 'backfilling' THEN
        RAISE EXCEPTION 'backfill progress is inconsistent: sweep pending in phase %', v_phase USING ERRCODE = '55000';
    END IF;
    -- Planner statistics of the growing ledger: never analysed, it looks empty, and the batches' anti-join
    -- turns into a hash join over a sequential scan of the whole ledger (every batch slower than the one
    -- before: quadratic). Analyse whenever the ledger has doubled since its statistics were taken (a few
    -- times per run, ~0.1 s each); ANALYZE also invalidates the cached plans of this session.
    IF (SELECT sum(p.rows_done) FROM capital_backfill_progress p
         WHERE p.source IN ('Accion', 'Multa', 'Prestamo', 'PagoPrestamo'))
       > 2 * greatest((SELECT c.reltuples FROM pg_class c WHERE c.oid = 'capital_movements'::regclass), 5000)
    THEN
        ANALYZE capital_movements;
    END IF;
    IF v_source IN ('Junta', 'PrestamoNew')
       AND (SELECT c.reltuples FROM pg_class c WHERE c.oid = '"PrestamoNew"'::regclass) < 0 THEN
        ANALYZE "PrestamoNew";
    END IF;
    -- The junta steps lock their juntas (FOR NO KEY UPDATE) for the whole batch, and every application
    -- write through the sync triggers needs its junta's lock: keep those batches short (a few hundred
    -- juntas, well under a second) so a writer never waits long behind them (BENCHMARKS.md, footprint).
    IF v_source IN ('Junta', 'PrestamoNew') THEN
        p_batch := least(p_batch, 25);
    END IF;
    v_rows := capital_backfill_batch(v_source, p_batch);
    IF v_source = 'Junta' AND v_rows < p_batch THEN
        -- Ledger and junta columns are complete: from the next transaction on,
        -- triggers number loans and record capital_at_time themselves.
        UPDATE capital_migration_state SET phase = 'ledger_complete', updated_at = now()
         WHERE phase = 'backfilling';
    END IF;
    RETURN QUERY
        SELECT v_source, v_rows, v_rows >= 0 AND v_rows < p_batch,
               NOT EXISTS (SELECT 1 FROM capital_backfill_progress p WHERE NOT p.done);
END
$$;

-- The same loop for operators using psql: one transaction per batch. Returns when everything is done, or
-- when the next step needs the junta index that is not built yet (20_backfill.sql).
CREATE OR REPLACE PROCEDURE capital_backfill_run(p_batch integer)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    LOOP
        SELECT * INTO r FROM capital_backfill_step(p_batch);
        COMMIT;
        EXIT WHEN r.all_done OR r.source = 'junta_index';  -- 20_backfill.sql builds it, then calls again
        IF r.rows_done < 0 THEN
            PERFORM pg_sleep(0.2);  -- waiting for transactions older than the phase flip
        END IF;
    END LOOP;
END
$$;

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

-- A one-call summary for operators and for the status command.
CREATE OR REPLACE FUNCTION capital_migration_status() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'phase', (SELECT phase FROM capital_migration_state),
        'backfill', coalesce((SELECT jsonb_object_agg(source, jsonb_build_object(
                     'rows_done', rows_done, 'rows_total', rows_total, 'done', done))
                              FROM capital_backfill_progress), '{}'::jsonb),
        'last_history', (SELECT to_jsonb(h) - 'detail' FROM capital_migration_history h ORDER BY id DESC LIMIT 1))
$$;

COMMIT;
