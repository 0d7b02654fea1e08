"""The judgement of the preflight and verify stages: pass, warn or fail, with the value measured and a message.

The roles gather the inputs (probe rows by name, command and module results, variables) and hand them to
the filters ``prestamos.capital.capital_preflight_judge`` and ``capital_verify_judge``
(plugins/filter/judgement.py), which call the function of a step by its name (PREFLIGHT_STEPS,
VERIFY_STEPS). Plain typed Python (no Ansible imports, no database), unit-tested in
python/tests/test_judgement.py.

A preflight check is ``{name, status, value, message}`` (roles/preflight/README.md): the run report, the
CLI summary and roles/run/tasks/failure.yml read them by name, and tests and operators grep the messages,
so both are part of the interface. A registered result is read the way the roles' Jinja read it before:
a missing key takes the default the role gave it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, TypedDict

Status = Literal["pass", "warn", "fail"]
Row = Mapping[str, Any]


class Check(TypedDict):
    """One preflight check as the run report carries it."""

    name: str
    status: Status
    value: Any
    message: str


class Checks(TypedDict):
    """What most preflight steps give: their checks, in report order."""

    checks: list[Check]


class ConnectionJudgement(Checks):
    """The connection and server_version checks, and what later steps need of them."""

    connected: bool
    server_major: int
    server_version: str


class SpaceJudgement(Checks):
    """The backup_space check and the database size it compared (-1: unknown)."""

    database_bytes: int


class PrivilegeJudgement(Checks):
    """The privilege checks; tables_present says whether the legacy data may be read at all."""

    tables_present: bool


class StateJudgement(Checks):
    """The migration state (or guide_schema) check and the state the later steps and stages read."""

    state: str
    guide_schema: bool
    foreign_schema: dict[str, Any]


class PlanJudgement(TypedDict):
    """What the migration would do."""

    plan: dict[str, Any]


class PreflightSummary(TypedDict):
    """The preflight verdict: failed and warned check names, one line per check, the assert's messages."""

    failed: list[str]
    warnings: list[str]
    lines: list[str]
    fail_msg: str
    success_msg: str


class VerifyVerdict(TypedDict):
    """What the run report's verify section adds to the results."""

    passed: bool
    failed_checks: list[str]


class VerifyJudgement(TypedDict):
    """The verify verdict, the summary lines shown, the assert's failure message."""

    verdict: VerifyVerdict
    lines: list[str]
    fail_msg: str


# --- helpers: reading results the way the roles' Jinja did -----------------------------------------------


def as_int(value: Any, default: int = 0) -> int:
    """Jinja's ``int`` filter: an int from an int, a float or a numeric string, else ``default``."""
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return default


def _text(value: Any) -> str:
    """A value interpolated into a template: None renders as nothing, like Ansible's finalize."""
    return "" if value is None else str(value)


def _rows(value: Any) -> list[Row]:
    """Probe rows, an empty list for a missing or empty probe (``default([], true)``)."""
    return list(value) if value else []


def _first(rows: Any) -> Row:
    """The first row of a probe, ``{}`` when it has none."""
    found = _rows(rows)
    return found[0] if found else {}


def _unique(items: Sequence[Any]) -> list[Any]:
    """Ansible's ``unique``: duplicates dropped, first occurrences in order."""
    return list(dict.fromkeys(items))


def _joined(items: Sequence[Any], separator: str = ", ") -> str:
    return separator.join(str(item) for item in items)


# --- preflight -------------------------------------------------------------------------------------------


