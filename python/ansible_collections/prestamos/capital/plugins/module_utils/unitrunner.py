"""Runs units of SQL under lock_timeout with retries on lock timeout or deadlock only, under the migration's
session-level advisory lock: shared by the migration (Migrator) and the reverse migration (Reverter)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.errors import MigrationError
from ansible_collections.prestamos.capital.plugins.module_utils.sqltext import Unit, phase_of

ADVISORY_KEY_SQL = "hashtext('prestamos.capital_tracking')"
APPLICATION_NAME = "capital-migrate"
RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01"})  # lock_not_available, deadlock_detected
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min)?\s*$")
_UNITS_MS = {None: 1, "ms": 1, "s": 1000, "min": 60000}


def duration_ms(value: str | int, what: str) -> int:
    """'2s', '500ms', '1min' or a number of milliseconds -> milliseconds; a clear error otherwise."""
    m = _DURATION.match(str(value))
    if not m:
        raise MigrationError(
            f"{what} {value!r} is not a duration: use milliseconds or a value like '2s', '500ms'"
        )
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def _advisory_holder(cursor: Any) -> dict[str, Any]:
    """Who holds the migration's advisory lock (pg_locks splits the bigint key into classid/objid)."""
    cursor.execute(
        f"""SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start::text, a.usename
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((l.classid::bigint << 32) | l.objid::bigint) = {ADVISORY_KEY_SQL}::bigint"""
    )
    row = cursor.fetchone()
    if row is None:
        return {}
    keys = ("pid", "application_name", "client_addr", "backend_start", "user")
    return dict(zip(keys, row, strict=True))


@contextmanager
def advisory_lock(cursor: Any) -> Iterator[None]:
    """Hold the migration's session-level advisory lock, or fail at once naming whoever holds it.

    Session-level, so a killed run's lock goes with its connection; every run that changes the schema
    (migration and reverse migration) takes it, so two of them never interleave.
    """
    cursor.execute(f"SELECT pg_try_advisory_lock({ADVISORY_KEY_SQL})")
    if not cursor.fetchone()[0]:
        holder = _advisory_holder(cursor)
        raise MigrationError(
            "another capital migration run holds the advisory lock prestamos.capital_tracking: "
            f"pid {holder.get('pid')}, application_name {holder.get('application_name')!r}, "
            f"client {holder.get('client_addr') or 'local socket'}, since {holder.get('backend_start')}; "
            "wait for it to finish (or end that session) and run again",
            lock_held=True,
            holder=holder,
        )
    try:
        yield
    finally:
        if not cursor.connection.closed:
            try:
                cursor.execute(f"SELECT pg_advisory_unlock({ADVISORY_KEY_SQL})")
            except Exception:  # noqa: S110 - closing the session releases it anyway
                pass


# -- the runner -------------------------------------------------------------------------------------------
@dataclass
class Options:
    """The knobs of a run (module parameters, role defaults)."""

    version: str = "1"
    lock_timeout: str = "2s"
    lock_retries: int = 5
    lock_backoff: float = 0.5
    lock_backoff_max: float = 30.0
    batch_size: int = 5000
    statement_timeout: str = "0"
    # Sessions running the backfill's ledger steps side by side and sharing its sweep (backfill.py); 1: one.
    backfill_connections: int = 1
    # At most this many of them while the application is at work on the database (live.py); 0: no limit.
    connections_while_live: int = 0
    # Names this run in the record of provenance (and its history row); a random one when empty.
    run_id: str = ""


@dataclass
class _PhaseStats:
    name: str
    seconds: float = 0.0
    statements: int = 0
    attempts: int = 0


