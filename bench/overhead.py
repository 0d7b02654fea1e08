"""Where Ansible's fixed overhead goes (`python -m bench.overhead`): migrate.yml on an empty baseline, per task.

Runs `ansible-playbook migrate.yml -i inventories/local` on a database holding the baseline schema and no
rows (the "Ansible fixed overhead" of bench.run), with the junit callback timing every task beside the
capital_report callback, and prints each run's wall time, its stages and task count, then the tasks of the
last run that took longer than --min seconds (module start-ups: AnsiballZ, Python, the module's imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from capital_migrate.pgtmp import Cluster

from bench import run as B


def one_run(pg: Cluster, workdir: Path, n: int) -> tuple[float, dict[str, float], list[tuple[float, str]]]:
    db = B.clone(pg, "tpl_empty", "b_overhead")
    env = B.tool_env(pg, db)
    junit = workdir / f"junit{n}"
    env.update(
        ANSIBLE_CALLBACKS_ENABLED="junit,prestamos.capital.capital_report",
        JUNIT_TASK_CLASS="yes",
        JUNIT_OUTPUT_DIR=str(junit),
    )
    argv = [
        "ansible-playbook", "migrate.yml", "-i", "inventories/local",
        "-e", f"capital_report_dir={workdir / f'reports{n}'}",
        "-e", f"capital_backup_dir={workdir / f'backups{n}'}",
    ]
    began = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=B.ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    pg.drop_database(db)
    if done.returncode != 0:
        raise SystemExit(f"migrate.yml exited {done.returncode}:\n{done.stdout[-3000:]}")
    report = json.loads(sorted((workdir / f"reports{n}").glob("*.json"))[-1].read_text())
    stages = {s["name"]: s["duration_s"] for s in report.get("stages", [])}
    tasks = [
        (float(case.get("time") or 0), str(case.get("name")))
        for f in junit.glob("*.xml")
        for case in ET.parse(f).getroot().iter("testcase")  # noqa: S314 - written by this run, 0700 dir
    ]
    return wall, stages, tasks


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min", type=float, default=0.3, help="list tasks of the last run above this (s)")
    args = parser.parse_args()
    walls: list[float] = []
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-overhead-") as tmp:
        os.chmod(tmp, 0o700)
        B.prepare(pg, "empty", 1)
        tasks: list[tuple[float, str]] = []
        for n in range(args.runs):
            wall, stages, tasks = one_run(pg, Path(tmp), n)
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