def connection(probe: Row, conn: Row, min_server_major: int | str) -> ConnectionJudgement:
    """connection and server_version, from the catalog probe's result (no rows: the connection was refused).

    ``probe`` is the registered result of the catalog probe (roles/preflight/tasks/catalog.yml); its
    connection error has the module's prefix taken off. ``conn`` is capital_conn (the password is not read).
    """
    connected = "rows" in probe
    minimum = as_int(min_server_major)
    server = _first((probe.get("rows") or {}).get("db_size"))
    major = as_int(server.get("server_major"))
    error = re.sub(r"^unable to connect to database: ", "", _text(probe.get("msg", ""))).strip()
    where = (f"database {_text(conn.get('dbname'))} as {conn.get('user') or '(libpq default user)'}"
             f" on {conn.get('host') or '(local socket)'}:{_text(conn.get('port'))}")
    conn_check: Check = {
        "name": "connection",
        "status": "pass" if connected else "fail",
        "value": where,
        "message": "connected" if connected else (
            f"cannot connect to {where}: {error} - check capital_db_host/port/user/name (or DATABASE_URL, PG*)"
            " and the password"),
    }
    supported = connected and major >= minimum
    version_check: Check = {
        "name": "server_version",
        "status": "pass" if supported else "fail",
        "value": server.get("server_version", "unknown"),
        "message": ("not measured: no connection" if not connected
                    else f"supported (PostgreSQL {minimum} or newer)" if supported
                    else f"PostgreSQL {minimum} or newer is required"),
    }
    return {"checks": [conn_check, version_check], "connected": connected, "server_major": major,
            "server_version": _text(server.get("server_version", ""))}


# roles/preflight/tasks/host.yml runs the client tools' --version and the backup directory's free-space
# measurement in one command (one module start-up): "@@capital <name>" starts a section on stdout and on stderr,
# "@@capital <name> rc=<n>" ends one with its exit status.
SECTION = re.compile(r"^@@capital (\w+)(?: rc=(-?\d+))?$")


def section(result: Row, name: str) -> Row:
    """The part of one command's result that its section ``name`` printed, shaped like a command's result of
    its own (rc, stdout_lines, stderr_lines, stderr, msg); a result without sections is returned as it is.
    A section that never closed (the shell died in it) has rc -1."""
    stdout = [str(line) for line in result.get("stdout_lines") or []]
    if not any(SECTION.match(line) for line in stdout):
        return result
    rc = -1

    def part(lines: list[str]) -> list[str]:
        nonlocal rc
        kept: list[str] = []
        current = ""
        for line in lines:
            found = SECTION.match(line)
            if found is None:
                if current == name:
                    kept.append(line)
            elif found.group(2) is None:
                current = found.group(1)
            else:
                current = ""
                if found.group(1) == name:
                    rc = int(found.group(2))
        return kept

    out = part(stdout)
    err = part([str(line) for line in result.get("stderr_lines") or []])
    return {"rc": rc, "stdout_lines": out, "stderr_lines": err, "stderr": "\n".join(err),
            "msg": result.get("msg", "")}


def tools(tools: Sequence[str], result: Row, server_major: int | str, host: str) -> Checks:
    """tool_<name> per client tool, from one command's ``<tool> --version`` lines (roles/preflight/tasks/tools.yml).

    A tool prints its own name first; a missing one has only its error on stderr. A client older than the
    server fails (it cannot dump or restore it); an unknown server version (0: no connection) only warns.
    """
    server = as_int(server_major)
    result = section(result, "tools")
    stdout = [str(line) for line in result.get("stdout_lines") or []]
    stderr = [str(line) for line in result.get("stderr_lines") or []]
    checks: list[Check] = []
    for tool in tools:
        line = next((out for out in stdout if re.search(f"^{tool} ", out)), "").strip()
        error = "; ".join(err for err in stderr if re.search(tool, err)) or _text(result.get("msg", "")).strip()
        found = re.search(r"\(PostgreSQL\)\s+(\d+)", line)
        major = int(found.group(1)) if found else 0
        status: Status
        if not line:
            status, message = "fail", (f"{tool} not found on {host} ({error}): install the PostgreSQL client "
                                       "package of the server major version or newer")
        elif server == 0:
            status, message = "warn", "server version unknown: version not compared"
        elif major >= server:
            status, message = "pass", f"major {major} >= server {server}"
        else:
            status, message = "fail", (f"{tool} major {major} is older than the server ({server}): it cannot "
                                       f"dump or restore this server; install client tools of major {server} "
                                       "or newer")
        checks.append({"name": f"tool_{tool}", "status": status, "value": line or "not found", "message": message})
    return {"checks": checks}


