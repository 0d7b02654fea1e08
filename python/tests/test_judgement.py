"""The pass/warn/fail rules of preflight and verify (module_utils/judgement.py), without Ansible or a database.

The inputs have the shapes the roles hand over: probe rows by name, registered command and module results.
The messages are pinned where operators, the run role and other tests read them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils import judgement as j

CONN = {"host": "db.example", "port": 5433, "user": "migrator", "password": "s3cret", "dbname": "prestamos"}
CATALOG: dict[str, Any] = {
    "db_size": [{"bytes": 1000, "server_version": "15.8", "server_major": 15}],
    "role": [{"login_role": "migrator", "superuser": False, "schema_create": True, "plpgsql_usage": True}],
    "tables": [
        {"name": name, "present": True, "owner": "migrator", "may_alter": True, "may_trigger": True,
         "may_select": True}
        for name in ("Junta", "Accion", "Multa", "Prestamo", "PagoPrestamo", "User")
    ],
    "old_xacts": [],
    "table_locks": [],
    "advisory": [],
    "objects": [{"has_ledger": False, "has_history": False, "objects_present": []}],
}


def by_name(checks: list[j.Check]) -> dict[str, j.Check]:
    return {check["name"]: check for check in checks}


# --- connection and server version ------------------------------------------------------------------------


def test_a_connection_passes_and_reports_where() -> None:
    judged = j.connection(probe={"rows": CATALOG}, conn=CONN, min_server_major=12)
    checks = by_name(judged["checks"])
    assert checks["connection"] == {"name": "connection", "status": "pass", "message": "connected",
                                    "value": "database prestamos as migrator on db.example:5433"}
    assert checks["server_version"]["status"] == "pass"
    assert checks["server_version"]["value"] == "15.8"
    assert (judged["connected"], judged["server_major"], judged["server_version"]) == (True, 15, "15.8")
    assert "s3cret" not in str(judged)


def test_a_refused_connection_fails_both_checks_with_libpqs_error_and_no_password() -> None:
    probe = {"failed": True, "msg": "unable to connect to database: FATAL:  password authentication failed\n"}
    judged = j.connection(probe=probe, conn={**CONN, "user": None, "host": ""}, min_server_major=12)
    checks = by_name(judged["checks"])
    assert checks["connection"]["status"] == "fail"
    assert checks["connection"]["message"] == (
        "cannot connect to database prestamos as (libpq default user) on (local socket):5433: FATAL:  password "
        "authentication failed - check capital_db_host/port/user/name (or DATABASE_URL, PG*) and the password")
    assert checks["server_version"] == {"name": "server_version", "status": "fail", "value": "unknown",
                                        "message": "not measured: no connection"}
    assert (judged["connected"], judged["server_major"], judged["server_version"]) == (False, 0, "")
    assert "s3cret" not in str(judged)


@pytest.mark.parametrize(("major", "status"), [(11, "fail"), (12, "pass"), (13, "pass")])
def test_the_oldest_supported_server_major_passes_and_one_below_fails(major: int, status: str) -> None:
    rows = {"db_size": [{"bytes": 1, "server_version": f"{major}.1", "server_major": major}]}
    check = by_name(j.connection(probe={"rows": rows}, conn=CONN, min_server_major="12")["checks"])["server_version"]
    assert check["status"] == status
    assert check["message"] == ("supported (PostgreSQL 12 or newer)" if status == "pass"
                                else "PostgreSQL 12 or newer is required")


# --- client tools -----------------------------------------------------------------------------------------

TOOLS = ("psql", "pg_dump", "pg_restore")


def tool_checks(stdout: list[str], server_major: int | str, stderr: list[str] | None = None) -> dict[str, j.Check]:
    result = {"rc": 123 if stderr else 0, "stdout_lines": stdout, "stderr_lines": stderr or [], "msg": ""}
    return by_name(j.tools(tools=TOOLS, result=result, server_major=server_major, host="ops1")["checks"])


def test_tools_of_the_servers_major_pass_and_an_older_one_fails() -> None:
    checks = tool_checks(["psql (PostgreSQL) 15.8", "pg_dump (PostgreSQL) 9.6.24", "pg_restore (PostgreSQL) 16.1"],
                         "15")
    assert checks["tool_psql"] == {"name": "tool_psql", "status": "pass", "value": "psql (PostgreSQL) 15.8",
                                   "message": "major 15 >= server 15"}
    assert checks["tool_pg_restore"]["status"] == "pass"
    assert checks["tool_pg_dump"]["status"] == "fail"
    assert checks["tool_pg_dump"]["message"] == (
        "pg_dump major 9 is older than the server (15): it cannot dump or restore this server; install client "
        "tools of major 15 or newer")


def test_a_missing_tool_fails_naming_the_host_and_its_own_error() -> None:
    checks = tool_checks(["psql (PostgreSQL) 15.8", "pg_restore (PostgreSQL) 15.8"], 15,
                         stderr=["env: 'pg_dump': No such file or directory"])
    assert checks["tool_pg_dump"]["status"] == "fail"
    assert checks["tool_pg_dump"]["value"] == "not found"
    assert checks["tool_pg_dump"]["message"] == (
        "pg_dump not found on ops1 (env: 'pg_dump': No such file or directory): install the PostgreSQL client "
        "package of the server major version or newer")
    assert checks["tool_psql"]["status"] == "pass"


def test_tools_only_warn_when_the_server_version_is_unknown() -> None:
    checks = tool_checks(["psql (PostgreSQL) 15.8", "pg_dump (PostgreSQL) 15.8", "pg_restore (PostgreSQL) 15.8"], 0)
    assert {check["status"] for check in checks.values()} == {"warn"}
    assert checks["tool_psql"]["message"] == "server version unknown: version not compared"


def test_a_line_naming_another_tool_is_not_taken_for_it() -> None:
    """pg_dumpall's line must not count as pg_dump's: a tool's line starts with its name and a space."""
    checks = tool_checks(["pg_dumpall (PostgreSQL) 15.8"], 15)
    assert checks["tool_pg_dump"]["status"] == "fail"


