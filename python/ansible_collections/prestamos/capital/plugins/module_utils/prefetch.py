"""Reads ahead on a second session in the caller's snapshot: plain, typed Python for ``capital_check``.

Why: the reconciliation is a dozen independent aggregate reads of one snapshot, run one after the other on
one session, while the server has cores to spare. The caller exports its snapshot (``pg_export_snapshot()``)
and lists the reads it will make, in the order it makes them; a second session imports that snapshot and
reads from the end of the list while the caller reads from its start, each taking a query only once. The
caller asks for each result in its own order (``take``): a query still waiting is the caller's to run,
one the second session has read (or is reading) is handed over. Both read the same snapshot, so the
results are the ones the caller would have read itself.

The second session is an optimisation only: if it cannot connect or import the snapshot it takes nothing
and the caller reads everything. An error it meets is the caller's error for that query; it then stops
and leaves the rest to the caller.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any


class Prefetch:
    """The queries a caller will run, shared between it and one reader thread in its exported snapshot."""

    def __init__(self, queries: Sequence[str]) -> None:
        self._pending = list(dict.fromkeys(queries))
        self._running: set[str] = set()
        self._done: dict[str, list[tuple[Any, ...]] | Exception] = {}
        self._cond = threading.Condition()
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        # How many queries the second session read (for the module result).
        self.read_ahead = 0

    def start(self, connect: Callable[[], Any], snapshot: str, setup: Sequence[tuple[str, tuple[Any, ...]]] = ()
              ) -> None:
        """Start the reader: ``connect()`` gives a psycopg2 connection; it imports ``snapshot`` in a
        READ ONLY, REPEATABLE READ transaction, runs ``setup`` (statement, args) and reads from the end."""
        self._thread = threading.Thread(target=self._read, args=(connect, snapshot, setup),
                                        name="capital-check-prefetch", daemon=True)
        self._thread.start()

    def _read(self, connect: Callable[[], Any], snapshot: str, setup: Sequence[tuple[str, tuple[Any, ...]]]
              ) -> None:
        try:
            conn = connect()
        except Exception:  # a session fewer: the caller reads everything itself
            return
        with self._cond:
            self._conn = conn
        try:
            conn.autocommit = False
            with conn.cursor() as cur:
                try:
                    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                    for statement, args in setup:
                        cur.execute(statement, args or None)
                except Exception:  # the snapshot cannot be imported here: the caller reads everything
                    return
                self._loop(cur)
        finally:
            with self._cond:
                self._conn = None
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()

    def _loop(self, cur: Any) -> None:
        while True:
            with self._cond:
                if self._stopped or not self._pending:
                    return
                sql = self._pending.pop()
                self._running.add(sql)
            result: list[tuple[Any, ...]] | Exception
            try:
                cur.execute(sql)
                result = list(cur.fetchall())
            except Exception as exc:  # the caller's error for this query, raised by take()
                result = exc
            with self._cond:
                self._done[sql] = result
                self._running.discard(sql)
                self.read_ahead += not isinstance(result, Exception)
                self._cond.notify_all()
            if isinstance(result, Exception):
                return  # the transaction is aborted: the rest are the caller's

    def take(self, sql: str) -> list[tuple[Any, ...]] | None:
        """The rows of ``sql`` if the reader read it (waiting while it reads it), its error raised; None when
        the caller is to run it itself (not listed, or not taken yet: then it is the caller's from now on)."""
        with self._cond:
            if sql in self._pending:
                self._pending.remove(sql)
                return None
            while sql in self._running:
                self._cond.wait()
            result = self._done.pop(sql, None)
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        """Stop the reader (cancelling a read in flight) and wait for it."""
        with self._cond:
            self._stopped = True
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel()
        if self._thread is not None:
            self._thread.join()


__all__ = ["Prefetch"]
