"""The capital-tracking migration runner: plain, typed Python, used by the capital_migrate module and tests.

Why a module_utils file: the module runs on the target host and must ship this code with it; tests and the
CLI import it directly (``ansible_collections.prestamos.capital.plugins.module_utils.migration``).

The SQL lives in ``files/sql``. ``add_capital_tracking.sql`` is the one source of truth for the order of the
pieces (its ``\\ir`` lines); the checksum covers that script and the pieces, in order. Inside a piece,
``BEGIN; ...; COMMIT;`` delimits a transaction the runner executes (and retries) as one unit with
``SET LOCAL lock_timeout``; a statement outside such a block runs on its own in autocommit (CREATE INDEX
CONCURRENTLY); ``<query> \\gexec`` runs the query and executes each value it returns, like psql. The file
name's first digit names the phase: 1x expand, 2x backfill, 3x enforce. In a backfill piece, a ``CALL
capital_backfill_run(...)`` statement is not executed: the runner drives the same ``capital_backfill_step()``
loop from Python, one transaction per batch; the piece's other statements run like any others.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils import provenance

ADVISORY_KEY_SQL = "hashtext('prestamos.capital_tracking')"
MAIN_SCRIPT = "add_capital_tracking.sql"
APPLICATION_NAME = "capital-migrate"
RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01"})  # lock_not_available, deadlock_detected
_IR_LINE = re.compile(r"^\\ir\s+(\S+)\s*$", re.MULTILINE)
_BACKFILL_CALL = re.compile(r"^CALL\s+capital_backfill_run\s*\(", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min)?\s*$")
_UNITS_MS = {None: 1, "ms": 1, "s": 1000, "min": 60000}


class MigrationError(Exception):
    """An operator-facing failure: ``msg`` says what and what to do; ``details`` go into the result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class Interrupted(Exception):
    """Raised from an extension point (``Migrator.before_batch``, ``after_piece``) by a test that stops a run at
    a chosen point, like a killed process would."""


