"""Fleet benchmark (issue 21): eight small databases in one run with forks 1, 4 and 8, against the sum of eight
single runs, side by side on one throwaway cluster (BENCHMARKS.md, "Fleet").

    python -m bench.fleet                    # 8 databases, forks 1 4 8, one wave and the default waves
    python -m bench.fleet --databases 4 --forks 1 4

Every run starts from fresh copies of one seeded database (CREATE DATABASE ... TEMPLATE), so each measures
the same work: preflight, backup, migrate and verify of every database. "One wave" is capital_serial ["100%"]
(all databases at once, bounded by forks); "default waves" is [1, "25%", "100%"] (canary, then waves).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from capital_migrate.datagen import generate
from capital_migrate.pgtmp import Cluster, Database, clean_environ, temporary_database

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


@contextlib.contextmanager
def copies(cluster: Cluster, template: str, count: int) -> Iterator[list[Database]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(temporary_database(cluster, prefix=f"fleet{i}", template=template))
               for i in range(count)]


def inventory(directory: Path, dbs: list[Database]) -> Path:
    hosts = {f"db{i + 1}": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                            "capital_db_host": db.cluster.host, "capital_db_port": db.cluster.port,
                            "capital_db_user": db.cluster.user, "capital_db_name": db.name}
             for i, db in enumerate(dbs)}
    path = directory / f"inventory-{dbs[0].name}"
    (path / "group_vars" / "all").mkdir(parents=True)
    (path / "hosts.yml").write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
    (path / "group_vars" / "all" / "main.yml").write_text(json.dumps({
        "capital_env": "bench", "capital_backup_dir": str(directory / "backups"),
        "capital_report_dir": str(directory / "reports")}), encoding="utf-8")
    return path


def migrate(directory: Path, dbs: list[Database], env: dict[str, str], forks: int, serial: list[Any]) -> float:
    """Seconds of one ansible-playbook migrate.yml over ``dbs``; fails loudly if any database failed."""
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory(directory, dbs)), "migrate.yml", "--forks", str(forks),
            "-e", json.dumps({"capital_serial": serial})]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate.yml failed (forks {forks}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=int, default=8)
    parser.add_argument("--forks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--juntas", type=int, default=4, help="juntas per database (small: 4)")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with Cluster() as cluster, tempfile.TemporaryDirectory(prefix="capital-bench-fleet-") as tmp:
        directory = Path(tmp)
        cluster.create_database("fleet_template")
        conn = cluster.connect("fleet_template")
        try:
            generate(conn, seed=5, juntas=args.juntas)
        finally:
            conn.close()
        pgpass = cluster.write_pgpass(directory / "pgpass")
        env = {**clean_environ(), "PGPASSFILE": str(pgpass), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
        singles = []
        with copies(cluster, "fleet_template", args.databases) as dbs:
            for db in dbs:
                singles.append(migrate(directory, [db], env, 1, ["100%"]))
        total = sum(singles)
        for forks in args.forks:
            for label, serial in (("one wave", ["100%"]), ("default waves", [1, "25%", "100%"])):
                if label == "default waves" and forks != max(args.forks):
                    continue
                with copies(cluster, "fleet_template", args.databases) as dbs:
                    wall = migrate(directory, dbs, env, forks, serial)
                rows.append({"forks": forks, "waves": label, "wall_s": round(wall, 1),
                             "sum_of_singles_s": round(total, 1), "ratio": round(wall / total, 2)})
    print(json.dumps({"databases": args.databases, "single_runs_s": [round(s, 1) for s in singles],
                      "runs": rows}, indent=2))
    print(f"\n| databases | forks | waves | wall | sum of {args.databases} single runs | wall / sum |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {args.databases} | {row['forks']} | {row['waves']} | {row['wall_s']} s | {row['sum_of_singles_s']} s "
              f"| {row['ratio']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
