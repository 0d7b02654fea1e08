"""`capital-migrate status`: is the migration applied, partly applied, not applied or drifted; last run.

Read-only. The state rules are the collection's (module_utils/migration.py, the same code the migrate
module uses), so the CLI and the playbooks can never disagree about what "drifted" means, or about a
database that is not the guide's at all (foreign_schema: the application's ORM-shaped database).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils import migration as utils
from ansible_collections.prestamos.capital.plugins.module_utils.schema_check import foreign_schema

from capital_migrate import report as report_mod
from capital_migrate.commands._common import Context, build_context, default_report_dir, emit_json, result_document
from capital_migrate.connection import DB_VARIABLES, DbTarget, inventory_hosts, inventory_variables
from capital_migrate.errors import OperatorError
from capital_migrate.exitcodes import DESCRIPTIONS, ExitCode

# foreign_schema: the migration (and preflight) refuse this database, so status says so with the same code.
STATE_CODES = {"drifted": ExitCode.DRIFT, "foreign_schema": ExitCode.PREFLIGHT_REFUSED}


def _expected_sha(root: Path) -> str:
    """Checksum of the migration SQL in this checkout, computed exactly as the migrate module does."""
    try:
        texts = utils.load_sql_dir(root / "files" / "sql")
    except (OSError, utils.MigrationError) as exc:
        raise OperatorError(f"cannot read the migration SQL in {root / 'files' / 'sql'}: {exc}",
                            ExitCode.FAILURE) from None
    # The main script and the pieces its \ir lines name, in order: load_sql_dir() may also return files that
    # are not SQL (the list of objects the migration creates), which the checksum does not cover.
    main = texts[utils.MAIN_SCRIPT]
    return str(utils.sql_checksum([main, *(texts[name] for name in utils.parse_order(main))]))


def _last_history(cur: Any) -> dict[str, Any] | None:
    cur.execute("select to_regclass('public.capital_migration_history') is not null")
    row = cur.fetchone()
    if not row or not row[0]:
        return None
    cur.execute(
        "select version, sql_sha256, outcome, applied_by, "
        "to_char(started_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "to_char(finished_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), duration_ms "
        "from capital_migration_history order by id desc limit 1"
    )
    last = cur.fetchone()
    if last is None:
        return None
    keys = ("version", "sql_sha256", "outcome", "applied_by", "started_at", "finished_at", "duration_ms")
    return dict(zip(keys, last, strict=True))


# What the operator does next in each state (docs/reliability.md): after any interruption the database
# is in one of these states, and rerunning migrate.yml is always safe (it resumes or does nothing).
NEXT_STEPS = {
    "not_applied": "nothing of the migration is in the database: run migrate.yml to apply it",
    "partial": "a run stopped part-way (killed, interrupted, or still running: see the lock holder); the work "
               "done is committed and resumable: rerun migrate.yml to resume, or run rollback.yml to undo",
    "applied": "applied with these SQL files: rerun migrate.yml to verify again, rollback.yml to undo",
    "drifted": "the applied migration differs from these SQL files: find out who changed what first",
    # foreign_schema: the detector's own next step (module_utils/schema_check.py), read with the state.
}


def read_status(ctx: Context, target: DbTarget | None = None) -> dict[str, Any]:
    """Query the database (read-only transaction) and the report dir; nothing is changed."""
    import psycopg2

    target = target or ctx.target
    expected = _expected_sha(ctx.root)
    try:
        conn = psycopg2.connect(connect_timeout=10, **target.connect_kwargs())
    except psycopg2.Error as exc:
        message = report_mod.redact_text(str(exc).strip(), [target.password or ""] if target.password else [])
        raise OperatorError(f"cannot connect to {target.describe()}: {message}", ExitCode.FAILURE) from None
    try:
        conn.set_session(readonly=True, autocommit=False)
        with conn.cursor() as cur:
            accepted = utils.accepted_checksums(utils.load_sql_dir(ctx.root / "files" / "sql"))
            state = utils.migration_state(cur, expected, accepted)
            finding = foreign_schema(cur) if state == "foreign_schema" else None
            history = _last_history(cur)
        conn.rollback()
    finally:
        conn.close()
    latest = report_mod.latest(default_report_dir(ctx))
    last_report = None
    if latest is not None:
        try:
            data = report_mod.load(latest)
            last_report = {"path": str(latest), "run_id": data.get("run_id"), "env": data.get("env"),
                           "outcome": data.get("outcome"), "finished_at": data.get("finished_at")}
        except OperatorError:
            last_report = {"path": str(latest)}
    return {
        "state": state,
        "detail": finding or {},
        "expected_sql_sha256": expected,
        "last_history": history,
        "last_report": last_report,
        "database": target.describe(),
        "next_step": str(finding["next_step"]) if finding is not None else NEXT_STEPS.get(state, ""),
    }


def fleet_status(ctx: Context, hosts: list[str]) -> list[dict[str, Any]]:
    """Every database of a fleet inventory (one host each): its state, or why it could not be read."""
    vault = getattr(ctx.args, "vault_password_file", None)
    rows = []
    for host in hosts:
        found = inventory_variables(ctx.inventory, DB_VARIABLES, Path(vault) if vault else None, host)
        target = ctx.base_target.under({**found, **{k: v for k, v in ctx.extravars.items() if k in DB_VARIABLES}})
        try:
            status = read_status(ctx, target)
        except OperatorError as exc:
            status = {"state": "unreachable", "database": target.describe(), "detail": {"message": exc.message},
                      "last_history": None, "next_step": "check the server and the connection variables"}
        rows.append({"host": host, **status})
    return rows


# Worst first: what a fleet's status exits with.
FLEET_STATE_CODES = {"drifted": ExitCode.DRIFT, "foreign_schema": ExitCode.PREFLIGHT_REFUSED,
                     "unreachable": ExitCode.FAILURE}


def run_fleet_status(ctx: Context, hosts: list[str]) -> int:
    """A table of every database's state; exits with the worst (drift 6, foreign schema 3, unreachable 1)."""
    rows = fleet_status(ctx, hosts)
    states = {str(row["state"]) for row in rows}
    code = next((c for s, c in FLEET_STATE_CODES.items() if s in states), ExitCode.SUCCESS)
    if ctx.json:
        doc = result_document(ctx, "status", code, None, {"fleet_status": rows, "outcome": None})
        emit_json(ctx, doc)
        return int(code)
    ctx.say(f"capital-migrate status  env={ctx.env_name}  {len(rows)} databases")
    ctx.say(f"  {'host':<16}{'state':<15}{'last run':<24}database")
    for row in rows:
        history = row.get("last_history") or {}
        last = f"{history.get('outcome')} {history.get('finished_at') or ''}".strip() if history else "-"
        ctx.say(f"  {row['host']:<16}{row['state']!s:<15}{last:<24}{row['database']}")
    counts = {state: sum(1 for row in rows if row["state"] == state) for state in sorted(states)}
    ctx.say("  " + ", ".join(f"{state} {count}" for state, count in counts.items()))
    ctx.say(f"exit {int(code)}: {DESCRIPTIONS[code]}")
    return int(code)