# -- SQL text ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Statement:
    """One statement of a piece; ``gexec`` means: run it and execute every value it returns."""

    text: str
    line: int
    gexec: bool = False

    @property
    def bare(self) -> str:
        """The statement without leading comments or whitespace, for classification and messages."""
        lines = [ln for ln in self.text.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        return "\n".join(lines).strip()


@dataclass(frozen=True)
class Unit:
    """What the runner executes as one attempt: a transaction, or one autocommit statement."""

    file: str
    index: int
    kind: str  # "tx" | "auto"
    statements: tuple[Statement, ...]

    @property
    def line(self) -> int:
        return self.statements[0].line

    @property
    def summary(self) -> str:
        text = " ".join(s.bare.split("\n")[0] for s in self.statements)
        return text[:120]


def split_statements(text: str) -> list[Statement]:
    """Split SQL like psql does: on ``;`` outside quotes, comments and dollar quotes; ``\\gexec`` ends one too.

    Other psql meta-commands are refused: the pieces must run the same through psql and through the module.
    """
    out: list[Statement] = []
    buf: list[str] = []
    start_line = 1
    line = 1
    i = 0
    n = len(text)

    def flush(gexec: bool = False) -> None:
        nonlocal buf
        stmt = Statement("".join(buf), start_line, gexec)
        if stmt.bare:
            out.append(stmt)
        buf = []

    while i < n:
        c = text[i]
        if not "".join(buf).strip():
            start_line = line
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            i = j
            continue
        if c == "/" and text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            chunk = text[i:j]
            buf.append(chunk)
            line += chunk.count("\n")
            i = j
            continue
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            chunk = text[i : j + 1]
            buf.append(chunk)
            line += chunk.count("\n")
            i = j + 1
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                j = text.find(tag, i + len(tag))
                if j < 0:
                    raise MigrationError(f"unterminated dollar quote {tag} starting at line {line}")
                chunk = text[i : j + len(tag)]
                buf.append(chunk)
                line += chunk.count("\n")
                i = j + len(tag)
                continue
        if c == "\\" and (i == 0 or text[i - 1] == "\n"):
            j = text.find("\n", i)
            j = n if j < 0 else j
            meta = text[i:j].strip()
            if meta == "\\gexec":
                flush(gexec=True)
            else:
                raise MigrationError(
                    f"psql meta-command {meta!r} at line {line} is not supported in a piece; "
                    "only \\gexec is (put other meta-commands in the main script)"
                )
            i = j
            continue
        if c == ";":
            buf.append(c)
            flush()
            i += 1
            continue
        if c == "\n":
            line += 1
        buf.append(c)
        i += 1
    if "".join(buf).strip():
        flush()
    return out


def parse_units(name: str, text: str) -> list[Unit]:
    """Group a piece's statements into units: BEGIN ... COMMIT blocks and lone autocommit statements."""
    units: list[Unit] = []
    current: list[Statement] | None = None
    for stmt in split_statements(text):
        word = stmt.bare.rstrip(";").strip().upper()
        if word in ("BEGIN", "START TRANSACTION"):
            if current is not None:
                raise MigrationError(f"{name}:{stmt.line}: BEGIN inside a transaction block")
            current = []
        elif word in ("COMMIT", "END"):
            if current is None:
                raise MigrationError(f"{name}:{stmt.line}: COMMIT without BEGIN")
            if current:
                units.append(Unit(name, len(units), "tx", tuple(current)))
            current = None
        elif current is not None:
            if stmt.gexec:
                raise MigrationError(f"{name}:{stmt.line}: \\gexec inside a transaction block")
            current.append(stmt)
        else:
            units.append(Unit(name, len(units), "auto", (stmt,)))
    if current is not None:
        raise MigrationError(f"{name}: BEGIN without COMMIT at the end of the file")
    return units


def parse_order(main_text: str) -> list[str]:
    """The pieces named by the main script's ``\\ir`` lines, in order."""
    order = _IR_LINE.findall(main_text)
    if not order:
        raise MigrationError(f"{MAIN_SCRIPT} names no piece (no \\ir lines): is it the right file?")
    return order


def sql_checksum(texts_in_order: Iterable[str]) -> str:
    """sha256 over the texts in order, each followed by a NUL byte (so moving text between files counts).

    Trailing whitespace is not part of the checksum: Ansible's file lookup strips it, a file read from disk
    keeps it, and both must agree on whether a database has drifted.
    """
    digest = hashlib.sha256()
    for text in texts_in_order:
        digest.update(text.rstrip().encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def load_sql_dir(path: str | Path) -> dict[str, str]:
    """The main script and every piece it includes, read from a directory (tests, CLI)."""
    root = Path(path)
    main = (root / MAIN_SCRIPT).read_text(encoding="utf-8")
    files = {MAIN_SCRIPT: main}
    for name in parse_order(main):
        files[name] = (root / name).read_text(encoding="utf-8")
    inventory = root / provenance.INVENTORY_FILE
    if inventory.is_file():
        files[provenance.INVENTORY_FILE] = inventory.read_text(encoding="utf-8")
    return files


def phase_of(name: str) -> str:
    """The phase a piece belongs to, from the first digit of its name."""
    first = Path(name).name[:1]
    phases = {"1": "expand", "2": "backfill", "3": "enforce"}
    if first not in phases:
        raise MigrationError(f"piece {name!r} must start with 1 (expand), 2 (backfill) or 3 (enforce)")
    return phases[first]


def duration_ms(value: str | int, what: str) -> int:
    """'2s', '500ms', '1min' or a number of milliseconds -> milliseconds; a clear error otherwise."""
    m = _DURATION.match(str(value))
    if not m:
        raise MigrationError(
            f"{what} {value!r} is not a duration: use milliseconds or a value like '2s', '500ms'"
        )
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


# -- state ------------------------------------------------------------------------------------------------
def migration_state(cursor: Any, sha: str) -> str:
    """foreign_schema | not_applied | partial | applied | drifted (docs/design.md "Migration states"); read-only.

    foreign_schema first: on the application's ORM-shaped database (domain.md §5) the ORM's own "PrestamoNew"
    or capital columns would otherwise read as a partly applied migration.
    """
    # Imported here, not at the top: the CLI loads this file by path (capital_migrate/commands/status.py).
    from ansible_collections.prestamos.capital.plugins.module_utils.schema_check import FOREIGN_SCHEMA, foreign_schema

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
            "SELECT sql_sha256 FROM capital_migration_history WHERE outcome = 'applied' ORDER BY id DESC LIMIT 1"
        )
        row = cursor.fetchone()
        if row is not None:
            return "applied" if row[0] == sha else "drifted"
    return "partial"


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

    def _attempt(self, work: Callable[[], Any], where: str) -> tuple[Any, int]:
        """Run ``work`` (one transaction) and retry it on lock timeout/deadlock only, with backoff."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return work(), attempt
            except Exception as exc:
                pgcode = getattr(exc, "pgcode", None)
                if pgcode is None and not hasattr(exc, "pgerror"):
                    raise
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

    def _run_unit(self, unit: Unit) -> None:
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

        started = time.monotonic()
        where = f"{unit.file}:{unit.line} ({unit.summary})"
        _result, attempts = self._attempt(work, where)
        seconds = time.monotonic() - started
        stats = self._phase(self._phase_for(unit.file))
        stats.seconds += seconds
        stats.statements += len(unit.statements)
        stats.attempts += attempts
        self.statement_log.append(
            {
                "file": unit.file,
                "line": unit.line,
                "statement": unit.summary,
                "attempts": attempts,
                "seconds": round(seconds, 3),
            }
        )


@dataclass
class Migrator(UnitRunner):
    """Applies the migration on one connection (autocommit; the runner issues BEGIN/COMMIT itself)."""

    conn: Any
    sql: Mapping[str, str]
    options: Options = field(default_factory=Options)
    order: Sequence[str] | None = None

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

    # -- helpers ---------------------------------------------------------------------------------------
    def _backfill(self) -> None:
        """The 2x phase: capital_backfill_step() in a loop, one transaction per batch."""
        stats = self._phase("backfill")
        started = time.monotonic()
        timeout = f"{self.lock_timeout_ms}ms"
        stmt_timeout = f"{self.statement_timeout_ms}ms"
        while True:
            self._stop_if_requested(f"after backfill batch {self.batches}")
            self.before_batch(self.batches)

            def work() -> tuple[str, int, bool, bool]:
                del self.conn.notices[:]  # only the notices of the attempt that commits count
                self.cur.execute("BEGIN")
                self.cur.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
                self.cur.execute("SELECT set_config('statement_timeout', %s, true)", (stmt_timeout,))
                # A batch is a few hundred milliseconds of index work: JIT compilation (~30 ms whenever a plan's
                # cost passes jit_above_cost, e.g. every junta sweep batch) only adds to it.
                self.cur.execute("SELECT set_config('jit', 'off', true)")
                self.cur.execute("SELECT * FROM capital_backfill_step(%s)", (self.options.batch_size,))
                row = self.cur.fetchone()
                self.cur.execute("COMMIT")
                self.batches_rerun += sum("run again with ON CONFLICT" in n for n in self.conn.notices)
                source, rows, source_done, all_done = row
                return str(source), int(rows), bool(source_done), bool(all_done)

            (source, rows, _source_done, all_done), attempts = self._attempt(
                work, f"backfill batch {self.batches + 1}"
            )
            stats.attempts += attempts
            if source not in ("complete", "junta_index"):
                self.batches += 1
                stats.statements += 1
                if rows > 0:
                    self.rows_backfilled[source] = self.rows_backfilled.get(source, 0) + rows
                self.after_batch(self.batches)
            if all_done or source == "junta_index":  # the piece builds the junta index, then calls again
                break
            if rows < 0:
                time.sleep(0.2)  # barrier: transactions older than the ledger_complete flip still running
        stats.seconds += time.monotonic() - started

    # -- extension points: no-ops here; the benchmark times batches, tests stop a run (raise Interrupted) --
    def before_batch(self, done: int) -> None:
        """Called before each backfill batch with the number of batches done so far in this run."""

    def after_batch(self, done: int) -> None:
        """Called after each committed backfill batch (not the barrier or index steps)."""

    def after_piece(self, name: str) -> None:
        """Called after every unit of the piece ``name`` has run."""

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
            "lock_retries": self.lock_retries,
            "run_id": self.run_id,
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
        state_before = migration_state(self.cur, self.sha)
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
            # Applied before the record existed (or through psql): adopt what matches, nothing else changes.
            adopt = bool(found.adoptable or found.claimable) and not check_mode
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
            # Every unit is one transaction (or one autocommit statement), except a backfill CALL, which the
            # runner repeats batch by batch until its steps are done: those are counted apart.
            plan = [
                {
                    "file": name,
                    "phase": phase_of(name),
                    "units": len(self.units[name]),
                    "batched_units": sum(
                        1
                        for unit in self.units[name]
                        if phase_of(name) == "backfill" and _BACKFILL_CALL.match(unit.statements[0].bare)
                    ),
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
                for unit in self.units[name]:
                    self._stop_if_requested(f"before {unit.file}:{unit.line}")
                    if phase_of(name) == "backfill" and _BACKFILL_CALL.match(unit.statements[0].bare):
                        self._open_history()
                        self._backfill()
                    else:
                        self._run_unit(unit)
                    self._open_history()
                self.after_piece(name)
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
            result["state_after"] = migration_state(self.cur, self.sha)
            return result
        except MigrationError as exc:
            if not self.conn.closed:
                self._rollback_quietly()
                try:
                    self._close_history("failed", {"error": exc.msg, **exc.details})
                except Exception:  # noqa: S110 - the original error matters more
                    pass
                exc.details.setdefault("state_after", migration_state(self.cur, self.sha))
                exc.details.setdefault("phase_after", self._phase_name())
            exc.details.update(
                {k: v for k, v in self._result(True, state_before).items() if k not in exc.details}
            )
            raise
