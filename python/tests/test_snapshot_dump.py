"""pg_dump and preflight's probes in one exported snapshot (module_utils/snapshot_dump.py, module
capital_snapshot_dump), on a real cluster: the probes and the dump describe the same data even when the
application commits while they run; a failed dump or a refused probe leaves no partial file."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.probe import ProbeError
from ansible_collections.prestamos.capital.plugins.module_utils.snapshot_dump import snapshot_dump
from capital_migrate.pgtmp import Database
from migration_helpers import seed_db

COUNT = 'SELECT count(*) AS n FROM "Junta"'
LEGACY = ["Junta", "Accion", "Multa", "Prestamo", "PagoPrestamo", "User"]


def _use(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database's libpq variables and its own pg_dump first on PATH, for the subprocesses."""
    for key, value in db.env.items():
        monkeypatch.setenv(key, value)


def _dump_argv(partial: Path) -> list[str]:
    return ["pg_dump", "--format=custom", "--no-password", f"--file={partial}"]


def _restored_juntas(db: Database, dump: Path) -> int:
    listing = subprocess.run(["pg_restore", "--data-only", "--table=Junta", "--file=-", str(dump)],
                             capture_output=True, text=True, check=True).stdout
    block = listing.split('COPY public."Junta"', 1)[1].split("\n\\.", 1)[0]
    return len(block.strip().splitlines()) - 1


@contextlib.contextmanager
def a_junta_committed_meanwhile(db: Database, junta_id: str, after: float) -> Iterator[None]:
    """The application commits a new junta ``after`` seconds into the block, on its own connection."""
    other = db.connect()

    def write() -> None:
        with other.cursor() as cur:
            cur.execute('INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id) '
                        'SELECT %s, \'new\', now(), created_by_id FROM "Junta" LIMIT 1', (junta_id,))
        other.commit()

    writer = threading.Timer(after, write)
    try:
        writer.start()
        yield
        writer.join()
    finally:
        writer.cancel()
        other.close()


