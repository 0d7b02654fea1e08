"""The reverse migration: plain, typed Python used by the capital_rollback module and tests.

The SQL is ``files/sql/rollback_capital_tracking.sql``; it runs unit by unit exactly like the migration's
pieces (UnitRunner: lock_timeout, retries on 55P03/40P01 only) under the same advisory lock, so a rollback
never interleaves with a migration run. Before touching anything it looks at what is there: nothing of the
migration means nothing to do (changed=false); rows in the shadow tables that no legacy row stands behind
mean a newer application wrote them there, and the rollback refuses unless forced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    APPLICATION_NAME,
    MigrationError,
    Options,
    UnitRunner,
    _PhaseStats,
    advisory_lock,
    duration_ms,
    parse_units,
)

ROLLBACK_SCRIPT = "rollback_capital_tracking.sql"
LEGACY_TABLES = ("Prestamo", "PagoPrestamo", "Accion", "Multa", "Junta", "User")
NEW_TABLES = (
    "PagoPrestamoNew",
    "PrestamoNew",
    "capital_movements",
    "capital_backfill_progress",
    "capital_enforce_violations",
    "capital_migration_state",
    "capital_migration_history",
)
ADDED_COLUMNS = {
    "Junta": ("base_capital", "current_capital", "available_capital"),
    "Accion": ("affects_capital",),
    "Multa": ("affects_capital",),
}

# Everything the migration leaves in the catalog, one row per object, so a rollback can say what it removed
# and prove nothing is left. Legacy-table objects are recognised by the capital_ prefix the migration uses.
_LEFTOVERS_SQL = """
SELECT 'table', c.relname FROM pg_class c
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND c.relname = ANY (%(new)s)
UNION ALL
SELECT 'column', c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = current_schema()::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
   AND (c.relname, a.attname) IN (SELECT t, col FROM unnest(%(col_tables)s::text[], %(col_names)s::text[]) AS x(t, col))
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal
   AND c.relname = ANY (%(legacy)s) AND t.tgname LIKE 'capital\\_%%'
UNION ALL
SELECT 'constraint', c.relname || '.' || k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(legacy)s)
   AND k.conname LIKE 'capital\\_%%'
UNION ALL
SELECT 'index', i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(legacy)s)
   AND i.relname LIKE 'capital\\_%%'
UNION ALL
SELECT 'function', p.oid::regprocedure::text FROM pg_proc p
 WHERE p.pronamespace = current_schema()::regnamespace
   AND (p.proname = 'calculate_available_capital' OR p.proname LIKE 'capital\\_%%')
