"""The backfill loop the capital_migrate module runs: ``capital_backfill_step()`` until it reports ``all_done``,
each call its own transaction.

``20_backfill.sql`` declares its two loops with the psql meta-command ``\\set capital_unit batched`` before
``CALL capital_backfill_run(:batch_size);``; sqltext.py makes that statement a unit of kind ``batched``. psql
runs the CALL (the procedure loops and commits per batch: the operator's path). The module never executes
the statement: it runs the loop here, because a CALL is one statement: its ``statement_timeout`` would cover
every batch, a lock timeout would end the whole loop, and nothing outside could time a batch or stop between
two. Every decision of the loop (which step is next, when the junta index must be built first, when to
wait for transactions older than the phase flip, when it is done) is made by ``capital_backfill_step()``; the
loop only follows what each call returns, like the procedure does.

Lanes: the four ledger steps are independent of each other, and the sweep's batches each lock their own
juntas, so with ``backfill_connections`` above 1 the loop runs them on more sessions at once.
``capital_backfill_step()`` hands each call a ledger step no other session is in (its progress row
``FOR UPDATE SKIP LOCKED``) or a batch of juntas no other session holds, and answers ``busy`` when everything
left is held elsewhere; an extra lane then ends, the first one waits for the others. Every batch is still one
transaction of one step with its own progress, so a run stopped or killed anywhere resumes like a run on one
session.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils import live
from ansible_collections.prestamos.capital.plugins.module_utils.errors import MigrationError
from ansible_collections.prestamos.capital.plugins.module_utils.sqltext import Unit
from ansible_collections.prestamos.capital.plugins.module_utils.unitrunner import UnitRunner, _PhaseStats

STEP_SQL = "SELECT source, rows_done, source_done, all_done FROM capital_backfill_step(%s)"
# capital_backfill_batch's NOTICE when a sync trigger raced the batch and it was run again with ON CONFLICT.
RERUN_NOTICE = "run again with ON CONFLICT"
# Seconds to wait after a step that returned rows < 0 (capital_backfill_run waits pg_sleep(0.2) too).
BARRIER_WAIT = 0.2
# The steps several sessions run at once: the four ledger steps side by side, the sweep (each batch its own
# juntas). capital_backfill_step decides; the loop only opens the sessions when one of them starts.
SHARED_STEPS = frozenset({"Accion", "Multa", "Prestamo", "PagoPrestamo", "PrestamoNew"})


@dataclass(frozen=True)
class Step:
    """What one ``capital_backfill_step()`` call returned."""

    source: str  # the step that ran (Accion, ..., PrestamoNew), or 'junta_index' / 'complete' / 'busy'
    # rows (juntas) done; -1: waiting for transactions older than the phase flip; -2: index missing; -3: busy
    rows: int
    source_done: bool
    all_done: bool

    @property
    def is_batch(self) -> bool:
        """A step's batch ran (or waited at the barrier); not the 'build the index', 'complete' or 'busy'
        answers."""
        return self.source not in ("complete", "junta_index", "busy")

    @property
    def busy(self) -> bool:
        """Every step left is held by another session's batch."""
        return self.source == "busy"

    @property
    def ends_loop(self) -> bool:
        """Every step is done, or the junta index must be built first (the piece's next unit builds it)."""
        return self.all_done or self.source == "junta_index"


@dataclass(frozen=True)
class Batch:
    """One committed call: its step, this run's batch count after it, how long it took and how often it ran."""

    step: Step
    number: int
    seconds: float
    attempts: int
    reruns: int


