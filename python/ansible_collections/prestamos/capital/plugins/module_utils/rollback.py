"""The reverse migration: drops exactly what the record of provenance holds, keeping every legacy row.

Plain, typed Python used by the capital_rollback module and tests. Nothing is found by name: the record
(``capital_migration_objects``, module_utils/provenance.py) names each object the migration created, with
its OID and the hash of its definition. Before the first drop the rollback refuses, naming each, an object
whose definition changed since it was recorded or on which an object outside the record depends
(pg_depend: an application view over the ledger, a foreign key into a shadow table), unless forced; and
rows in the shadow tables that no legacy row stands behind (a newer application wrote them there), unless
forced. A database migrated before the record existed is adopted first, object by object, where each
matches what the SQL files create; anything else is left alone and named.

Rows are never discarded without a copy: the tables are locked, their rows written to a 0600 file beside
the backups (COPY blocks, restorable with psql), the file re-read and checked against the row counts,
its sha256 and counts put in a manifest, and only then, in the same transaction, are the tables dropped.

Each step runs like the migration's units (UnitRunner: lock_timeout, retries on 55P03/40P01 only) under
the same advisory lock, so a rollback never interleaves with a migration run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils import provenance
from ansible_collections.prestamos.capital.plugins.module_utils.errors import MigrationError
from ansible_collections.prestamos.capital.plugins.module_utils.provenance import Found, Key
from ansible_collections.prestamos.capital.plugins.module_utils.schema_check import FOREIGN_SCHEMA, foreign_schema
from ansible_collections.prestamos.capital.plugins.module_utils.sqltext import Statement, Unit
from ansible_collections.prestamos.capital.plugins.module_utils.unitrunner import (
    APPLICATION_NAME,
    Options,
    UnitRunner,
    _PhaseStats,
    advisory_lock,
    duration_ms,
)

EXPORT_PREFIX = "rollback-export-"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def leftovers(cursor: Any, inventory: Mapping[Key, str]) -> list[dict[str, str]]:
    """Objects of the migration's inventory still in the database, by name (tests prove a clean state)."""
    found = provenance.read_catalog(cursor)
    return [{"kind": k.kind, "name": str(k)} for k in sorted(inventory) if k in found]


def shadow_only(cursor: Any, owned: set[str]) -> dict[str, int]:
    """Rows in our shadow tables that no legacy row stands behind: written there directly, nowhere else."""
    counts = {"loans": 0, "payments": 0}
    if "PrestamoNew" in owned:
        cursor.execute(
            'SELECT count(*) FROM "PrestamoNew" n WHERE NOT EXISTS '
            '(SELECT 1 FROM "Prestamo" p WHERE p.id = n.original_prestamo_id)'
        )
        counts["loans"] = int(cursor.fetchone()[0])
    if "PagoPrestamoNew" in owned:
        cursor.execute(
            'SELECT count(*) FROM "PagoPrestamoNew" n WHERE NOT EXISTS '
            '(SELECT 1 FROM "PagoPrestamo" p WHERE p.id = n.original_pago_id)'
        )
        counts["payments"] = int(cursor.fetchone()[0])
    return counts


def _state(cursor: Any, owned: list[Key]) -> str:
    if not owned:
        return "not_applied"
    cursor.execute("SELECT to_regclass('capital_migration_history') IS NOT NULL")
    if cursor.fetchone()[0]:
        cursor.execute("SELECT count(*) FROM capital_migration_history WHERE outcome = 'applied'")
        if cursor.fetchone()[0]:
            return "applied"
    return "partial"


@dataclass
class Plan:
    """What a rollback would do, read in one transaction: the objects it would drop (ours, by record or
    adoption), the rows it would export and discard, and what stops it."""

    schema: str
    survey: provenance.Survey
    objects: dict[Key, Found]
    dependents: list[str]
    shadow_only: dict[str, int]
    rows: dict[str, int]
    state: str
    foreign: dict[str, Any] | None = None

    @property
    def owned_tables(self) -> set[str]:
        return {k.name for k in self.objects if k.kind == "table"}

    def describe(self) -> list[dict[str, str]]:
        """Every object the rollback drops (parts of a dropped table go with it and are listed too)."""
        return [{"kind": k.kind, "name": str(k)} for k in sorted(self.objects)]

    def blockers(self) -> list[str]:
        return [str(p) for p in self.survey.changed] + self.dependents


