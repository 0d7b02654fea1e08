"""pg_dump and read-only probes in one exported snapshot, at the same time: plain, typed Python for the
module ``prestamos.capital.capital_snapshot_dump``.

Why: preflight's data pass and the backup's dump read the same legacy rows. Run one after the other they
cost both reads and describe two moments; here one ``REPEATABLE READ`` transaction exports its snapshot
(``pg_export_snapshot()``), ``pg_dump --snapshot=<id>`` dumps exactly that state while the same
transaction runs the probes, so the findings describe exactly the data that was backed up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.probe import ProbeError, ProbeLanes


@dataclass
class SnapshotDump:
    """What happened: the snapshot, pg_dump's exit and stderr, the probes' rows, and the times."""

    snapshot: str
    snapshot_time: str
    rc: int
    stderr: str
    rows: dict[str, Any] = field(default_factory=dict)
    dump_seconds: float = 0.0
    probe_seconds: float = 0.0
    seconds: float = 0.0
    # Sessions that read probes in the snapshot (the exporting one included).
    lanes: int = 1


def remove(path: str) -> None:
    """Remove a partial dump (a file, or a directory dump) if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def snapshot_dump(conn: Any, dump_argv: Sequence[str], partial: str, probes: Mapping[str, str],
                  params: Mapping[str, Any] | None = None, settings: Mapping[str, str] | None = None,
                  optional: Collection[str] = (), lock_tables: Sequence[str] = (),
                  lock_timeout_s: int = 0, connect: Callable[[], Any] | None = None,
                  connections: int = 1) -> SnapshotDump:
    """Export a snapshot, start ``dump_argv + ['--snapshot=<id>']`` and run ``probes`` in that snapshot
    meanwhile; wait for the dump; return both. A refused probe stops the dump (ProbeError); a failed dump
    (rc != 0) or any error removes ``partial``.

    ``lock_tables`` are locked ACCESS SHARE before the snapshot is taken (LOCK TABLE takes none), with
    ``lock_timeout_s`` as lock_timeout, so no DDL on them can fall between the snapshot and pg_dump's own
    locks. The environment (PGPASSFILE, PATH) is the caller's: the password never reaches an argv.

    With ``connect`` and ``connections`` > 1, up to ``connections - 1`` more sessions import the snapshot and
    take probes too (ProbeLanes: each takes the next probe when it is free), so the probes describe the
    same data and the slowest of them no longer waits for the others.
    """
    from psycopg2 import sql as pgsql

    began = time.monotonic()
    conn.autocommit = False
    proc: subprocess.Popen[bytes] | None = None
    err = tempfile.TemporaryFile()
    ok = False
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if lock_tables:
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s)}s",))
                cur.execute(pgsql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    pgsql.SQL(", ").join(pgsql.Identifier(t) for t in lock_tables)))
                cur.execute("SELECT set_config('lock_timeout', '0', true)")
            cur.execute("SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            row = cur.fetchone()
            snapshot, snapshot_time = str(row[0]), str(row[1])
            for name, value in (settings or {}).items():
                cur.execute("SELECT set_config(%s, %s, true)", (name, str(value)))
            dump_began = time.monotonic()
            # The argv is the caller's (the backup role's directory guard and pg_dump options); only the
            # snapshot is added. stdout is pg_dump's (it writes to --file), stderr kept for the message.
            proc = subprocess.Popen([*dump_argv, f"--snapshot={snapshot}"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
            probe_began = time.monotonic()
            lanes = ProbeLanes(probes, params, optional)
            threads = [lanes.join(connect, snapshot, settings) for lane in range(1, connections)] if connect else []
            lanes.run(cur)
            for thread in threads:
                thread.join()
            lanes.raise_error()
            rows, errors = lanes.rows, lanes.errors
            # In the order the caller listed the probes, whichever lane read them.
            rows = {name: rows[name] for name in probes if name in rows}
            probe_seconds = time.monotonic() - probe_began
            lanes_used = lanes.lanes
            if errors:
                rows["_errors"] = errors
            # The snapshot must stay exported until pg_dump has imported it: wait with the transaction open.
            rc = proc.wait()
            dump_seconds = time.monotonic() - dump_began
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        ok = rc == 0
        return SnapshotDump(snapshot, snapshot_time, rc, stderr, rows, round(dump_seconds, 3),
                            round(probe_seconds, 3), round(time.monotonic() - began, 3), lanes_used)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait()
        try:
            conn.rollback()
        except Exception:
            # The session that exported the snapshot was lost (terminated, the server restarted): the run fails,
            # and a dump it vouched for is not left behind as if it were complete.
            ok = False
            raise
        finally:
            err.close()
            if not ok:
                remove(partial)


__all__ = ["ProbeError", "SnapshotDump", "remove", "snapshot_dump"]