def needed_bytes(database_bytes: int, space_factor: Decimal | int | float | str) -> int:
    """Free bytes the backup needs: the database size times the factor, rounded up, computed exactly."""
    return math.ceil(Decimal(database_bytes) * Decimal(str(space_factor)))


def backup_space(directory: str, df: Row, catalog: Row, space_factor: Decimal | int | float | str,
                 free_bytes_override: int | str | None = None) -> SpaceJudgement:
    """backup_space: free bytes where the backup goes against pg_database_size times the factor.

    ``df`` is the measuring command's result (its last stdout line the free bytes; rc 3/4 with the reason on
    stderr when the path cannot be a directory or is not writable: -1 free, a failure). ``catalog`` holds the
    db_size probe rows ({} without a connection: size -1, not compared). Exactly equal is enough.
    """
    database = as_int(_first(catalog.get("db_size")).get("bytes", -1))
    df = section(df, "space")
    if free_bytes_override is not None:
        free = as_int(free_bytes_override)
    elif as_int(df.get("rc", 1), 1) == 0:
        lines = list(df.get("stdout_lines") or [])
        free = as_int(str(lines[-1]).strip() if lines else "-1")
    else:
        free = -1
    needed = needed_bytes(database, space_factor)
    status: Status
    if free < 0:
        status = "fail"
        message = (f"cannot back up to {directory}: {_text(df.get('stderr', '')).strip()} - point capital_backup_dir"
                   " at a directory this user can create or write")
    elif database < 0:
        status, message = "warn", "database size unknown (no connection): space not compared"
    elif free >= needed:
        status, message = "pass", "enough space"
    else:
        status = "fail"
        message = (f"not enough space in {directory}: {free} bytes free, {needed} needed (database {database} bytes"
                   f" x capital_backup_space_factor {space_factor}); free space or point capital_backup_dir"
                   " elsewhere")
    check: Check = {
        "name": "backup_space",
        "status": status,
        "value": {"directory": directory, "free_bytes": free, "database_bytes": database,
                  "needed_bytes": needed if database >= 0 else -1, "simulated": free_bytes_override is not None},
        "message": message,
    }
    return {"checks": [check], "database_bytes": database}


def activity(catalog: Row, max_xact_age: int | str) -> Checks:
    """long_transactions (fail), legacy_table_locks (warn) and migration_lock (fail), from the catalog rows.

    Any row at all is a finding: an empty list passes.
    """
    old = _rows(catalog.get("old_xacts"))
    locks = _rows(catalog.get("table_locks"))
    holders = _rows(catalog.get("advisory"))
    lock_pids = _unique([row.get("pid") for row in locks])
    return {"checks": [
        {"name": "long_transactions", "status": "fail" if old else "pass", "value": old,
         "message": (f"{len(old)} transaction(s) older than {max_xact_age} s (pids "
                     f"{_joined([row.get('pid') for row in old])}): they would block the migration's DDL; "
                     "wait for them to finish or end them, then rerun") if old
         else f"no transaction older than {max_xact_age} s"},
        {"name": "legacy_table_locks", "status": "warn" if locks else "pass", "value": locks,
         "message": (f"{len(lock_pids)} session(s) hold or wait for locks on the legacy tables (pids "
                     f"{_joined(lock_pids)}); the migration waits at most lock_timeout per attempt") if locks
         else "no other session holds or waits for a lock on the legacy tables"},
        {"name": "migration_lock", "status": "fail" if holders else "pass", "value": holders,
         "message": ("another run holds the migration lock: "
                     f"{'; '.join(json.dumps(dict(row)) for row in holders)} - wait for it to finish") if holders
         else "no other run holds the migration lock"},
    ]}