# --- backup space -----------------------------------------------------------------------------------------

DF_OK = {"rc": 0, "stdout_lines": ["/var/backups", "     Avail", "  2000"], "stderr": ""}


def space(df: dict[str, Any], catalog: dict[str, Any], factor: Any = 2, override: Any = None) -> j.Check:
    judged = j.backup_space(directory="/var/backups/capital", df=df, catalog=catalog, space_factor=factor,
                            free_bytes_override=override)
    [check] = judged["checks"]
    assert judged["database_bytes"] == check["value"]["database_bytes"]
    return check


def test_free_space_exactly_equal_to_what_is_needed_passes() -> None:
    check = space(DF_OK, CATALOG)  # 2000 free, 1000 bytes x 2
    assert check["status"] == "pass" and check["message"] == "enough space"
    assert check["value"] == {"directory": "/var/backups/capital", "free_bytes": 2000, "database_bytes": 1000,
                              "needed_bytes": 2000, "simulated": False}


def test_one_byte_short_fails_with_every_figure_in_the_message() -> None:
    check = space(DF_OK, CATALOG, override=1999)
    assert check["status"] == "fail"
    assert check["value"]["simulated"] is True and check["value"]["free_bytes"] == 1999
    assert check["message"] == (
        "not enough space in /var/backups/capital: 1999 bytes free, 2000 needed (database 1000 bytes x "
        "capital_backup_space_factor 2); free space or point capital_backup_dir elsewhere")


def test_the_space_needed_is_exact_not_a_float_product() -> None:
    """100 bytes x 1.1 is 110 bytes; the float product (110.00000000000001) rounded up would ask for 111."""
    assert 100 * 1.1 > 110
    assert j.needed_bytes(100, 1.1) == 110
    assert j.needed_bytes(100, "2.2") == 220
    assert j.needed_bytes(3, Decimal("0.5")) == 2  # a fraction of a byte rounds up
    catalog = {"db_size": [{"bytes": 100}]}
    check = space(DF_OK, catalog, factor=1.1, override=110)
    assert check["status"] == "pass" and check["value"]["needed_bytes"] == 110


