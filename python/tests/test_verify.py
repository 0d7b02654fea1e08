"""Integration tests of the verification stage on real throwaway PostgreSQL databases.

A database is built from the baseline schema, filled by capital-datagen (clean or --dirty) and migrated by
the project's own migrator (module_utils/migration.py); then capital_check (through real `ansible`),
files/sql/verify_migration.sql (through real psql) and the guide's queries must pass, and must fail on
a database that is wrong by one cent or lacks a trigger.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.capital import to_cents
from ansible_collections.prestamos.capital.plugins.module_utils.migration import Migrator, load_sql_dir
from capital_migrate import datagen
from capital_migrate.pgtmp import Cluster, Database, temporary_database
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "files" / "sql"
VERIFY_SQL = SQL_DIR / "verify_migration.sql"
VENV_BIN = REPO / ".venv" / "bin"

# The guide's "Verification Steps" 1 and 2, character for character.
GUIDE_CAPITAL_QUERY = """-- Verify capital calculations
SELECT
    j.id,
    j.name,
    j.current_capital,
    j.available_capital,
    ABS(j.current_capital - j.available_capital) as discrepancy
FROM "Junta" j
WHERE ABS(j.current_capital - j.available_capital) > 0.01;
"""
GUIDE_CONSTRAINTS_QUERY = """-- Check constraint violations
SELECT conname, contype, conrelid::regclass
FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
AND NOT convalidated;
"""


def build_migrated(db: Database, *, dirty: bool, juntas: int = 6, seed: int = 11) -> None:
    """Baseline + generated data + the real migration, committed."""
    conn = db.connect()
    try:
        datagen.generate(conn, seed=seed, juntas=juntas, dirty=dirty)
        conn.autocommit = True
        result = Migrator(conn, load_sql_dir(SQL_DIR)).run()
        assert result["state_after"] == "applied", result
    finally:
        conn.close()


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[Cluster]:
    """A cluster for this file's module-scoped databases (built once, reused read-only)."""
    with Cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module", params=["clean", "dirty"])
def migrated(request: pytest.FixtureRequest, module_cluster: Cluster) -> Iterator[Database]:
    """A migrated database, clean and --dirty; tests that change it use their own copy (`scratch`)."""
    with temporary_database(module_cluster, prefix=f"m{request.param}") as db:
        build_migrated(db, dirty=request.param == "dirty")
        yield db


@pytest.fixture
def scratch(migrated: Database) -> Iterator[Database]:
    """A private copy of `migrated` (CREATE DATABASE ... TEMPLATE) that a test may corrupt."""
    with temporary_database(migrated.cluster, prefix="s", template=migrated.name) as db:
        yield db


def ansible_env(db: Database) -> dict[str, str]:
    """Environment for ansible/psql: the database's libpq variables (the password never on argv)."""
    return {
        **db.env,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_PYTHON_INTERPRETER": str(VENV_BIN / "python"),
    }


def run_check(db: Database, *, check_mode: bool = False, **args: Any) -> dict[str, Any]:
    """Run prestamos.capital.capital_check with real ansible-playbook and return its registered result.

    The connection comes from the libpq environment (the password never on argv). A two-task playbook
    (ignore_errors keeps the module's own `failed`) writes the result as JSON, because the json stdout
    callback lives in ansible.posix, which the project does not install.
    """
    # Host, port, user and database as module options (the playbooks' module_defaults do the same); the
    # password stays in PGPASSWORD, which libpq reads. login_port must be given: its default is 5432.
    env = db.env
    args = {"login_host": env["PGHOST"], "login_port": int(env["PGPORT"]), "login_user": env["PGUSER"],
            "login_db": db.name, **args}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        play = [{
            "hosts": "localhost", "gather_facts": False,
            "tasks": [
                {"prestamos.capital.capital_check": args, "register": "r", "ignore_errors": True},
                {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0600"},
                 "check_mode": False},
            ],
        }]
        playbook = Path(tmp) / "play.yml"
        playbook.write_text(json.dumps(play))
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)]
        if check_mode:
            argv.append("--check")
        done = subprocess.run(argv, cwd=REPO, env=ansible_env(db), capture_output=True, text=True,
                              check=False, timeout=300)
        assert done.returncode == 0 and out.exists(), (done.stdout + done.stderr)[-3000:]
        assert db.cluster.password not in done.stdout + done.stderr
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def run_verify_sql(db: Database) -> subprocess.CompletedProcess[str]:
    """Run files/sql/verify_migration.sql exactly as the verify role does."""
    return subprocess.run(["psql", "-X", "--no-password", "-v", "ON_ERROR_STOP=1", "-f", str(VERIFY_SQL)],
                          env=db.env, capture_output=True, text=True, check=False, timeout=120)


