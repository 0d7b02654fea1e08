"""The backfill's sessions (capital_backfill_connections): the four ledger steps side by side on two sessions,
each batch still one transaction of one step, so the end state, the stops and the resumes are those of one
session. Every test runs the module's code (the Migrator) on a real cluster; the evidence that the sessions
really run side by side is a DBA's lock that holds one step while the others finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    Interrupted,
    MigrationError,
    Migrator,
    Options,
)
from capital_migrate.pgtmp import temporary_database
from migration_helpers import assert_same_end_state, migrate, run_sql, seed_db, sql_files

LEDGER = ("Accion", "Multa", "Prestamo", "PagoPrestamo")


@contextmanager
def held(db: Any, statement: str) -> Iterator[None]:
    """Another session holds the locks ``statement`` takes until the block ends (a DBA's open transaction)."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
        yield
    finally:
        conn.rollback()
        conn.close()


def begun(db: Any) -> None:
    """Seeded, expanded and one backfill batch done (a stopped run): the DBA's row locks below would otherwise
    hold up the expand's ADD COLUMN, not a batch."""
    seed_db(db, juntas=4, dirty=True)
    with pytest.raises(Interrupted):
        migrate(db, batch_size=20, stop_after_batches=1)


def progress(db: Any) -> dict[str, bool]:
    return dict(run_sql(db, "SELECT source, done FROM capital_backfill_progress"))


def wait_for(condition: Any, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def other_sessions(db: Any) -> int:
    """Backends on the database besides the one asking (the run's sessions must all be closed)."""
    [(n,)] = run_sql(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
    return int(n)


class Run(threading.Thread):
    """The migration in a thread, like the module: its result or its error."""

    def __init__(self, db: Any, **options: Any) -> None:
        super().__init__(daemon=True)
        self.db, self.options = db, options
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = migrate(self.db, **self.options)
        except BaseException as exc:  # the test inspects it
            self.error = exc


@pytest.fixture
def reference(pg_cluster: Any) -> Iterator[Any]:
    """The same seeded data migrated on one session: the end state every run here must reach."""
    with temporary_database(pg_cluster) as db:
        seed_db(db, juntas=4, dirty=True)
        migrate(db, batch_size=20)
        yield db


def test_the_ledger_steps_run_side_by_side_and_write_what_one_session_writes(pg_db: Any, reference: Any) -> None:
    """A DBA holds the last Accion row: the session whose batch reaches it waits, and the other session
    finishes Multa, Prestamo and PagoPrestamo meanwhile. Released, the run ends exactly as one session does."""
    begun(pg_db)
    with held(pg_db, 'SELECT 1 FROM "Accion" WHERE id = (SELECT max(id) FROM "Accion") FOR UPDATE'):
        run = Run(pg_db, batch_size=20, lock_timeout="60s", backfill_connections=2)
        run.start()
        others_done = wait_for(lambda: all(progress(pg_db).get(s) for s in LEDGER[1:]))
        accion_done = progress(pg_db).get("Accion")
    run.join(120)
    assert run.error is None, run.error
    assert others_done and accion_done is False
    assert run.result is not None
    assert run.result["backfill_sessions"] == 2 and run.result["state_after"] == "applied"
    assert migrate_counts(pg_db) == migrate_counts(reference)
    assert_same_end_state(pg_db, reference)
    assert other_sessions(pg_db) == 0


def migrate_counts(db: Any) -> dict[str, int]:
    """rows_done per step of the backfill, as the progress table holds it."""
    rows = run_sql(db, "SELECT source, rows_done FROM capital_backfill_progress")
    return {source: int(done) for source, done in rows}


def test_a_failing_session_fails_the_run_stops_the_other_and_a_rerun_finishes(pg_db: Any, reference: Any) -> None:
    """The session blocked on the DBA's row hits statement_timeout: the run fails naming the batch, the other
    session is stopped and closed, nothing is half done, and a rerun (lock released) resumes to the same end."""
    begun(pg_db)
    with held(pg_db, 'SELECT 1 FROM "Accion" WHERE id = (SELECT max(id) FROM "Accion") FOR UPDATE'):
        with pytest.raises(MigrationError) as failed:
            migrate(pg_db, batch_size=20, lock_timeout="60s", statement_timeout="1s", backfill_connections=2)
    assert "statement timeout" in failed.value.msg and "backfill batch" in failed.value.msg
    assert failed.value.details["state_after"] == "partial"
    assert not [t for t in threading.enumerate() if t.name.startswith("backfill-lane")]
    assert other_sessions(pg_db) == 0
    assert progress(pg_db)["Accion"] is False
    resumed = migrate(pg_db, batch_size=20, backfill_connections=2)
    assert (resumed["state_before"], resumed["state_after"]) == ("partial", "applied")
    assert_same_end_state(pg_db, reference)


class StopAfter(Migrator):
    """Asks itself to stop (as the module's SIGTERM handler does) after its own n-th batch."""

    stop_after = 3

    def _batch(self) -> Any:
        batch = super()._batch()
        if self.batches >= self.stop_after:
            self.request_stop("SIGTERM")
        return batch


def test_a_stop_stops_every_session_between_batches_and_the_rerun_resumes(pg_db: Any, reference: Any) -> None:
    seed_db(pg_db, juntas=4, dirty=True)
    conn = pg_db.connect()
    try:
        with pytest.raises(MigrationError) as stopped:
            StopAfter(conn, sql_files(), Options(batch_size=20, backfill_connections=2), connect=pg_db.connect).run()
    finally:
        conn.close()
    assert stopped.value.details.get("interrupted") is True
    assert "SIGTERM" in stopped.value.msg and "Rerun migrate.yml" in stopped.value.msg
    assert not [t for t in threading.enumerate() if t.name.startswith("backfill-lane")]
    assert other_sessions(pg_db) == 0
    [(state,)] = run_sql(pg_db, "SELECT phase FROM capital_migration_state")
    assert state == "backfilling"
    resumed = migrate(pg_db, batch_size=20, backfill_connections=2)
    assert (resumed["state_before"], resumed["state_after"]) == ("partial", "applied")
    assert_same_end_state(pg_db, reference)


def test_a_step_another_session_holds_is_waited_for_then_refused_with_what_to_do(
    pg_db: Any, reference: Any
) -> None:
    """One session, and a DBA's transaction holding PagoPrestamo's progress row: the run does the other ledger
    steps, waits as long as it would for a lock (lock_timeout, every retry), then fails saying who to look for;
    released, the rerun finishes."""
    begun(pg_db)
    with held(pg_db, "SELECT 1 FROM capital_backfill_progress WHERE source = 'PagoPrestamo' FOR UPDATE"):
        started = time.monotonic()
        with pytest.raises(MigrationError) as refused:
            migrate(pg_db, batch_size=20, lock_timeout="300ms", lock_retries=1)
        waited = time.monotonic() - started
    assert "held by another session" in refused.value.msg and "pg_stat_activity" in refused.value.msg
    assert waited >= 0.6
    done = progress(pg_db)
    assert done["PagoPrestamo"] is False and all(done[s] for s in LEDGER[:3])
    resumed = migrate(pg_db, batch_size=20)
    assert resumed["state_after"] == "applied"
    assert_same_end_state(pg_db, reference)


def test_the_module_option_is_checked_before_anything_runs(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    conn = pg_db.connect()
    try:
        with pytest.raises(MigrationError, match="backfill_connections must be between 1 and 16, got 0"):
            Migrator(conn, sql_files(), Options(backfill_connections=0), connect=pg_db.connect)
    finally:
        conn.close()
    assert run_sql(pg_db, "SELECT to_regclass('capital_movements')") == [(None,)]



class StopAt(Migrator):
    """Stops like a killed run after the first batch whose step ``stop_when`` accepts."""

    stop_when: Any = None

    def _batch(self) -> Any:
        batch = super()._batch()
        if self.stop_when(batch.step):
            raise Interrupted(f"stopped after {batch.step}")
        return batch


def stopped_at(db: Any, stop_when: Any, batch_size: int) -> None:
    conn = db.connect()
    try:
        migrator = StopAt(conn, sql_files(), Options(batch_size=batch_size))
        migrator.stop_when = stop_when
        with pytest.raises(Interrupted):
            migrator.run()
    finally:
        conn.close()


def test_the_sweep_leaves_a_junta_someone_holds_for_later_and_ends_once_it_is_free(
    pg_db: Any, reference: Any
) -> None:
    """Two sessions sweep (one junta a batch here); a DBA holds the first pending junta: every other junta's
    loans get their numbers meanwhile (a sweep that waited for it would number none), the run waits for that
    one, and once it is released ends exactly as one session does. (The DBA's transaction begins after the
    sweep's barrier, which waits for every transaction older than the phase flip.)"""
    seed_db(pg_db, juntas=4, dirty=True)
    stopped_at(pg_db, lambda step: step.source == "Junta" and step.source_done, batch_size=20)
    stopped_at(pg_db, lambda step: step.source == "PrestamoNew" and step.rows > 0, batch_size=1)
    pending = 'SELECT count(DISTINCT junta_id) FROM "PrestamoNew" WHERE loan_number IS NULL OR capital_at_time IS NULL'
    assert run_sql(pg_db, pending) == [(3,)]
    first = ('SELECT 1 FROM "Junta" WHERE id = (SELECT min(junta_id) FROM "PrestamoNew"'
             ' WHERE loan_number IS NULL OR capital_at_time IS NULL) FOR NO KEY UPDATE')
    with held(pg_db, first):
        run = Run(pg_db, batch_size=1, lock_timeout="60s", backfill_connections=2)
        run.start()
        others_swept = wait_for(lambda: run_sql(pg_db, pending) == [(1,)])
        time.sleep(0.5)
        still_running = run.is_alive()
    run.join(120)
    assert others_swept and still_running
    assert run.error is None, run.error
    assert run.result is not None and run.result["state_after"] == "applied"
    assert_same_end_state(pg_db, reference)
    assert other_sessions(pg_db) == 0
