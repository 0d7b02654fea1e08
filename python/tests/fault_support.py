"""Fault injection for the migration: a running ansible-playbook to hit, points to hit it at, the
application writing meanwhile, and the invariants that must hold afterwards.

Points are reached by watching the run (a task banner on its stdout, the backfill's progress rows, the
phase row), never by sleeping. Every check talks to the real database, the real files and the real
`capital-migrate status`; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
from capital_migrate.datagen import COLUMNS, TABLES

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
WRITER_PREFIX = "fw-"
DOCUMENTED_STATES = frozenset({"not_applied", "partial", "applied"})
MIGRATE_APP = "capital-migrate"
# The backup's session that exports the snapshot pg_dump dumps and reads preflight's probes in it.
SNAPSHOT_APP = "capital_snapshot_dump"


# -- a running playbook --------------------------------------------------------------------------------
class Playbook:
    """ansible-playbook running in its own session (process group), its output read line by line.

    Its own session lets a test hit the whole group (a terminal's Ctrl-C, a killed container) or
    only the ansible-playbook process (``kill PID``, the OOM killer), and lets teardown reap any
    orphan the fault left behind.
    """

    def __init__(self, env: dict[str, str], playbook: str, tmp_path: Path, *extra: str) -> None:
        argv = [
            str(VENV_BIN / "ansible-playbook"), playbook, "-i", "inventories/local",
            "-e", f"capital_backup_dir={tmp_path / 'backups'}",
            "-e", f"capital_report_dir={tmp_path / 'reports'}",
            *extra,
        ]
        # ansible-core's workers call setsid, so the module is not in this process group; every process of
        # the run (orphans included) is found by this marker in its environment instead.
        self.marker = f"capital-fault-{uuid.uuid4().hex}"
        run_env = {
            **env,
            "CAPITAL_FAULT_RUN": self.marker,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "ANSIBLE_NOCOLOR": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.lines: list[str] = []
        self.stamps: list[float] = []
        self.started = time.monotonic()
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self.stamps.append(time.monotonic() - self.started)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for_line(self, pattern: str, timeout: float = 300) -> bool:
        """Block until a line matching ``pattern`` was printed; False if the run ended first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return True
                seen = len(self.lines)
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    return False
                self._cond.wait(0.2)

    def pids(self, cmdline: str | None = None) -> list[int]:
        """Live processes of this run (found by the environment marker), optionally by command line."""
        found = []
        needle = f"CAPITAL_FAULT_RUN={self.marker}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if needle not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if state not in ("Z", "X") and (cmdline is None or cmdline in command):
                found.append(int(proc.name))
        return found

    def send(self, sig: int, group: bool = False, tree: bool = False) -> None:
        """Signal ansible-playbook alone, its process group (a terminal's Ctrl-C), or every process of the
        run, workers and module included (the controller's container or host dies)."""
        with contextlib.suppress(ProcessLookupError):
            if tree:
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            elif group:
                os.killpg(self.pgid, sig)
            else:
                self.proc.send_signal(sig)

    def module_pids(self) -> list[int]:
        """The module processes: with pipelining the module is a bare ``python`` reading its code on stdin."""
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                if len(argv) == 1 and Path(argv[0].decode()).name.startswith("python"):
                    out.append(pid)
        return out

    def alive(self) -> bool:
        return bool(self.pids())

    def finish(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return rc

    def reap(self) -> None:
        """Kill whatever of this run's process group is still alive (orphans a fault left behind)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.send(signal.SIGKILL, tree=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def group_alive(pgid: int) -> bool:
    """True while any process of the group ``pgid`` is alive (zombies excluded)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


# -- points ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """Where in a run a fault fires: after a task banner, a backfill row count, or a phase."""

    name: str
    task: str | None = None  # regex on the run's stdout
    rows: int | None = None  # sum of capital_backfill_progress.rows_done reached
    phase: str | None = None  # capital_migration_state.phase reached
    sql: str | None = None  # a query whose first column turns true

    def reach(self, run: Playbook, db: Any, timeout: float = 300) -> bool:
        """Block until the point is reached; False when the run ended before it."""
        if self.task is not None:
            return run.wait_for_line(self.task, timeout) and run.running()
        deadline = time.monotonic() + timeout
        conn = db.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while run.running() and time.monotonic() < deadline:
                    if self._reached(cur):
                        return True
                    time.sleep(0.01)
        finally:
            conn.close()
        return False

    def _reached(self, cur: Any) -> bool:
        if self.sql is not None:
            cur.execute(self.sql)
            return bool(cur.fetchone()[0])
        if self.rows is not None:
            cur.execute("SELECT to_regclass('capital_backfill_progress') IS NOT NULL")
            if not cur.fetchone()[0]:
                return False
            cur.execute("SELECT coalesce(sum(rows_done), 0) FROM capital_backfill_progress")
            return bool(cur.fetchone()[0] >= self.rows)
        order = ["expanding", "expanded", "backfilling", "ledger_complete", "enforced"]
        cur.execute("SELECT to_regclass('capital_migration_state') IS NOT NULL")
        if not cur.fetchone()[0]:
            return False
        cur.execute("SELECT phase FROM capital_migration_state")
        row = cur.fetchone()
        return row is not None and order.index(row[0]) >= order.index(str(self.phase))


@contextlib.contextmanager
def ledger_gate(db: Any) -> Iterator[None]:
    """Holds the junta index build open: an application transaction that wrote the ledger and has not
    committed (ROW EXCLUSIVE on capital_movements, taken as soon as the table exists). The backfill's own
    inserts go on beside it; CREATE INDEX CONCURRENTLY waits for it (until lock_timeout, then retries), so a
    fault can hit the build in flight instead of racing a build of a few milliseconds. Released on exit."""
    stop = threading.Event()
    held = threading.Event()

    def hold() -> None:
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET application_name = 'fault-ledger-gate'")
                while not stop.is_set():
                    cur.execute("SELECT to_regclass('capital_movements') IS NOT NULL")
                    if cur.fetchone()[0]:
                        cur.execute("LOCK TABLE capital_movements IN ROW EXCLUSIVE MODE")
                        held.set()
                        break
                    conn.rollback()
                    time.sleep(0.01)
                stop.wait()
        except psycopg2.Error:
            pass  # the fault may crash the server under the gate: nothing is left to hold
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@contextlib.contextmanager
def dump_gate(db: Any) -> Iterator[None]:
    """Holds pg_dump inside the backup's shared snapshot: a DBA's own table (``dba_gate``, not the
    migration's), locked ACCESS EXCLUSIVE by an open transaction, so pg_dump - which locks every table it
    dumps - waits on it (within its --lock-wait-timeout) after it imported the snapshot, while
    capital_snapshot_dump's session holds the snapshot and reads preflight's probes. A fault then hits the
    dump and the probes in flight instead of racing a dump of a few milliseconds. Released on exit."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS dba_gate (note text)")
            conn.commit()
            cur.execute("SET application_name = 'fault-dump-gate'")
            cur.execute("LOCK TABLE dba_gate IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        with contextlib.suppress(Exception):  # the fault may have crashed the server under the gate
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()


# -- the application -------------------------------------------------------------------------------------
@dataclass
class Writer:
    """The still-running application: inserts into the legacy tables, one transaction per cycle, until
    stopped. Remembers what was committed, and what may or may not have been (the connection broke
    during COMMIT), so the invariants can demand every committed row and nothing else."""

    db: Any
    committed: dict[str, dict[str, Decimal]] = field(default_factory=lambda: {t: {} for t in TABLES})
    uncertain: dict[str, dict[str, Decimal]] = field(default_factory=lambda: {t: {} for t in TABLES})
    errors: list[str] = field(default_factory=list)
    disconnects: int = 0
    cycles: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()  # held for a whole cycle: checks take it to see a settled writer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                # Spread over every junta, as an application would (the guide's pre-migration query is
                # cubic in the rows of one junta: all writes on one junta make it take minutes).
                cur.execute('SELECT DISTINCT ON (junta_id) junta_id, member_id FROM "Prestamo" ORDER BY junta_id, id')
                self.targets = cur.fetchall()
        finally:
            conn.close()

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the writer is stuck (blocked on a lock for 2 minutes)"

    def _rows(self, n: int) -> list[tuple[str, str, tuple[Any, ...], Decimal]]:
        tag = f"{WRITER_PREFIX}{n:05d}-{uuid.uuid4().hex[:6]}"
        junta, member = self.targets[n % len(self.targets)]
        share, fine, loan, pay = (Decimal("500.25") + n % 7, Decimal("10.50"), Decimal("20.00"), Decimal("5.75"))
        return [
            ("Accion", 'INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id) '
             "VALUES (%s, 'COMPRA', %s, now(), %s, %s)", (f"{tag}-a", share, junta, member), share),
            ("Multa", 'INSERT INTO "Multa" (id, amount, description, created_at, junta_id, member_id) '
             "VALUES (%s, %s, 'late', now(), %s, %s)", (f"{tag}-m", fine, junta, member), fine),
            ("Prestamo", 'INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id) '
             "VALUES (%s, %s, 'APPROVED', now(), now(), %s, %s)", (f"{tag}-p", loan, junta, member), loan),
            ("PagoPrestamo", 'INSERT INTO "PagoPrestamo" (id, amount, prestamo_id) VALUES (%s, %s, %s)',
             (f"{tag}-q", pay, f"{tag}-p"), pay),
        ]

    def _loop(self) -> None:
        conn = None
        n = 0
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.db.connect()
                    conn.set_session(autocommit=False)
                    with conn.cursor() as cur:
                        cur.execute("SET application_name = 'fault-writer'")
                    conn.commit()
            except psycopg2.Error:
                self.disconnects += 1
                self._stop.wait(0.2)  # the server is down: an application retries
                continue
            n += 1
            rows = self._rows(n)
            stage = "insert"
            self.lock.acquire()
            try:
                with conn.cursor() as cur:
                    for _table, sql, args, _amount in rows:
                        cur.execute(sql, args)
                stage = "commit"
                conn.commit()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.disconnects += 1
                if stage == "commit":  # it may have been committed before the connection broke
                    for table, _sql, args, amount in rows:
                        self.uncertain[table][args[0]] = amount
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                self.lock.release()
                continue
            except psycopg2.Error as exc:
                self.errors.append(f"{type(exc).__name__} {exc.pgcode}: {str(exc).strip()}")
                with contextlib.suppress(Exception):
                    conn.rollback()
                self.lock.release()
                continue
            for table, _sql, args, amount in rows:
                self.committed[table][args[0]] = amount
            self.cycles += 1
            self.lock.release()
            self._stop.wait(0.05)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


@contextlib.contextmanager
def application(db: Any) -> Iterator[Writer]:
    writer = Writer(db).start()
    try:
        yield writer
    finally:
        writer.stop()


# -- invariants ------------------------------------------------------------------------------------------
def legacy_checksums(conn: Any) -> dict[str, str]:
    """md5 per legacy table of the rows the application did not write during the test (baseline columns)."""
    out: dict[str, str] = {}
    with conn.cursor() as cur:
        for table in TABLES:
            columns = ", ".join(f't."{c}"' for c in COLUMNS[table])
            cur.execute(
                f"SELECT md5(coalesce(string_agg(ROW({columns})::text, E'\\n' ORDER BY t.id COLLATE \"C\"), ''))"
                f' FROM "{table}" t WHERE t.id NOT LIKE %s',
                (WRITER_PREFIX + "%",),
            )
            out[table] = cur.fetchone()[0]
    conn.commit()
    return out


def check_legacy(db: Any, before: dict[str, str], writer: Writer) -> None:
    """Every row held before is unchanged, every committed application row is there with its amount,
    and no application row exists that was never (maybe) committed."""
    conn = db.connect()
    try:
        assert legacy_checksums(conn) == before, "legacy rows held before the run changed or vanished"
        with writer.lock, conn.cursor() as cur:
            for table in ("Accion", "Multa", "Prestamo", "PagoPrestamo"):
                cur.execute(
                    f'SELECT id, round(amount::numeric, 2) FROM "{table}" WHERE id LIKE %s', (WRITER_PREFIX + "%",)
                )
                present = dict(cur.fetchall())
                missing = {k: v for k, v in writer.committed[table].items() if present.get(k) != v}
                assert not missing, f"{table}: {len(missing)} committed application rows lost, e.g. {list(missing)[:3]}"
                unknown = set(present) - set(writer.committed[table]) - set(writer.uncertain[table])
                assert not unknown, f"{table}: rows nobody committed: {sorted(unknown)[:3]}"
    finally:
        conn.close()


def catalog_state(db: Any) -> str:
    """The migration state read straight from the catalog and the history table (docs/design.md)."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT to_regclass('capital_movements') IS NOT NULL OR to_regclass('capital_migration_state')"
                " IS NOT NULL OR to_regclass('capital_migration_history') IS NOT NULL"
                " OR EXISTS (SELECT 1 FROM pg_proc WHERE proname LIKE 'capital%%'"
                "            AND pronamespace = 'public'::regnamespace)"
                " OR EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'Junta'"
                "            AND column_name = 'base_capital')"
            )
            anything = cur.fetchone()[0]
            if not anything:
                return "not_applied"
            cur.execute("SELECT to_regclass('capital_migration_history') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute("SELECT count(*) FROM capital_migration_history WHERE outcome = 'applied'")
                if cur.fetchone()[0]:
                    return "applied"
            return "partial"
    finally:
        conn.close()


def status(db: Any, tmp_path: Path) -> dict[str, Any]:
    """`capital-migrate status --env local --json`, as an operator runs it after an incident."""
    env = {**db.env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        [str(VENV_BIN / "capital-migrate"), "status", "--env", "local", "--json",
         "--report-dir", str(tmp_path / "reports")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def check_state(db: Any, tmp_path: Path, allowed: frozenset[str] = DOCUMENTED_STATES) -> str:
    """The database is in a documented state and `capital-migrate status` names that very state."""
    actual = catalog_state(db)
    reported = status(db, tmp_path)["status"]["state"]
    assert actual in allowed, f"state {actual} not in {sorted(allowed)}"
    assert reported == actual, f"capital-migrate status says {reported}, the catalog says {actual}"
    return actual


def wait_migration_sessions_gone(db: Any, timeout: float = 300) -> None:
    """Wait until no migration session is connected (an orphaned module may still be finishing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = db.connect()
        except psycopg2.OperationalError:
            time.sleep(0.2)
            continue
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = %s AND datname = current_database()",
                    (MIGRATE_APP,),
                )
                if cur.fetchone()[0] == 0:
                    return
        finally:
            conn.close()
        time.sleep(0.1)
    raise AssertionError(f"a {MIGRATE_APP} session is still connected after {timeout}s")


def terminate_migration(db: Any) -> int:
    """pg_terminate_backend on the migration's sessions and the backup's snapshot sessions (what a DBA or a
    failover does); how many."""
    conn = db.cluster.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name IN (%s, %s) AND datname = %s",
                (MIGRATE_APP, SNAPSHOT_APP, db.name),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@dataclass
class Backups:
    """The dumps in the backup directory and their manifests: all intact, the first one never changed."""

    directory: Path
    first: tuple[str, str] | None = None

    def check(self) -> list[Path]:
        dumps = sorted(self.directory.glob("*.dump")) if self.directory.is_dir() else []
        for dump in dumps:
            manifest = Path(f"{dump}.manifest.json")
            assert manifest.is_file(), f"{dump} has no manifest"
            recorded = json.loads(manifest.read_text())["sha256"]
            assert sha256(dump) == recorded, f"{dump} does not match its manifest"
        if self.first is None and dumps:
            self.first = (dumps[0].name, sha256(dumps[0]))
        if self.first is not None:
            name, digest = self.first
            assert (self.directory / name).is_file(), f"the pre-migration backup {name} is gone"
            assert sha256(self.directory / name) == digest, f"the pre-migration backup {name} changed"
        return dumps


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