def snapshot(db: Database) -> dict[str, Any]:
    """Everything verify_migration.sql could leave behind: legacy checksums, ledger, shadow, Junta figures."""
    conn = db.connect()
    try:
        state: dict[str, Any] = dict(datagen.table_checksums(conn))
        with conn.cursor() as cur:
            for name, sql in {
                "ledger": "SELECT count(*), sum(amount), max(id) FROM capital_movements",
                "junta": 'SELECT md5(string_agg(format(\'%s %s %s %s\', id, base_capital, current_capital, '
                         'available_capital), \',\' ORDER BY id)) FROM "Junta"',
                "loans": 'SELECT count(*), sum(amount), sum(remaining_amount) FROM "PrestamoNew"',
                "payments": 'SELECT count(*), sum(amount) FROM "PagoPrestamoNew"',
                "fixtures": "SELECT count(*) FROM \"User\" WHERE id LIKE 'zz-verify-%'",
            }.items():
                cur.execute(sql)
                state[name] = cur.fetchone()
        return state
    finally:
        conn.close()


def guide_rows(db: Database, query: str) -> list[tuple[Any, ...]]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return list(cur.fetchall())
    finally:
        conn.close()


# --- the float8 -> numeric cast: the Python model against the server -----------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-1e11, max_value=1e11, allow_nan=False, allow_infinity=False),
            st.integers(-10**9, 10**9).map(lambda c: c / 1000),
            st.sampled_from([0.30000000000000004, 15664.312475053368, 0.12499999999999999, 2.675, 1.005,
                             -0.005, 5e-324, 123456789012.345, 999999999999.99]),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_float8_cast_and_rounding_match_the_server(pg_cluster: Cluster, amounts: list[float]) -> None:
    conn = pg_cluster.connect()
    try:
        with conn.cursor() as cur:
            # repr() round-trips a double exactly; the text -> float8 cast parses it back to the same double.
            cur.execute(
                "SELECT x::float8::numeric::text, round(x::float8::numeric, 2) FROM unnest(%s::text[]) AS x",
                ([repr(a) for a in amounts],),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    for amount, (numeric_text, cents) in zip(amounts, rows, strict=True):
        assert to_cents(amount) == cents, (amount, numeric_text)


def test_the_cast_uses_fifteen_digits_not_the_shortest_repr(pg_cluster: Cluster) -> None:
    """Pins the server behaviour the model copies: 0.30000000000000004 casts to 0.3 (%.15g), not itself."""
    conn = pg_cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT '0.30000000000000004'::float8::numeric::text, "
                        "'0.12499999999999999'::float8::numeric::text")
            assert cur.fetchone() == ("0.3", "0.125")
    finally:
        conn.close()


# --- capital_check ------------------------------------------------------------------------------------


def test_capital_check_finds_no_discrepancy_after_migration(migrated: Database) -> None:
    result = run_check(migrated)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    assert result["discrepancy_count"] == 0 and result["discrepancies"] == []
    assert result["juntas_checked"] == 6
    assert result["totals"] == result["totals_recorded"]
    assert result["totals"]["current_capital"] == result["ledger"]["balance"]
    assert all(isinstance(v, str) for v in result["totals"].values())
    assert result["shadow"]["checked"] is True
    assert result["shadow"]["legacy"] == result["shadow"]["shadow"]
    assert result["shadow"]["legacy"]["loan_count"] > 0


def test_sql_and_python_recomputations_agree(migrated: Database) -> None:
    by_sql = run_check(migrated, method="sql")
    by_python = run_check(migrated, method="python", check_mode=True)
    for key in ("juntas_checked", "totals", "totals_recorded", "ledger", "shadow", "discrepancy_count"):
        assert by_sql[key] == by_python[key], key
    assert any('FROM "Accion"' in q and "round" not in q for q in by_python["executed_queries"])
    assert any("sum(round(amount::numeric, 2))" in q for q in by_sql["executed_queries"])


