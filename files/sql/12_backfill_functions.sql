-- 12_backfill_functions.sql -- expand, step 3 (3 of 4): the backfill - one batch, the step state
-- machine, psql's loop, the index helper.
--
-- Expects: 10 and 11 applied (the functions reference the new columns) and 12_model_functions.sql.
--          CREATE OR REPLACE only: no lock on legacy tables, safe to rerun.
BEGIN;

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

-- One backfill batch of one step; see capital_backfill_step for the order.
-- Returns the number of rows the batch looked at.
--
-- The source steps (Accion, Multa, Prestamo, PagoPrestamo) write each source
-- row's seq 0 movement (and its shadow row) unless the sync trigger already
-- did, all four through one ledger insert (c_ledger): a step differs only in
-- the rows it reads and locks and in its shadow table. The first movement of
-- a source is always seq 0 and the ledger is append-only, so "the trigger
-- did" means "the ledger holds a movement of this source", and the unique
-- (source, type, seq) index is the final arbiter.
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
    v_type text;
    v_read text;
    v_shadow text;
    v_sql text;
    v_hi text;
    -- The one ledger insert of every source step: the seq 0 movement of each row of the batch b (id,
    -- junta_id, description, created_at, c = its signed contribution) that has one and that the ledger does
    -- not hold yet. %1$L = the movement type, %2$I = its source column (accion_id, multa_id, prestamo_id,
    -- pago_id); %%1$s is left for the conflict clause. The movements of that type whose source id is in the
    -- batch's range ($1 = last_id, $3 = the batch's last id, NULL for the last batch) are read through the
    -- unique index's expression: a range scan of that index, planned with both bounds known (EXECUTE plans
    -- with the parameters' values).
    c_ledger constant text := $q$
        INSERT INTO capital_movements (junta_id, type, direction, amount, description, created_at, %2$I, seq)
        SELECT b.junta_id, %1$L, CASE WHEN b.c > 0 THEN 'INCREASE' ELSE 'DECREASE' END, abs(b.c),
               b.description, b.created_at, b.id, 0
          FROM b
         WHERE b.c <> 0 AND b.id NOT IN (
               SELECT coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) FROM capital_movements m
                WHERE coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) > $1
                  AND ($3 IS NULL OR coalesce(m.accion_id, m.multa_id, m.prestamo_id, m.pago_id) <= $3)
                  AND m.type = %1$L)
        %%1$s RETURNING 1$q$;
