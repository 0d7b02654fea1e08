"""The capital-tracking migration: its state and the Migrator the capital_migrate module runs (plain, typed
Python; tests, the CLI and the benchmark import it directly).

Split along its seams: ``sqltext.py`` reads the SQL (split like psql, units, order, checksum),
``unitrunner.py`` runs units (lock_timeout, retries, the advisory lock; shared with the reverse migration),
``backfill.py`` runs the units the SQL declares batched (the backfill loop, one transaction per batch),
``provenance.py`` keeps the record of what the migration created, and this file applies the pieces in
order. The names this file imported before the split are still importable from here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils import provenance
from ansible_collections.prestamos.capital.plugins.module_utils.backfill import BackfillRunner, Batch
from ansible_collections.prestamos.capital.plugins.module_utils.errors import Interrupted, MigrationError
from ansible_collections.prestamos.capital.plugins.module_utils.schema_check import FOREIGN_SCHEMA, foreign_schema
from ansible_collections.prestamos.capital.plugins.module_utils.sqltext import (
    ACCEPTED_FILE,
    MAIN_SCRIPT,
    Statement,
    Unit,
    accepted_checksums,
    load_sql_dir,
    parse_order,
    parse_units,
    phase_of,
    split_statements,
    sql_checksum,
)
from ansible_collections.prestamos.capital.plugins.module_utils.unitrunner import (
    ADVISORY_KEY_SQL,
    APPLICATION_NAME,
    RETRYABLE_SQLSTATES,
    Options,
    UnitRunner,
    _PhaseStats,
    advisory_lock,
    duration_ms,
)

# The names other code imports from here (the module, the reverse migration, the CLI, tests, bench).
__all__ = [
    "ACCEPTED_FILE", "ADVISORY_KEY_SQL", "APPLICATION_NAME", "MAIN_SCRIPT", "RETRYABLE_SQLSTATES", "Batch",
    "Interrupted", "MigrationError", "Migrator", "Options", "Statement", "Unit", "UnitRunner", "_PhaseStats",
    "accepted_checksums", "advisory_lock", "duration_ms", "load_sql_dir", "migration_state", "parse_order",
    "parse_units", "phase_of", "split_statements", "sql_checksum",
]


# -- state ------------------------------------------------------------------------------------------------
def migration_state(cursor: Any, sha: str, accepted: Mapping[str, frozenset[str]] | None = None) -> str:
    """foreign_schema | not_applied | partial | applied | drifted (docs/design.md "Migration states"); read-only.

    Applied means the last applied history row holds ``sha`` (the SQL files now) or a checksum ``accepted``
    lists for that row's migration version (an earlier layout of the same files).

    foreign_schema first: on the application's ORM-shaped database (domain.md §5) the ORM's own "PrestamoNew"
    or capital columns would otherwise read as a partly applied migration.
    """
    if foreign_schema(cursor) is not None:
        return FOREIGN_SCHEMA
    cursor.execute(
        "SELECT to_regclass('capital_movements') IS NOT NULL, to_regclass('capital_migration_history') IS NOT NULL,"
        " to_regclass('capital_migration_state') IS NOT NULL"
    )
    movements, history, state = cursor.fetchone()
    if not (movements or history or state):
        return "not_applied"
    if history:
        cursor.execute(
            "SELECT sql_sha256, version FROM capital_migration_history WHERE outcome = 'applied'"
            " ORDER BY id DESC LIMIT 1"
        )
        row = cursor.fetchone()
        if row is not None:
            same = row[0] == sha or row[0] in (accepted or {}).get(str(row[1]), frozenset())
            return "applied" if same else "drifted"
    return "partial"


@dataclass
class Migrator(BackfillRunner):
    """Applies the migration on one connection (autocommit; the runner issues BEGIN/COMMIT itself)."""

    conn: Any
    sql: Mapping[str, str]
    options: Options = field(default_factory=Options)
    order: Sequence[str] | None = None
    # Opens another connection to the same database, for the backfill's extra sessions
    # (options.backfill_connections); without it the backfill runs on this connection alone.
    connect: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        if MAIN_SCRIPT not in self.sql:
            raise MigrationError(f"sql must contain the main script {MAIN_SCRIPT} (it defines the order)")
        parsed = parse_order(self.sql[MAIN_SCRIPT])
        if self.order is not None and list(self.order) != parsed:
            raise MigrationError(
                f"order {list(self.order)} differs from the \\ir lines of {MAIN_SCRIPT} {parsed}; "
                "the main script is the one source of truth: fix or omit order"
            )
        missing = [name for name in parsed if name not in self.sql]
        if missing:
            raise MigrationError(f"sql lacks the pieces {missing} named by {MAIN_SCRIPT}")
        self.pieces = parsed
        self.sha = sql_checksum([self.sql[MAIN_SCRIPT], *(self.sql[name] for name in parsed)])
        self.accepted = accepted_checksums(self.sql)
        self.units = {name: parse_units(name, self.sql[name]) for name in parsed}
        try:
            self.inventory = provenance.load_inventory(self.sql.get(provenance.INVENTORY_FILE))
        except provenance.ProvenanceError as exc:
            raise MigrationError(str(exc)) from None
        self.run_id = self.options.run_id or uuid.uuid4().hex[:12]
        self.record_open = False  # the record exists and this run has planned its objects
        self.provenance: dict[str, Any] = {}
        for name in parsed:
            phase_of(name)
        opts = self.options
        self.lock_timeout_ms = duration_ms(opts.lock_timeout, "lock_timeout")
        self.statement_timeout_ms = duration_ms(opts.statement_timeout, "statement_timeout")
        if opts.batch_size < 1:
            raise MigrationError(f"batch_size must be at least 1, got {opts.batch_size}")
        if not 1 <= opts.backfill_connections <= 16:
            raise MigrationError(f"backfill_connections must be between 1 and 16, got {opts.backfill_connections}")
        if opts.lock_retries < 0:
            raise MigrationError(f"lock_retries must be 0 or more, got {opts.lock_retries}")
        self.cur = self.conn.cursor()
        self.history_id: int | None = None
        self.started = time.monotonic()
        self.phases: dict[str, _PhaseStats] = {}
        self.statement_log: list[dict[str, Any]] = []
        self.rows_backfilled: dict[str, int] = {}
        self.batches = 0
        # Source batches a sync trigger raced (it wrote one of their rows after their snapshot): each was
        # run again with ON CONFLICT DO NOTHING (capital_backfill_batch raises a NOTICE saying so).
        self.batches_rerun = 0
        self.lock_retries = 0

    def _run_piece(self, name: str) -> None:
        """Every unit of the piece ``name`` in order (batched ones through BackfillRunner), stopping between
        two units when a signal asked for it; the history row opens as soon as its table exists."""
        for unit in self.units[name]:
            self._stop_if_requested(f"before {unit.file}:{unit.line}")
            self._run_unit(unit)
            self._open_history()

    # -- history ---------------------------------------------------------------------------------------
    def _open_history(self) -> None:
        if self.history_id is not None or not self._scalar(
            "SELECT to_regclass('capital_migration_history') IS NOT NULL"
        ):
            return
        self.cur.execute(
            "UPDATE capital_migration_history SET outcome = 'failed', finished_at = now(),"
            " detail = detail || '{\"reason\": \"interrupted\"}'::jsonb WHERE outcome = 'running'"
        )
        self.history_id = self._scalar(
            "INSERT INTO capital_migration_history (version, sql_sha256, applied_by, outcome, detail)"
            " VALUES (%s, %s, current_user, 'running', %s) RETURNING id",
            (self.options.version, self.sha, json.dumps({"runner": APPLICATION_NAME, "run_id": self.run_id})),
        )

    def _close_history(self, outcome: str, detail: Mapping[str, Any]) -> None:
        if self.history_id is None:
            return
        self.cur.execute(
            "UPDATE capital_migration_history SET outcome = %s, finished_at = now(),"
            " duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,"
            " detail = detail || %s::jsonb WHERE id = %s",
            (outcome, json.dumps(detail, default=str), self.history_id),
        )

    # -- provenance ------------------------------------------------------------------------------------
    def _survey(self) -> provenance.Survey:
        """The inventory against the catalog and the record, in one read-only transaction."""
        self.cur.execute("BEGIN")
        try:
            return provenance.survey(self.cur, self.inventory)
        finally:
            self.cur.execute("ROLLBACK")

    def _refuse_unproven(self, found: provenance.Survey, state_before: str) -> None:
        """Before the first change (and in check mode, which preflight reads): objects the migration would
        create that are not provably its own."""
        if not found.problems:
            return
        raise MigrationError(
            f"refused before any change: {len(found.problems)} object(s) the migration creates already exist "
            "and are not provably this migration's: " + "; ".join(str(p) for p in found.problems)
            + ". Nothing was changed. They belong to someone else (a DBA, the application) or were changed "
            "by hand: rename or remove them yourself after checking who uses them, or point the tool at "
            "the right database",
            provenance_drift=[str(p) for p in found.problems],
            refused=True,
            state_before=state_before,
            state_after=state_before,
            sql_sha256=self.sha,
        )

    def _open_record(self, found: provenance.Survey) -> None:
        """Create the record if missing, adopt, plan; one transaction, before the first piece."""
        self.cur.execute("BEGIN")
        self.provenance = provenance.begin_record(self.cur, self.inventory, found, self.run_id)
        self.cur.execute("COMMIT")
        self.record_open = True

    def _before_commit(self) -> None:
        if self.record_open:
            self.provenance["claimed"] = self.provenance.get("claimed", 0) + provenance.claim(
                self.cur, self.inventory, self.run_id
            )

    def _after_autocommit(self) -> None:
        if self.record_open:
            self.cur.execute("BEGIN")
            self._before_commit()
            self.cur.execute("COMMIT")

    # -- reporting -------------------------------------------------------------------------------------
    def _phase_name(self) -> str | None:
        if not self._scalar("SELECT to_regclass('capital_migration_state') IS NOT NULL"):
            return None
        phase = self._scalar("SELECT phase FROM capital_migration_state")
        return None if phase is None else str(phase)

    def _violations(self) -> list[dict[str, Any]]:
        if not self._scalar("SELECT to_regclass('capital_enforce_violations') IS NOT NULL"):
            return []
        self.cur.execute(
            "SELECT kind, table_name, row_count, sample_ids, action FROM capital_enforce_violations"
            " WHERE row_count > 0 ORDER BY kind"
        )
        return [
            {"kind": k, "table": t, "count": c, "sample_ids": list(s), "action": a}
            for k, t, c, s, a in self.cur.fetchall()
        ]

    def _progress(self) -> list[dict[str, Any]]:
        if not self._scalar("SELECT to_regclass('capital_backfill_progress') IS NOT NULL"):
            return []
        self.cur.execute(
            "SELECT source, rows_done, rows_total, done FROM capital_backfill_progress ORDER BY source"
        )
        return [
            {"source": s, "rows_done": d, "rows_total": t, "done": f} for s, d, t, f in self.cur.fetchall()
        ]

    def _result(self, changed: bool, state_before: str, **extra: Any) -> dict[str, Any]:
        return {
            "changed": changed,
            "state_before": state_before,
            "sql_sha256": self.sha,
            "version": self.options.version,
            "pieces": list(self.pieces),
            "phases": [vars(p) | {"seconds": round(p.seconds, 3)} for p in self.phases.values()],
            "statements": self.statement_log,
            "rows_backfilled": self.rows_backfilled,
            "batches": self.batches,
            "batches_rerun": self.batches_rerun,
            "backfill_sessions": self.backfill_sessions,
            "application_sessions": self.application_sessions,
            "lock_retries": self.lock_retries,
            "longest_lock_wait_ms": round(self.longest_lock_wait_ms),
            "run_id": self.run_id,
            "accepted_sha256": {version: sorted(shas) for version, shas in self.accepted.items()},
            **extra,
        }

    # -- entry -----------------------------------------------------------------------------------------
    def run(self, check_mode: bool = False) -> dict[str, Any]:
        """Apply (or, in check mode, only plan) the migration; raise MigrationError on any failure."""
        self.conn.autocommit = True
        self.cur.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
        with advisory_lock(self.cur):
            return self._run_locked(check_mode)

    def _run_locked(self, check_mode: bool) -> dict[str, Any]:
        state_before = migration_state(self.cur, self.sha, self.accepted)
        if state_before == "foreign_schema":
            # The application's ORM-shaped database (domain.md §5): refused before anything is read or
            # changed further, in check mode too (preflight reads this refusal as its state check).
            from ansible_collections.prestamos.capital.plugins.module_utils.schema_check import foreign_schema

            finding = foreign_schema(self.cur) or {}
            raise MigrationError(
                str(finding.get("message", "this database is not the guide's; nothing was changed")),
                foreign_schema=True,
                found=finding.get("found", []),
                expected=finding.get("expected", ""),
                next_step=finding.get("next_step", ""),
                state_before=state_before,
                sql_sha256=self.sha,
            )
        phase_before = self._phase_name()
        found = self._survey()
        if state_before == "applied":
            self._refuse_unproven(found, state_before)
            # Applied before the record existed (or through psql): adopt what matches, and bring the rows of
            # objects an accepted earlier layout recorded and the SQL files since replaced up to date; nothing
            # else changes. (An object an accepted earlier layout made stays as it is: same objects, same rules.)
            adopt = bool(found.adoptable or found.claimable or found.upgraded) and not check_mode
            if adopt:
                self._open_record(found)
            return self._result(
                adopt,
                state_before,
                state_after="applied",
                phase_before=phase_before,
                phase_after=phase_before,
                violations=self._violations(),
                provenance={**found.summary(), **self.provenance},
            )
        if state_before == "drifted":
            recorded = self._scalar(
                "SELECT sql_sha256 FROM capital_migration_history WHERE outcome = 'applied' ORDER BY id DESC LIMIT 1"
            )
            raise MigrationError(
                f"drift: the database records migration checksum {recorded}, the SQL now is {self.sha}; "
                "nothing was changed. Apply the SQL that was applied, or roll back first",
                drift=True,
                recorded_sha256=recorded,
                sql_sha256=self.sha,
                state_before=state_before,
            )
        self._refuse_unproven(found, state_before)
        if check_mode:
            # Every unit is one transaction (or one autocommit statement), except a batched unit, which the
            # runner repeats batch by batch until its steps are done: those are counted apart.
            plan = [
                {
                    "file": name,
                    "phase": phase_of(name),
                    "units": len(self.units[name]),
                    "batched_units": sum(unit.kind == "batched" for unit in self.units[name]),
                }
                for name in self.pieces
            ]
            return self._result(
                True,
                state_before,
                state_after=state_before,
                phase_before=phase_before,
                phase_after=phase_before,
                plan=plan,
                backfill_progress=self._progress(),
                violations=self._violations(),
                provenance=found.summary(),
            )
        try:
            self._open_record(found)
            for name in self.pieces:
                self._run_piece(name)
            violations = self._violations()
            record = self._phase("record")
            started = time.monotonic()
            result = self._result(
                True,
                state_before,
                state_after="applied",
                phase_before=phase_before,
                phase_after=self._phase_name(),
                violations=violations,
                provenance=self.provenance,
            )
            detail = {
                k: result[k]
                for k in ("phases", "rows_backfilled", "lock_retries", "violations", "batches", "batches_rerun")
            }
            self._close_history("applied", detail)
            record.seconds += time.monotonic() - started
            record.statements += 1
            record.attempts += 1
            result["phases"] = [vars(p) | {"seconds": round(p.seconds, 3)} for p in self.phases.values()]
            result["state_after"] = migration_state(self.cur, self.sha, self.accepted)
            return result
        except MigrationError as exc:
            if not self.conn.closed:
                self._rollback_quietly()
                try:
                    self._close_history("failed", {"error": exc.msg, **exc.details})
                except Exception:  # noqa: S110 - the original error matters more
                    pass
                exc.details.setdefault("state_after", migration_state(self.cur, self.sha, self.accepted))
                exc.details.setdefault("phase_after", self._phase_name())
            exc.details.update(
                {k: v for k, v in self._result(True, state_before).items() if k not in exc.details}
            )
            raise