def test_a_second_session_reads_ahead_in_the_same_snapshot_and_the_figures_are_the_same(migrated: Database) -> None:
    """The first session waits on a lock a DBA holds on "Accion" (its first read needs it); the second reads
    every other aggregate meanwhile and disconnects; only then is the lock released."""
    one = run_check(migrated)
    holder = migrated.connect()
    released = threading.Event()

    def hold() -> None:
        watch = migrated.connect()
        watch.autocommit = True
        try:
            with watch.cursor() as cur:
                seen_two, waiting_since = False, None
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    cur.execute("SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock')"
                                " FROM pg_stat_activity WHERE application_name = 'capital_check'")
                    sessions, waiting = cur.fetchone()
                    seen_two = seen_two or sessions == 2
                    if waiting and waiting_since is None:
                        waiting_since = time.monotonic()
                    if seen_two and sessions == 1:  # the reader has read what it could and left
                        break
                    # A reader on this small fixture may come and go between two looks: 5 s of the first
                    # session waiting on the lock is time enough for it.
                    if waiting_since is not None and time.monotonic() - waiting_since > 5:
                        break
                    time.sleep(0.02)
        finally:
            watch.close()
            holder.rollback()
            released.set()

    with holder.cursor() as cur:
        cur.execute('LOCK TABLE "Accion" IN ACCESS EXCLUSIVE MODE')
    thread = threading.Thread(target=hold)
    thread.start()
    try:
        two = run_check(migrated, connections=2, lock_timeout="90s")
    finally:
        thread.join(90)
        holder.close()
    assert released.is_set()
    assert not two.get("failed"), two.get("msg")
    assert one["read_ahead"] == 0 and two["read_ahead"] > 0
    for key in ("juntas_checked", "totals", "totals_recorded", "ledger", "shadow", "discrepancy_count"):
        assert one[key] == two[key], key


def test_a_second_session_that_cannot_connect_leaves_every_read_to_the_first(migrated: Database) -> None:
    """max_connections reached: the second session's connect fails (a role limited to one connection)."""
    role = f"cc_one_{uuid.uuid4().hex[:8]}"
    admin = migrated.connect()
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'x' CONNECTION LIMIT 1")
        cur.execute(f"GRANT pg_read_all_data TO {role}")
        cur.execute(f"GRANT EXECUTE ON FUNCTION calculate_available_capital(text) TO {role}")
    try:
        # The password is a throwaway role's, given as a module option in the temporary playbook file.
        result = run_check(migrated, connections=2, login_user=role, login_password="x")
        assert not result.get("failed"), result.get("msg")
        assert result["read_ahead"] == 0 and result["discrepancy_count"] == 0
        assert result["juntas_checked"] == 6
    finally:
        with admin.cursor() as cur:
            cur.execute(f"REVOKE EXECUTE ON FUNCTION calculate_available_capital(text) FROM {role}")
            cur.execute(f"DROP ROLE {role}")
        admin.close()


def test_capital_check_runs_further_queries_in_its_snapshot_each_on_its_own(migrated: Database) -> None:
    result = run_check(migrated, queries=[
        "SELECT sum(current_capital) AS total, now() AS at FROM \"Junta\"",
        "SELECT 1 / 0",  # refused by the server: reported, and the next query still runs
        GUIDE_CAPITAL_QUERY,
    ])
    assert not result.get("failed"), result.get("msg")
    total, refused, guide = result["query_results"]
    assert total["error"] == "" and total["rows"][0]["total"] == result["totals_recorded"]["current_capital"]
    assert total["rows"][0]["at"] == result["snapshot_time"]  # now() is the snapshot's transaction start
    assert refused["rows"] == [] and "division by zero" in refused["error"]
    assert guide == {"rows": [], "error": ""}
    assert result["discrepancy_count"] == 0


