"""Helpers for the migration tests: run the migration in-process, recompute capital independently, snapshot."""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    Batch,
    Interrupted,
    Migrator,
    Options,
    load_sql_dir,
)
from capital_migrate.datagen import generate

SQL_DIR = Path(__file__).resolve().parents[2] / "files" / "sql"
# Earlier layouts of files/sql whose checksums are accepted for version 1 (accepted_checksums.json), with the
# definitions they gave objects that the SQL files now define differently: 223f0f7, before
# capital_backfill_batch wrote its four source steps through one ledger insert; 5eadf5d, before
# capital_backfill_step let several sessions run the ledger steps side by side. Each is kept as
# `git archive --format=tar <commit> files/sql | gzip -9n` in tests/data, so that the tests need no git history
# (CI may clone shallow).
DATA = Path(__file__).resolve().parent / "data"
LAYOUT_ARCHIVES = {"223f0f7": DATA / "files_sql_223f0f7.tar.gz", "5eadf5d": DATA / "files_sql_5eadf5d.tar.gz"}


def previous_layout(dest: Path, commit: str = "223f0f7") -> Path:
    """files/sql exactly as an earlier commit had it (the tests of databases that layout migrated)."""
    with tarfile.open(LAYOUT_ARCHIVES[commit], "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "files" / "sql"


@contextlib.contextmanager
def migration_lock_held(db: Any) -> Iterator[None]:
    """Another session holds the migration's advisory lock meanwhile, as a concurrent run would."""
    holder = db.connect()
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext('prestamos.capital_tracking'))")
        yield
    finally:
        holder.close()


def sql_files() -> dict[str, str]:
    """The migration SQL exactly as the role ships it."""
    return load_sql_dir(SQL_DIR)


def seed_db(db: Any, juntas: int = 4, dirty: bool = False, seed: int = 7) -> None:
    """Baseline schema plus deterministic generated data (datagen creates the schema when missing)."""
    conn = db.connect()
    try:
        generate(conn, seed=seed, juntas=juntas, dirty=dirty)
    finally:
        conn.close()


class StoppingMigrator(Migrator):
    """The Migrator stopped like a killed run (raising Interrupted) before batch ``stop_after_batches + 1`` or
    after the piece ``stop_after_file``, with an ``on_batch`` observer called after every committed batch."""

    stop_after_batches: int | None = None
    stop_after_file: str | None = None
    on_batch: Callable[[int], None] | None = None

    def _batch(self) -> Batch:
        if self.stop_after_batches is not None and self.batches >= self.stop_after_batches:
            raise Interrupted(f"stopped after {self.batches} batches")
        batch = super()._batch()
        if batch.step.is_batch and self.on_batch is not None:
            self.on_batch(batch.number)
        return batch

    def _run_piece(self, name: str) -> None:
        super()._run_piece(name)
        if self.stop_after_file == name:
            raise Interrupted(f"stopped after {name}")


def migrate(db: Any, sql: dict[str, str] | None = None, stop_after_batches: int | None = None,
            stop_after_file: str | None = None, after_batch: Callable[[int], None] | None = None,
            **options: Any) -> dict[str, Any]:
    """Run the migration on its own connection, like one module invocation (optionally stopped early)."""
    conn = db.connect()
    try:
        migrator = StoppingMigrator(conn, sql if sql is not None else sql_files(), Options(**options),
                                    connect=db.connect)
        migrator.stop_after_batches, migrator.stop_after_file = stop_after_batches, stop_after_file
        migrator.on_batch = after_batch
        return migrator.run()
    finally:
        conn.close()


# The capital model of domain.md section 3, written independently of the migration's SQL functions.
EXPECTED_SQL = """
WITH src AS (
    SELECT junta_id AS j, CASE WHEN affects_capital THEN round(amount::numeric, 2) ELSE 0 END AS v, true AS share
      FROM "Accion"
    UNION ALL
    SELECT junta_id, CASE WHEN affects_capital THEN round(amount::numeric, 2) ELSE 0 END, false FROM "Multa"
    UNION ALL
    SELECT junta_id, CASE WHEN status <> 'REJECTED' THEN -round(amount::numeric, 2) ELSE 0 END, false
      FROM "Prestamo"
    UNION ALL
    SELECT p.junta_id, round(pp.amount::numeric, 2), false
      FROM "PagoPrestamo" pp JOIN "Prestamo" p ON p.id = pp.prestamo_id
)
SELECT j.id, coalesce(sum(v) FILTER (WHERE share), 0), coalesce(sum(v), 0)
  FROM "Junta" j LEFT JOIN src ON src.j = j.id
 GROUP BY j.id ORDER BY j.id
"""


