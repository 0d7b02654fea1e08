"""Where the application's slowest transactions fall while the migration runs (`python -m bench.tail`).

Loads `medium`, then, twice: the footprint load of bench.run (pgbench -c 4 -j 2 -R 40, 60 s by default) with the
in-process migration started 3 s in, and prints the p99/max latency of the application's transactions in
each window (before, expand, backfill, enforce, after) and the slowest ones with their time from the
migration's start. `--batch-size` and `--pause` (seconds slept after every backfill batch: a throttle)
and `--sessions` (backfill sessions, the role's default unless given)
show whether the tail follows the batches' locks or the migration's CPU share. BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
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


def one_round(pg: Cluster, work: Path, n: int, batch_size: int, pause: float, seconds: int, sessions: int) -> None:
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
    time.sleep(3)
    marks: dict[str, float] = {}

    def after_batch(_batch: Batch) -> None:
        now = time.time()
        marks.setdefault("first_batch", now)
        marks["last_batch"] = now
        if pause:
            time.sleep(pause)

    conn = pg.connect(db)
    log_at = pg.logfile.stat().st_size
    marks["start"] = time.time()
    options = Options(batch_size=batch_size, backfill_connections=sessions)
    B.observed(conn, options, after_batch, connect=lambda: pg.connect(db)).run()
    marks["end"] = time.time()
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
        f"batch {batch_size}, pause {pause} s, {sessions} sessions: migration {marks['end'] - s:.1f} s "
        f"(backfill {marks['last_batch'] - marks['first_batch']:.1f} s)"
    )
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
    B.add_set_option(parser)
    args = parser.parse_args()
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-tail-") as tmp:
        B.apply_settings(pg, args.set)
        B.prepare(pg, "medium", args.seed)
        for n in range(args.rounds):
            one_round(pg, Path(tmp), n, args.batch_size, args.pause, args.seconds, args.sessions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