@pytest.mark.parametrize("connections", [1, 2])
def test_capital_checks_settings_hold_on_every_session_and_end_with_it(migrated: Database, connections: int) -> None:
    probe = ("SELECT current_setting('max_parallel_workers_per_gather') AS workers,"
             " current_setting('lock_timeout') AS lt")
    result = run_check(migrated, connections=connections, lock_timeout="7s",
                       settings={"max_parallel_workers_per_gather": 0}, queries=[probe])
    assert result["discrepancy_count"] == 0
    assert result["query_results"] == [{"rows": [{"workers": "0", "lt": "7s"}], "error": ""}]
    conn = migrated.connect()
    with conn.cursor() as cur:
        cur.execute(probe)
        assert cur.fetchone() != ("0", "7s")  # SET LOCAL: nothing outlives the check's transaction
    conn.close()


def test_capital_check_changes_nothing_in_either_mode(migrated: Database) -> None:
    before = snapshot(migrated)
    run_check(migrated, check_mode=True)
    run_check(migrated)
    assert snapshot(migrated) == before


def test_one_cent_in_a_junta_column_is_detected(scratch: Database) -> None:
    conn = scratch.connect()
    with conn, conn.cursor() as cur:
        cur.execute('SELECT id, current_capital FROM "Junta" ORDER BY id LIMIT 1')
        junta_id, current = cur.fetchone()
        cur.execute('UPDATE "Junta" SET current_capital = current_capital + 0.01 WHERE id = %s', (junta_id,))
    conn.close()

    failed = run_check(scratch)
    assert failed["failed"] is True
    assert failed["discrepancies"] == [{
        "junta_id": junta_id, "field": "current_capital", "expected": f"{current:.2f}",
        "actual": f"{current + Decimal('0.01'):.2f}", "difference": "0.01",
    }]
    assert junta_id in failed["msg"] and "current_capital" in failed["msg"] and "0.01" in failed["msg"]

    reported = run_check(scratch, fail_on_discrepancy=False)
    assert not reported.get("failed")
    assert reported["discrepancy_count"] == 1
    assert reported["totals_recorded"]["current_capital"] != reported["totals"]["current_capital"]


@pytest.mark.parametrize("connections", [1, 2])
def test_a_forged_movement_and_a_shadow_cent_are_detected(scratch: Database, connections: int) -> None:
    conn = scratch.connect()
    with conn, conn.cursor() as cur:
        cur.execute('SELECT id, junta_id FROM "Accion" WHERE affects_capital ORDER BY id LIMIT 1')
        accion_id, junta_id = cur.fetchone()
        # The ledger accepts INSERTs (append-only): a forged correction the Junta columns never saw.
        cur.execute(
            "INSERT INTO capital_movements (junta_id, type, direction, amount, created_at, accion_id, seq) "
            "VALUES (%s, 'ACCION', 'INCREASE', 0.01, now(), %s, 77)", (junta_id, accion_id))
        cur.execute('SELECT id, junta_id FROM "PrestamoNew" ORDER BY id LIMIT 1')
        loan_id, loan_junta = cur.fetchone()
        cur.execute('UPDATE "PrestamoNew" SET amount = amount + 0.01 WHERE id = %s', (loan_id,))
    conn.close()

    result = run_check(scratch, fail_on_discrepancy=False, connections=connections)
    found = {(d["junta_id"], d["field"]): d for d in result["discrepancies"]}
    assert found[(junta_id, "ledger.ACCION")]["difference"] == "0.01"
    assert found[(junta_id, "ledger.balance")]["difference"] == "0.01"
    assert found[(junta_id, "calculate_available_capital")]["difference"] == "0.01"
    assert found[(loan_junta, "shadow.loan_amount")]["difference"] == "0.01"
    assert found[(loan_junta, "shadow.loans_differing")]["actual"] == "1"
    assert not any(d["field"] in ("base_capital", "current_capital") for d in result["discrepancies"])


def test_capital_check_refuses_an_unmigrated_database(pg_db: Database) -> None:
    conn = pg_db.connect()
    datagen.generate(conn, seed=1, juntas=1)
    conn.close()
    result = run_check(pg_db)
    assert result["failed"] is True
    assert "not applied" in result["msg"] and "capital_movements" in result["msg"]


SUITE_ARGV = ["psql", "-X", "--no-password", "-v", "ON_ERROR_STOP=1", "-f", "-"]