class UnitRunner:
    """Runs units of SQL on one autocommit connection: each under lock_timeout, retried with backoff on
    lock timeout or deadlock only. Shared by the migration (Migrator) and the reverse migration (Reverter).

    Subclasses set conn, cur, options, lock_timeout_ms, lock_retries, phases and statement_log.
    """

    conn: Any
    cur: Any
    options: Options
    lock_timeout_ms: int
    lock_retries: int
    phases: dict[str, _PhaseStats]
    statement_log: list[dict[str, Any]]

    def _phase_for(self, file: str) -> str:
        """The phase a unit's timings count towards."""
        return phase_of(file)

    # -- interruption ----------------------------------------------------------------------------------
    stop_signal: str | None = None
    # What to tell the operator when a signal stopped the run (the subclass's own recovery).
    resume_hint: str = (
        "the migration is partial and resumable. Rerun migrate.yml to resume where it stopped "
        "(finished batches are not redone), or run rollback.yml to undo it"
    )
    resume_short: str = "rerun migrate.yml (resumes) or run rollback.yml (undoes)"

    def request_stop(self, signal_name: str) -> None:
        """Ask the run to stop at the next boundary (a signal handler calls this; it only sets a flag).

        The statement or batch in flight finishes (or rolls back) on its own; nothing is cut in half.
        """
        self.stop_signal = signal_name

    def _stop_if_requested(self, where: str) -> None:
        if self.stop_signal is None:
            return
        raise MigrationError(
            f"interrupted by {self.stop_signal} {where}; every finished step is committed and nothing is half "
            f"done: {self.resume_hint}",
            interrupted=True,
            signal=self.stop_signal,
            resume=self.resume_short,
        )

    def _phase(self, name: str) -> _PhaseStats:
        return self.phases.setdefault(name, _PhaseStats(name))

    def _scalar(self, query: str, args: Sequence[Any] = ()) -> Any:
        self.cur.execute(query, args)
        row = self.cur.fetchone()
        return None if row is None else row[0]

    def _rollback_quietly(self) -> None:
        try:
            self.cur.execute("ROLLBACK")
        except Exception:  # noqa: S110 - the connection may be gone; the original error is reported
            pass

    def _backoff(self, attempt: int) -> float:
        return float(min(self.options.lock_backoff * (2 ** (attempt - 1)), self.options.lock_backoff_max))

    # The longest wait for a lock the run measured: an attempt that gave up at lock_timeout or on a deadlock
    # (its whole time was the wait). Reported for the change record (the report's evidence).
    longest_lock_wait_ms: float = 0.0

    def _attempt(self, work: Callable[[], Any], where: str) -> tuple[Any, int]:
        """Run ``work`` (one transaction) and retry it on lock timeout/deadlock only, with backoff."""
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                return work(), attempt
            except Exception as exc:
                pgcode = getattr(exc, "pgcode", None)
                if pgcode is None and not hasattr(exc, "pgerror"):
                    raise
                if pgcode in RETRYABLE_SQLSTATES:
                    waited = (time.monotonic() - started) * 1000
                    self.longest_lock_wait_ms = max(self.longest_lock_wait_ms, waited)
                self._rollback_quietly()
                stopping = getattr(self, "stop_signal", None) is not None  # no more waiting once asked to stop
                if pgcode in RETRYABLE_SQLSTATES and attempt <= self.options.lock_retries and not stopping:
                    self.lock_retries += 1
                    time.sleep(self._backoff(attempt))
                    continue
                if pgcode in RETRYABLE_SQLSTATES and stopping:
                    # The unit only waited for a lock and was not retried because a stop was asked for: that
                    # is the interruption, and the operator needs its resume instructions, not a lock error.
                    self._stop_if_requested(f"while {where} waited for a lock (not retried)")
                message = (getattr(exc, "pgerror", None) or str(exc)).strip()
                gave_up = pgcode in RETRYABLE_SQLSTATES
                raise MigrationError(
                    (
                        f"{where}: gave up after {attempt} attempts (lock_timeout {self.options.lock_timeout} each): "
                        if gave_up
                        else f"{where}: "
                    )
                    + message,
                    sqlstate=pgcode,
                    failed_at=where,
                    attempts=attempt,
                ) from exc

    # -- units -----------------------------------------------------------------------------------------
    def _before_commit(self) -> None:
        """Runs inside each unit's transaction just before COMMIT (after an autocommit statement: in the
        transaction that follows it). The migration records the objects the unit created here."""

    def _after_autocommit(self) -> None:
        """Runs after a unit that executed outside a transaction (CREATE INDEX CONCURRENTLY)."""

    def _run_batched(self, unit: Unit) -> None:
        """A batched unit is a loop this runner does not know (BackfillRunner runs the backfill's)."""
        raise MigrationError(f"{unit.file}:{unit.line}: this runner runs no batched units ({unit.summary})")

    def _run_unit(self, unit: Unit) -> None:
        if unit.kind == "batched":  # its statement is psql's loop; never executed here
            self._run_batched(unit)
            return
        timeout = f"{self.lock_timeout_ms}ms"

        def work() -> None:
            if unit.kind == "tx":
                self.cur.execute("BEGIN")
                self.cur.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
                for stmt in unit.statements:
                    self.cur.execute(stmt.text)
                self._before_commit()
                self.cur.execute("COMMIT")
                return
            stmt = unit.statements[0]
            self.cur.execute("SELECT set_config('lock_timeout', %s, false)", (timeout,))
            try:
                if stmt.gexec:
                    self.cur.execute(stmt.text)
                    generated = [value for row in self.cur.fetchall() for value in row if value is not None]
                    for generated_sql in generated:
                        self.cur.execute(generated_sql)
                else:
                    self.cur.execute(stmt.text)
            finally:
                if not self.conn.closed:
                    self.cur.execute("RESET lock_timeout")
            self._after_autocommit()

        self._timed(work, f"{unit.file}:{unit.line} ({unit.summary})", self._phase_for(unit.file),
                    len(unit.statements), unit.file, unit.line, unit.summary)

    def _timed(self, work: Callable[[], Any], where: str, phase: str, statements: int, file: str, line: int,
               summary: str) -> None:
        """Run ``work`` as one retried attempt (``_attempt``) and count it: phase timings, the statement log."""
        started = time.monotonic()
        _result, attempts = self._attempt(work, where)
        seconds = time.monotonic() - started
        stats = self._phase(phase)
        stats.seconds += seconds
        stats.statements += statements
        stats.attempts += attempts
        self.statement_log.append(
            {"file": file, "line": line, "statement": summary, "attempts": attempts, "seconds": round(seconds, 3)}
        )
