"""Concurrent application writes during and after the migration: nothing lost, nothing counted twice."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import psycopg2
import pytest
from migration_helpers import (
    assert_figures_exact,
    capital_mismatches,
    migrate,
    run_sql,
    seed_db,
    shadow_mismatches,
)

RETRY = {"40P01", "40001", "CAP01", "23514"}


def _writer(db: Any, seed: int, stop: threading.Event, errors: list[str]) -> None:
    """One application connection doing random inserts, updates and deletes on all four source tables."""
    rng = random.Random(seed)
    conn = db.connect()
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT id FROM "Junta" ORDER BY id')
            juntas = [r[0] for r in cur.fetchall()]
            cur.execute('SELECT id FROM "User" ORDER BY id LIMIT 5')
            users = [r[0] for r in cur.fetchall()]
        conn.commit()
        while not stop.is_set():
            j, u, op = rng.choice(juntas), rng.choice(users), rng.randrange(8)
            amount = round(rng.uniform(1, 300), 2) + 0.1 + 0.2 - 0.3  # float artefacts on purpose
            try:
                with conn.cursor() as cur:
                    if op == 0:
                        cur.execute(
                            'INSERT INTO "Accion" VALUES (%s, %s, %s, now(), %s, %s)',
                            (str(uuid.uuid4()), "COMPRA", amount, j, u),
                        )
                    elif op == 1:
                        cur.execute(
                            """INSERT INTO "Multa" (id, amount, description, status, created_at, junta_id,
                                       member_id) VALUES (%s, %s, 'late', 'PENDING', now(), %s, %s)""",
                            (str(uuid.uuid4()), amount, j, u),
                        )
                    elif op == 2:
                        cur.execute(
                            """INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id,
                                       member_id) VALUES (%s, %s, 'APPROVED', now(), now(), %s, %s)""",
                            (str(uuid.uuid4()), amount / 10, j, u),
                        )
                    elif op == 3:
                        cur.execute(
                            'SELECT id FROM "Prestamo" WHERE junta_id = %s ORDER BY random() LIMIT 1', (j,)
                        )
                        row = cur.fetchone()
                        if row:
                            cur.execute(
                                'INSERT INTO "PagoPrestamo" VALUES (%s, %s, now(), %s)',
                                (str(uuid.uuid4()), amount / 20, row[0]),
                            )
                    elif op == 4:
                        cur.execute(
                            'UPDATE "Accion" SET amount = amount + 1.005 WHERE id = '
                            '(SELECT id FROM "Accion" WHERE junta_id = %s ORDER BY random() LIMIT 1)',
                            (j,),
                        )
                    elif op == 5:
                        cur.execute(
                            """UPDATE "Multa" SET affects_capital = NOT affects_capital WHERE id =
                                       (SELECT id FROM "Multa" WHERE junta_id = %s ORDER BY random() LIMIT 1)""",
                            (j,),
                        )
                    elif op == 6:
                        cur.execute(
                            'DELETE FROM "PagoPrestamo" WHERE id = (SELECT id FROM "PagoPrestamo" '
                            "ORDER BY random() LIMIT 1)"
                        )
                    else:
                        cur.execute(
                            """UPDATE "Prestamo" SET status = CASE status WHEN 'REJECTED' THEN 'APPROVED'
                                       ELSE 'REJECTED' END WHERE id = (SELECT id FROM "Prestamo"
                                       WHERE junta_id = %s ORDER BY random() LIMIT 1)""",
                            (j,),
                        )
                conn.commit()
            except psycopg2.Error as exc:
                conn.rollback()
                # Before the affects_capital column exists, ops 5 fail (42703): the old app never sends them.
                if exc.pgcode not in RETRY | {"42703", "42P01"}:
                    errors.append(f"{exc.pgcode}: {exc.pgerror}")
    finally:
        conn.close()


@pytest.mark.parametrize("sessions", [1, 2], ids=["one-session", "two-backfill-sessions"])
def test_concurrent_writers_during_the_whole_migration_lose_and_double_nothing(pg_db, sessions: int) -> None:
    seed_db(pg_db, juntas=3, dirty=True)
    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=_writer, args=(pg_db, n, stop, errors)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        result = migrate(pg_db, batch_size=25, lock_timeout="500ms", lock_retries=20, lock_backoff=0.05,
                         backfill_connections=sessions)
        stop.wait(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert result["state_after"] == "applied"
    assert result["backfill_sessions"] == sessions
    conn = pg_db.connect()
    try:
        assert capital_mismatches(conn) == []
        assert shadow_mismatches(conn) == []
        with conn.cursor() as cur:
            cur.execute("""SELECT count(*) FROM (SELECT junta_id, loan_number FROM "PrestamoNew"
                            GROUP BY 1, 2 HAVING count(*) > 1) d""")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


def test_two_writers_racing_for_the_last_capital_cannot_both_get_the_loan(pg_db) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    setup = pg_db.connect()
    with setup.cursor() as cur:
        cur.execute('SELECT id, available_capital FROM "Junta" WHERE available_capital > 10 LIMIT 1')
        junta, available = cur.fetchone()
        cur.execute('SELECT id FROM "User" LIMIT 1')
        user = cur.fetchone()[0]
    setup.close()
    amount = float(available) * 0.75  # each alone fits, both together do not
    barrier, outcomes = threading.Barrier(2), []

    def take_loan() -> None:
        conn = pg_db.connect()
        try:
            with conn.cursor() as cur:
                barrier.wait()
                cur.execute(
                    """INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id,
                               member_id) VALUES (%s, %s, 'APPROVED', now(), now(), %s, %s)""",
                    (str(uuid.uuid4()), amount, junta, user),
                )
            conn.commit()
            outcomes.append("ok")
        except psycopg2.Error as exc:
            conn.rollback()
            outcomes.append(exc.pgcode)
            assert junta in exc.pgerror and "available capital" in exc.pgerror
        finally:
            conn.close()

    threads = [threading.Thread(target=take_loan) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["CAP01", "ok"]
    conn = pg_db.connect()
    try:
        assert capital_mismatches(conn) == []
    finally:
        conn.close()


@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "dirty"])
def test_updates_and_deletes_after_migration_keep_figures_exact(pg_db, dirty: bool) -> None:
    seed_db(pg_db, juntas=3, dirty=dirty)
    migrate(pg_db)
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT id FROM "Junta" ORDER BY id')
            juntas = [r[0] for r in cur.fetchall()]
            cur.execute(
                'UPDATE "Accion" SET amount = amount * 2 WHERE id IN (SELECT id FROM "Accion" LIMIT 20)'
            )
            cur.execute(
                'UPDATE "Multa" SET affects_capital = false WHERE id IN (SELECT id FROM "Multa" LIMIT 5)'
            )
            cur.execute('DELETE FROM "Accion" WHERE id IN (SELECT id FROM "Accion" ORDER BY id DESC LIMIT 5)')
            cur.execute(
                'UPDATE "Prestamo" SET status = \'REJECTED\' WHERE id IN (SELECT id FROM "Prestamo" LIMIT 5)'
            )
            cur.execute(
                'UPDATE "Prestamo" SET junta_id = %s WHERE id IN (SELECT prestamo_id FROM "PagoPrestamo" '
                'JOIN "Prestamo" p ON p.id = prestamo_id WHERE p.junta_id <> %s LIMIT 2)',
                (juntas[0], juntas[0]),
            )
            cur.execute('DELETE FROM "PagoPrestamo" WHERE id IN (SELECT id FROM "PagoPrestamo" LIMIT 10)')
            cur.execute(
                'UPDATE "PagoPrestamo" SET amount = amount / 2 WHERE id IN '
                '(SELECT id FROM "PagoPrestamo" LIMIT 10)'
            )
            cur.execute("""DELETE FROM "Prestamo" p WHERE NOT EXISTS
                           (SELECT 1 FROM "PagoPrestamo" pp WHERE pp.prestamo_id = p.id)
                           AND p.id IN (SELECT id FROM "Prestamo" LIMIT 30)""")
        conn.commit()
        assert capital_mismatches(conn) == []
        assert shadow_mismatches(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM capital_movements WHERE seq > 0")
            assert cur.fetchone()[0] > 0
            with pytest.raises(psycopg2.Error, match="append-only"):
                cur.execute("UPDATE capital_movements SET amount = amount + 1")
        conn.rollback()
    finally:
        conn.close()


def _invalid_index(db: Any, name: str) -> bool:
    return run_sql(db, "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)) == [(True,)]


def test_index_build_timed_out_by_a_writer_is_rebuilt_valid_on_retry(pg_db) -> None:
    """CREATE INDEX CONCURRENTLY that gives up waiting for an application writer (lock_timeout) leaves an
    INVALID index behind: the retry must drop and rebuild it, not skip it as "already exists" and go on with
    an index nothing can use (the triggers' lookups would then scan the whole table)."""
    seed_db(pg_db, juntas=2)
    index = "capital_pagoprestamo_prestamo_id_idx"
    writer = pg_db.connect()
    with writer.cursor() as cur:
        # An application transaction in flight on "PagoPrestamo": the build waits for it once its catalog
        # entry exists, and gives up after lock_timeout.
        cur.execute('LOCK TABLE "PagoPrestamo" IN ROW EXCLUSIVE MODE')
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = migrate(pg_db, lock_timeout="300ms", lock_retries=3, lock_backoff=2.0)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    migration = threading.Thread(target=run)
    migration.start()
    try:
        deadline = time.monotonic() + 60
        while not _invalid_index(pg_db, index):
            assert time.monotonic() < deadline, "the index build never started"
            time.sleep(0.05)
        time.sleep(1.0)  # past the first attempt's lock_timeout, well inside the 2 s backoff before the retry
    finally:
        writer.commit()
        writer.close()
        migration.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["lock_retries"] >= 1
    # The attempt that gave up waited its whole lock_timeout: the longest lock wait the run reports (evidence).
    assert outcome["result"]["longest_lock_wait_ms"] >= 300
    rows = run_sql(pg_db, "SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = to_regclass(%s)", (index,))
    assert rows == [(True, True)]


def _wait_for_a_lock_wait(db: Any, session: str, thread: threading.Thread | None = None) -> None:
    """Until a session matching the pg_stat_activity condition `session` waits for a lock (60 s at most, and
    only while `thread`, the one that should end up waiting, is alive)."""
    deadline = time.monotonic() + 60
    while not run_sql(db, f"SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND {session}"):
        alive = thread is None or thread.is_alive()
        assert time.monotonic() < deadline and alive, f"no lock wait seen for {session}"
        time.sleep(0.02)


def test_stop_asked_while_a_statement_waits_for_a_lock_reports_the_interruption(pg_db) -> None:
    """Ctrl-C/SIGTERM while a DDL waits for a lock: the wait is not retried, and the run stops saying it was
    interrupted and how to resume, not with a bare lock timeout the operator would have to interpret."""
    from ansible_collections.prestamos.capital.plugins.module_utils.migration import MigrationError, Migrator, Options
    from migration_helpers import sql_files

    seed_db(pg_db, juntas=2)
    holder = pg_db.connect()
    with holder.cursor() as cur:
        cur.execute('SELECT count(*) FROM "Junta"')  # ACCESS SHARE until rollback: ADD COLUMN must wait
    conn = pg_db.connect()
    migrator = Migrator(conn, sql_files(), Options(lock_timeout="1s", lock_retries=5, lock_backoff=0.2))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            migrator.run()
        except MigrationError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait_for_a_lock_wait(pg_db, "application_name = 'capital-migrate'", thread)
        migrator.request_stop("SIGINT")  # what the module's signal handler does
        thread.join(30)
    finally:
        holder.rollback()
        holder.close()
        thread.join()
        conn.close()
    err = outcome["error"]
    assert err.details.get("interrupted") is True and err.details["signal"] == "SIGINT", err.msg
    assert "rerun migrate.yml" in err.msg.lower()
    assert migrate(pg_db)["state_after"] == "applied"


def test_backfill_leaves_trigger_rows_alone_and_reruns_a_batch_raced_by_a_trigger(pg_db) -> None:
    """The source batches insert without ON CONFLICT. Rows a sync trigger wrote before a batch began are
    left out by the batch itself (no re-run: no notice); a row the application changes while the batch
    waits for it (the trigger commits after the batch's snapshot) fails the plain insert on the unique
    index, and the batch is re-run with ON CONFLICT DO NOTHING (one notice). Figures exact either way."""
    from ansible_collections.prestamos.capital.plugins.module_utils.migration import Interrupted

    seed_db(pg_db, juntas=3)
    with pytest.raises(Interrupted):
        migrate(pg_db, stop_after_file="14_triggers.sql")  # expanded: sync triggers live, no backfill yet
    app = pg_db.connect()
    with app.cursor() as cur:  # before the backfill: one changed row per source, deep inside its first batch
        for table, change in (("Accion", "amount = amount + 1"), ("Multa", "amount = amount + 1"),
                              ("Prestamo", "description = 'x'"), ("PagoPrestamo", "amount = amount + 1")):
            cur.execute(f'UPDATE "{table}" SET {change} WHERE id = '
                        f'(SELECT id FROM "{table}" ORDER BY id OFFSET 7 LIMIT 1)')
    app.commit()
    with app.cursor() as cur:  # held open: the first Accion batch must wait for this row, then re-read it
        cur.execute('UPDATE "Accion" SET amount = amount + 2 WHERE id = (SELECT min(id) FROM "Accion") RETURNING id')
        raced = cur.fetchone()[0]
    migration = pg_db.connect()
    steps: list[tuple[str, int, list[str]]] = []
    errors: list[str] = []

    def step() -> None:
        try:
            with migration.cursor() as cur:
                cur.execute("SELECT source, rows_done FROM capital_backfill_step(100000)")
                source, rows = cur.fetchone()
        except psycopg2.Error as exc:
            errors.append(f"{exc.pgcode}: {exc.pgerror}")
            raise
        migration.commit()
        steps.append((source, rows, list(migration.notices)))
        migration.notices.clear()

    thread = threading.Thread(target=step)
    thread.start()
    try:
        _wait_for_a_lock_wait(pg_db, "query LIKE '%capital_backfill_step%'", thread)
    finally:
        app.commit()
        thread.join()
    assert errors == []
    while steps[-1][0] not in ("junta_index", "complete"):
        step()
    migration.close()
    app.close()
    assert [s[0] for s in steps] == ["Accion", "Multa", "Prestamo", "PagoPrestamo", "junta_index"]
    accion_notices = steps[0][2]
    assert len(accion_notices) == 1 and "Accion" in accion_notices[0] and "ON CONFLICT" in accion_notices[0]
    assert [s[2] for s in steps[1:]] == [[], [], [], []]  # the trigger rows written before: left out
    assert migrate(pg_db)["state_after"] == "applied"
    assert_figures_exact(pg_db)
    assert run_sql(pg_db, """SELECT count(*), max(m.seq), bool_and(m.amount = round(a.amount::numeric, 2))
                               FROM capital_movements m JOIN "Accion" a ON a.id = m.accion_id
                              WHERE m.accion_id = %s""", (raced,)) == [(1, 0, True)]  # the trigger's one, not doubled


def test_the_migration_reports_the_batches_a_trigger_raced(pg_db) -> None:
    """Between Accion batches 1 and 2 the application updates a row of batch 2 and commits only once that
    batch waits for it: the run reruns that one batch, says so in batches_rerun, and counts nothing twice."""
    seed_db(pg_db, juntas=2)
    app = pg_db.connect()
    waiter: list[threading.Thread] = []

    def commit_once_the_batch_waits() -> None:
        _wait_for_a_lock_wait(pg_db, "application_name = 'capital-migrate'")
        app.commit()

    def after_batch(n: int) -> None:
        if n == 1:  # batch 1 of 5 rows is Accion's first: its rows 6-10 come next
            with app.cursor() as cur:
                cur.execute('UPDATE "Accion" SET amount = amount + 3 '
                            'WHERE id = (SELECT id FROM "Accion" ORDER BY id OFFSET 7 LIMIT 1)')
            waiter.append(threading.Thread(target=commit_once_the_batch_waits))
            waiter[0].start()

    try:
        result = migrate(pg_db, batch_size=5, after_batch=after_batch)
    finally:
        for t in waiter:
            t.join()
        app.close()
    assert result["state_after"] == "applied"
    assert result["batches_rerun"] == 1
    assert_figures_exact(pg_db)


def test_statement_timeout_is_per_batch_and_a_timed_out_batch_keeps_the_finished_ones(pg_db) -> None:
    """statement_timeout bounds one backfill batch, not the loop (a CALL of capital_backfill_run would be one
    statement for every batch): batch 2 stuck behind an application's row lock is cancelled at the timeout
    (57014, not retried: it is no lock timeout), batch 1 stays committed, and the rerun resumes from it."""
    from ansible_collections.prestamos.capital.plugins.module_utils.migration import MigrationError

    seed_db(pg_db, juntas=2)
    app = pg_db.connect()

    def after_batch(n: int) -> None:
        if n == 1:  # batch 1 of 5 rows is Accion's first: hold a row of batch 2 until the run has failed
            with app.cursor() as cur:
                cur.execute('SELECT id FROM "Accion" ORDER BY id OFFSET 7 LIMIT 1 FOR UPDATE')
        time.sleep(0.05)  # between batches: inside no statement, so under no statement_timeout

    try:
        with pytest.raises(MigrationError) as err:
            migrate(pg_db, batch_size=5, lock_timeout="30s", statement_timeout="400ms", after_batch=after_batch)
    finally:
        app.rollback()
        app.close()
    details = err.value.details
    assert (details["sqlstate"], details["failed_at"], details["attempts"]) == ("57014", "backfill batch 2", 1)
    assert details["lock_retries"] == 0
    assert run_sql(pg_db, "SELECT rows_done, done FROM capital_backfill_progress WHERE source = 'Accion'") == [
        (5, False)
    ]
    resumed = migrate(pg_db, batch_size=5, statement_timeout="400ms")
    assert resumed["state_before"] == "partial" and resumed["state_after"] == "applied"
    assert resumed["rows_backfilled"]["Accion"] == run_sql(pg_db, 'SELECT count(*) FROM "Accion"')[0][0] - 5
    assert_figures_exact(pg_db)