def test_capital_check_runs_the_suite_beside_it_and_returns_its_outcome(scratch: Database) -> None:
    # The suite fails on the dropped trigger; the check, on its own session, still reconciles everything.
    conn = scratch.connect()
    with conn, conn.cursor() as cur:
        cur.execute('DROP TRIGGER capital_sync ON "Multa"')
    conn.close()
    result = run_check(scratch, alongside={"argv": SUITE_ARGV, "stdin": VERIFY_SQL.read_text(encoding="utf-8")})
    assert result.get("failed") is not True, result.get("msg")
    assert result["juntas_checked"] > 0 and result["discrepancy_count"] == 0
    suite = result["alongside"]
    assert suite["rc"] != 0 and suite["msg"] == f"psql exited {suite['rc']}"
    assert any("FAILED trigger on Multa for" in line for line in suite["stderr_lines"]), suite["stderr"][-2000:]
    assert any("NOTICE:  ok: " in line for line in suite["stderr_lines"])


def test_the_command_beside_the_check_starts_first_and_is_returned_whatever_the_check_does(pg_db: Database) -> None:
    conn = pg_db.connect()
    datagen.generate(conn, seed=1, juntas=1)
    conn.close()
    echo = ["sh", "-c", "cat; echo to-stderr >&2"]
    result = run_check(pg_db, alongside={"argv": echo, "stdin": "fed"})
    # Not migrated: the check fails, and the command's outcome is still there, whole.
    assert result["failed"] is True and "not applied" in result["msg"]
    assert result["alongside"]["rc"] == 0 and result["alongside"]["msg"] == ""
    assert result["alongside"]["stdout_lines"] == ["fed"]
    assert result["alongside"]["stderr_lines"] == ["to-stderr"]
    missing = run_check(pg_db, alongside={"argv": ["/nonexistent/psql", "-X"]})
    assert missing["alongside"]["rc"] == 127
    assert "cannot run /nonexistent/psql" in missing["alongside"]["msg"]


def test_the_command_beside_the_check_runs_while_the_check_reads(migrated: Database) -> None:
    # The check's session stays open for a second (a further query of its own); the command, started with it,
    # looks for that session. Run one after the other, in either order, it would never see it.
    look = ("for i in $(seq 100); do n=$(psql -XAtc \"SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'capital_check'\"); if [ \"$n\" -gt 0 ]; then echo seen; exit 0; fi; "
            "sleep 0.1; done; echo never; exit 1")
    result = run_check(migrated, queries=["SELECT pg_sleep(1)"], alongside={"argv": ["sh", "-c", look]})
    assert result["discrepancy_count"] == 0
    assert result["alongside"]["stdout_lines"] == ["seen"], result["alongside"]


# --- verify_migration.sql ----------------------------------------------------------------------------


def test_verify_sql_passes_and_leaves_nothing(migrated: Database) -> None:
    before = snapshot(migrated)
    done = run_verify_sql(migrated)
    assert done.returncode == 0, done.stderr[-3000:]
    ok_lines = [line for line in done.stderr.splitlines() if "NOTICE:  ok: " in line]
    assert len(ok_lines) >= 50
    assert "ERROR" not in done.stderr
    assert "all checks passed" in done.stdout
    after = snapshot(migrated)
    # The ledger's identity sequence is not transactional; its rows, sums and everything else are.
    assert {k: v for k, v in after.items() if k != "ledger"} == {
        k: v for k, v in before.items() if k != "ledger"
    }
    assert after["ledger"][:2] == before["ledger"][:2]
    assert after["fixtures"] == (0,)


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ('DROP TRIGGER capital_sync ON "Multa"', "FAILED trigger on Multa for"),
        ("DROP TRIGGER capital_movements_append_only ON capital_movements",
         "FAILED trigger on capital_movements for UPDATE"),
        ('DROP TRIGGER capital_guard ON "Prestamo"', "FAILED a loan above the available capital"),
        ('ALTER TABLE "PagoPrestamoNew" DROP CONSTRAINT "PagoPrestamoNew_prestamo_id_fkey"',
         "FAILED shadow payments reference shadow loans"),
        # Marked INVALID as a killed CREATE INDEX CONCURRENTLY leaves it (the test cluster's user is superuser).
        ("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'capital_movements_junta_created_idx'::regclass",
         "FAILED index capital_movements_junta_created_idx is valid"),
    ],
)
def test_verify_sql_fails_naming_the_check(scratch: Database, breakage: str, named: str) -> None:
    conn = scratch.connect()
    with conn, conn.cursor() as cur:
        cur.execute(breakage)
    conn.close()
    done = run_verify_sql(scratch)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr[-2000:]
    assert "all checks passed" not in done.stdout