def privileges(catalog: Row, dbname: str | None) -> PrivilegeJudgement:
    """CREATE on schema public, USAGE on plpgsql, and each legacy table present, readable and owned.

    ALTER TABLE and CREATE TRIGGER need ownership of the table (or membership in the owning role); a table
    missing or unreadable stops the data checks (tables_present false).
    """
    role = _first(catalog.get("role"))
    login = _text(role.get("login_role"))
    rows = _rows(catalog.get("tables"))
    present = [row for row in rows if row.get("present")]
    missing = [str(row.get("name")) for row in rows if not row.get("present")]
    unreadable = [str(row.get("name")) for row in present if not row.get("may_select")]
    not_owned = _unique([str(row.get("name")) for row in present if not row.get("may_alter")]
                        + [str(row.get("name")) for row in present if not row.get("may_trigger")])
    schema_create = bool(role.get("schema_create"))
    plpgsql = bool(role.get("plpgsql_usage"))
    checks: list[Check] = [
        {"name": "privilege_schema_create", "status": "pass" if schema_create else "fail",
         "value": f"{login}: CREATE on schema public = {role.get('schema_create')}",
         "message": "may create tables and functions in schema public" if schema_create else (
             f"role {login} lacks CREATE on schema public: the migration creates tables and functions there; run"
             f" as the schema owner or GRANT CREATE ON SCHEMA public TO {login}")},
        {"name": "privilege_plpgsql", "status": "pass" if plpgsql else "fail",
         "value": f"{login}: USAGE on plpgsql = {role.get('plpgsql_usage')}",
         "message": "may create plpgsql trigger functions" if plpgsql else (
             f"role {login} cannot use language plpgsql (needed for the trigger functions)")},
        {"name": "legacy_tables_present", "status": "fail" if missing else "pass",
         "value": [row.get("name") for row in present],
         "message": (f"missing in schema public of database {dbname}: {_joined(missing)} - is this the prestamos"
                     " database?") if missing else "all legacy tables present"},
        {"name": "legacy_tables_readable", "status": "fail" if unreadable else "pass", "value": unreadable,
         "message": (f"role {login} may not SELECT from {_joined(unreadable)}: the data checks and the backfill"
                     " read them; data checks skipped") if unreadable else "may read every legacy table"},
        {"name": "legacy_tables_owned", "status": "fail" if not_owned else "pass",
         "value": {row.get("name"): row.get("owner") for row in rows},
         "message": (f"role {login} may not alter or add triggers to {_joined(not_owned)}: run as the tables'"
                     " owner (or a member of the owning role)") if not_owned
         else "may alter and add triggers to every legacy table"},
    ]
    return {"checks": checks, "tables_present": not missing and not unreadable}


STATE_STATUS: Mapping[str, Status] = {"not_applied": "pass", "applied": "pass", "partial": "warn", "drifted": "fail"}


def migration_state(module: Row, catalog: Row, history: Row, sql_sha256: str = "") -> StateJudgement:
    """foreign_schema / not_applied / partial / applied / drifted (docs/design.md "Migration states").

    ``module`` is the migration module's check-mode result (the checksum of the SQL files, the earlier
    layouts it accepts, its foreign-schema finding); ``catalog`` holds the objects probe; ``history`` is the
    history probe's result (skipped before the history table exists). ``sql_sha256`` overrides the files'
    checksum (capital_migration_sql_sha256). On a database that is not the guide's the check is guide_schema
    (a failed migration_state means drift to the CLI's exit code).
    """
    foreign: dict[str, Any] = {}
    if module.get("foreign_schema"):
        foreign = {"state": "foreign_schema", "message": module.get("msg"), "found": module.get("found"),
                   "expected": module.get("expected"), "next_step": module.get("next_step")}
    present = list(_first(catalog.get("objects")).get("objects_present") or [])
    runs = _rows((history.get("rows") or {}).get("history"))
    applied = [row for row in runs if row.get("outcome") == "applied"]
    expected = sql_sha256 or _text(module.get("sql_sha256", ""))
    last = applied[0] if applied else {}
    accepted = list((module.get("accepted_sha256") or {}).get(str(last.get("version", "")), [])) if applied else []
    if foreign:
        state = "foreign_schema"
    elif not present:
        state = "not_applied"
    elif not applied:
        state = "partial"
    elif expected and last.get("sql_sha256") != expected and last.get("sql_sha256") not in accepted:
        state = "drifted"
    else:
        state = "applied"
    check: Check
    if foreign:
        check = {"name": "guide_schema", "status": "fail",
                 "value": {"state": "foreign_schema", "found": foreign.get("found") or []},
                 "message": _text(foreign.get("message"))}
    else:
        messages = {
            "not_applied": "the migration has not been applied",
            "applied": "the migration is applied; a rerun is a no-op",
            "partial": f"the migration is partly applied ({_joined(present)}); a rerun resumes it",
            "drifted": (f"the applied migration (sha256 {_text(last.get('sql_sha256', ''))}) differs from the SQL"
                        f" files (sha256 {expected})"),
        }
        check = {"name": "migration_state", "status": STATE_STATUS[state],
                 "value": {"state": state, "objects_present": present, "history": runs}, "message": messages[state]}
    return {"checks": [check], "state": state, "guide_schema": state != "foreign_schema", "foreign_schema": foreign}


