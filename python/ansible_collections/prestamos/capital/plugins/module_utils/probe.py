"""Named read-only probes in one snapshot: the SQL lives in files (files/sql/probes/, files/sql/guide/), the
results come back by name.

Plain typed Python without Ansible imports, used by the module ``prestamos.capital.capital_probe``; it takes
any psycopg2 connection. Every probe runs in one ``READ ONLY``, ``REPEATABLE READ`` transaction, so all of
them describe one state of the database while the application writes, and the transaction is rolled back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence
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
               settings: Mapping[str, str] | None = None, snapshot: str | None = None,
               optional: Collection[str] = (), count_rows: Sequence[str] = ()) -> dict[str, Any]:
    """Each probe's rows (dicts by column name) under its name, all read in one snapshot, nothing written.

    ``params`` are psycopg2 named parameters (``%(name)s``) offered to every probe; ``settings`` last for
    the transaction only (``set_config(name, value, true)``); ``snapshot`` imports an exported snapshot
    (``pg_export_snapshot()``), so the probes read exactly what that session - a pg_dump - reads.
    A probe named in ``optional`` that the server refuses (a function an administrator revoked) gives
    None and its error under ``_errors`` instead of failing the others. ``count_rows`` adds the probe
    ``row_counts``: each named table's exact row count, the name quoted as an identifier.
    """
    from psycopg2 import sql as pgsql

    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            begin_read(cur, snapshot, settings)
            results, errors = probe_rows(cur, probes, params, optional)
            if count_rows:
                counted = []
                for table in count_rows:
                    try:
                        cur.execute(pgsql.SQL("SELECT count(*) FROM {}").format(pgsql.Identifier(table)))
                    except Exception as exc:  # psycopg2.Error: a table that is not there
                        raise ProbeError("row_counts", str(exc).strip(), getattr(exc, "pgcode", None)) from exc
                    row = cur.fetchone()
                    counted.append({"name": table, "rows": int(row[0]) if row else 0})
                results["row_counts"] = counted
    finally:
        conn.rollback()
    if errors:
        results["_errors"] = errors
    return results


def begin_read(cur: Any, snapshot: str | None = None, settings: Mapping[str, str] | None = None) -> None:
    """Begin the read-only REPEATABLE READ transaction probes run in: in ``snapshot`` when given (exported by
    another session, which must keep its transaction open meanwhile), with ``settings`` for it only."""
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot:
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
    for name, value in (settings or {}).items():
        cur.execute("SELECT set_config(%s, %s, true)", (name, str(value)))


class ProbeLanes:
    """Probes shared out among several connections reading one exported snapshot, each taking the next probe
    when it is free (so the caller lists the costly ones first). Every lane's rows describe the same state.

    ``run(cur)`` is a lane on a cursor already in the snapshot (the exporting transaction's); ``join(...)``
    adds a lane on a connection of its own, in a thread. The first error stops every lane: the others are
    cancelled (``connection.cancel()``) and the error is the one ``raise_error()`` raises.
    """

    def __init__(self, probes: Mapping[str, str], params: Mapping[str, Any] | None = None,
                 optional: Collection[str] = ()) -> None:
        import threading

        self._todo = list(probes.items())
        self._params, self._optional = params, optional
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self.rows: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.error: BaseException | None = None
        self.lanes = 0

    def _next(self) -> tuple[str, str] | None:
        with self._lock:
            return self._todo.pop(0) if self._todo and self.error is None else None

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = exc
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(Exception):  # a lane that already ended has nothing to cancel
                conn.cancel()

    def run(self, cur: Any) -> None:
        """Take probes one by one on ``cur`` until none is left or a lane failed."""
        with self._lock:
            self._conns.append(cur.connection)
            self.lanes += 1
        try:
            while (item := self._next()) is not None:
                rows, errors = probe_rows(cur, dict([item]), self._params, self._optional)
                with self._lock:
                    self.rows.update(rows)
                    self.errors.update(errors)
        except Exception as exc:  # handed to raise_error() in the caller's thread
            self._fail(exc)

    def join(self, connect: Any, snapshot: str, settings: Mapping[str, str] | None = None) -> Any:
        """A lane on a new connection from ``connect()`` in ``snapshot``, started in a thread (returned). A lane
        that cannot connect (max_connections reached) takes no probe: the others read them all."""
        import threading

        def lane() -> None:
            try:
                conn = connect()
            except Exception:  # a lane fewer: the probes are still all read, more slowly
                return
            try:
                conn.autocommit = False
                with conn.cursor() as cur:
                    try:
                        begin_read(cur, snapshot, settings)
                    except Exception:  # this lane cannot read the snapshot: the others go on
                        return
                    self.run(cur)
            finally:
                try:
                    conn.rollback()
                finally:
                    conn.close()

        thread = threading.Thread(target=lane, name="capital-probe-lane", daemon=True)
        thread.start()
        return thread

    def raise_error(self) -> None:
        """Raise the first lane's error, a refused probe as a ProbeError naming it."""
        if self.error is not None:
            raise self.error


def probe_rows(cur: Any, probes: Mapping[str, str], params: Mapping[str, Any] | None = None,
               optional: Collection[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Each probe's rows under its name, and the errors of refused optional probes, read with ``cur`` in the
    transaction it is in (run_probes's, or the snapshot a pg_dump reads: module_utils/snapshot_dump.py)."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, text in probes.items():
        if name in optional:
            cur.execute("SAVEPOINT capital_probe")
        try:
            # Only the parameters the probe names: psycopg2 reads a bare % as a placeholder only
            # when it is given parameters.
            used = {k: v for k, v in (params or {}).items() if f"%({k})s" in text}
            cur.execute(text, used or None)
        except Exception as exc:  # psycopg2.Error: named by its probe
            if name not in optional:
                raise ProbeError(name, str(exc).strip(), getattr(exc, "pgcode", None)) from exc
            cur.execute("ROLLBACK TO SAVEPOINT capital_probe")
            results[name], errors[name] = None, str(exc).strip()
            continue
        columns = [column[0] for column in cur.description or ()]
        results[name] = [dict(zip(columns, (plain(v) for v in row), strict=True))
                         for row in (cur.fetchall() if cur.description else [])]
    return results, errors
