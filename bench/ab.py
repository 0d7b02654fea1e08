"""Two versions of the migration SQL side by side (`python -m bench.ab`): is a change to files/sql faster?

Runs the in-process migrate stage (the code the capital_migrate module runs) of each SQL directory on fresh
copies of the same dataset, interleaved run by run with the floor, on one throwaway cluster, and prints
each run's per-step times and the medians. BENCHMARKS.md quotes it for changes measured this way:

    git worktree add /tmp/capital-old <commit>
    .venv/bin/python -m bench.ab --size medium --runs 2 old=/tmp/capital-old/files/sql new=files/sql
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from capital_migrate.pgtmp import Cluster

from bench import run as B


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs=2, metavar="NAME=SQL_DIR", help="two SQL directories to compare")
    parser.add_argument("--size", default="medium", choices=sorted(B.JUNTAS))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    versions: dict[str, Path] = {}
    for item in args.versions:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "add_capital_tracking.sql").is_file():
            raise SystemExit(f"{item!r}: expected NAME=SQL_DIR, a directory holding add_capital_tracking.sql")
        versions[name] = Path(path).resolve()
    floors: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in versions}
    with Cluster() as pg:
        B.prepare(pg, args.size, args.seed)
        tpl = f"tpl_{args.size}"
        for n in range(args.runs):
            floors.append(B.measure_floor(pg, tpl))
            print(f"run {n + 1}: floor {floors[-1]:.2f} s", flush=True)
            for name, sql_dir in versions.items():
                B.SQL_DIR = sql_dir
                m = B.measure_module(pg, tpl)
                steps = B.step_seconds(m["batches"], m["phases"], m["index_seconds"])
                times[name].append(m["seconds"])
                per_step = " / ".join(f"{k} {v:.2f}" for k, v in steps.items())
                print(f"run {n + 1}: {name} {m['seconds']:.2f} s ({per_step})", flush=True)
    floor = statistics.median(floors)
    print(f"floor median {floor:.2f} s ({min(floors):.2f}-{max(floors):.2f}, n={len(floors)})")
    for name, vals in times.items():
        med = statistics.median(vals)
        print(f"{name} median {med:.2f} s ({min(vals):.2f}-{max(vals):.2f}, n={len(vals)}), {med / floor:.2f}x floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