def test_a_directory_that_cannot_be_written_fails_with_the_reason() -> None:
    df = {"rc": 4, "stdout_lines": ["/var"], "stderr": "/var is not writable by user ops\n"}
    check = space(df, CATALOG)
    assert check["status"] == "fail" and check["value"]["free_bytes"] == -1
    assert check["message"] == ("cannot back up to /var/backups/capital: /var is not writable by user ops - point "
                                "capital_backup_dir at a directory this user can create or write")


def test_without_a_connection_the_space_is_measured_but_not_compared() -> None:
    check = space(DF_OK, {})
    assert check["status"] == "warn"
    assert check["message"] == "database size unknown (no connection): space not compared"
    assert check["value"]["database_bytes"] == -1 and check["value"]["needed_bytes"] == -1


# --- one command, two sections (roles/preflight/tasks/host.yml) ---------------------------------------------

def host_result(space_out: list[str], space_err: list[str], space_rc: int) -> dict[str, Any]:
    """What host.yml's command returns: the tools section, then the space section with its exit status."""
    return {
        "rc": 0, "msg": "",
        "stdout_lines": ["@@capital tools", "psql (PostgreSQL) 15.8", "pg_restore (PostgreSQL) 15.8",
                         "@@capital space", *space_out, f"@@capital space rc={space_rc}"],
        "stderr_lines": ["@@capital tools", "env: 'pg_dump': No such file or directory", "@@capital space",
                         *space_err],
    }


def test_each_section_of_the_host_command_is_judged_on_its_own() -> None:
    result = host_result(["/srv/pg_dump backups", "     Avail", "  2000"], [], 0)
    tools = by_name(j.tools(tools=TOOLS, result=result, server_major=15, host="ops1")["checks"])
    assert [tools[f"tool_{t}"]["status"] for t in TOOLS] == ["pass", "fail", "pass"]
    # The missing tool's own error, not a line of the space section that happens to name it.
    assert tools["tool_pg_dump"]["message"].startswith("pg_dump not found on ops1 (env: 'pg_dump': No such file")
    check = space(result, CATALOG)
    assert check["status"] == "pass" and check["value"]["free_bytes"] == 2000


def test_the_space_sections_own_exit_status_and_error_decide() -> None:
    result = host_result(["/var"], ["/var is not writable by user ops"], 4)
    check = space(result, CATALOG)
    assert check["status"] == "fail" and check["value"]["free_bytes"] == -1
    assert check["message"] == ("cannot back up to /var/backups/capital: /var is not writable by user ops - point "
                                "capital_backup_dir at a directory this user can create or write")
    # A section that never closed (the shell died in it) is a failure, not the command's 0.
    cut = {**result, "stdout_lines": result["stdout_lines"][:-1]}
    cut["stdout_lines"][-1] = "  2000"
    assert space(cut, CATALOG)["status"] == "fail"


# --- activity ---------------------------------------------------------------------------------------------


def test_no_activity_passes_all_three_checks() -> None:
    checks = by_name(j.activity(catalog=CATALOG, max_xact_age=300)["checks"])
    assert [check["status"] for check in checks.values()] == ["pass", "pass", "pass"]
    assert checks["long_transactions"]["message"] == "no transaction older than 300 s"
    assert checks["long_transactions"]["value"] == []


