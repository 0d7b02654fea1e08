"""Fewer sessions while the application is at work (module_utils/live.py, option connections_while_live of
capital_migrate, capital_snapshot_dump and capital_check; the roles' capital_connections_while_live).

On a real cluster: what counts as the application at work (another client session in a statement or a
transaction, or in one within the last two seconds; not an idle pool connection, not this run's own sessions
named capital*), and that each module then uses one session where it would use two, and two in a quiet
database - with the same figures either way."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from ansible_collections.prestamos.capital.plugins.module_utils import live
from capital_migrate.pgtmp import Database, temporary_database
from migration_helpers import assert_same_end_state, migrate, run_sql, seed_db

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


@contextmanager
def application(db: Database, statement: str = "SELECT 1", name: str = "loans-app") -> Iterator[Any]:
    """The application: a session named ``name`` that ran ``statement`` and stays in its transaction."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('application_name', %s, false)", (name,))
            cur.execute(statement)
        yield conn
    finally:
        conn.rollback()
        conn.close()


def quiet(db: Database) -> None:
    """Wait until no other client session of ``db`` is left (a closed one can linger a moment)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [(n,)] = run_sql(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        if n == 0:
            return
        time.sleep(0.1)
    raise AssertionError("other sessions never left the database")


def asking(db: Database) -> int:
    conn = db.connect()
    try:
        conn.autocommit = True
        return live.application_sessions(conn)
    finally:
        conn.close()


def run_module(db: Database, module: str, args: dict[str, Any]) -> dict[str, Any]:
    """One module task with real ansible-playbook on ``db`` (the password only in the libpq environment);
    its registered result."""
    env = db.env
    args = {"login_host": env["PGHOST"], "login_port": int(env["PGPORT"]), "login_user": env["PGUSER"],
            "login_db": db.name, **args}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
            {module: args, "register": "r", "ignore_errors": True},
            {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0600"}},
        ]}]
        (Path(tmp) / "play.yml").write_text(json.dumps(play))
        done = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(Path(tmp) / "play.yml")],
            cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
            env={**env, "PATH": f"{VENV_BIN}:/usr/bin:/bin", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                 "ANSIBLE_PYTHON_INTERPRETER": str(VENV_BIN / "python")},
        )
        assert done.returncode == 0 and out.exists(), (done.stdout + done.stderr)[-3000:]
        result: dict[str, Any] = json.loads(out.read_text())
    assert not result.get("failed"), result.get("msg")
    return result


@pytest.fixture
def seeded(pg_db: Database) -> Database:
    seed_db(pg_db, juntas=4, dirty=True)
    return pg_db


def test_the_application_at_work_is_counted_and_idle_or_own_sessions_are_not(pg_db: Database) -> None:
    quiet(pg_db)
    assert asking(pg_db) == 0
    with application(pg_db):  # in a transaction
        assert asking(pg_db) == 1
    with application(pg_db, name="capital_check"):  # this run's own kind of session
        assert asking(pg_db) == 0
    pool = pg_db.connect()  # a pool's connection: it ran a statement, committed, and waits
    try:
        pool.autocommit = True
        with pool.cursor() as cur:
            cur.execute("SELECT 1")
        assert asking(pg_db) == 1  # within the window
        time.sleep(live.LIVE_WINDOW_S + 0.5)
        assert asking(pg_db) == 0  # idle since: not at work
    finally:
        pool.close()


def test_a_role_that_cannot_see_other_roles_sessions_takes_them_for_the_application(pg_db: Database) -> None:
    """Without pg_read_all_stats another role's session shows no type and no state: it counts as at work, even
    idle; with it, the idle session is seen to be idle."""
    role = f"plain_{pg_db.name}"
    run_sql(pg_db, f'CREATE ROLE "{role}" LOGIN PASSWORD \'x\'')
    try:
        quiet(pg_db)
        idle = pg_db.connect()  # the superuser's session: connected, no statement since
        try:
            time.sleep(live.LIVE_WINDOW_S + 0.5)
            assert asking(pg_db) == 0  # the superuser sees that it is idle
            plain = psycopg2.connect(pg_db.cluster.dsn(pg_db.name), user=role, password="x")
            plain.autocommit = True
            try:
                assert live.application_sessions(plain) == 1
                run_sql(pg_db, f'GRANT pg_read_all_stats TO "{role}"')
            finally:
                plain.close()
            seeing = psycopg2.connect(pg_db.cluster.dsn(pg_db.name), user=role, password="x")
            seeing.autocommit = True
            try:
                assert live.application_sessions(seeing) == 0
            finally:
                seeing.close()
        finally:
            idle.close()
    finally:
        quiet(pg_db)
        run_sql(pg_db, f'DROP ROLE "{role}"')


def test_the_backfill_runs_on_one_session_while_the_application_works_and_ends_the_same(
    seeded: Database, pg_cluster: Any
) -> None:
    with temporary_database(pg_cluster) as reference:
        seed_db(reference, juntas=4, dirty=True)
        quiet(reference)
        alone = migrate(reference, batch_size=20, backfill_connections=2, connections_while_live=1)
        assert (alone["backfill_sessions"], alone["application_sessions"]) == (2, 0)
        with application(seeded):
            busy = migrate(seeded, batch_size=20, backfill_connections=2, connections_while_live=1)
        assert (busy["backfill_sessions"], busy["application_sessions"]) == (1, 1)
        assert busy["state_after"] == "applied"
        assert_same_end_state(seeded, reference)
    # 0 does not look.
    unlooked = migrate(seeded, batch_size=20, backfill_connections=2)
    assert unlooked["application_sessions"] is None


def test_capital_check_reads_on_one_session_while_the_application_works(seeded: Database) -> None:
    migrate(seeded, batch_size=50)
    args = {"connections": 2, "connections_while_live": 1}
    quiet(seeded)
    # The suite beside the check is named capital_check alongside: it is not the application.
    psql = {"argv": ["psql", "-X", "--no-password", "-c", "SELECT pg_sleep(2)"]}
    alone = run_module(seeded, "prestamos.capital.capital_check", {**args, "alongside": psql})
    assert alone["alongside"]["rc"] == 0, alone["alongside"]
    with application(seeded, 'SELECT count(*) FROM "Junta"'):
        busy = run_module(seeded, "prestamos.capital.capital_check", args)
    assert (alone["sessions"], alone["application_sessions"]) == (2, 0)
    assert (busy["sessions"], busy["application_sessions"], busy["read_ahead"]) == (1, 1, 0)
    assert busy["discrepancy_count"] == alone["discrepancy_count"] == 0
    assert busy["totals"] == alone["totals"]


def test_the_probes_beside_pg_dump_use_one_session_while_the_application_works(
    seeded: Database, tmp_path: Path
) -> None:
    # Each probe takes half a second, so that a second session, when there is one, takes the other probe.
    probes = {"juntas": 'SELECT count(*) AS n FROM "Junta", pg_sleep(0.5)',
              "loans": 'SELECT count(*) AS n FROM "Prestamo", pg_sleep(0.5)'}

    def dump(name: str) -> dict[str, Any]:
        partial = tmp_path / f"{name}.dump"
        return run_module(seeded, "prestamos.capital.capital_snapshot_dump", {
            "dump_argv": ["pg_dump", "--format=custom", "--no-password", f"--file={partial}"],
            "partial": str(partial), "probes": probes, "connections": 2, "connections_while_live": 1})

    quiet(seeded)
    alone = dump("alone")
    with application(seeded):
        busy = dump("busy")
    assert (alone["lanes"], alone["application_sessions"]) == (2, 0)
    assert (busy["lanes"], busy["application_sessions"]) == (1, 1)
    assert busy["rows"] == alone["rows"]