class BackfillRunner(UnitRunner):
    """The UnitRunner that also runs batched units (the Migrator). Subclasses set, besides UnitRunner's:
    statement_timeout_ms, batches, rows_backfilled, batches_rerun; and, for lanes, connect (opens another
    connection to the same database) with options.backfill_connections above 1."""

    statement_timeout_ms: int
    batches: int
    rows_backfilled: dict[str, int]
    batches_rerun: int
    connect: Callable[[], Any] | None = None
    # Sessions that ran backfill batches in this run (the first one included): the result's backfill_sessions.
    backfill_sessions: int = 1
    # The application's sessions at work when the backfill started (live.py); None when not looked.
    application_sessions: int | None = None

    def request_stop(self, signal_name: str) -> None:
        """Ask this run and its lanes to stop at their next boundary."""
        super().request_stop(signal_name)
        for lane in getattr(self, "_lanes", ()):
            lane.runner.request_stop(signal_name)

    def _run_batched(self, unit: Unit) -> None:
        """The loop: one batch after another until the step says the loop is over; a stop asked for by a
        signal is honoured between two batches. After the first batch of a shared step the extra lanes start; when a
        lane fails, this loop raises its error at its next turn and stops the others."""
        stats = self._phase(self._phase_for(unit.file))
        started = time.monotonic()
        self._lanes: list[_Lane] = []
        try:
            self._loop(stats)
        except BaseException as exc:
            # Stopped by a signal: the lanes finish their batch in flight, like this session. Failed: their
            # batch in flight is cancelled.
            interrupted = isinstance(exc, MigrationError) and bool(exc.details.get("interrupted"))
            self._end_lanes(stats, cancel=not interrupted)
            raise
        else:
            self._end_lanes(stats, cancel=False)
            self._raise_lane_error()
        finally:
            stats.seconds += time.monotonic() - started

    def _loop(self, stats: _PhaseStats) -> None:
        lanes_started = False
        busy_since: float | None = None
        while True:
            self._stop_if_requested(f"after backfill batch {self.batches}")
            self._raise_lane_error()
            batch = self._batch()
            if batch.step.ends_loop:
                return
            if batch.step.busy:
                busy_since = self._busy_wait(busy_since)
                continue
            busy_since = None
            stats.attempts += batch.attempts
            stats.statements += 1
            if batch.step.source in SHARED_STEPS and batch.step.rows >= 0 and not lanes_started:
                self._start_lanes()
                lanes_started = True
            if batch.step.rows < 0:
                time.sleep(BARRIER_WAIT)

    # -- lanes -----------------------------------------------------------------------------------------
    def _start_lanes(self) -> None:
        """Open ``backfill_connections - 1`` more sessions, each running batches in a thread. A session that
        cannot connect (max_connections reached) runs nothing: the others do its share."""
        if self.options.backfill_connections < 2 or self.connect is None:
            return
        sessions, self.application_sessions = live.sessions(
            self.conn, self.options.backfill_connections, self.options.connections_while_live
        )
        wanted = sessions - 1
        for number in range(2, wanted + 2):
            try:
                conn = self.connect()
            except Exception:  # noqa: S112 - a lane that cannot connect takes no step
                continue
            lane = _Lane(self, conn, number)
            self._lanes.append(lane)
            lane.thread.start()
        self.backfill_sessions = max(self.backfill_sessions, 1 + len(self._lanes))

    def _raise_lane_error(self) -> None:
        for lane in self._lanes:
            if lane.error is not None:
                raise lane.error

    def _busy_wait(self, since: float | None) -> float:
        """This session's steps are all held elsewhere: wait for this run's lanes, or, if none of them is
        running, for another session for as long as the run waits for a lock (lock_timeout, every retry)."""
        now = time.monotonic()
        since = now if since is None else since
        if not any(lane.thread.is_alive() for lane in self._lanes):
            budget = self.lock_timeout_ms / 1000 * (self.options.lock_retries + 1)
            if now - since > budget:
                raise MigrationError(
                    f"backfill batch {self.batches + 1}: everything the backfill has left is held by another "
                    f"session for more than {budget:g} s (a row of capital_backfill_progress, or the juntas the "
                    "loan sweep needs, locked); find it with SELECT pid, state, xact_start, query FROM "
                    "pg_stat_activity WHERE pid IN (SELECT pid FROM pg_locks WHERE relation IN "
                    "('capital_backfill_progress'::regclass, '\"Junta\"'::regclass)), let it finish or end it, "
                    "then rerun migrate.yml (it resumes)",
                    failed_at=f"backfill batch {self.batches + 1}",
                )
        time.sleep(BARRIER_WAIT)
        return since

    def _end_lanes(self, stats: _PhaseStats, cancel: bool) -> None:
        """Halt the lanes, wait for them and count their batches as this run's. ``cancel`` (this run failed):
        a lane's batch in flight is cancelled and rolls back."""
        for lane in self._lanes:
            lane.halt.set()
        for lane in self._lanes:
            if cancel and lane.thread.is_alive():
                with contextlib.suppress(Exception):  # a lane between two batches has nothing to cancel
                    lane.runner.conn.cancel()
        for lane in self._lanes:
            lane.thread.join()
            runner = lane.runner
            self.batches += runner.batches
            for source, rows in runner.rows_backfilled.items():
                self.rows_backfilled[source] = self.rows_backfilled.get(source, 0) + rows
            self.batches_rerun += runner.batches_rerun
            self.lock_retries += runner.lock_retries
            self.longest_lock_wait_ms = max(self.longest_lock_wait_ms, runner.longest_lock_wait_ms)
            stats.attempts += runner.attempts
            stats.statements += runner.batches
            with contextlib.suppress(Exception):
                runner.conn.close()
        self._lanes = []

    def _batch(self) -> Batch:
        """One ``capital_backfill_step()`` call in its own transaction, retried with backoff on lock timeout or
        deadlock only (``_attempt``), and counted: batches, rows per step, batches a trigger raced."""
        number = self.batches + 1
        started = time.monotonic()
        (step, reruns), attempts = self._attempt(self._step_transaction, self._batch_name(number))
        if step.is_batch:
            self.batches = number
            if step.rows > 0:
                self.rows_backfilled[step.source] = self.rows_backfilled.get(step.source, 0) + step.rows
        self.batches_rerun += reruns
        return Batch(step, self.batches, time.monotonic() - started, attempts, reruns)

    def _batch_name(self, number: int) -> str:
        return f"backfill batch {number}"

    def _step_transaction(self) -> tuple[Step, int]:
        """BEGIN, the batch's limits, the step, COMMIT; the step and how many of its batches were run again."""
        del self.conn.notices[:]  # only the notices of the attempt that commits count
        self.cur.execute("BEGIN")
        self.cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{self.lock_timeout_ms}ms",))
        self.cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{self.statement_timeout_ms}ms",))
        # A batch is a few hundred milliseconds of index work: JIT compilation (~30 ms whenever a plan's cost
        # passes jit_above_cost, e.g. every junta sweep batch) only adds to it.
        self.cur.execute("SELECT set_config('jit', 'off', true)")
        self.cur.execute(STEP_SQL, (self.options.batch_size,))
        row: Any = self.cur.fetchone()
        self.cur.execute("COMMIT")
        reruns = sum(RERUN_NOTICE in notice for notice in self.conn.notices)
        return Step(str(row[0]), int(row[1]), bool(row[2]), bool(row[3])), reruns