def test_long_transactions_and_another_run_fail_while_table_locks_warn() -> None:
    holder = {"pid": 77, "granted": True, "user_name": "ops", "application_name": "capital-migrate",
              "client": "local", "since": "2026-01-01T00:00:00Z"}
    catalog = {**CATALOG,
               "old_xacts": [{"pid": 11, "age_seconds": 900}, {"pid": 12, "age_seconds": 400}],
               "table_locks": [{"pid": 11, "relation": "Junta"}, {"pid": 11, "relation": "Accion"},
                               {"pid": 13, "relation": "Junta"}],
               "advisory": [holder]}
    checks = by_name(j.activity(catalog=catalog, max_xact_age="300")["checks"])
    assert checks["long_transactions"]["status"] == "fail"
    assert checks["long_transactions"]["message"] == (
        "2 transaction(s) older than 300 s (pids 11, 12): they would block the migration's DDL; wait for them to "
        "finish or end them, then rerun")
    assert checks["legacy_table_locks"]["status"] == "warn"
    assert checks["legacy_table_locks"]["message"] == (
        "2 session(s) hold or wait for locks on the legacy tables (pids 11, 13); the migration waits at most "
        "lock_timeout per attempt")
    assert checks["migration_lock"]["status"] == "fail"
    assert checks["migration_lock"]["value"] == [holder]
    assert checks["migration_lock"]["message"] == (
        'another run holds the migration lock: {"pid": 77, "granted": true, "user_name": "ops", "application_name": '
        '"capital-migrate", "client": "local", "since": "2026-01-01T00:00:00Z"} - wait for it to finish')


# --- privileges -------------------------------------------------------------------------------------------


def test_an_owner_with_create_passes_every_privilege_check() -> None:
    judged = j.privileges(catalog=CATALOG, dbname="prestamos")
    assert judged["tables_present"] is True
    checks = by_name(judged["checks"])
    assert {check["status"] for check in checks.values()} == {"pass"}
    assert checks["privilege_schema_create"]["value"] == "migrator: CREATE on schema public = True"
    assert checks["legacy_tables_owned"]["value"]["Junta"] == "migrator"


def test_a_weak_role_fails_naming_each_table_once() -> None:
    tables = [{"name": "Junta", "present": True, "owner": "app", "may_alter": False, "may_trigger": False,
               "may_select": True},
              {"name": "Accion", "present": True, "owner": "app", "may_alter": False, "may_trigger": True,
               "may_select": False},
              {"name": "User", "present": False, "owner": "", "may_alter": False, "may_trigger": False,
               "may_select": False}]
    catalog = {"role": [{"login_role": "weak", "schema_create": False, "plpgsql_usage": False}], "tables": tables}
    judged = j.privileges(catalog=catalog, dbname="prestamos")
    assert judged["tables_present"] is False
    checks = by_name(judged["checks"])
    assert {check["status"] for check in checks.values()} == {"fail"}
    assert checks["privilege_schema_create"]["message"].startswith("role weak lacks CREATE on schema public")
    assert checks["privilege_plpgsql"]["message"] == (
        "role weak cannot use language plpgsql (needed for the trigger functions)")
    assert checks["legacy_tables_present"]["value"] == ["Junta", "Accion"]
    assert checks["legacy_tables_present"]["message"] == (
        "missing in schema public of database prestamos: User - is this the prestamos database?")
    assert checks["legacy_tables_readable"]["value"] == ["Accion"]
    assert checks["legacy_tables_owned"]["message"] == (
        "role weak may not alter or add triggers to Junta, Accion: run as the tables' owner (or a member of the "
        "owning role)")


# --- migration state and provenance -----------------------------------------------------------------------

SHA = "a" * 64
OLD_SHA = "b" * 64


def state(present: list[str], history: list[dict[str, Any]] | None, module: dict[str, Any] | None = None,
          sql_sha256: str = "") -> j.StateJudgement:
    catalog = {"objects": [{"objects_present": present}]}
    result = {"rows": {"history": history}} if history is not None else {"skipped": True}
    return j.migration_state(module={"sql_sha256": SHA, **(module or {})}, catalog=catalog, history=result,
                             sql_sha256=sql_sha256)


def applied(sha: str, version: int = 1) -> dict[str, Any]:
    return {"version": version, "sql_sha256": sha, "outcome": "applied", "finished_at": "2026-01-01T00:00:00Z"}