def run_status(args: argparse.Namespace) -> int:
    """Print the state; exit 6 when drifted, 3 on a database that is not the guide's, 0 otherwise.

    An inventory of several hosts (a fleet, one database each) gets a table of every database's state.
    """
    ctx = build_context(args)
    hosts = inventory_hosts(ctx.inventory, str(ctx.extravars.get("capital_target_hosts") or "all"))
    if len(hosts) > 1:
        return run_fleet_status(ctx, hosts)
    status = read_status(ctx)
    code = STATE_CODES.get(str(status["state"]), ExitCode.SUCCESS)
    if ctx.json:
        doc = result_document(ctx, "status", code, None, {"status": status, "outcome": status["state"]})
        emit_json(ctx, doc)
        return int(code)
    ctx.say(f"capital-migrate status  env={ctx.env_name}  database={status['database']}")
    ctx.say(f"  migration state: {str(status['state']).upper()}")
    if status["detail"].get("message"):
        ctx.say(f"  {status['detail']['message']}")
    history = status["last_history"]
    if history:
        ctx.say(f"  last history row: {history['outcome']} version {history['version']} at "
                f"{history['finished_at'] or history['started_at']} by {history['applied_by']}")
        if history["sql_sha256"] != status["expected_sql_sha256"]:
            ctx.say(f"  applied sha256 {history['sql_sha256']}\n  files   sha256 {status['expected_sql_sha256']}")
    if status["next_step"]:
        ctx.say(f"  next step: {status['next_step']}")
    if status["last_report"]:
        rep = status["last_report"]
        ctx.say(f"  last report: {rep.get('outcome')} ({rep.get('env')}, run {rep.get('run_id')}) {rep['path']}")
    ctx.say(f"exit {int(code)}: {DESCRIPTIONS[code]}")
    return int(code)