def object_provenance(module: Row) -> Checks:
    """object_provenance: every object of the migration already here is in its record, or will be adopted.

    ``module`` is the migration module's check-mode survey: names only, safe to show under capital_no_log.
    """
    drift = list(module.get("provenance_drift") or [])
    survey = module.get("provenance") or {}
    owned = survey.get("owned", 0)
    adoptable = len(survey.get("adoptable") or [])
    message = (
        f"refused: {len(drift)} object(s) the migration creates already exist and are not provably its own: "
        f"{_joined(drift, '; ')}. Nothing was changed; rename or remove them after checking who uses them, or point"
        " the tool at the right database"
    ) if drift else (
        f"every object of the migration already here is in its record ({owned}), or matches the SQL files and"
        f" will be adopted ({adoptable})"
    )
    return {"checks": [{"name": "object_provenance", "status": "fail" if drift else "pass",
                        "value": {"not_provably_ours": drift, "recorded": owned, "adoptable": adoptable},
                        "message": message}]}


def guide_state_query(result: Row, guide_rows: int | str, max_rows: int | str) -> Checks:
    """guide_state_query: the guide's own query ran (pass), or was too costly to run (warn).

    ``result`` is the guide query's registered result (``skipped`` when it would build more than
    ``max_rows`` rows); the report's junta_counts hold the real per-junta counts either way.
    """
    ran = not result.get("skipped", False)
    joined = as_int(guide_rows)
    message = (
        f"the guide's Verify Current State query ran ({joined} joined rows); its counts are products of loans,"
        " fines and shares per junta: junta_counts has the real counts"
    ) if ran else (
        f"the guide's Verify Current State query was not run: it would build {joined} joined rows (more than"
        f" capital_preflight_guide_query_max_rows = {max_rows}); junta_counts in the report has the per-junta counts"
    )
    return {"checks": [{"name": "guide_state_query", "status": "pass" if ran else "warn",
                        "value": {"guide_rows": joined}, "message": message}]}


def data_quality(quality: Sequence[Row], fail_on: Sequence[str]) -> Checks:
    """data_<kind> per kind of dirty data: none passes, a kind in ``fail_on`` fails, any other warns."""
    checks: list[Check] = []
    for row in quality:
        kind = str(row.get("kind"))
        count = as_int(row.get("count"))
        samples = list(row.get("sample_ids") or [])
        status: Status = "pass" if count == 0 else "fail" if kind in fail_on else "warn"
        policy = ("; listed in capital_preflight_fail_on: fix the data or remove the kind from that list"
                  if kind in fail_on else "; reported only")
        checks.append({"name": f"data_{kind}", "status": status, "value": {"count": count, "sample_ids": samples},
                       "message": "none found" if count == 0
                       else f"{row.get('count')} row(s) of kind {kind} (e.g. {_joined(samples)}){policy}"})
    return {"checks": checks}


