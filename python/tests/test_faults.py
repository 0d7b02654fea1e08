"""Fault injection: kill the migration anywhere, crash the server, fill the backup disk, start it twice.

Each case runs the real `migrate.yml` on a private throwaway cluster while an application thread keeps
writing to the legacy tables, injects one fault when the run reaches a chosen point (a task banner, a
backfill row count, a phase: never a sleep), then checks the invariants, recovers with the documented
action and checks them again:

- every legacy row held before is unchanged and every row the application committed is there;
- the database is in a documented state (not_applied / partial / applied) and `capital-migrate status`
  names that state;
- every backup with a manifest matches it (sha256) and the first (pre-migration) backup never changes;
- after recovery `capital_check` reports zero discrepancies (or, after rollback.yml, nothing is left).

`make test` runs the fast subset; `make faults` (`pytest -m faults --faults=full`) runs the whole matrix.
docs/reliability.md lists what is covered and how to reproduce one case.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from capital_migrate.pgtmp import Cluster, Database, temporary_database
from fault_support import (
    Backups,
    Playbook,
    Point,
    Writer,
    application,
    catalog_state,
    check_legacy,
    check_state,
    dump_gate,
    ledger_gate,
    legacy_checksums,
    status,
    terminate_migration,
    until,
    wait_migration_sessions_gone,
)
from migration_helpers import seed_db
from system_support import tmpfs
from test_rollback import leftovers
from test_verify import run_check

pytestmark = pytest.mark.faults

JUNTAS = 8
BATCH = 50
MIGRATE_ARGS = ("-e", f"capital_batch_size={BATCH}")


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[Cluster]:
    """A private cluster: the server-crash faults take down every database in it."""
    with Cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def template(fault_cluster: Cluster) -> Iterator[tuple[Database, int]]:
    """Baseline data generated once; each case gets a copy. Also returns the rows the backfill reads."""
    with temporary_database(fault_cluster, prefix="ftpl") as db:
        seed_db(db, juntas=JUNTAS)
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute(
                'SELECT (SELECT count(*) FROM "Accion") + (SELECT count(*) FROM "Multa")'
                ' + (SELECT count(*) FROM "Prestamo") + (SELECT count(*) FROM "PagoPrestamo")'
            )
            rows = int(cur.fetchone()[0])
        conn.close()
        yield db, rows


@pytest.fixture
def fdb(template: tuple[Database, int]) -> Iterator[Database]:
    with temporary_database(template[0].cluster, prefix="f", template=template[0].name) as db:
        yield db


@pytest.fixture
def source_rows(template: tuple[Database, int]) -> int:
    return template[1]


def full_only(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--faults") != "full":
        pytest.skip("part of the full fault matrix: make faults (pytest -m faults --faults=full)")


# -- points ----------------------------------------------------------------------------------------------
def points(total: int) -> dict[str, Point]:
    """Stage boundaries (task banners) and points inside the backfill (row counts, phases)."""
    return {
        "preflight->backup": Point("preflight->backup", task=r"TASK \[run \| Note that the backup stage has started"),
        "backup:pg_dump": Point("backup:pg_dump", task=r"\| Dump the database to "),
        # pg_dump has imported the backup's exported snapshot and waits on dump_gate's lock; the session that
        # exported it is still in its transaction (reading preflight's probes, or waiting for pg_dump).
        "backup:snapshot": Point(
            "backup:snapshot",
            sql="SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'LOCK TABLE %dba_gate%'"
            " AND wait_event_type = 'Lock') AND EXISTS (SELECT 1 FROM pg_stat_activity"
            " WHERE application_name = 'capital_snapshot_dump' AND state <> 'idle')",
        ),
        # The dump is sealed; preflight's checks judge the rows read in its snapshot (nothing changed yet).
        "backup:findings": Point("backup:findings", task=r"\| Check data quality in the dump's snapshot"),
        "backup->migrate": Point("backup->migrate", task=r"TASK \[run \| Note that the migrate stage has started"),
        "migrate:expand": Point("migrate:expand", phase="expanding"),
        "backfill:batch-1": Point("backfill:batch-1", rows=BATCH),
        "backfill:40%": Point("backfill:40%", rows=int(total * 0.4)),
        "backfill:90%": Point("backfill:90%", rows=int(total * 0.9)),
        # The junta index being built (CREATE INDEX CONCURRENTLY, held open by ledger_gate): between the ledger
        # steps and the junta steps.
        "backfill:junta-index": Point(
            "backfill:junta-index",
            sql="SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index"
            " WHERE relid = to_regclass('capital_movements'))",
        ),
        "migrate:enforce": Point("migrate:enforce", phase="ledger_complete"),
        "migrate->verify": Point("migrate->verify", task=r"TASK \[run \| Note that the verify stage has started"),
    }


# -- faults ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """How to hit a running migrate.yml; ``group`` signals its whole process group (module included)."""

    name: str
    inject: Callable[[Playbook, Database], None]


def _signal(sig: int, group: bool = False, tree: bool = False) -> Callable[[Playbook, Database], None]:
    def inject(run: Playbook, _db: Database) -> None:
        run.send(sig, group=group, tree=tree)

    return inject


def _terminate(_run: Playbook, db: Database) -> None:
    terminate_migration(db)


def _crash(_run: Playbook, db: Database) -> None:
    db.cluster.crash()
    db.cluster.restart()


FAULTS = {
    # kill -9 of ansible-playbook alone (OOM killer, `kill -9 PID`): its module process lives on.
    "sigkill": Fault("sigkill", _signal(signal.SIGKILL, group=False)),
    # kill -9 of everything (the controller's container or host dies): the module dies mid-statement.
    "sigkill-all": Fault("sigkill-all", _signal(signal.SIGKILL, tree=True)),
    # Ctrl-C at the terminal: SIGINT to the foreground process group.
    "sigint": Fault("sigint", _signal(signal.SIGINT, group=True)),
    # `kill PID`, systemd, a CI timeout: SIGTERM to ansible-playbook, which passes it to its workers.
    "sigterm": Fault("sigterm", _signal(signal.SIGTERM, group=False)),
    "terminate-backend": Fault("terminate-backend", _terminate),
    "server-crash": Fault("server-crash", _crash),
}

# The points each fault is tried at in the full matrix. pg_terminate_backend only has a target while the
# migration module is connected.
MATRIX = {
    "sigkill": ["backup:pg_dump", "backup:findings", "backup->migrate", "backfill:batch-1", "backfill:40%",
                "migrate:enforce", "migrate->verify"],
    "sigkill-all": ["preflight->backup", "backup:pg_dump", "backup:snapshot", "backup:findings", "migrate:expand",
                    "backfill:batch-1", "backfill:90%", "backfill:junta-index", "migrate:enforce", "migrate->verify"],
    "sigint": ["backup:pg_dump", "backup:snapshot", "migrate:expand", "backfill:40%", "backfill:junta-index",
               "migrate:enforce", "migrate->verify"],
    "sigterm": ["backup->migrate", "migrate:expand", "backfill:batch-1", "backfill:90%", "migrate:enforce"],
    "terminate-backend": ["backup:snapshot", "migrate:expand", "backfill:batch-1", "backfill:40%", "backfill:90%",
                          "backfill:junta-index", "migrate:enforce"],
    "server-crash": ["backup:pg_dump", "backup:snapshot", "migrate:expand", "backfill:40%", "backfill:junta-index",
                     "migrate:enforce", "migrate->verify"],
}
FAST = {("sigterm", "backfill:40%")}
CASES = [(fault, point) for fault, pts in MATRIX.items() for point in pts]
CASES += [case for case in FAST if case not in CASES]


def recover_and_check(db: Database, tmp_path: Path, before: dict[str, str], writer: Writer,
                      backups: Backups) -> None:
    """The documented recovery: rerun migrate.yml; it must resume (or do nothing) and verify clean."""
    rerun = Playbook(db.env, "migrate.yml", tmp_path, *MIGRATE_ARGS)
    rc = rerun.finish()
    assert rc == 0, rerun.output[-4000:]
    assert check_state(db, tmp_path) == "applied"
    check_legacy(db, before, writer)
    backups.check()
    result = run_check(db)
    assert result.get("discrepancy_count") == 0 and not result.get("failed"), result.get("msg")


def settle(run: Playbook, db: Database) -> int | None:
    """Let the fault play out: the run ends (or was killed), an orphaned module finishes, no migration
    session is left.

    Only the module must end by itself. After ``kill -9`` of ansible-playbook alone, ansible-core's worker
    process that ran the module blocks for ever writing the module's result into its dead parent's
    queue (a pipe it holds both ends of): it holds no database session and no lock, so it is left to
    ``run.reap()`` (docs/reliability.md says how an operator finds and kills it).
    """
    try:
        rc = run.finish(timeout=600)
    except subprocess.TimeoutExpired:
        rc = None
    until(lambda: not run.module_pids(), 600, "the run's module process (orphaned or not) to end")
    wait_migration_sessions_gone(db)
    return rc


@pytest.mark.parametrize(("fault", "point"), CASES, ids=[f"{f}@{p}" for f, p in CASES])
def test_fault_leaves_a_documented_recoverable_state(
    request: pytest.FixtureRequest, fdb: Database, tmp_path: Path, source_rows: int, fault: str, point: str
) -> None:
    if (fault, point) not in FAST:
        full_only(request)
    conn = fdb.connect()
    before = legacy_checksums(conn)
    conn.close()
    backups = Backups(tmp_path / "backups")
    gate = (ledger_gate(fdb) if point == "backfill:junta-index" else dump_gate(fdb) if point == "backup:snapshot"
            else contextlib.nullcontext())
    with application(fdb) as writer:
        run = Playbook(fdb.env, "migrate.yml", tmp_path, *MIGRATE_ARGS)
        try:
            with gate:
                reached = points(source_rows)[point].reach(run, fdb)
                assert reached, f"the run ended before {point}:\n{run.output[-3000:]}"
                FAULTS[fault].inject(run, fdb)
            rc = settle(run, fdb)
        finally:
            run.reap()
        assert rc != 0 or fault in ("sigkill", "terminate-backend", "server-crash"), run.output[-3000:]
        state = check_state(fdb, tmp_path)
        check_legacy(fdb, before, writer)
        backups.check()
        if fault in ("sigint", "sigterm") and state == "partial":
            # Stopped between statements, and the history row says why and how to resume.
            conn = fdb.connect()
            with conn.cursor() as cur:
                cur.execute("SELECT outcome, detail FROM capital_migration_history ORDER BY id DESC LIMIT 1")
                outcome, detail = cur.fetchone()
            conn.close()
            assert outcome == "failed" and detail.get("interrupted") is True, detail
            assert "rerun migrate.yml" in detail["error"].lower(), detail
            assert "rerun migrate.yml" in status(fdb, tmp_path)["status"]["next_step"]

        recover_and_check(fdb, tmp_path, before, writer, backups)
    assert writer.errors == [], writer.errors[:5]
    assert writer.cycles > 0


def test_kill_mid_backfill_then_rollback_keeps_every_row(
    request: pytest.FixtureRequest, fdb: Database, tmp_path: Path, source_rows: int
) -> None:
    """The other documented recovery: rollback.yml from a killed, partial migration."""
    full_only(request)
    conn = fdb.connect()
    before = legacy_checksums(conn)
    conn.close()
    backups = Backups(tmp_path / "backups")
    with application(fdb) as writer:
        run = Playbook(fdb.env, "migrate.yml", tmp_path, *MIGRATE_ARGS)
        try:
            assert points(source_rows)["backfill:40%"].reach(run, fdb), run.output[-3000:]
            run.send(signal.SIGKILL, tree=True)
            settle(run, fdb)
        finally:
            run.reap()
        assert check_state(fdb, tmp_path) == "partial"
        rolled = Playbook(fdb.env, "rollback.yml", tmp_path)
        assert rolled.finish() == 0, rolled.output[-4000:]
        assert check_state(fdb, tmp_path) == "not_applied"
        conn = fdb.connect()
        with conn.cursor() as cur:
            assert leftovers(cur) == []
        conn.close()
        check_legacy(fdb, before, writer)
        backups.check()
    assert writer.errors == [], writer.errors[:5]


# -- the backup filesystem fills up during pg_dump -----------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs as the backup directory (we are root); unmounted whatever happens."""
    with tmpfs(tmp_path / "backups", "64m") as mount:
        yield mount


def fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of ``directory`` up to ``leave`` free bytes (another process's files)."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    ballast = directory / "ballast.bin"
    with ballast.open("wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(free - leave, 1))
    return ballast


def test_backup_disk_full_during_pg_dump_stops_before_any_ddl(fdb: Database, tmp_path: Path, tiny_fs: Path) -> None:
    conn = fdb.connect()
    before = legacy_checksums(conn)
    conn.close()
    with application(fdb) as writer:
        run = Playbook(fdb.env, "migrate.yml", tmp_path, *MIGRATE_ARGS)
        try:
            # Preflight has measured enough free space; then another process fills the disk, so pg_dump
            # writes its first 16 KiB and hits ENOSPC (a tiny database dumps faster than a banner is read).
            assert run.wait_for_line(r"TASK \[run \| Note that the backup stage has started"), run.output[-3000:]
            ballast = fill(tiny_fs, leave=16 * 1024)
            rc = run.finish()
        finally:
            run.reap()
        out = run.output
        assert rc != 0
        assert "No space left on device" in out, out[-3000:]
        assert re.search(r"The partial file \S+ was removed", out), out[-3000:]
        assert "no migration may start without a backup" in out
        assert "Apply expand, backfill, enforce and record" not in out  # the migrate stage never started
        assert "rolled back" not in out
        assert sorted(p.name for p in tiny_fs.iterdir()) == ["ballast.bin"]
        assert check_state(fdb, tmp_path) == "not_applied"
        assert catalog_state(fdb) == "not_applied"
        check_legacy(fdb, before, writer)

        ballast.unlink()
        recover_and_check(fdb, tmp_path, before, writer, Backups(tiny_fs))
    assert writer.errors == [], writer.errors[:5]


# -- two runs at once -------------------------------------------------------------------------------------
def test_second_run_during_backfill_fails_fast_and_leaves_the_first_alone(
    fdb: Database, tmp_path: Path, source_rows: int
) -> None:
    conn = fdb.connect()
    before = legacy_checksums(conn)
    conn.close()
    backups = Backups(tmp_path / "backups")
    with application(fdb) as writer:
        first = Playbook(fdb.env, "migrate.yml", tmp_path, *MIGRATE_ARGS)
        second: Playbook | None = None
        try:
            assert points(source_rows)["backfill:batch-1"].reach(first, fdb), first.output[-3000:]
            # Freeze the first run's module while it holds the lock: a long migration in progress (a small
            # database would otherwise finish before the second run is past its preflight).
            module = first.module_pids()
            assert module, "no capital_migrate module process found"
            for pid in module:
                os.kill(pid, signal.SIGSTOP)
            try:
                second = Playbook(fdb.env, "migrate.yml", tmp_path / "second", *MIGRATE_ARGS)
                rc2 = second.finish()
                still_running = first.running()
            finally:
                for pid in module:
                    os.kill(pid, signal.SIGCONT)
            rc1 = first.finish()
        finally:
            first.reap()
            if second is not None:
                second.reap()
        out2 = second.output
        assert rc2 != 0, out2[-3000:]
        assert re.search(r"migration lock|holds the advisory lock", out2), out2[-3000:]
        assert "capital-migrate" in out2  # names the holder
        assert "Apply expand, backfill, enforce and record" not in out2
        assert "Run the rollback stage" not in out2 and "rolled back" not in out2
        assert still_running, "the second run should have failed while the first was still migrating"
        assert rc1 == 0, first.output[-3000:]
        assert check_state(fdb, tmp_path) == "applied"
        check_legacy(fdb, before, writer)
        backups.check()
        result = run_check(fdb)
        assert result.get("discrepancy_count") == 0, result.get("msg")
    assert writer.errors == [], writer.errors[:5]


def test_two_runs_started_together_only_one_migrates(
    request: pytest.FixtureRequest, fdb: Database, tmp_path: Path
) -> None:
    full_only(request)
    conn = fdb.connect()
    before = legacy_checksums(conn)
    conn.close()
    with application(fdb) as writer:
        runs = [Playbook(fdb.env, "migrate.yml", tmp_path / name, *MIGRATE_ARGS) for name in ("a", "b")]
        try:
            rcs = [run.finish() for run in runs]
        finally:
            for run in runs:
                run.reap()
        outs = [run.output for run in runs]
        migrated = [o for o in outs if re.search(r"(not_applied|partial) -> applied", o)]
        assert len(migrated) == 1, [o[-2000:] for o in outs]
        for rc, out in zip(rcs, outs, strict=True):
            assert "Run the rollback stage" not in out and "rolled back" not in out, out[-3000:]
            if rc != 0:
                assert re.search(r"migration lock|holds the advisory lock", out), out[-3000:]
        assert check_state(fdb, tmp_path) == "applied"
        check_legacy(fdb, before, writer)
        for name in ("a", "b"):
            Backups(tmp_path / name / "backups").check()
        result = run_check(fdb)
        assert result.get("discrepancy_count") == 0, result.get("msg")
    assert writer.errors == [], writer.errors[:5]