@dataclass
class Reverter(UnitRunner):
    """Removes what the record holds on one autocommit connection, step by step."""

    conn: Any
    inventory_text: str
    options: Options = field(default_factory=Options)
    force: bool = False  # drop shadow rows that exist nowhere else (they are exported first)
    force_changed: bool = False  # drop changed objects, and what depends on them (CASCADE)
    export_dir: str | None = None
    export_prefix: str = "rollback"
    restored: bool = False  # the record came back with a restored backup: OIDs differ (provenance.survey)

    def __post_init__(self) -> None:
        try:
            self.inventory = provenance.load_inventory(self.inventory_text)
        except provenance.ProvenanceError as exc:
            raise MigrationError(str(exc)) from None
        self.lock_timeout_ms = duration_ms(self.options.lock_timeout, "lock_timeout")
        if self.options.lock_retries < 0:
            raise MigrationError(f"lock_retries must be 0 or more, got {self.options.lock_retries}")
        self.cur = self.conn.cursor()
        self.phases: dict[str, _PhaseStats] = {}
        self.statement_log: list[dict[str, Any]] = []
        self.lock_retries = 0
        self.run_id = self.options.run_id or os.urandom(6).hex()
        self.export: dict[str, Any] = {}

    resume_hint = (
        "the rollback is partial. Rerun rollback.yml to finish undoing the migration (objects already dropped "
        "are not looked for again), or rerun migrate.yml to apply it again"
    )
    resume_short = "rerun rollback.yml (finishes) or migrate.yml (reapplies)"

    def _phase_for(self, file: str) -> str:
        return "rollback"

    # -- reading ---------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """What is there now and what a rollback would do; read-only (one transaction, rolled back)."""
        self.cur.execute("BEGIN")
        try:
            self.cur.execute("SELECT current_schema()")
            schema = self.cur.fetchone()[0]
            found = provenance.survey(self.cur, self.inventory, restored=self.restored)
            owned = found.owned + found.adoptable + found.claimable + [p.key for p in found.changed]
            objects = {k: found.found[k] for k in owned}
            tables = sorted(k.name for k in objects if k.kind == "table")
            rows: dict[str, int] = {}
            for table in tables:
                self.cur.execute(f"SELECT count(*) FROM {_ident(schema)}.{_ident(table)}")
                rows[table] = int(self.cur.fetchone()[0])
            return Plan(
                schema=schema,
                survey=found,
                objects=objects,
                dependents=provenance.foreign_dependents(self.cur, objects.values()),
                shadow_only=shadow_only(self.cur, set(tables)),
                rows=rows,
                state=_state(self.cur, owned),
            )
        finally:
            self.cur.execute("ROLLBACK")

    def _result(self, plan: Plan) -> dict[str, Any]:
        return {
            "state_before": plan.state,
            "removed": plan.describe(),
            "rows": plan.rows,
            "rows_total": sum(plan.rows.values()),
            "left_alone": [str(p) for p in plan.survey.drift],
            "adopted": [str(k) for k in plan.survey.adoptable],
            "blocked_by": plan.blockers(),
            "shadow_only": plan.shadow_only,
            "shadow_only_total": sum(plan.shadow_only.values()),
            "statements": 0,
            "lock_retries": 0,
            "run_id": self.run_id,
        }

    # -- steps -----------------------------------------------------------------------------------------
    def _steps(self, plan: Plan) -> tuple[list[Unit], list[Unit]]:
        """The drops, in order: each legacy table's triggers, constraints and columns (one table per
        transaction: ACCESS EXCLUSIVE, brief, catalog only); indexes on legacy tables (CONCURRENTLY);
        then (apart: exported first) our tables; functions; types; the record itself last, so a rollback
        killed at any point still knows what is left to drop. Returns the steps before and after the
        tables."""
        q = _ident(plan.schema) + "."
        cascade = " CASCADE" if self.force_changed else ""
        ours = plan.owned_tables
        units: list[Unit] = []

        def add(kind: str, statements: list[str], label: str) -> None:
            if statements:
                units.append(Unit(label, len(units), kind, tuple(Statement(s, 0) for s in statements)))

        legacy = sorted({k.table for k in plan.objects if k.table and k.table not in ours})
        # Triggers first, on every table: from then on no application write reaches what goes next.
        for table in legacy:
            add("tx", [f"DROP TRIGGER {_ident(k.name)} ON {q}{_ident(table)}" for k in sorted(plan.objects)
                       if k.table == table and k.kind == "trigger"], f"rollback:{table}")
        for table in legacy:
            on = q + _ident(table)
            parts = [k for k in sorted(plan.objects) if k.table == table]
            add("tx", [f"ALTER TABLE {on} DROP CONSTRAINT {_ident(k.name)}{cascade}" for k in parts
                       if k.kind == "constraint"]
                + [f"ALTER TABLE {on} DROP COLUMN {_ident(k.name)}{cascade}" for k in parts
                   if k.kind == "column"], f"rollback:{table}")
        for k in sorted(plan.objects):
            if k.kind == "index" and k.table not in ours:
                # CONCURRENTLY cannot CASCADE: forced, the drop takes its brief ACCESS EXCLUSIVE lock instead.
                how = "DROP INDEX IF EXISTS {}{} CASCADE" if cascade else "DROP INDEX CONCURRENTLY IF EXISTS {}{}"
                add("auto", [how.format(q, _ident(k.name))], f"rollback:{k.name}")
        before_tables = units
        units = []
        funcs = [k for k in sorted(plan.objects) if k.kind in ("function", "procedure")]
        add("tx", [f"DROP {k.kind.upper()} {_regprocedure(self.cur, plan.objects[k].objid)}{cascade}"
                   for k in funcs], "rollback:functions")
        add("tx", [f"DROP TYPE {q}{_ident(k.name)}{cascade}" for k in sorted(plan.objects) if k.kind == "type"],
            "rollback:types")
        return before_tables, units

    def _drop_tables(self, plan: Plan, tables: list[str], export: bool = True) -> None:
        """Lock our tables, export their rows, check the file, drop them: one transaction."""
        q = _ident(plan.schema) + "."
        names = ", ".join(q + _ident(t) for t in tables)
        cascade = " CASCADE" if self.force_changed else ""
        timeout = f"{self.lock_timeout_ms}ms"

        def work() -> None:
            self.cur.execute("BEGIN")
            try:
                self.cur.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
                # ACCESS EXCLUSIVE: no row can be written between the copy and the drop.
                self.cur.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
                counts = {}
                for table in tables:
                    self.cur.execute(f"SELECT count(*) FROM {q}{_ident(table)}")
                    counts[table] = int(self.cur.fetchone()[0])
                if export and any(counts.values()):
                    self.export = self._export(plan, tables, counts)
                self.cur.execute(f"DROP TABLE {names}{cascade}")
                self.cur.execute("COMMIT")
            except MigrationError:
                self._rollback_quietly()
                raise

        where = f"rollback: export and drop {', '.join(tables)}"
        self._timed(work, where, "rollback", 2 + len(tables), "rollback", 0, where[:120])

    def _export(self, plan: Plan, tables: list[str], counts: dict[str, int]) -> dict[str, Any]:
        """Write every row of ``tables`` to a new 0600 file, re-read and check it, write its manifest."""
        if not self.export_dir:
            raise MigrationError(
                f"refused: the tables to drop hold {sum(counts.values())} row(s) and no export directory was "
                "given to keep them (capital_backup_dir); nothing was dropped"
            )
        directory = Path(self.export_dir)
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = directory / f"{EXPORT_PREFIX}{self.export_prefix}-{stamp}.sql"
        q = _ident(plan.schema) + "."
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(
                    b"-- Rows of the capital-tracking tables, exported by the reverse migration before it dropped\n"
                    b"-- them. Each block loads with psql into a table of the same shape.\n"
                )
                for table in tables:
                    self.cur.execute(
                        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                        (q + _ident(table),),
                    )
                    cols = self.cur.fetchone()[0]
                    out.write(f"COPY {q}{_ident(table)} ({cols}) FROM stdin;\n".encode())
                    self.cur.copy_expert(f"COPY {q}{_ident(table)} ({cols}) TO STDOUT", out)
                    out.write(b"\\.\n")
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        digest, found_counts = _read_export(path)
        if found_counts != counts:
            path.unlink(missing_ok=True)
            raise MigrationError(
                f"the export {path} holds {found_counts} rows, the tables {counts}; nothing was dropped"
            )
        manifest = {
            "kind": "rollback-export",
            "file": path.name,
            "sha256": digest,
            "row_counts": counts,
            "schema": plan.schema,
            "database": self._scalar("SELECT current_database()"),
            "run_id": self.run_id,
            "created_at": stamp,
        }
        mpath = Path(f"{path}.manifest.json")
        fd = os.open(mpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        return {"path": str(path), "manifest": str(mpath), "sha256": digest, "row_counts": counts}

    # -- entry -----------------------------------------------------------------------------------------
    def run(self, check_mode: bool = False, inspect_only: bool = False) -> dict[str, Any]:
        """Roll back (or only report what a rollback would do); raise MigrationError on failure or refusal."""
        self.conn.autocommit = True
        self.cur.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
        with advisory_lock(self.cur):
            finding = foreign_schema(self.cur)
            if finding is not None:
                # The application's ORM-made database (domain.md §5): none of its objects is ours to drop.
                raise MigrationError(
                    str(finding["message"]),
                    foreign_schema=True, refused=True, changed=False, state_before=FOREIGN_SCHEMA,
                    found=finding.get("found", []), next_step=finding.get("next_step", ""),
                )
            plan = self.plan()
            result = self._result(plan)
            if inspect_only or not plan.objects:
                return {**result, "changed": False, "state_after": plan.state}
            blockers = plan.blockers()
            if blockers and not self.force_changed:
                raise MigrationError(
                    f"refused before the first drop: {len(blockers)} thing(s) stop the rollback: "
                    + "; ".join(blockers)
                    + ". Nothing was changed. Check who changed or uses them; to drop the migration's objects "
                    "anyway, with whatever depends on them, rerun with capital_rollback_force_changed=true",
                    refused=True,
                    **result,
                )
            if result["shadow_only_total"] and not self.force:
                counts = plan.shadow_only
                raise MigrationError(
                    f"refused: the shadow tables hold {counts['loans']} loan(s) and {counts['payments']} "
                    "payment(s) that exist in no legacy table (a newer application wrote them); rolling back "
                    "would lose them. Nothing was changed. Force the rollback (capital_rollback_force=true) "
                    "to export them beside the backups and drop them",
                    refused=True,
                    **result,
                )
            if check_mode:
                return {**result, "changed": True, "state_after": "not_applied"}
            started = time.monotonic()
            try:
                self._execute(plan)
            except MigrationError as exc:
                # Steps already committed stay committed: say so, and that a rerun finishes the job.
                exc.details.update(changed=bool(self.statement_log), statements_done=len(self.statement_log),
                                   export=self.export)
                exc.msg += "; steps already done stay done, and rerunning the rollback finishes it"
                raise
            after = self.plan()
            if after.objects:
                raise MigrationError(
                    "the reverse migration ran but left objects of the record behind: "
                    + ", ".join(o["name"] for o in after.describe()),
                    left=after.describe(),
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
                "export": self.export,
            }

    def _execute(self, plan: Plan) -> None:
        if plan.survey.adoptable or plan.survey.claimable or not plan.survey.record_exists:
            # Adopt (a database migrated before the record existed) in one transaction, so every drop
            # below is of a recorded object.
            def adopt() -> None:
                self.cur.execute("BEGIN")
                provenance.begin_record(self.cur, self.inventory, plan.survey, self.run_id)
                self.cur.execute("COMMIT")

            where = "rollback: adopt the objects that match the SQL files"
            self._timed(adopt, where, "rollback", 1, "rollback", 0, where)
            plan = self.plan()  # the record now holds them, and itself
        first, last = self._steps(plan)
        for unit in first:
            self._stop_if_requested(f"before {unit.file}")
            self._run_unit(unit)
        tables = sorted(plan.owned_tables - {provenance.RECORD_TABLE})
        if tables:
            self._stop_if_requested("before dropping the tables")
            self._drop_tables(plan, tables)
        for unit in last:
            self._stop_if_requested(f"before {unit.file}")
            self._run_unit(unit)
        if provenance.RECORD_TABLE in plan.owned_tables:
            self._stop_if_requested("before dropping the record")
            self._drop_tables(plan, [provenance.RECORD_TABLE], export=False)


def _regprocedure(cursor: Any, oid: int) -> str:
    cursor.execute("SELECT %s::oid::regprocedure::text", (oid,))
    return str(cursor.fetchone()[0])


def _read_export(path: Path) -> tuple[str, dict[str, int]]:
    """sha256 of an export file and the rows of each COPY block, read back from disk."""
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    table: str | None = None
    with path.open("rb") as handle:
        for line in handle:
            digest.update(line)
            if table is None:
                if line.startswith(b"COPY "):
                    qualified = line.split(b" ", 2)[1].decode()
                    table = qualified.split(".", 1)[1].strip('"').replace('""', '"')
                    counts[table] = 0
            elif line == b"\\.\n":
                table = None
            else:
                counts[table] += 1
    return digest.hexdigest(), counts