def test_the_probes_see_exactly_the_data_the_dump_holds_while_the_application_commits(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_db(pg_db, juntas=3)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.1.partial"
    conn = pg_db.connect()
    try:
        with a_junta_committed_meanwhile(pg_db, "snap-new", after=0.3):
            done = snapshot_dump(conn, _dump_argv(partial), str(partial),
                                 {"before": COUNT, "pause": "SELECT pg_sleep(1) AS slept", "after": COUNT},
                                 lock_tables=LEGACY, lock_timeout_s=5)
    finally:
        conn.close()
    assert done.rc == 0, done.stderr
    assert done.snapshot and done.snapshot_time.endswith("Z")
    juntas = done.rows["before"][0]["n"]
    assert done.rows["after"][0]["n"] == juntas  # the committed junta is in neither read
    assert _restored_juntas(pg_db, partial) == juntas
    assert done.probe_seconds >= 1 and done.seconds < done.dump_seconds + done.probe_seconds + 1


def test_a_refused_probe_stops_the_dump_and_removes_the_partial_file(pg_db: Database, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seed_db(pg_db, juntas=2)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.2.partial"
    conn = pg_db.connect()
    try:
        with pytest.raises(ProbeError) as refused:
            snapshot_dump(conn, _dump_argv(partial), str(partial), {"bad": "SELECT * FROM nowhere"})
    finally:
        conn.close()
    assert refused.value.probe == "bad"
    assert not partial.exists()


def test_a_failed_dump_reports_its_exit_and_removes_the_partial_file(pg_db: Database, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seed_db(pg_db, juntas=2)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "missing" / "db.dump.3.partial"  # pg_dump cannot create a file in a missing directory
    conn = pg_db.connect()
    try:
        done = snapshot_dump(conn, _dump_argv(partial), str(partial), {"n": COUNT})
    finally:
        conn.close()
    assert done.rc != 0 and "could not open output file" in done.stderr
    assert done.rows["n"][0]["n"] > 0
    assert not partial.exists()


# Who read a probe and in what snapshot: the backend's pid and the snapshot's xmin:xmax:xip list.
WHO = "SELECT pg_backend_pid() AS pid, pg_current_snapshot()::text AS snapshot, count(*) AS n FROM \"Junta\""


def test_probes_shared_among_connections_read_the_one_snapshot_the_dump_holds(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_db(pg_db, juntas=3)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.4.partial"
    conn = pg_db.connect()
    try:
        with a_junta_committed_meanwhile(pg_db, "lane-new", after=0.2):
            # The first probe keeps its lane busy, so the second lane takes the next ones.
            done = snapshot_dump(conn, _dump_argv(partial), str(partial),
                                 {"slow": f"SELECT pg_sleep(1), w.* FROM ({WHO}) w", "a": WHO, "b": WHO},
                                 lock_tables=LEGACY, lock_timeout_s=5, connect=pg_db.connect, connections=2)
    finally:
        conn.close()
    assert done.rc == 0, done.stderr
    assert done.lanes == 2
    assert list(done.rows) == ["slow", "a", "b"]  # in the order asked, whoever read them
    reads = [done.rows[name][0] for name in ("slow", "a", "b")]
    assert len({r["pid"] for r in reads}) == 2
    assert len({r["snapshot"] for r in reads}) == 1 and len({r["n"] for r in reads}) == 1
    assert _restored_juntas(pg_db, partial) == reads[0]["n"]  # the junta committed meanwhile is in none


def test_a_refused_probe_on_one_connection_cancels_the_others_and_removes_the_partial_file(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_db(pg_db, juntas=2)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.5.partial"
    conn = pg_db.connect()
    try:
        with pytest.raises(ProbeError) as refused:
            snapshot_dump(conn, _dump_argv(partial), str(partial),
                          {"long": "SELECT pg_sleep(60) AS slept", "bad": "SELECT * FROM nowhere",
                           "never": COUNT},
                          connect=pg_db.connect, connections=2)
    finally:
        conn.close()
    assert refused.value.probe == "bad" and "nowhere" in refused.value.message
    assert not partial.exists()
    check = pg_db.connect()
    try:
        with check.cursor() as cur:  # the 60 s probe was cancelled, not left running
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%'"
                        " AND pid <> pg_backend_pid()")
            assert cur.fetchone()[0] == 0
    finally:
        check.close()


def test_a_connection_that_cannot_be_opened_leaves_the_probes_to_the_others(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_db(pg_db, juntas=2)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.6.partial"

    def refused() -> None:
        raise OSError("too many connections")

    conn = pg_db.connect()
    try:
        done = snapshot_dump(conn, _dump_argv(partial), str(partial), {"a": WHO, "b": WHO},
                             connect=refused, connections=3)
    finally:
        conn.close()
    assert done.rc == 0 and done.lanes == 1
    assert done.rows["a"][0]["pid"] == done.rows["b"][0]["pid"]


def test_losing_the_session_that_exported_the_snapshot_fails_the_call_and_removes_the_partial_file(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump waits on a DBA's lock after importing the snapshot; a DBA terminates the exporting session."""
    seed_db(pg_db, juntas=2)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.7.partial"
    gate = pg_db.connect()
    with gate.cursor() as cur:
        cur.execute("CREATE TABLE dba_gate (note text)")
        gate.commit()
        cur.execute("LOCK TABLE dba_gate IN ACCESS EXCLUSIVE MODE")
    conn = pg_db.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        exporter = cur.fetchone()[0]
    conn.commit()
    outcome: list[BaseException | object] = []

    def dump() -> None:
        try:
            outcome.append(snapshot_dump(conn, _dump_argv(partial), str(partial), {"n": COUNT}))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=dump)
    worker.start()
    try:
        with contextlib.closing(pg_db.connect()) as watch:
            with watch.cursor() as cur:
                for _ in range(500):  # pg_dump imported the snapshot and waits on the gate
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LOCK TABLE %%dba_gate%%'"
                                " AND wait_event_type = 'Lock'")
                    if cur.fetchone()[0]:
                        break
                    watch.rollback()
                    time.sleep(0.02)
                cur.execute("SELECT pg_terminate_backend(%s)", (exporter,))
            watch.commit()
    finally:
        gate.rollback()
        gate.close()
        worker.join(60)
        conn.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Exception), outcome
    assert not partial.exists()
