-- add_capital_tracking.sql -- the guide's main migration script.
--
-- Operators:  psql -X -v ON_ERROR_STOP=1 [-v lock_timeout=2s] [-v batch_size=5000] \
--                  -f files/sql/add_capital_tracking.sql
-- Ansible:    the capital_migrate module reads the \ir lines below as the ONE
--             ordered list of files (and the checksum covers this file and
--             those files, in this order); it ignores everything else here and
--             adds lock_timeout retries, per-batch timing and the history row.
--
-- Expects: the baseline schema (domain.md section 1), or a partial earlier run
--          of this same script (every piece resumes).
-- Leaves:  the capital tracking schema, backfilled and enforced (phase
--          'enforced'). The history row is written only when the caller
--          passes -v sql_sha256=<checksum> (and -v version=...), as the
--          module computes it; otherwise the next module run records it.
\set ON_ERROR_STOP on
\if :{?lock_timeout}
\else
\set lock_timeout 2s
\endif
\if :{?batch_size}
\else
\set batch_size 5000
\endif
SET application_name = 'capital-migrate-psql';
SET lock_timeout = :'lock_timeout';
-- One run at a time: the same session-level advisory lock as the module.
DO $$
BEGIN
    IF NOT pg_try_advisory_lock(hashtext('prestamos.capital_tracking')) THEN
        RAISE EXCEPTION 'another capital migration run holds the advisory lock prestamos.capital_tracking'
            USING ERRCODE = '55P03';
    END IF;
END
$$;

\ir 10_expand_tables.sql
\ir 11_expand_columns.sql
\ir 12_model_functions.sql
\ir 12_sync_functions.sql
\ir 12_backfill_functions.sql
\ir 12_enforce_functions.sql
\ir 13_indexes.sql
\ir 14_triggers.sql
\ir 20_backfill.sql
\ir 30_enforce.sql

\if :{?sql_sha256}
\if :{?version}
\else
\set version 'psql'
\endif
INSERT INTO capital_migration_history (version, sql_sha256, finished_at, duration_ms, outcome, detail)
VALUES (:'version', :'sql_sha256', now(), 0, 'applied', '{"runner": "psql"}');
\endif
SELECT pg_advisory_unlock(hashtext('prestamos.capital_tracking'));
