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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.sqltext import Unit
from ansible_collections.prestamos.capital.plugins.module_utils.unitrunner import UnitRunner

STEP_SQL = "SELECT source, rows_done, source_done, all_done FROM capital_backfill_step(%s)"
# capital_backfill_batch's NOTICE when a sync trigger raced the batch and it was run again with ON CONFLICT.
RERUN_NOTICE = "run again with ON CONFLICT"
# Seconds to wait after a step that returned rows < 0 (capital_backfill_run waits pg_sleep(0.2) too).
BARRIER_WAIT = 0.2


@dataclass(frozen=True)
class Step:
    """What one ``capital_backfill_step()`` call returned."""

    source: str  # the step that ran (Accion, ..., PrestamoNew), or 'junta_index' / 'complete'
    rows: int  # rows (juntas) done; -1: waiting for transactions older than the phase flip; -2: index missing
    source_done: bool
    all_done: bool

    @property
    def is_batch(self) -> bool:
        """A step's batch ran (or waited at the barrier); not the 'build the index' or 'complete' answers."""
        return self.source not in ("complete", "junta_index")

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
    statement_timeout_ms, batches, rows_backfilled, batches_rerun."""

    statement_timeout_ms: int
    batches: int
    rows_backfilled: dict[str, int]
    batches_rerun: int

    def _run_batched(self, unit: Unit) -> None:
        """The loop: one batch after another until the step says the loop is over; a stop asked for by a
        signal is honoured between two batches."""
        stats = self._phase(self._phase_for(unit.file))
        started = time.monotonic()
        try:
            while True:
                self._stop_if_requested(f"after backfill batch {self.batches}")
                batch = self._batch()
                stats.attempts += batch.attempts
                if batch.step.is_batch:
                    stats.statements += 1
                if batch.step.ends_loop:
                    return
                if batch.step.rows < 0:
                    time.sleep(BARRIER_WAIT)
        finally:
            stats.seconds += time.monotonic() - started

    def _batch(self) -> Batch:
        """One ``capital_backfill_step()`` call in its own transaction, retried with backoff on lock timeout or
        deadlock only (``_attempt``), and counted: batches, rows per step, batches a trigger raced."""
        number = self.batches + 1
        started = time.monotonic()
        (step, reruns), attempts = self._attempt(self._step_transaction, f"backfill batch {number}")
        if step.is_batch:
            self.batches = number
            if step.rows > 0:
                self.rows_backfilled[step.source] = self.rows_backfilled.get(step.source, 0) + step.rows
        self.batches_rerun += reruns
        return Batch(step, self.batches, time.monotonic() - started, attempts, reruns)

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
