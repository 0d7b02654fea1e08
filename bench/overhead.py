"""Where Ansible's fixed overhead goes (`python -m bench.overhead`): migrate.yml on an empty baseline, per task.

Runs `ansible-playbook migrate.yml -i inventories/local` on a database holding the baseline schema and no
rows (the "Ansible fixed overhead" of bench.run; `--size medium` profiles the whole run on data instead),
with the junit callback timing every task beside the
capital_report callback, and prints each run's wall time, its stages and task count, then the tasks of the
last run that took longer than --min seconds (module start-ups: AnsiballZ, Python, the module's imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from capital_migrate.pgtmp import Cluster

from bench import run as B


def one_run(pg: Cluster, workdir: Path, n: int,
            size: str = "empty") -> tuple[float, dict[str, float], list[tuple[float, str]]]:
    """One bench.run.measure_playbook on a copy of `size` (the empty baseline unless given), with the junit
    callback beside capital_report."""
    junit = workdir / f"junit{n}"
    out = B.measure_playbook(pg, f"tpl_{size}", workdir, extra_env={
        "ANSIBLE_CALLBACKS_ENABLED": "junit,prestamos.capital.capital_report",
        "JUNIT_TASK_CLASS": "yes",
        "JUNIT_OUTPUT_DIR": str(junit),
    })
    if out["rc"] != 0:
        raise SystemExit(f"migrate.yml exited {out['rc']}:\n{out.get('error', '')}")
    tasks = [
        (float(case.get("time") or 0), str(case.get("name")))
        for f in junit.glob("*.xml")
        for case in ET.parse(f).getroot().iter("testcase")  # noqa: S314 - written by this run, 0700 dir
    ]
    return out["wall"], out.get("stages", {}), tasks


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min", type=float, default=0.3, help="list tasks of the last run above this (s)")
    parser.add_argument("--size", default="empty", help="dataset (empty: the fixed overhead; medium: a profile)")
    args = parser.parse_args()
    walls: list[float] = []
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-overhead-") as tmp:
        os.chmod(tmp, 0o700)
        B.prepare(pg, args.size, 1)
        tasks: list[tuple[float, str]] = []
        for n in range(args.runs):
            wall, stages, tasks = one_run(pg, Path(tmp), n, args.size)
            walls.append(wall)
            per_stage = " / ".join(f"{k} {v:.2f}" for k, v in stages.items())
            print(f"run {n + 1}: {wall:.2f} s wall, {len(tasks)} tasks, {sum(t for t, _ in tasks):.2f} s in tasks "
                  f"({per_stage})", flush=True)
    print(f"wall median {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}, n={len(walls)})")
    print(f"tasks of the last run above {args.min} s:")
    for seconds, name in tasks:
        if seconds > args.min:
            print(f"  {seconds:5.2f}  {name.split(': ', 1)[-1][:100]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
