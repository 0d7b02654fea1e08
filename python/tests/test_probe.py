"""Named read-only probes (module_utils/probe.py, module capital_probe) on a real cluster: results by name,
one snapshot for all of them, nothing written, a refused probe named, exact numbers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml
from ansible_collections.prestamos.capital.plugins.module_utils.probe import ProbeError, run_probes
from capital_migrate.pgtmp import Database
from migration_helpers import seed_db

ROOT = Path(__file__).resolve().parents[2]
PROBES = ROOT / "files" / "sql" / "probes"


def _probe_files(*names: str) -> dict[str, str]:
    return {name: (PROBES / f"{name}.sql").read_text(encoding="utf-8") for name in names}


def test_results_come_back_by_name_with_exact_numbers(pg_db: Database) -> None:
    conn = pg_db.connect()
    try:
        results = run_probes(conn, {
            "money": "SELECT 0.1::numeric + 0.2::numeric AS cents, now() AS at",
            "none": "SELECT 1 AS x WHERE false",
            "echo": "SELECT %(tables)s AS tables, 7 %% 2 AS odd",
            "literal": "SELECT 7 % 2 AS odd",
        }, params={"tables": "Junta,Prestamo"})
    finally:
        conn.close()
    assert list(results) == ["money", "none", "echo", "literal"]
    assert results["money"][0]["cents"] == "0.3"  # exact: the string of the NUMERIC, never a float
    assert isinstance(results["money"][0]["at"], str)
    assert results["none"] == []
    # A probe that names a parameter writes a literal % as %%; one that names none keeps its % as written.
    assert results["echo"] == [{"tables": "Junta,Prestamo", "odd": 1}]
    assert results["literal"] == [{"odd": 1}]


def test_every_probe_of_preflight_runs_and_all_see_one_snapshot(pg_db: Database) -> None:
    """The catalog and data probes run against the guide's schema; a row committed by another session while
    they run is seen by none of them (REPEATABLE READ, READ ONLY)."""
    seed_db(pg_db, juntas=3)
    role_vars = yaml.safe_load((ROOT / "roles" / "preflight" / "vars" / "main.yml").read_text(encoding="utf-8"))
    names = [*role_vars["__capital_preflight_catalog_probes"], *role_vars["__capital_preflight_data_probes"]]
    probes = _probe_files(*names)
    # Another session commits a new junta while the probes run (during "pause"); none of them may see it.
    count = 'SELECT count(*) AS n FROM "Junta"'
    probes = {"before": count, "pause": "SELECT pg_sleep(1.5) AS slept", **probes, "after": count}
    conn = pg_db.connect()
    other = pg_db.connect()
    try:
        def write() -> None:
            with other.cursor() as cur:
                cur.execute('INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id) '
                            'SELECT \'probe-new\', \'new\', now(), created_by_id FROM "Junta" LIMIT 1')
            other.commit()

        writer = threading.Timer(0.5, write)
        writer.start()
        results = run_probes(conn, probes, params={
            "tables": "Junta,Accion,Multa,Prestamo,PagoPrestamo,User", "max_age": 300,
            "name": "prestamos.capital_tracking", "kinds": "orphans,null_amounts",
            "prestamo_status": "PENDING,PAID", "multa_status": "PENDING,PAID"},
            settings={"jit": "off", "work_mem": "64MB"})
        writer.join()
        again = run_probes(conn, {"after": probes["after"]})
    finally:
        conn.close()
        other.close()
    assert set(results) == {"before", "pause", "after", *names}
    assert results["before"] == results["after"]
    assert again["after"][0]["n"] == results["after"][0]["n"] + 1
    assert {row["name"] for row in results["tables"]} >= {"Junta", "Prestamo"}
    assert sum(int(row["rows"]) for row in results["counts"]) > 0


def test_a_refused_probe_is_named_and_nothing_is_written(pg_db: Database) -> None:
    conn = pg_db.connect()
    try:
        with pytest.raises(ProbeError) as caught:
            run_probes(conn, {"fine": "SELECT 1 AS x", "broken": "SELECT * FROM no_such_table"})
        assert caught.value.probe == "broken" and caught.value.sqlstate == "42P01"
        assert "no_such_table" in str(caught.value)
        with pytest.raises(ProbeError) as refused:
            run_probes(conn, {"write": "CREATE TABLE probe_wrote (x int)"})
        assert refused.value.sqlstate == "25006"  # read-only transaction
        assert run_probes(conn, {"t": "SELECT to_regclass('probe_wrote') IS NULL AS absent"})["t"] == [{"absent": True}]
    finally:
        conn.close()


def test_an_optional_probe_the_server_refuses_gives_null_and_the_others_run(pg_db: Database) -> None:
    """The backup's identity where an administrator revoked pg_control_system(): null, not a failure."""
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE ROLE probe_limited LOGIN")
            cur.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
        conn.commit()
        try:
            with conn.cursor() as cur:
                cur.execute("SET ROLE probe_limited")
            conn.commit()
            results = run_probes(conn, _probe_files("identity", "system_identifier"),
                                 optional=["system_identifier"])
            with conn.cursor() as cur:
                cur.execute("RESET ROLE")
            conn.commit()
            allowed = run_probes(conn, _probe_files("identity", "system_identifier"), optional=["system_identifier"])
        finally:
            with conn.cursor() as cur:
                cur.execute("RESET ROLE")
                cur.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
                cur.execute("DROP ROLE probe_limited")
            conn.commit()
    finally:
        conn.close()
    assert results["identity"][0]["database"] == pg_db.name
    assert results["system_identifier"] is None
    assert "permission denied" in results["_errors"]["system_identifier"]
    assert allowed["system_identifier"][0]["system_identifier"].isdigit()
    assert "_errors" not in allowed
    with pytest.raises(ProbeError):
        run_probes(pg_db.connect(), {"broken": "SELECT * FROM no_such_table"}, optional=["other"])