def test_nothing_present_is_not_applied_and_passes() -> None:
    judged = state([], None)
    assert (judged["state"], judged["guide_schema"], judged["foreign_schema"]) == ("not_applied", True, {})
    assert judged["checks"] == [{"name": "migration_state", "status": "pass",
                                 "value": {"state": "not_applied", "objects_present": [], "history": []},
                                 "message": "the migration has not been applied"}]


def test_objects_without_an_applied_run_are_partial_and_warn() -> None:
    judged = state(["capital_movements", "Junta capital columns"], [{**applied(SHA), "outcome": "interrupted"}])
    [check] = judged["checks"]
    assert judged["state"] == "partial" and check["status"] == "warn"
    assert check["message"] == ("the migration is partly applied (capital_movements, Junta capital columns); "
                                "a rerun resumes it")


def test_an_applied_run_with_this_checksum_or_an_accepted_one_is_applied() -> None:
    assert state(["capital_movements"], [applied(SHA)])["state"] == "applied"
    accepted = {"accepted_sha256": {"1": [OLD_SHA]}}
    assert state(["capital_movements"], [applied(OLD_SHA)], accepted)["state"] == "applied"
    # Accepted for another version only: drift.
    assert state(["capital_movements"], [applied(OLD_SHA, version=2)], accepted)["state"] == "drifted"


def test_another_checksum_is_drift_and_fails_naming_both() -> None:
    judged = state(["capital_movements"], [applied(OLD_SHA), applied(SHA)])
    [check] = judged["checks"]
    assert judged["state"] == "drifted" and check["status"] == "fail"
    assert check["message"] == f"the applied migration (sha256 {OLD_SHA}) differs from the SQL files (sha256 {SHA})"
    # The operator's checksum replaces the files'.
    assert state(["capital_movements"], [applied(OLD_SHA)], sql_sha256=OLD_SHA)["state"] == "applied"


def test_a_foreign_schema_is_the_guide_schema_check_not_migration_state() -> None:
    finding = {"foreign_schema": True, "msg": "this is the application's ORM-shaped database",
               "found": ["juntas", "prestamos"], "expected": ["Junta"], "next_step": "point it elsewhere"}
    judged = state([], None, finding)
    assert (judged["state"], judged["guide_schema"]) == ("foreign_schema", False)
    assert judged["foreign_schema"] == {"state": "foreign_schema", "message": finding["msg"],
                                        "found": finding["found"], "expected": ["Junta"],
                                        "next_step": "point it elsewhere"}
    assert judged["checks"] == [{"name": "guide_schema", "status": "fail",
                                 "value": {"state": "foreign_schema", "found": ["juntas", "prestamos"]},
                                 "message": "this is the application's ORM-shaped database"}]


def test_provenance_passes_when_nothing_is_foreign_and_fails_naming_each_object() -> None:
    [ok] = j.object_provenance(module={"provenance": {"owned": 3, "adoptable": ["a", "b"]},
                                       "provenance_drift": []})["checks"]
    assert ok["status"] == "pass"
    assert ok["value"] == {"not_provably_ours": [], "recorded": 3, "adoptable": 2}
    assert ok["message"] == ("every object of the migration already here is in its record (3), or matches the SQL "
                             "files and will be adopted (2)")
    [refused] = j.object_provenance(module={"provenance_drift": ["table capital_movements",
                                                                 'column "Junta".base_capital']})["checks"]
    assert refused["status"] == "fail" and refused["value"]["recorded"] == 0
    assert refused["message"].startswith("refused: 2 object(s) the migration creates already exist and are not "
                                         'provably its own: table capital_movements; column "Junta".base_capital.')


# --- the guide's state query, data quality, the plan ------------------------------------------------------


