"""Named read-only probes in one snapshot: the SQL lives in files (files/sql/probes/, files/sql/guide/), the
results come back by name.

Plain typed Python without Ansible imports, used by the module ``prestamos.capital.capital_probe``; it takes
any psycopg2 connection. Every probe runs in one ``READ ONLY``, ``REPEATABLE READ`` transaction, so all of
them describe one state of the database while the application writes, and the transaction is rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass
class ProbeError(Exception):
    """A probe the server refused: which one, and PostgreSQL's message and SQLSTATE."""

    probe: str
    message: str
    sqlstate: str | None = None

    def __str__(self) -> str:
        return f"probe {self.probe}: {self.message}"


def plain(value: Any) -> Any:
    """A value a module result can carry without losing a cent: NUMERIC as its exact string, times ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def run_probes(conn: Any, probes: Mapping[str, str], params: Mapping[str, Any] | None = None,
               settings: Mapping[str, str] | None = None, snapshot: str | None = None) -> dict[str, Any]:
    """Each probe's rows (dicts by column name) under its name, all read in one snapshot, nothing written.

    ``params`` are psycopg2 named parameters (``%(name)s``) offered to every probe; ``settings`` last for
    the transaction only (``set_config(name, value, true)``); ``snapshot`` imports an exported snapshot
    (``pg_export_snapshot()``), so the probes read exactly what that session - a pg_dump - reads.
    """
    conn.autocommit = False
    results: dict[str, Any] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if snapshot:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            for name, value in (settings or {}).items():
                cur.execute("SELECT set_config(%s, %s, true)", (name, str(value)))
            for name, sql in probes.items():
                try:
                    # Only the parameters the probe names: psycopg2 reads a bare % as a placeholder only
                    # when it is given parameters.
                    used = {k: v for k, v in (params or {}).items() if f"%({k})s" in sql}
                    cur.execute(sql, used or None)
                except Exception as exc:  # psycopg2.Error: named by its probe
                    raise ProbeError(name, str(exc).strip(), getattr(exc, "pgcode", None)) from exc
                columns = [column[0] for column in cur.description or ()]
                results[name] = [dict(zip(columns, (plain(v) for v in row), strict=True))
                                 for row in (cur.fetchall() if cur.description else [])]
    finally:
        conn.rollback()
    return results