BEGIN
    IF p_source = 'PrestamoNew' THEN
        -- The sweep is shared among sessions (capital_backfill_step holds the row FOR KEY SHARE).
        SELECT last_id INTO v_last FROM capital_backfill_progress WHERE source = p_source;
    ELSE
        SELECT last_id INTO v_last FROM capital_backfill_progress WHERE source = p_source FOR UPDATE;
    END IF;
    v_last := coalesce(v_last, '');
    -- A source step is data: its movement type, its batch read (the columns c_ledger reads, the rows locked)
    -- and, for the loan tables, its shadow insert (%2$s = that insert's conflict clause).
    IF p_source = 'Accion' THEN
        v_type := 'ACCION';
        v_read := $q$
            SELECT a.id, a.junta_id, a.type AS description, a.created_at,
                   capital_contribution('ACCION', a.amount, a.affects_capital) AS c
              FROM "Accion" a WHERE a.id > $1 ORDER BY a.id LIMIT $2 FOR SHARE$q$;
    ELSIF p_source = 'Multa' THEN
        v_type := 'MULTA';
        v_read := $q$
            SELECT x.id, x.junta_id, x.description, x.created_at,
                   capital_contribution('MULTA', x.amount, x.affects_capital) AS c
              FROM "Multa" x WHERE x.id > $1 ORDER BY x.id LIMIT $2 FOR SHARE$q$;
    ELSIF p_source = 'Prestamo' THEN
        -- Also the loans' shadow rows (loan_number/capital_at_time NULL: the
        -- sweep fills them once the ledger is complete). A shadow row written by
        -- a trigger (the loan's or one of its payments') is at least as new as
        -- ours: left as it is.
        v_type := 'PRESTAMO';
        v_read := $q$
            SELECT p.*, capital_contribution('PRESTAMO', p.amount, p.status IS DISTINCT FROM 'REJECTED') AS c
              FROM "Prestamo" p WHERE p.id > $1 ORDER BY p.id LIMIT $2 FOR SHARE$q$;
        v_shadow := $q$
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
            %2$s RETURNING 1$q$;
    ELSIF p_source = 'PagoPrestamo' THEN
        -- Only the payment rows are locked (FOR SHARE OF pp). The payment's junta is its loan's junta: a
        -- loan moving to another junta meanwhile is safe without locking the loan row, because the loan's
        -- sync trigger locks the loan's payments FOR UPDATE before moving their movements (it waits for
        -- this batch, then moves what the batch wrote), and if it ran first its seq 0 movements keep this
        -- batch from writing them. Locking the loans too dirtied every loan page once per batch for nothing.
        -- A payment's movement has no description and the payment's date as its time.
        v_type := 'PAGO';
        v_read := $q$
            SELECT pp.id, pp.prestamo_id, pp.date, pp.amount, p.junta_id,
                   NULL::text AS description, pp.date AS created_at,
                   capital_contribution('PAGO', pp.amount, true) AS c
              FROM "PagoPrestamo" pp JOIN "Prestamo" p ON p.id = pp.prestamo_id
             WHERE pp.id > $1 ORDER BY pp.id LIMIT $2 FOR SHARE OF pp$q$;
        v_shadow := $q$
            INSERT INTO "PagoPrestamoNew" (id, original_pago_id, prestamo_id, amount, date)
            SELECT b.id, b.id, b.prestamo_id, capital_cents(b.amount), b.date FROM b
             WHERE b.id NOT IN (SELECT n.id FROM "PagoPrestamoNew" n
                                 WHERE n.id > $1 AND ($3 IS NULL OR n.id <= $3))
            %2$s RETURNING 1$q$;
    END IF;
    IF v_read IS NOT NULL THEN
        -- One statement: the batch read, the ledger insert, the shadow insert if any; it returns the rows
        -- read and the last id. %1$s/%2$s, the conflict clauses, are filled when it runs (below).
        v_sql := format('WITH b AS (%s
        ), ins AS (%s
        )%s
        SELECT (SELECT count(*) FROM b), (SELECT max(id) FROM b)',
            v_read, format(c_ledger, v_type, lower(v_type) || '_id'),
            coalesce(', shadow AS (' || v_shadow || '
        )', ''));
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
        -- Several sessions sweep at once: each locks the first p_batch pending
        -- juntas no one else holds (SKIP LOCKED, among the first 4 x p_batch
        -- pending ones: read in junta order from the pending index). A junta
        -- an application write holds is left for a later batch. When every
        -- pending junta is held elsewhere the batch answers busy (-3).
        SELECT array_agg(j.id ORDER BY j.id) INTO v_ids FROM (
            SELECT j.id FROM "Junta" j
             WHERE j.id = ANY (ARRAY(
                       SELECT DISTINCT n.junta_id FROM "PrestamoNew" n
                        WHERE n.loan_number IS NULL OR n.capital_at_time IS NULL
                        ORDER BY n.junta_id LIMIT 4 * p_batch))
             ORDER BY j.id LIMIT p_batch
               FOR NO KEY UPDATE SKIP LOCKED
        ) j;
        v_rows := coalesce(cardinality(v_ids), 0);
        IF v_rows = 0 AND EXISTS (SELECT 1 FROM "PrestamoNew" n
                                   WHERE n.loan_number IS NULL OR n.capital_at_time IS NULL) THEN
            RETURN -3;
        END IF;
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
           -- A source batch shorter than asked reached the end; the sweep is done when no loan is pending
           -- (another session's batch in flight still is).
           done = CASE WHEN p_source = 'PrestamoNew'
                       THEN NOT EXISTS (SELECT 1 FROM "PrestamoNew" n
                                         WHERE n.loan_number IS NULL OR n.capital_at_time IS NULL)
                       ELSE v_rows < p_batch END,
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
-- Several sessions may call it at once (the capital_migrate module's
-- backfill sessions): a call of a ledger step or of the junta recompute takes
-- its step's progress row FOR UPDATE SKIP LOCKED, so two calls never run
-- batches of one such step, and the four ledger steps, which are independent
-- of each other, run side by side. The sweep (last) is shared: its calls hold
-- its row FOR KEY SHARE and each batch locks juntas no other session holds.
-- A call with nothing to take that no other session holds returns 'busy'
-- (rows -3): the ledger steps still held elsewhere come before the junta
-- steps, and each junta step before the next. The migration state row is read
-- FOR SHARE (FOR UPDATE only by the first call, which starts the backfill): a
-- phase change by anyone else waits for the batches in flight.
CREATE OR REPLACE FUNCTION capital_backfill_step(p_batch integer)
RETURNS TABLE (source text, rows_done integer, source_done boolean, all_done boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    c_order constant text[] := ARRAY['Accion', 'Multa', 'Prestamo', 'PagoPrestamo', 'Junta', 'PrestamoNew'];
    c_ledger_steps constant text[] := ARRAY['Accion', 'Multa', 'Prestamo', 'PagoPrestamo'];
    v_phase text;
    v_first text;
    v_source text;
    v_rows integer;
BEGIN
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', p_batch USING ERRCODE = '22023';
    END IF;
    SELECT s.phase INTO v_phase FROM capital_migration_state s;
    IF v_phase = 'expanded' THEN
        -- READ COMMITTED: a call that waited here for another one's start sees its phase.
        SELECT s.phase INTO v_phase FROM capital_migration_state s FOR UPDATE;
    ELSE
        SELECT s.phase INTO v_phase FROM capital_migration_state s FOR SHARE;
    END IF;
    IF v_phase = 'expanding' THEN
        RAISE EXCEPTION 'the expand step is not complete (phase %); run the expand files first', v_phase
            USING ERRCODE = '55000';
    END IF;
    IF v_phase = 'expanded' THEN
        INSERT INTO capital_backfill_progress AS p (source, rows_total)
        SELECT t.source, greatest(c.reltuples, 0)::bigint
          FROM unnest(c_order) AS t(source)
          LEFT JOIN pg_class c ON c.oid = to_regclass(format('%I', t.source))
        ON CONFLICT (source) DO NOTHING;
        UPDATE capital_migration_state SET phase = 'backfilling', updated_at = now();
        v_phase := 'backfilling';
    END IF;
    SELECT p.source INTO v_first
      FROM capital_backfill_progress p
     WHERE NOT p.done
     ORDER BY array_position(c_order, p.source)
     LIMIT 1;
    IF v_first IS NULL THEN
        RETURN QUERY SELECT 'complete'::text, 0, true, true;
        RETURN;
    END IF;
    -- The first unfinished step; while another session holds it, the ledger step with the most rows left
    -- (the junta recompute needs the whole ledger and never runs beside another step; the sweep needs the
    -- junta columns and is shared only with itself).
    IF v_first = 'PrestamoNew' THEN
        -- The sweep, last, is shared: its batches lock their own juntas (capital_backfill_batch).
        PERFORM 1 FROM capital_backfill_progress p WHERE p.source = v_first FOR KEY SHARE;
        v_source := v_first;
    ELSE
        SELECT p.source INTO v_source
          FROM capital_backfill_progress p
         WHERE NOT p.done AND (p.source = v_first OR p.source = ANY (c_ledger_steps))
         ORDER BY p.source = v_first DESC, coalesce(p.rows_total, 0) - p.rows_done DESC,
                  array_position(c_order, p.source)
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
    END IF;
    IF v_source IS NULL THEN
        RETURN QUERY SELECT 'busy'::text, -3, false, false;
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
    -- (One session at a time: a second ANALYZE would wait for the first's lock, so it skips instead.)
    IF (SELECT sum(p.rows_done) FROM capital_backfill_progress p WHERE p.source = ANY (c_ledger_steps))
       > 2 * greatest((SELECT c.reltuples FROM pg_class c WHERE c.oid = 'capital_movements'::regclass), 5000)
       AND pg_try_advisory_xact_lock(hashtext('prestamos.capital_tracking.analyze'))
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
    IF v_rows = -3 THEN
        RETURN QUERY SELECT 'busy'::text, -3, false, false;
        RETURN;
    END IF;
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
-- when the next step needs the junta index that is not built yet (20_backfill.sql). A step held by another
-- session (busy, rows -3) is waited for like the barrier.
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

COMMIT;
