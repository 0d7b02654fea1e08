"""pg_dump and preflight's probes in one exported snapshot (module_utils/snapshot_dump.py, module
capital_snapshot_dump), on a real cluster: the probes and the dump describe the same data even when the
application commits while they run; a failed dump or a refused probe leaves no partial file."""

from __future__ import annotations

import subprocess
import threading
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


def test_the_probes_see_exactly_the_data_the_dump_holds_while_the_application_commits(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_db(pg_db, juntas=3)
    _use(pg_db, monkeypatch)
    partial = tmp_path / "db.dump.1.partial"
    other = pg_db.connect()

    def write() -> None:
        with other.cursor() as cur:
            cur.execute('INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id) '
                        'SELECT \'snap-new\', \'new\', now(), created_by_id FROM "Junta" LIMIT 1')
        other.commit()

    writer = threading.Timer(0.3, write)
    conn = pg_db.connect()
    try:
        writer.start()
        done = snapshot_dump(conn, _dump_argv(partial), str(partial),
                             {"before": COUNT, "pause": "SELECT pg_sleep(1) AS slept", "after": COUNT},
                             lock_tables=LEGACY, lock_timeout_s=5)
        writer.join()
    finally:
        conn.close()
        other.close()
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
