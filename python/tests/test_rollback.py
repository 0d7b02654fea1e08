"""The reverse migration: from every state, nothing of the migration left, no legacy row lost."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import uuid
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils import provenance
from ansible_collections.prestamos.capital.plugins.module_utils import rollback as rollback_utils
from ansible_collections.prestamos.capital.plugins.module_utils.entry import stop_between_statements
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    ADVISORY_KEY_SQL,
    Interrupted,
    MigrationError,
    Options,
)
from ansible_collections.prestamos.capital.plugins.module_utils.rollback import Reverter
from capital_migrate.datagen import table_checksums
from migration_helpers import SQL_DIR, migrate, seed_db
from migration_helpers import run_sql as query

GUIDE_VERIFY_ROLLBACK = """
SELECT EXISTS (
    SELECT 1
    FROM information_schema.tables
    WHERE table_name = 'capital_movements'
) as migration_exists;
"""

# The shape of the schema: every table, column, constraint, index, trigger and function.
FINGERPRINT_SQL = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
       || ' ' || convalidated
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', indexrelid::regclass::text || ' ' || pg_get_indexdef(indexrelid) FROM pg_index
 WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'function', oid::regprocedure::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace
ORDER BY 1, 2
"""


def inventory_text() -> str:
    return (SQL_DIR / provenance.INVENTORY_FILE).read_text()


def leftovers(cur: Any) -> list[dict[str, str]]:
    """Objects the migration creates that are still in the database (by name: a test's view)."""
    return rollback_utils.leftovers(cur, provenance.load_inventory(inventory_text()))


def roll_back(db: Any, force: bool = False, check_mode: bool = False, force_changed: bool = False,
              export_dir: str | None = None, **options: Any) -> dict[str, Any]:
    conn = db.connect()
    try:
        return Reverter(conn, inventory_text(), Options(**options), force=force, force_changed=force_changed,
                        export_dir=export_dir or tempfile.mkdtemp(prefix="capital-export-")).run(
            check_mode=check_mode)
    finally:
        conn.close()


def fingerprint(db: Any) -> list[tuple[Any, ...]]:
    return query(db, FINGERPRINT_SQL)


def write_application_rows(db: Any) -> None:
    """What the still-running application writes after the migration, through the legacy tables."""
    junta, member = query(db, 'SELECT junta_id, member_id FROM "Prestamo" LIMIT 1')[0]
    share, fine, loan, pay = (str(uuid.uuid4()) for _ in range(4))
    query(
        db,
        'INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id) '
        "VALUES (%s, %s, 500.25, now(), %s, %s)",
        (share, "COMPRA", junta, member),
    )
    query(
        db,
        'INSERT INTO "Multa" (id, amount, description, created_at, junta_id, member_id) '
        "VALUES (%s, 10.5, 'late', now(), %s, %s)",
        (fine, junta, member),
    )
    query(
        db,
        'INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id) '
        "VALUES (%s, 100, 'APPROVED', now(), now(), %s, %s)",
        (loan, junta, member),
    )
    query(db, 'INSERT INTO "PagoPrestamo" (id, amount, prestamo_id) VALUES (%s, 25.75, %s)', (pay, loan))
    query(db, 'UPDATE "Multa" SET status = %s WHERE id = %s', ("PAID", fine))


def assert_rolled_back(db: Any, baseline_shape: list[tuple[Any, ...]]) -> None:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            assert leftovers(cur) == []
    finally:
        conn.close()
    assert query(db, GUIDE_VERIFY_ROLLBACK) == [(False,)]
    assert fingerprint(db) == baseline_shape


def test_round_trip_keeps_rows_written_after_the_migration(pg_db: Any) -> None:
    seed_db(pg_db, juntas=3)
    shape = fingerprint(pg_db)
    migrate(pg_db)
    write_application_rows(pg_db)
    conn = pg_db.connect()
    expected = table_checksums(conn)
    conn.close()

    result = roll_back(pg_db)

    assert result["changed"] is True and result["state_before"] == "applied"
    assert_rolled_back(pg_db, shape)
    conn = pg_db.connect()
    assert table_checksums(conn) == expected
    conn.close()