# --- the guide's queries and the whole verify playbook -------------------------------------------------


def test_the_verify_role_runs_the_guides_queries_character_for_character() -> None:
    guide = REPO / "files" / "sql" / "guide"
    assert (guide / "capital_consistency.sql").read_text(encoding="utf-8").strip() == GUIDE_CAPITAL_QUERY.strip()
    assert (guide / "unvalidated_constraints.sql").read_text(encoding="utf-8").strip() == \
        GUIDE_CONSTRAINTS_QUERY.strip()


def test_guide_verification_queries_return_nothing(migrated: Database) -> None:
    assert guide_rows(migrated, GUIDE_CAPITAL_QUERY) == []
    assert guide_rows(migrated, GUIDE_CONSTRAINTS_QUERY) == []


def playbook_env(db: Database) -> dict[str, str]:
    """The operator's environment: DATABASE_URL without the password, which comes from PGPASSWORD."""
    env = ansible_env(db)
    env["DATABASE_URL"] = f"postgresql://{db.env['PGUSER']}@{db.env['PGHOST']}:{db.env['PGPORT']}/{db.name}"
    return env


def verify_tasks_changed(stdout: str) -> list[str]:
    """Names of verify-role tasks that reported `changed` (the connection role's pgpass file may)."""
    changed: list[str] = []
    task = ""
    for line in stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line
        elif line.startswith("changed:") and task.startswith("TASK [verify"):
            changed.append(task)
    return changed


@pytest.mark.parametrize("check_mode", [False, True])
def test_verify_playbook_passes_on_a_migrated_database(migrated: Database, check_mode: bool) -> None:
    argv = [str(VENV_BIN / "ansible-playbook"), "verify.yml"]
    if check_mode:
        argv.append("--check")
    done = subprocess.run(argv, cwd=REPO, env=playbook_env(migrated), capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 discrepancies" in done.stdout
    assert verify_tasks_changed(done.stdout) == []
    assert migrated.cluster.password not in done.stdout + done.stderr


def test_verify_playbook_fails_naming_the_suites_check_and_still_reconciles(scratch: Database) -> None:
    conn = scratch.connect()
    with conn, conn.cursor() as cur:
        cur.execute('DROP TRIGGER capital_guard ON "Prestamo"')
    conn.close()
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "verify.yml"],
                          cwd=REPO, env=playbook_env(scratch), capture_output=True, text=True, check=False,
                          timeout=600)
    assert done.returncode != 0
    assert "Verification failed: sql_suite" in done.stdout, done.stdout[-4000:]
    assert "FAILED a loan above the available capital" in done.stdout
    assert "0 discrepancies" in done.stdout
    assert scratch.cluster.password not in done.stdout + done.stderr


def test_verify_playbook_fails_on_one_cent(scratch: Database) -> None:
    conn = scratch.connect()
    with conn, conn.cursor() as cur:
        cur.execute('UPDATE "Junta" SET base_capital = base_capital - 0.01 '
                    'WHERE id = (SELECT min(id) FROM "Junta")')
        # Beyond the guide's 0.01 tolerance: its "Verify capital calculations" query returns this junta.
        cur.execute('UPDATE "Junta" SET available_capital = available_capital - 0.02 '
                    'WHERE id = (SELECT max(id) FROM "Junta") RETURNING id')
        [(off_by_two,)] = cur.fetchall()
    conn.close()
    done = subprocess.run([str(VENV_BIN / "ansible-playbook"), "verify.yml"],
                          cwd=REPO, env=playbook_env(scratch), capture_output=True, text=True, check=False,
                          timeout=600)
    assert done.returncode != 0
    assert "Verification failed: capital_check" in done.stdout
    assert "base_capital" in done.stdout and "-0.01" in done.stdout
    assert f"guide capital consistency: 1 juntas differ: {off_by_two}" in done.stdout
