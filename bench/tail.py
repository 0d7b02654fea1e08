"""Where the application's slowest transactions fall while the migration runs (`python -m bench.tail`).

Loads `medium`, then, twice: the footprint load of bench.run (pgbench -c 4 -j 2 -R 40, 60 s by default) with the
in-process migration started 3 s in, and prints the p99/max latency of the application's transactions in
each window (before, expand, backfill, enforce, after) and the slowest ones with their time from the
migration's start. `--batch-size` and `--pause` (seconds slept after every backfill batch: a throttle)
and `--sessions` (backfill sessions, the role's default unless given)
show whether the tail follows the batches' locks or the migration's CPU share. BENCHMARKS.md quotes it.

Where the time of the application's backends goes (the server runs on this machine): their time on a CPU
and waiting for one (`/proc/<pid>/schedstat`) before, during and after the migration; `--waits` samples
their wait events every 5 ms during the migration (the sampler takes a share of a core itself).
`--nice N` / `--idle` run the migration's server processes at a lower CPU priority (setpriority, or
SCHED_IDLE): does the application's wait for a CPU follow the migration's priority? A run of the floor
before the first round leaves the server a recycled pool of WAL segments, the same for every round.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.migration import Batch, Options
from capital_migrate.pgtmp import Cluster

from bench import run as B


def windows(rows: list[tuple[float, float, str]], marks: dict[str, float]) -> dict[str, tuple[int, Any, Any]]:
    def win(a: float, b: float) -> tuple[int, Any, Any]:
        lat = sorted(r[0] for r in rows if a <= r[1] <= b)
        if not lat:
            return (0, None, None)
        return (len(lat), round(lat[max(0, int(0.99 * len(lat)) - 1)], 2), round(lat[-1], 2))

    s, first, last, end = marks["start"], marks["first_batch"], marks["last_batch"], marks["end"]
    return {
        "before": win(0, s),
        "expand": win(s, first + 0.05),
        "backfill": win(first, last),
        "enforce": win(last, end + 0.2),
        "during": win(s, end + 1),
        "after": win(end + 1, 1e12),
    }


def app_cpu(pg: Cluster, db: str) -> tuple[float, float]:
    """Seconds the application's (pgbench's) backends have spent on a CPU and waiting for one, so far."""
    on = wait = 0
    with pg.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'")
        for (pid,) in cur.fetchall():
            try:
                fields = Path(f"/proc/{pid}/schedstat").read_text().split()
            except OSError:
                continue
            on += int(fields[0])
            wait += int(fields[1])
    conn.close()
    return on / 1e9, wait / 1e9


def sample_waits(pg: Cluster, db: str, stop: threading.Event, seen: collections.Counter[str]) -> None:
    """Count the wait events of the application's active backends every 5 ms until stop."""
    conn = pg.connect(db)
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.wait(0.005):
            cur.execute(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'none (on a CPU or waiting for one)') "
                "FROM pg_stat_activity WHERE application_name = 'pgbench' AND state = 'active'"
            )
            seen.update(row[0] for row in cur.fetchall())
    conn.close()


def lower_priority(conn: Any, nice: int, idle: bool) -> None:
    """Run this connection's server process at nice `nice`, or under SCHED_IDLE (the server is local)."""
    if not nice and not idle:
        return
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    conn.commit()
    if idle:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.setpriority(os.PRIO_PROCESS, pid, nice)