def test_row_counts_quote_every_table_name_it_is_given(pg_db: Database) -> None:
    """A name read from a manifest is an identifier, never SQL: a hostile one is counted, not run."""
    hostile = 'x"; DROP TABLE "Junta"; --'
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute('CREATE TABLE "Junta" (id int); INSERT INTO "Junta" VALUES (1), (2)')
            cur.execute('CREATE TABLE "%s" (id int); INSERT INTO "%s" VALUES (1)' % ((hostile.replace('"', '""'),) * 2))
        conn.commit()
        rows = run_probes(conn, {}, count_rows=["Junta", hostile])["row_counts"]
    finally:
        conn.close()
    assert rows == [{"name": "Junta", "rows": 2}, {"name": hostile, "rows": 1}]


# -- reading ahead on a second session (module_utils/prefetch.py, used by capital_check) ------------------
def _exported(db: Database) -> tuple[object, str]:
    conn = db.connect()
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        return conn, str(cur.fetchone()[0])


def test_a_read_ahead_session_hands_over_its_rows_or_its_error_in_the_same_snapshot(pg_db: Database) -> None:
    """Whichever session read a query, the caller gets the rows of its snapshot (or the error) once."""
    from ansible_collections.prestamos.capital.plugins.module_utils.prefetch import Prefetch

    seed_db(pg_db, juntas=2)
    conn, snapshot = _exported(pg_db)
    who = "SELECT pg_backend_pid(), pg_current_snapshot()::text"
    queries = [who + ", 1", who + ", 2", "SELECT 1 / 0", who + ", 3"]
    ahead = Prefetch(queries)
    outcomes: list[str] = []
    try:
        ahead.start(pg_db.connect, snapshot)
        deadline = time.monotonic() + 30
        while ahead.read_ahead == 0 and time.monotonic() < deadline:  # the reader starts at the end
            time.sleep(0.01)
        with conn.cursor() as cur:
            cur.execute(who)
            mine = cur.fetchone()
            for sql in queries:
                try:
                    rows = ahead.take(sql)
                except Exception as exc:
                    outcomes.append(f"reader: {exc}")
                    continue
                if rows is None:  # the caller's to run
                    cur.execute("SAVEPOINT q")
                    try:
                        cur.execute(sql)
                        rows = cur.fetchall()
                    except Exception as exc:
                        cur.execute("ROLLBACK TO SAVEPOINT q")
                        outcomes.append(f"caller: {exc}")
                        continue
                    assert rows[0][0] == mine[0]
                else:
                    assert rows[0][0] != mine[0]
                assert rows[0][1] == mine[1]  # the same snapshot either way
                outcomes.append("rows")
    finally:
        ahead.close()
        conn.close()
    assert ahead.read_ahead >= 1
    assert outcomes[:2] + outcomes[3:] == ["rows"] * 3 and "division by zero" in outcomes[2]
