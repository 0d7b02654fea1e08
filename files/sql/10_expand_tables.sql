-- 10_expand_tables.sql -- expand, step 1: the new tables only.
--
-- Expects: the baseline schema (domain.md section 1); may run again after an
--          interrupted run (every object is created only when missing, then its
--          shape is asserted, so a differently shaped leftover fails loudly).
-- Leaves:  the ledger capital_movements (append-only), the shadow tables
--          "PrestamoNew"/"PagoPrestamoNew", the bookkeeping tables and the
--          helper functions the later files use.
-- Locks:   none on legacy tables: nothing here references them (no foreign
--          keys to legacy tables on purpose: a FK would take SHARE ROW
--          EXCLUSIVE on "Junta", and ledger rows must outlive deleted sources).
BEGIN;

CREATE TABLE IF NOT EXISTS capital_migration_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    phase text NOT NULL
        CHECK (phase IN ('expanding', 'expanded', 'backfilling', 'ledger_complete', 'enforced')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO capital_migration_state (phase) VALUES ('expanding') ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS capital_migration_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version text NOT NULL,
    sql_sha256 text NOT NULL CHECK (sql_sha256 ~ '^[0-9a-f]{64}$'),
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    duration_ms bigint,
    applied_by text NOT NULL DEFAULT current_user,
    outcome text NOT NULL CHECK (outcome IN ('running', 'applied', 'failed')),
    detail jsonb NOT NULL DEFAULT '{}'
);