def test_rollback_of_nothing_changes_nothing(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    result = roll_back(pg_db)
    assert result["changed"] is False and result["state_before"] == "not_applied"
    assert fingerprint(pg_db) == shape


def test_second_rollback_is_a_no_op(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    assert roll_back(pg_db)["changed"] is True
    assert roll_back(pg_db)["changed"] is False


@pytest.mark.parametrize(
    "stop",
    [
        {"stop_after_file": "10_expand_tables.sql"},
        {"stop_after_file": "14_triggers.sql"},
        {"stop_after_batches": 2, "batch_size": 50},
        {"stop_after_file": "20_backfill.sql"},
    ],
    ids=["after-tables", "after-expand", "mid-backfill", "before-enforce"],
)
def test_rollback_from_a_partial_migration(pg_db: Any, stop: dict[str, Any]) -> None:
    seed_db(pg_db, juntas=2, dirty=True)
    shape = fingerprint(pg_db)
    conn = pg_db.connect()
    before = table_checksums(conn)
    conn.close()
    with pytest.raises(Interrupted):
        migrate(pg_db, **stop)

    result = roll_back(pg_db)

    assert result["changed"] is True and result["state_before"] == "partial"
    assert_rolled_back(pg_db, shape)
    conn = pg_db.connect()
    assert table_checksums(conn) == before
    conn.close()


def test_shadow_rows_written_only_there_are_not_dropped_without_force(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    junta, member = query(pg_db, 'SELECT junta_id, member_id FROM "Prestamo" LIMIT 1')[0]
    orphan = str(uuid.uuid4())
    # A newer application version writing the new table directly: no legacy row behind it.
    query(
        pg_db,
        'INSERT INTO "PrestamoNew" (id, original_prestamo_id, junta_id, member_id, amount, status, approved, rejected,'
        " paid, remaining_amount, loan_number, capital_at_time, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, 1.00, 'PENDING', false, false, false, 1.00, 9999, 0, now(), now())",
        (orphan, orphan, junta, member),
    )
    shape_migrated = fingerprint(pg_db)

    with pytest.raises(MigrationError) as refused:
        roll_back(pg_db)

    assert refused.value.details["refused"] is True
    assert "1 loan(s)" in refused.value.msg
    assert fingerprint(pg_db) == shape_migrated  # nothing was changed
    assert roll_back(pg_db, force=True)["shadow_only"] == {"loans": 1, "payments": 0}
    assert query(pg_db, GUIDE_VERIFY_ROLLBACK) == [(False,)]


def test_check_mode_reports_and_changes_nothing(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    shape = fingerprint(pg_db)
    result = roll_back(pg_db, check_mode=True)
    assert result["changed"] is True
    assert {o["kind"] for o in result["removed"]} >= {"table", "column", "trigger", "function"}
    assert fingerprint(pg_db) == shape


def test_rollback_fails_at_once_while_another_run_holds_the_lock(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    holder = pg_db.connect()
    holder.autocommit = True
    holder.cursor().execute(f"SELECT pg_advisory_lock({ADVISORY_KEY_SQL})")
    try:
        with pytest.raises(MigrationError) as held:
            roll_back(pg_db)
        assert held.value.details["lock_held"] is True
        assert str(holder.get_backend_pid()) in held.value.msg
    finally:
        holder.close()
    assert query(pg_db, GUIDE_VERIFY_ROLLBACK) == [(True,)]


def test_rollback_waits_for_a_lock_within_lock_timeout_and_resumes_on_rerun(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    migrate(pg_db)
    blocker = pg_db.connect()
    blocker.cursor().execute('LOCK TABLE "Junta" IN ACCESS SHARE MODE')  # a long reader on "Junta"
    try:
        with pytest.raises(MigrationError) as timed_out:
            roll_back(pg_db, lock_timeout="100ms", lock_retries=2, lock_backoff=0.05)
        assert timed_out.value.details["sqlstate"] == "55P03"
        assert timed_out.value.details["attempts"] == 3
    finally:
        blocker.rollback()
        blocker.close()
    # The history table goes last, so the half-done rollback still reads as applied; the rerun finishes.
    assert roll_back(pg_db)["changed"] is True
    assert_rolled_back(pg_db, shape)


def test_application_keeps_writing_during_the_rollback(pg_db: Any) -> None:
    seed_db(pg_db, juntas=2)
    migrate(pg_db)
    loans = query(pg_db, 'SELECT id FROM "Prestamo" LIMIT 1')
    stop = threading.Event()
    written: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        conn = pg_db.connect()
        conn.autocommit = True
        try:
            while not stop.is_set():
                pay = str(uuid.uuid4())
                conn.cursor().execute(
                    'INSERT INTO "PagoPrestamo" (id, amount, prestamo_id) VALUES (%s, 1.25, %s)', (pay, loans[0][0])
                )
                written.append(pay)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        roll_back(pg_db)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    stored = {r[0] for r in query(pg_db, 'SELECT id FROM "PagoPrestamo" WHERE id = ANY(%s)', (written,))}
    assert stored == set(written) and written


def test_sigterm_stops_the_rollback_between_statements_and_a_rerun_finishes_it(pg_db: Any) -> None:
    """SIGTERM (ansible-playbook passes it on to the module) lets the statement in flight finish, stops
    before the next one, says how to go on, and rerunning the rollback finishes the job."""
    seed_db(pg_db, juntas=2)
    shape = fingerprint(pg_db)
    migrate(pg_db)

    class SignalledReverter(Reverter):
        def _run_unit(self, unit: Any) -> None:
            super()._run_unit(unit)
            if len(self.statement_log) == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the module's handler

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    conn = pg_db.connect()
    try:
        reverter = SignalledReverter(conn, inventory_text(), Options(), export_dir=tempfile.mkdtemp())
        stop_between_statements(reverter)
        with pytest.raises(MigrationError) as err:
            reverter.run()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        conn.close()
    assert err.value.details["interrupted"] is True and err.value.details["signal"] == "SIGTERM"
    assert err.value.details["statements_done"] == 3
    assert "rerun rollback.yml" in err.value.msg.lower()
    conn = pg_db.connect()
    with conn.cursor() as cur:
        assert leftovers(cur) != [], "three units cannot have undone everything"
    conn.close()

    assert roll_back(pg_db)["changed"] is True
    assert_rolled_back(pg_db, shape)