PLAN_ACTIONS: Mapping[str, str] = {
    "not_applied": "expand, backfill, enforce, record",
    "partial": "resume: expand what is missing, backfill the rest, enforce, record",
    "applied": "nothing: the migration is already applied",
    "drifted": "none: refused, the applied migration differs from the SQL files",
}


def plan(state: str, counts: Sequence[Row], backfill_sources: Mapping[str, Sequence[str]],
         objects: Mapping[str, Any], batch_size: int | str, database_bytes: int | str) -> PlanJudgement:
    """What the migration would do from ``state``, with rows and batches per backfill source, doing none of it.

    ``counts`` are the counts probe's rows ({source, rows}); batches are counted exactly (ceiling division).
    """
    batch = as_int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    rows = {str(row.get("source")): as_int(row.get("rows")) for row in counts}
    backfill = [{"source": source, "rows": rows.get(source, 0), "targets": list(targets),
                 "batches": -(-rows.get(source, 0) // batch)} for source, targets in backfill_sources.items()]
    todo = state in ("not_applied", "partial")
    return {"plan": {
        "state": state,
        "action": PLAN_ACTIONS[state],
        "objects_to_create": dict(objects) if state != "applied" else {},
        "backfill": backfill if todo else [],
        "junta_rows_to_update": rows.get("Junta", 0) if todo else 0,
        "batch_size": batch,
        "total_batches": sum(item["batches"] for item in backfill) if todo else 0,
        "backup_estimate_bytes": as_int(database_bytes),
    }}


def preflight_summary(checks: Sequence[Check]) -> PreflightSummary:
    """The failed and warned names, one ``STATUS name message`` line per check, and the assert's messages."""
    failed = [check for check in checks if check["status"] == "fail"]
    warnings = [check["name"] for check in checks if check["status"] == "warn"]
    return {
        "failed": [check["name"] for check in failed],
        "warnings": warnings,
        "lines": [f"{str(check['status']).upper()} {check['name']} {check['message']}" for check in checks],
        "fail_msg": (f"Preflight failed {len(failed)} check(s): "
                     + " | ".join(f"{check['name']}: {check['message']}" for check in failed)),
        "success_msg": f"Preflight passed ({len(warnings)} warning(s))",
    }


# --- verify ----------------------------------------------------------------------------------------------

SQL_SUITE_OK = re.compile(r"^.*NOTICE:  ok: ")
SQL_SUITE_ERROR = re.compile(r"^.*?(ERROR|FATAL):  ")


def sql_suite(result: Row) -> dict[str, dict[str, Any]]:
    """sql_suite from psql's run of verify_migration.sql: passed when psql exits 0.

    psql prints ``NOTICE:  ok: <check>`` per passed check and ``ERROR:  FAILED <check>: ...`` for the one
    that stopped the suite; without such a line a failed run's error is the command's message.
    """
    rc = as_int(result.get("rc", -1), -1)
    lines = [str(line) for line in result.get("stderr_lines") or []]
    errors = [SQL_SUITE_ERROR.sub("", line) for line in lines if re.search(r"(ERROR|FATAL):  ", line)]
    return {"sql_suite": {
        "passed": rc == 0,
        "rc": rc,
        "checks_passed": [SQL_SUITE_OK.sub("", line) for line in lines if "NOTICE:  ok: " in line],
        "error": (errors[0] if errors else "") or (_text(result.get("msg", "")) if rc != 0 else ""),
    }}


def capital_check(result: Row, method: str) -> dict[str, dict[str, Any]]:
    """capital_check: passed when the module ran and found no discrepancy, not even one cent.

    ``result`` is the module's result (run with fail_on_discrepancy false); without juntas_checked it did
    not run, and its message is the error. ``method`` is the one asked for, reported when it did not run.
    """
    done = "juntas_checked" in result
    return {"capital_check": {
        "passed": done and as_int(result.get("discrepancy_count", 1), 1) == 0,
        "error": "" if done else _text(result.get("msg", "capital_check did not run")),
        "summary": result.get("summary", ""),
        "method": result.get("method", method),
        "juntas_checked": result.get("juntas_checked", 0),
        "totals": result.get("totals", {}),
        "totals_recorded": result.get("totals_recorded", {}),
        "ledger": result.get("ledger", {}),
        "shadow": result.get("shadow", {}),
        "discrepancy_count": result.get("discrepancy_count", 0),
        "discrepancies": result.get("discrepancies", []),
        "snapshot_time": result.get("snapshot_time", ""),
    }}


def guide_queries(result: Row) -> dict[str, dict[str, Any]]:
    """The guide's verification steps 1 and 2, run in capital_check's snapshot: each passes with no rows.

    A query the server refused carries its error; when capital_check itself did not run, neither did they,
    and its message is theirs.
    """
    outs = list(result.get("query_results") or [])
    if len(outs) != 2:
        not_run = {"rows": [], "error": result.get("msg", "capital_check did not run")}
        outs = [not_run, not_run]

    def judged(out: Row) -> dict[str, Any]:
        rows = list(out.get("rows") or [])
        return {"passed": not out.get("error") and not rows, "rows": rows, "error": out.get("error")}

    return {"guide_capital_consistency": judged(outs[0]), "guide_unvalidated_constraints": judged(outs[1])}


def verify_verdict(results: Mapping[str, Row]) -> VerifyJudgement:
    """The verdict over every recorded result (each ``passed`` or not), the summary lines and the failure message."""
    failed = [name for name, result in results.items() if not result.get("passed")]
    suite = results.get("sql_suite") or {}
    check = results.get("capital_check") or {}
    capital = results.get("guide_capital_consistency") or {}
    constraints = results.get("guide_unvalidated_constraints") or {}
    suite_error = f"; {suite.get('error')}" if suite.get("error") else ""
    check_error = f"; {check.get('error')}" if check.get("error") else ""
    lines = [
        f"SQL test suite: {suite.get('passed', 'skipped')} ({len(suite.get('checks_passed') or [])} checks passed)"
        f"{suite_error}",
        f"capital_check ({check.get('method')}): {check.get('juntas_checked')} juntas,"
        f" {check.get('discrepancy_count')} discrepancies, totals {check.get('totals')}{check_error}",
        f"guide capital consistency: {len(capital.get('rows') or [])} rows",
        f"guide unvalidated constraints: {len(constraints.get('rows') or [])} rows",
    ]
    details: list[str] = []
    if "sql_suite" in failed:
        details.append(f"sql_suite: {suite.get('error')}")
    if "capital_check" in failed:
        details.append(f"capital_check: {check.get('error') or check.get('summary')}")
    if "guide_capital_consistency" in failed:
        rows = list(capital.get("rows") or [])
        differ = f"{len(rows)} juntas differ: {_joined([row.get('id') for row in rows[:5]])}"
        details.append(f"guide capital consistency: {capital.get('error') or differ}")
    if "guide_unvalidated_constraints" in failed:
        names = _joined([row.get("conname") for row in constraints.get("rows") or []])
        details.append(f"guide unvalidated constraints: {constraints.get('error') or names}")
    return {"verdict": {"passed": not failed, "failed_checks": failed}, "lines": lines,
            "fail_msg": f"Verification failed: {', '.join(failed)}. {' | '.join(details)}"}


# The steps the filters call by name; each takes keyword arguments named as in the role's task.
PREFLIGHT_STEPS: Mapping[str, Callable[..., Mapping[str, Any]]] = {
    "connection": connection,
    "tools": tools,
    "backup_space": backup_space,
    "activity": activity,
    "privileges": privileges,
    "migration_state": migration_state,
    "object_provenance": object_provenance,
    "guide_state_query": guide_state_query,
    "data_quality": data_quality,
    "plan": plan,
    "summary": preflight_summary,
}
VERIFY_STEPS: Mapping[str, Callable[..., Mapping[str, Any]]] = {
    "sql_suite": sql_suite,
    "capital_check": capital_check,
    "guide_queries": guide_queries,
    "verdict": verify_verdict,
}