def one_round(pg: Cluster, work: Path, n: int, batch_size: int, pause: float, seconds: int, sessions: int,
              nice: int = 0, idle: bool = False, waits: bool = False) -> None:
    db = B.clone(pg, "tpl_medium", f"tail{n}")
    B.psql(pg, db, "-f", str(B.BENCH / "pgbench" / "setup.sql"))
    counts = B.psql(pg, db, "-c", "SELECT (SELECT count(*) FROM bench_pick), (SELECT count(*) FROM bench_rich)")
    npick, nrich = (int(x) for x in counts.strip().split("|"))
    prefix = work / f"tail{n}"
    load = subprocess.Popen(
        B.pgbench_cmd(prefix, seconds, 40, npick, nrich),
        env=B.tool_env(pg, db),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    cpu_first = app_cpu(pg, db)
    time.sleep(2)
    marks: dict[str, float] = {}

    def after_batch(_batch: Batch) -> None:
        now = time.time()
        marks.setdefault("first_batch", now)
        marks["last_batch"] = now
        if pause:
            time.sleep(pause)

    def connect() -> Any:
        opened = pg.connect(db)
        lower_priority(opened, nice, idle)
        return opened

    conn = connect()
    log_at = pg.logfile.stat().st_size
    seen: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    sampler = threading.Thread(target=sample_waits, args=(pg, db, stop, seen))
    cpu_start = app_cpu(pg, db)
    marks["start"] = time.time()
    if waits:
        sampler.start()
    options = Options(batch_size=batch_size, backfill_connections=sessions)
    B.observed(conn, options, after_batch, connect=connect).run()
    marks["end"] = time.time()
    stop.set()
    if waits:
        sampler.join()
    cpu_end = app_cpu(pg, db)
    time.sleep(3)
    cpu_after = app_cpu(pg, db)
    conn.close()
    load.communicate()
    rows = []
    for path in work.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            p = line.split()
            if len(p) >= 6 and p[2].isdigit():
                rows.append((int(p[2]) / 1000.0, int(p[4]) + int(p[5]) / 1e6, p[3]))
        path.unlink()
    s = marks["start"]
    print(
        f"batch {batch_size}, pause {pause} s, {sessions} sessions, "
        f"{'SCHED_IDLE' if idle else f'nice {nice}'}: migration {marks['end'] - s:.1f} s "
        f"(backfill {marks['last_batch'] - marks['first_batch']:.1f} s)"
    )
    for name, (a, b) in (("before", (cpu_first, cpu_start)), ("during", (cpu_start, cpu_end)),
                         ("after", (cpu_end, cpu_after))):
        on, wait = b[0] - a[0], b[1] - a[1]
        print(f"  application backends {name:6}: on a CPU {on:.3f} s, waiting for one {wait:.3f} s "
              f"({wait / on if on else 0:.2f} per second on one)")
    if waits:
        print("  the application's active backends, 5 ms samples during the migration:",
              ", ".join(f"{event} {count}" for event, count in seen.most_common(8)))
    for name, (count, p99, worst) in windows(rows, marks).items():
        print(f"  {name:8} transactions {count:5}  p99 {p99} ms  max {worst} ms")
    top = sorted((r for r in rows if s <= r[1] <= marks["end"] + 1), reverse=True)[:8]
    script_names = [name for name, _weight in B.SCRIPTS]
    print("  slowest:", ", ".join(f"{r[0]:.1f} ms {script_names[int(r[2])]} at {r[1] - s:.1f} s" for r in top))
    waits = [line for line in pg.logfile.read_text(errors="replace")[log_at:].splitlines() if "acquired" in line]
    if waits:
        print(f"  lock waits over deadlock_timeout that ended: {len(waits)}")
        for line in waits[:12]:
            print("   ", line[:220])
    pg.drop_database(db)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tail", description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds slept after every backfill batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=B.BACKFILL_SESSIONS, help="backfill sessions")
    parser.add_argument("--seconds", type=int, default=60, help="load duration (outlast the migration)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0, help="nice value of the migration's server processes")
    parser.add_argument("--idle", action="store_true", help="run the migration's server processes SCHED_IDLE")
    parser.add_argument("--waits", action="store_true", help="sample the application's wait events (5 ms)")
    B.add_set_option(parser)
    args = parser.parse_args()
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-tail-") as tmp:
        B.apply_settings(pg, args.set)
        B.prepare(pg, "medium", args.seed)
        # As in bench.footprint: a new cluster creates its WAL segments as the first run writes them (on the
        # commit path of whoever needs the next one); the floor's run first gives every round a recycled pool.
        B.measure_floor(pg, "tpl_medium")
        B.psql(pg, "postgres", "-c", "CHECKPOINT")  # recycles the segments the floor wrote
        for n in range(args.rounds):
            one_round(pg, Path(tmp), n, args.batch_size, args.pause, args.seconds, args.sessions, args.nice,
                      args.idle, args.waits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