def test_the_guide_query_passes_when_it_ran_and_warns_when_too_costly() -> None:
    [ran] = j.guide_state_query(result={"rows": {}}, guide_rows=42, max_rows=2000000)["checks"]
    assert ran["status"] == "pass" and ran["value"] == {"guide_rows": 42}
    [skipped] = j.guide_state_query(result={"skipped": True}, guide_rows="3000000", max_rows=2000000)["checks"]
    assert skipped["status"] == "warn" and skipped["value"] == {"guide_rows": 3000000}
    assert "more than capital_preflight_guide_query_max_rows = 2000000" in skipped["message"]


def test_data_quality_none_passes_a_listed_kind_fails_and_others_warn() -> None:
    rows = [{"kind": "orphans", "count": 2, "sample_ids": ["Accion.junta_id:a4", "PagoPrestamo.prestamo_id:g3"]},
            {"kind": "overpaid_loans", "count": 1, "sample_ids": ["Prestamo:p1"]},
            {"kind": "zero_amounts", "count": 0, "sample_ids": []}]
    checks = by_name(j.data_quality(quality=rows, fail_on=["orphans", "null_amounts"])["checks"])
    assert checks["data_orphans"]["status"] == "fail"
    assert checks["data_orphans"]["value"] == {"count": 2, "sample_ids": rows[0]["sample_ids"]}
    assert checks["data_orphans"]["message"] == (
        "2 row(s) of kind orphans (e.g. Accion.junta_id:a4, PagoPrestamo.prestamo_id:g3); listed in "
        "capital_preflight_fail_on: fix the data or remove the kind from that list")
    assert checks["data_overpaid_loans"]["status"] == "warn"
    assert checks["data_overpaid_loans"]["message"].endswith("; reported only")
    assert checks["data_zero_amounts"] == {"name": "data_zero_amounts", "status": "pass", "message": "none found",
                                           "value": {"count": 0, "sample_ids": []}}
    assert j.data_quality(quality=[], fail_on=["orphans"]) == {"checks": []}


SOURCES = {"Accion": ["capital_movements"], "Prestamo": ["capital_movements", '"PrestamoNew"']}
COUNTS = [{"source": "Accion", "rows": 14}, {"source": "Prestamo", "rows": 7}, {"source": "Junta", "rows": 3}]


def test_the_plan_counts_batches_exactly_and_a_full_last_batch_is_not_one_more() -> None:
    plan = j.plan(state="not_applied", counts=COUNTS, backfill_sources=SOURCES, objects={"tables": ["t"]},
                  batch_size="7", database_bytes=1000)["plan"]
    assert plan["backfill"] == [
        {"source": "Accion", "rows": 14, "targets": ["capital_movements"], "batches": 2},
        {"source": "Prestamo", "rows": 7, "targets": ["capital_movements", '"PrestamoNew"'], "batches": 1}]
    assert (plan["total_batches"], plan["junta_rows_to_update"], plan["batch_size"]) == (3, 3, 7)
    assert plan["action"] == "expand, backfill, enforce, record"
    assert plan["objects_to_create"] == {"tables": ["t"]} and plan["backup_estimate_bytes"] == 1000
    empty = j.plan(state="partial", counts=[{"source": "Accion", "rows": 0}], backfill_sources=SOURCES, objects={},
                   batch_size=7, database_bytes=0)["plan"]
    assert [item["batches"] for item in empty["backfill"]] == [0, 0] and empty["total_batches"] == 0