-- One row per backfill step, in the order capital_backfill_step() runs them.
CREATE TABLE IF NOT EXISTS capital_backfill_progress (
    source text PRIMARY KEY
        CHECK (source IN ('Accion', 'Multa', 'Prestamo', 'PagoPrestamo', 'Junta', 'PrestamoNew')),
    last_id text,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_total bigint,
    done boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Existing data that breaks a rule, found by 30_enforce.sql: reported, never "fixed".
CREATE TABLE IF NOT EXISTS capital_enforce_violations (
    kind text PRIMARY KEY,
    table_name text NOT NULL,
    row_count bigint NOT NULL,
    sample_ids text[] NOT NULL DEFAULT '{}',
    action text NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now()
);

-- The ledger. created_at is the source's own timestamp (seq 0) or the time of
-- the correction (seq > 0); recorded_at is when the row was written.
CREATE TABLE IF NOT EXISTS capital_movements (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    junta_id text NOT NULL,
    type text NOT NULL CONSTRAINT capital_movements_type_check
        CHECK (type IN ('ACCION', 'MULTA', 'PRESTAMO', 'PAGO')),
    direction text NOT NULL CONSTRAINT capital_movements_direction_check
        CHECK (direction IN ('INCREASE', 'DECREASE')),
    amount numeric(14, 2) NOT NULL CONSTRAINT capital_movements_amount_check CHECK (amount > 0),
    description text,
    created_at timestamp NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    accion_id text,
    multa_id text,
    prestamo_id text,
    pago_id text,
    seq integer NOT NULL CONSTRAINT capital_movements_seq_check CHECK (seq >= 0),
    CONSTRAINT capital_movements_one_source_check CHECK (
        num_nonnulls(accion_id, multa_id, prestamo_id, pago_id) = 1
        AND (type = 'ACCION') = (accion_id IS NOT NULL)
        AND (type = 'MULTA') = (multa_id IS NOT NULL)
        AND (type = 'PRESTAMO') = (prestamo_id IS NOT NULL)
        AND (type = 'PAGO') = (pago_id IS NOT NULL)
    )
);
-- A source row can never produce two original (seq 0) movements, nor two
-- corrections with the same number: the backfill relies on this, not on hope.
CREATE UNIQUE INDEX IF NOT EXISTS capital_movements_source_seq_key
    ON capital_movements ((coalesce(accion_id, multa_id, prestamo_id, pago_id)), type, seq);
-- The junta index (capital_movements_junta_created_idx) is not built here: 20_backfill.sql builds it once
-- over the complete ledger, before the steps that read it (maintained entry by entry during the ledger
-- steps it cost more than building it, BENCHMARKS.md). Nothing before those steps reads the ledger by junta.

CREATE OR REPLACE FUNCTION capital_movements_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'capital_movements is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'CAP02',
              HINT = 'Correct a movement by changing its source row; the sync trigger appends a correction.';
END
$$;
CREATE OR REPLACE TRIGGER capital_movements_append_only
    BEFORE UPDATE OR DELETE ON capital_movements
    FOR EACH ROW EXECUTE FUNCTION capital_movements_append_only();
CREATE OR REPLACE TRIGGER capital_movements_no_truncate
    BEFORE TRUNCATE ON capital_movements
    FOR EACH STATEMENT EXECUTE FUNCTION capital_movements_append_only();

-- Shadow tables: the loan tables in their new shape, kept in sync by the
-- triggers of 14_triggers.sql. loan_number and capital_at_time stay NULL until
-- the backfill can compute them (see capital_backfill_step).
CREATE TABLE IF NOT EXISTS "PrestamoNew" (
    id text PRIMARY KEY,
    original_prestamo_id text NOT NULL UNIQUE,
    junta_id text NOT NULL,
    member_id text NOT NULL,
    amount numeric(14, 2) NOT NULL,
    description text,
    status text NOT NULL,
    approved boolean NOT NULL,
    rejected boolean NOT NULL,
    paid boolean NOT NULL,
    remaining_amount numeric(14, 2) NOT NULL,
    loan_number integer,
    capital_at_time numeric(14, 2),
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL,
    CONSTRAINT "PrestamoNew_junta_loan_number_key" UNIQUE (junta_id, loan_number)
);
CREATE INDEX IF NOT EXISTS "PrestamoNew_pending_idx"
    ON "PrestamoNew" (junta_id) WHERE loan_number IS NULL OR capital_at_time IS NULL;

-- Its foreign key to "PrestamoNew" (ON DELETE CASCADE) is added by 30_enforce.sql, NOT VALID and then
-- validated in one set-based pass: checked row by row it was a third of every payment batch (BENCHMARKS.md).
-- Until then the sync triggers keep it true: a shadow payment is written after its loan's shadow row, and
-- removed with its legacy payment (a legacy loan cannot be deleted while it has payments).
CREATE TABLE IF NOT EXISTS "PagoPrestamoNew" (
    id text PRIMARY KEY,
    original_pago_id text NOT NULL UNIQUE,
    prestamo_id text NOT NULL,
    amount numeric(14, 2) NOT NULL,
    date timestamp NOT NULL
);
CREATE INDEX IF NOT EXISTS "PagoPrestamoNew_prestamo_id_idx" ON "PagoPrestamoNew" (prestamo_id);

-- Shape check: IF NOT EXISTS above must not hide a differently shaped leftover.
CREATE OR REPLACE FUNCTION capital_assert_shape(p_table text, p_expected text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_actual text;
BEGIN
    SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                      || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END, ', ' ORDER BY a.attnum)
      INTO v_actual
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass(format('%I', p_table)) AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_actual IS DISTINCT FROM p_expected THEN
        RAISE EXCEPTION 'table % exists with another shape (drift): found [%], expected [%]',
            p_table, v_actual, p_expected
            USING ERRCODE = 'CAP03',
                  HINT = 'An earlier, different migration left this table; roll it back before migrating.';
    END IF;
END
$$;

SELECT capital_assert_shape('capital_movements',
    'id bigint NOT NULL, junta_id text NOT NULL, type text NOT NULL, direction text NOT NULL, '
    'amount numeric(14,2) NOT NULL, description text, created_at timestamp without time zone NOT NULL, '
    'recorded_at timestamp with time zone NOT NULL, accion_id text, multa_id text, prestamo_id text, '
    'pago_id text, seq integer NOT NULL');
SELECT capital_assert_shape('PrestamoNew',
    'id text NOT NULL, original_prestamo_id text NOT NULL, junta_id text NOT NULL, member_id text NOT NULL, '
    'amount numeric(14,2) NOT NULL, description text, status text NOT NULL, approved boolean NOT NULL, '
    'rejected boolean NOT NULL, paid boolean NOT NULL, remaining_amount numeric(14,2) NOT NULL, '
    'loan_number integer, capital_at_time numeric(14,2), created_at timestamp without time zone NOT NULL, '
    'updated_at timestamp without time zone NOT NULL');
SELECT capital_assert_shape('PagoPrestamoNew',
    'id text NOT NULL, original_pago_id text NOT NULL, prestamo_id text NOT NULL, '
    'amount numeric(14,2) NOT NULL, date timestamp without time zone NOT NULL');
SELECT capital_assert_shape('capital_migration_state',
    'id boolean NOT NULL, phase text NOT NULL, updated_at timestamp with time zone NOT NULL');
SELECT capital_assert_shape('capital_backfill_progress',
    'source text NOT NULL, last_id text, rows_done bigint NOT NULL, rows_total bigint, done boolean NOT NULL, '
    'updated_at timestamp with time zone NOT NULL');
SELECT capital_assert_shape('capital_migration_history',
    'id bigint NOT NULL, version text NOT NULL, sql_sha256 text NOT NULL, '
    'started_at timestamp with time zone NOT NULL, finished_at timestamp with time zone, duration_ms bigint, '
    'applied_by text NOT NULL, outcome text NOT NULL, detail jsonb NOT NULL');

-- Adds a column to a legacy table only when missing (so a rerun takes no
-- lock); an existing column must have exactly the expected shape.
CREATE OR REPLACE FUNCTION capital_add_column(p_table text, p_column text, p_type text, p_default text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
    v_notnull boolean;
    v_default text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
      INTO v_type, v_notnull, v_default
      FROM pg_attribute a
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = format('%I', p_table)::regclass AND a.attname = p_column AND NOT a.attisdropped;
    IF NOT FOUND THEN
        -- Constant default: metadata-only in PostgreSQL >= 11, no table rewrite.
        EXECUTE format('ALTER TABLE %I ADD COLUMN %I %s NOT NULL DEFAULT %s',
                       p_table, p_column, p_type, p_default);
        RETURN 'added';
    END IF;
    IF v_type <> p_type OR NOT v_notnull OR v_default IS DISTINCT FROM p_default THEN
        RAISE EXCEPTION 'column %.% exists with another shape (drift): % %, default %; expected % NOT NULL DEFAULT %',
            p_table, p_column, v_type, CASE WHEN v_notnull THEN 'NOT NULL' ELSE 'NULL' END, v_default,
            p_type, p_default
            USING ERRCODE = 'CAP03';
    END IF;
    RETURN 'present';
END
$$;

COMMIT;
