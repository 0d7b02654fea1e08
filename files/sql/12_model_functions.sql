-- 12_model_functions.sql -- expand, step 3 (1 of 4): the capital model as functions.
--
-- Expects: 10 and 11 applied (the functions reference the new columns).
-- Leaves:  cents, contributions, the one ledger append (capital_apply), the
--          junta lock, the phase, calculate_available_capital, the status.
--          CREATE OR REPLACE only: no lock on legacy tables, safe to rerun.
-- Step 3 is four files by concern: this one, 12_sync_functions.sql,
-- 12_backfill_functions.sql, 12_enforce_functions.sql.
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

-- Recomputes a junta's capital from its ledger, from scratch.
CREATE OR REPLACE FUNCTION calculate_available_capital(p_junta_id text) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(CASE direction WHEN 'INCREASE' THEN amount ELSE -amount END), 0)::numeric(14, 2)
      FROM capital_movements WHERE junta_id = p_junta_id
$$;

CREATE OR REPLACE FUNCTION capital_status_approved(p_status text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_status IN ('APPROVED', 'ACTIVE', 'PARTIAL', 'PAID') $$;

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