def capital_mismatches(conn: Any) -> list[tuple[Any, ...]]:
    """Juntas whose columns or ledger sums differ from the independent recomputation, to the cent."""
    with conn.cursor() as cur:
        cur.execute(EXPECTED_SQL)
        expected = {jid: (Decimal(base), Decimal(cur_)) for jid, base, cur_ in cur.fetchall()}
        cur.execute(
            """SELECT j.id, j.base_capital, j.current_capital, j.available_capital,
                      coalesce(sum(CASE m.direction WHEN 'INCREASE' THEN m.amount ELSE -m.amount END), 0),
                      coalesce(sum(CASE m.direction WHEN 'INCREASE' THEN m.amount ELSE -m.amount END)
                               FILTER (WHERE m.type = 'ACCION'), 0)
                 FROM "Junta" j LEFT JOIN capital_movements m ON m.junta_id = j.id
                GROUP BY j.id ORDER BY j.id"""
        )
        bad = []
        for jid, base, current, available, ledger, ledger_base in cur.fetchall():
            exp_base, exp_cur = expected[jid]
            if (base, current, available, ledger, ledger_base) != (
                exp_base,
                exp_cur,
                exp_cur,
                exp_cur,
                exp_base,
            ):
                bad.append((jid, exp_base, exp_cur, base, current, available, ledger, ledger_base))
        return bad


def shadow_mismatches(conn: Any) -> list[tuple[Any, ...]]:
    """Legacy loans/payments whose shadow row is missing or different (amount, remaining, flags)."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT p.id FROM "Prestamo" p FULL JOIN "PrestamoNew" n ON n.id = p.id
                WHERE n.id IS NULL OR p.id IS NULL OR n.junta_id <> p.junta_id
                   OR n.amount <> round(p.amount::numeric, 2) OR n.status <> p.status
                   OR n.loan_number IS NULL OR n.capital_at_time IS NULL
                   OR n.remaining_amount <> round(p.amount::numeric, 2) - coalesce((
                        SELECT sum(round(pp.amount::numeric, 2)) FROM "PagoPrestamo" pp WHERE pp.prestamo_id = p.id), 0)
               UNION ALL
               SELECT coalesce(pp.id, q.id) FROM "PagoPrestamo" pp FULL JOIN "PagoPrestamoNew" q ON q.id = pp.id
                WHERE q.id IS NULL OR pp.id IS NULL OR q.amount <> round(pp.amount::numeric, 2)
                   OR q.prestamo_id <> pp.prestamo_id"""
        )
        return cur.fetchall()


def assert_figures_exact(db: Any) -> None:
    """Capital (columns, ledger, function) and shadow tables agree with the raw rows, to the cent."""
    conn = db.connect()
    try:
        assert capital_mismatches(conn) == []
        assert shadow_mismatches(conn) == []
    finally:
        conn.close()


def snapshot(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The end state row by row: ledger (without id/recorded_at), shadow tables, Junta columns, phase."""
    queries = {
        "ledger": """SELECT junta_id, type, direction, amount, description, created_at,
                            accion_id, multa_id, prestamo_id, pago_id, seq
                       FROM capital_movements
                      ORDER BY coalesce(accion_id, multa_id, prestamo_id, pago_id) COLLATE "C", type, seq""",
        "prestamo_new": 'SELECT * FROM "PrestamoNew" ORDER BY id COLLATE "C"',
        "pago_new": 'SELECT * FROM "PagoPrestamoNew" ORDER BY id COLLATE "C"',
        "junta": 'SELECT id, base_capital, current_capital, available_capital FROM "Junta" ORDER BY id COLLATE "C"',
        "phase": "SELECT phase FROM capital_migration_state",
        "violations": "SELECT kind, row_count, sample_ids, action FROM capital_enforce_violations ORDER BY kind",
        "constraints": """SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint
                           WHERE connamespace = 'public'::regnamespace AND conname LIKE 'capital%'
                           ORDER BY 1, 2""",
    }
    out = {}
    with conn.cursor() as cur:
        for key, query in queries.items():
            cur.execute(query)
            out[key] = cur.fetchall()
    return out



def assert_same_end_state(db: Any, reference: Any) -> None:
    """``db`` is cent-exact and ends exactly as ``reference`` did, row by row (snapshot)."""
    conn, ref_conn = db.connect(), reference.connect()
    try:
        assert capital_mismatches(conn) == []
        assert snapshot(conn) == snapshot(ref_conn)
    finally:
        conn.close()
        ref_conn.close()

GUIDE_CAPITAL_CHECK = """
SELECT j.id, j.name, j.current_capital, j.available_capital,
       ABS(j.current_capital - j.available_capital) as discrepancy
FROM "Junta" j
WHERE ABS(j.current_capital - j.available_capital) > 0.01;
"""

GUIDE_CONSTRAINTS = """
SELECT conname, contype, conrelid::regclass
FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
AND NOT convalidated;
"""


def run_sql(db: Any, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (or a script without parameters) in its own committed transaction; its rows."""
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, args or None)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()