ORDER BY 1, 2
"""


def leftovers(cursor: Any) -> list[dict[str, str]]:
    """Every object of the migration still in the database (empty: nothing to roll back)."""
    col_tables = [t for t, cols in ADDED_COLUMNS.items() for _ in cols]
    col_names = [c for cols in ADDED_COLUMNS.values() for c in cols]
    cursor.execute(
        _LEFTOVERS_SQL,
        {
            "new": list(NEW_TABLES),
            "legacy": list(LEGACY_TABLES),
            "col_tables": col_tables,
            "col_names": col_names,
        },
    )
    return [{"kind": kind, "name": name} for kind, name in cursor.fetchall()]


def shadow_only(cursor: Any) -> dict[str, int]:
    """Shadow rows no legacy row stands behind: written there directly, they exist nowhere else."""
    counts = {"loans": 0, "payments": 0}
    cursor.execute("SELECT to_regclass('\"PrestamoNew\"') IS NOT NULL, to_regclass('\"PagoPrestamoNew\"') IS NOT NULL")
    has_loans, has_payments = cursor.fetchone()
    if has_loans:
        cursor.execute(
            'SELECT count(*) FROM "PrestamoNew" n WHERE NOT EXISTS '
            '(SELECT 1 FROM "Prestamo" p WHERE p.id = n.original_prestamo_id)'
        )
        counts["loans"] = int(cursor.fetchone()[0])
    if has_payments:
        cursor.execute(
            'SELECT count(*) FROM "PagoPrestamoNew" n WHERE NOT EXISTS '
            '(SELECT 1 FROM "PagoPrestamo" p WHERE p.id = n.original_pago_id)'
        )
        counts["payments"] = int(cursor.fetchone()[0])
    return counts


def _state(cursor: Any, found: list[dict[str, str]]) -> str:
    if not found:
        return "not_applied"
    cursor.execute("SELECT to_regclass('capital_migration_history') IS NOT NULL")
    if cursor.fetchone()[0]:
        cursor.execute("SELECT count(*) FROM capital_migration_history WHERE outcome = 'applied'")
        if cursor.fetchone()[0]:
            return "applied"
    return "partial"


@dataclass
class Reverter(UnitRunner):
    """Removes the migration on one autocommit connection, unit by unit."""

    conn: Any
    sql: str
    options: Options = field(default_factory=Options)
    force: bool = False

    def __post_init__(self) -> None:
        self.units = parse_units(ROLLBACK_SCRIPT, self.sql)
        self.lock_timeout_ms = duration_ms(self.options.lock_timeout, "lock_timeout")
        if self.options.lock_retries < 0:
            raise MigrationError(f"lock_retries must be 0 or more, got {self.options.lock_retries}")
        self.cur = self.conn.cursor()
        self.phases: dict[str, _PhaseStats] = {}
        self.statement_log: list[dict[str, Any]] = []
        self.lock_retries = 0

    resume_hint = (
        "the rollback is partial. Rerun rollback.yml to finish undoing the migration (units already done are "
        "skipped), or rerun migrate.yml to apply it again"
    )
    resume_short = "rerun rollback.yml (finishes) or migrate.yml (reapplies)"

    def _phase_for(self, file: str) -> str:
        return "rollback"

    def inspect(self) -> dict[str, Any]:
        """What is there now; read-only."""
        found = leftovers(self.cur)
        counts = shadow_only(self.cur)
        return {
            "state": _state(self.cur, found),
            "leftovers": found,
            "shadow_only": counts,
            "shadow_only_total": sum(counts.values()),
        }

    def run(self, check_mode: bool = False, inspect_only: bool = False) -> dict[str, Any]:
        """Roll back (or only report what a rollback would do); raise MigrationError on failure or refusal."""
        self.conn.autocommit = True
        self.cur.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
        with advisory_lock(self.cur):
            before = self.inspect()
            result: dict[str, Any] = {
                "state_before": before["state"],
                "removed": before["leftovers"],
                "shadow_only": before["shadow_only"],
                "shadow_only_total": before["shadow_only_total"],
                "statements": 0,
                "lock_retries": 0,
            }
            if inspect_only or not before["leftovers"]:
                return {**result, "changed": False, "state_after": before["state"]}
            if before["shadow_only_total"] and not self.force:
                counts = before["shadow_only"]
                raise MigrationError(
                    f"refused: the shadow tables hold {counts['loans']} loan(s) and {counts['payments']} "
                    "payment(s) that exist in no legacy table (a newer application wrote them); rolling back "
                    "would lose them. Nothing was changed. Export them and force the rollback "
                    "(capital_rollback_force=true) if that is what you want",
                    refused=True,
                    **result,
                )
            if check_mode:
                return {**result, "changed": True, "state_after": "not_applied"}
            started = time.monotonic()
            try:
                for unit in self.units:
                    self._stop_if_requested(f"before {unit.file}:{unit.line}")
                    self._run_unit(unit)
            except MigrationError as exc:
                # Units already committed stay committed: say so, and that a rerun finishes the job.
                exc.details.update(changed=bool(self.statement_log), statements_done=len(self.statement_log))
                exc.msg += "; units already done stay done, and rerunning the rollback finishes it"
                raise
            after = leftovers(self.cur)
            if after:
                raise MigrationError(
                    "the reverse migration ran but left objects behind: "
                    + ", ".join(f"{o['kind']} {o['name']}" for o in after),
                    left=after,
                    **result,
                )
            return {
                **result,
                "changed": True,
                "state_after": "not_applied",
                "statements": len(self.statement_log),
                "lock_retries": self.lock_retries,
                "seconds": round(time.monotonic() - started, 3),
                "statement_log": self.statement_log,
            }