def test_an_applied_migration_plans_nothing() -> None:
    plan = j.plan(state="applied", counts=COUNTS, backfill_sources=SOURCES, objects={"tables": ["t"]},
                  batch_size=7, database_bytes=1000)["plan"]
    assert plan["action"] == "nothing: the migration is already applied"
    assert (plan["objects_to_create"], plan["backfill"], plan["total_batches"], plan["junta_rows_to_update"]) == (
        {}, [], 0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        j.plan(state="applied", counts=COUNTS, backfill_sources=SOURCES, objects={}, batch_size=0, database_bytes=0)


def test_the_summary_lists_every_failed_check_with_its_message() -> None:
    checks: list[j.Check] = [
        {"name": "connection", "status": "fail", "value": "", "message": "cannot connect to x"},
        {"name": "legacy_table_locks", "status": "warn", "value": [], "message": "2 session(s)"},
        {"name": "backup_space", "status": "fail", "value": {}, "message": "not enough space"},
        {"name": "migration_lock", "status": "pass", "value": [], "message": "free"},
    ]
    summary = j.preflight_summary(checks)
    assert summary["failed"] == ["connection", "backup_space"] and summary["warnings"] == ["legacy_table_locks"]
    assert summary["fail_msg"] == ("Preflight failed 2 check(s): connection: cannot connect to x | "
                                   "backup_space: not enough space")
    assert summary["lines"][1] == "WARN legacy_table_locks 2 session(s)"
    assert j.preflight_summary([])["failed"] == []
    assert j.preflight_summary(checks[1:2])["success_msg"] == "Preflight passed (1 warning(s))"


# --- verify -----------------------------------------------------------------------------------------------

CHECK_OK: dict[str, Any] = {
    "juntas_checked": 6, "method": "sql", "discrepancy_count": 0, "discrepancies": [],
    "summary": "capital_check found no discrepancies (exact to the cent)",
    "totals": {"base_capital": "100.00"}, "totals_recorded": {"base_capital": "100.00"},
    "ledger": {}, "shadow": {}, "snapshot_time": "2026-01-01T00:00:00Z",
    "query_results": [{"rows": [], "error": ""}, {"rows": [], "error": ""}],
}
ONE_CENT = {"junta_id": "j1", "field": "base_capital", "expected": "100.00", "actual": "99.99",
            "difference": "-0.01"}


def test_the_sql_suite_passes_on_exit_0_and_lists_its_checks() -> None:
    result = {"rc": 0, "stderr_lines": ["psql:<stdin>:10: NOTICE:  ok: ledger is append-only",
                                        "psql:<stdin>:11: NOTICE:  ok: trigger on Multa for INSERT"]}
    suite = j.sql_suite(result)["sql_suite"]
    assert suite == {"passed": True, "rc": 0, "error": "",
                     "checks_passed": ["ledger is append-only", "trigger on Multa for INSERT"]}


def test_the_sql_suite_fails_with_the_line_that_stopped_it_or_the_commands_message() -> None:
    result = {"rc": 3, "msg": "non-zero return code",
              "stderr_lines": ["psql:<stdin>:10: NOTICE:  ok: a", "psql:<stdin>:20: ERROR:  FAILED trigger on Multa"]}
    suite = j.sql_suite(result)["sql_suite"]
    assert (suite["passed"], suite["error"], suite["checks_passed"]) == (False, "FAILED trigger on Multa", ["a"])
    assert j.sql_suite({"rc": 2, "msg": "No such file", "stderr_lines": []})["sql_suite"]["error"] == "No such file"
    assert j.sql_suite({})["sql_suite"]["rc"] == -1


def test_capital_check_passes_with_no_discrepancy_and_one_cent_fails() -> None:
    ok = j.capital_check(CHECK_OK, "sql")["capital_check"]
    assert ok["passed"] is True and ok["error"] == "" and ok["juntas_checked"] == 6
    cent = j.capital_check({**CHECK_OK, "discrepancy_count": 1, "discrepancies": [ONE_CENT]}, "sql")["capital_check"]
    assert cent["passed"] is False and cent["discrepancies"] == [ONE_CENT]
    assert Decimal(cent["discrepancies"][0]["difference"]) == Decimal("-0.01")


def test_capital_check_that_did_not_run_fails_with_its_message() -> None:
    failed = j.capital_check({"failed": True, "msg": "could not connect"}, "python")["capital_check"]
    assert (failed["passed"], failed["error"], failed["method"], failed["juntas_checked"]) == (
        False, "could not connect", "python", 0)
    assert j.capital_check({}, "sql")["capital_check"]["error"] == "capital_check did not run"


def test_the_guide_queries_pass_with_no_rows_and_fail_with_rows_or_an_error() -> None:
    judged = j.guide_queries(CHECK_OK)
    assert judged["guide_capital_consistency"] == {"passed": True, "rows": [], "error": ""}
    row = {"id": "j1", "name": "J", "current_capital": "10.00", "available_capital": "9.98", "discrepancy": "0.02"}
    judged = j.guide_queries({**CHECK_OK, "query_results": [{"rows": [row], "error": ""},
                                                            {"rows": [], "error": "permission denied"}]})
    assert judged["guide_capital_consistency"]["passed"] is False
    assert judged["guide_unvalidated_constraints"] == {"passed": False, "rows": [], "error": "permission denied"}
    not_run = j.guide_queries({"msg": "could not connect"})
    assert not_run["guide_capital_consistency"] == {"passed": False, "rows": [], "error": "could not connect"}


def results(**changes: Any) -> dict[str, dict[str, Any]]:
    recorded: dict[str, dict[str, Any]] = {
        **j.sql_suite({"rc": 0, "stderr_lines": ["NOTICE:  ok: a"]}),
        **j.capital_check(CHECK_OK, "sql"),
        **j.guide_queries(CHECK_OK),
    }
    recorded.update(changes)
    return recorded


def test_the_verdict_passes_when_every_result_passed() -> None:
    judged = j.verify_verdict(results())
    assert judged["verdict"] == {"passed": True, "failed_checks": []}
    assert judged["lines"] == ["SQL test suite: True (1 checks passed)",
                               "capital_check (sql): 6 juntas, 0 discrepancies, totals {'base_capital': '100.00'}",
                               "guide capital consistency: 0 rows", "guide unvalidated constraints: 0 rows"]
    assert j.verify_verdict({})["verdict"] == {"passed": True, "failed_checks": []}


def test_the_verdict_names_every_failed_check_and_why() -> None:
    rows = [{"id": f"j{n}"} for n in range(7)]
    judged = j.verify_verdict(results(
        **j.capital_check({**CHECK_OK, "discrepancy_count": 1, "discrepancies": [ONE_CENT],
                           "summary": "capital_check found 1 discrepancies (exact to the cent): j1 base_capital"},
                          "sql"),
        **j.guide_queries({**CHECK_OK, "query_results": [{"rows": rows, "error": ""},
                                                         {"rows": [{"conname": "c1"}, {"conname": "c2"}],
                                                          "error": ""}]})))
    assert judged["verdict"] == {"passed": False, "failed_checks": [
        "capital_check", "guide_capital_consistency", "guide_unvalidated_constraints"]}
    assert judged["fail_msg"] == (
        "Verification failed: capital_check, guide_capital_consistency, guide_unvalidated_constraints. "
        "capital_check: capital_check found 1 discrepancies (exact to the cent): j1 base_capital | "
        "guide capital consistency: 7 juntas differ: j0, j1, j2, j3, j4 | guide unvalidated constraints: c1, c2")


def test_a_skipped_sql_suite_is_shown_as_skipped_and_a_failed_one_named() -> None:
    recorded = results()
    del recorded["sql_suite"]
    assert j.verify_verdict(recorded)["lines"][0] == "SQL test suite: skipped (0 checks passed)"
    failed = j.verify_verdict(results(**j.sql_suite({"rc": 3, "stderr_lines": ["ERROR:  FAILED x"]})))
    assert failed["lines"][0] == "SQL test suite: False (0 checks passed); FAILED x"
    assert failed["fail_msg"] == "Verification failed: sql_suite. sql_suite: FAILED x"


def test_every_step_is_reachable_by_name() -> None:
    assert set(j.PREFLIGHT_STEPS) == {"connection", "tools", "backup_space", "activity", "privileges",
                                      "migration_state", "object_provenance", "guide_state_query", "data_quality",
                                      "plan", "summary"}
    assert set(j.VERIFY_STEPS) == {"sql_suite", "capital_check", "guide_queries", "verdict"}