class _LaneRunner(BackfillRunner):
    """One extra lane's runner: its own connection and counters, the first runner's options and limits."""

    def __init__(self, first: BackfillRunner, conn: Any, number: int) -> None:
        self.conn, self.cur = conn, conn.cursor()
        self.options = first.options
        self.lock_timeout_ms, self.statement_timeout_ms = first.lock_timeout_ms, first.statement_timeout_ms
        self.batches, self.rows_backfilled, self.batches_rerun, self.lock_retries = 0, {}, 0, 0
        self.phases, self.statement_log = {}, []
        self.stop_signal = first.stop_signal
        self.number = number
        self.attempts = 0

    def _batch_name(self, number: int) -> str:
        return f"backfill batch {number} of session {self.number}"


class _Lane:
    """An extra session running backfill batches in a thread until everything left is held elsewhere (busy),
    the loop's steps are done, it is halted or it fails (``error``, raised by the first lane's loop)."""

    def __init__(self, first: BackfillRunner, conn: Any, number: int) -> None:
        conn.autocommit = True
        self.runner = _LaneRunner(first, conn, number)
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=f"backfill-lane-{number}", daemon=True)

    def _loop(self) -> None:
        runner = self.runner
        try:
            while not self.halt.is_set():
                runner._stop_if_requested(f"after {runner._batch_name(runner.batches)}")
                batch = runner._batch()
                if batch.step.ends_loop or batch.step.busy:
                    return
                runner.attempts += batch.attempts
                if batch.step.rows < 0:
                    time.sleep(BARRIER_WAIT)
        except BaseException as exc:  # handed to the first lane, which raises it
            if not self.halt.is_set():
                self.error = exc
