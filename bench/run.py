"""`make bench`: the migration against its floor, and its footprint on a live application (BENCHMARKS.md).

Why one script: every ratio must come from measurements taken side by side in the same run on the same
throwaway cluster (this machine is shared and noisy), so the floor, the backup formats, the in-process
migration and the whole playbook run are interleaved run by run, and the footprint's baseline load runs
right before the load with a migration. Results: a JSON file and Markdown tables on stdout.

    python -m bench.run                           # small + medium, 3 runs (make bench)
    python -m bench.run --sizes large --runs 1 --playbook-runs 1 --no-footprint   # large, by hand
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    APPLICATION_NAME,
    Batch,
    MigrationError,
    Migrator,
    Options,
    load_sql_dir,
    phase_of,
)
from capital_migrate.datagen import generate
from capital_migrate.pgtmp import Cluster, clean_environ

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SQL_DIR = ROOT / "files" / "sql"
INVENTORY = ROOT / "files" / "sql" / "migration_objects.json"
# The migrate role's capital_backfill_connections: the in-process migration under load runs like the role.
BACKFILL_SESSIONS = int(
    yaml.safe_load((ROOT / "roles" / "migrate" / "defaults" / "main.yml").read_text())["capital_backfill_connections"]
)
# And the connection role's capital_connections_while_live: at most that many while the application is at work.
LIVE_SESSIONS = int(
    yaml.safe_load((ROOT / "roles" / "connection" / "defaults" / "main.yml").read_text())[
        "capital_connections_while_live"
    ]
)


def checkouts(items: Sequence[str]) -> dict[str, Path]:
    """NAME=ROOT pairs (bench.stages, bench.footprint), each a checkout of the project."""
    roots: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "playbooks" / "migrate.yml").is_file():
            raise SystemExit(f"{item!r}: expected NAME=ROOT, a checkout holding playbooks/migrate.yml")
        roots[name] = Path(path).resolve()
    return roots


@contextlib.contextmanager
def rooted(root: Path) -> Iterator[None]:
    """Run playbooks from another checkout (its roles, collection and ansible.cfg) inside the block."""
    global ROOT
    saved, ROOT = ROOT, root
    try:
        yield
    finally:
        ROOT = saved


def spread(values: Sequence[float]) -> str:
    """Median (min-max, n) of some values, or '-'."""
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})"


class ObservedMigrator(Migrator):
    """The Migrator with a callback after every committed backfill batch (the benchmark times them)."""

    on_batch: Callable[[Batch], None] | None = None

    def _batch(self) -> Batch:
        batch = super()._batch()
        if batch.step.is_batch and self.on_batch is not None:
            self.on_batch(batch)
        return batch


def observed(conn: Any, options: Options, on_batch: Callable[[Batch], None],
             connect: Callable[[], Any] | None = None) -> ObservedMigrator:
    """A Migrator of this checkout's SQL that calls ``on_batch`` after every batch (of its first session)."""
    migrator = ObservedMigrator(conn, sql_files(), options, connect=connect)
    migrator.on_batch = on_batch
    return migrator


def sql_files() -> dict[str, str]:
    """The migration SQL of SQL_DIR (bench.ab points it at an older layout). A layout from before the record of
    provenance has no inventory: this checkout's stands in (the objects are the same; only timings matter)."""
    files = load_sql_dir(SQL_DIR)
    files.setdefault(INVENTORY.name, INVENTORY.read_text(encoding="utf-8"))
    return {name: declare_batched(text) for name, text in files.items()}


def declare_batched(text: str) -> str:
    """A layout from before 20_backfill.sql declared its loops (``\\set capital_unit batched``) had the runner
    recognise the CALL lines by their text; declare them here so bench.ab can still time it (the bench only;
    the checksum it changes does not matter to a timing)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    for n, line in enumerate(lines):
        undeclared = n == 0 or not lines[n - 1].startswith("\\set capital_unit")
        if line.startswith("CALL capital_backfill_run(") and undeclared:
            out.append("\\set capital_unit batched\n")
        out.append(line)
    return "".join(out)


JUNTAS = {"small": 300, "medium": 2750, "large": 27500}
SCRIPTS = (("payment", 3), ("fine", 2), ("share", 3), ("loan", 1), ("balance", 6))
LEDGER_SOURCES = ("Accion", "Multa", "Prestamo", "PagoPrestamo")


# -- small helpers ------------------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and min-max of repeated measurements (None when nothing was measured)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.monotonic()
    out = fn()
    return time.monotonic() - began, out


def tool_env(pg: Cluster, db: str) -> dict[str, str]:
    """The environment of a client tool: clean, the cluster's libpq variables, the venv first on PATH."""
    env = clean_environ()
    env.update(pg.env(db))
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{pg.bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return env


def run(argv: Sequence[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), env=env, cwd=ROOT, capture_output=True, text=True, check=False, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    return done


def psql(pg: Cluster, db: str, *args: str) -> str:
    return run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *args], tool_env(pg, db)).stdout


def clone(pg: Cluster, template: str, name: str) -> str:
    """A fresh copy of a prepared dataset (CREATE DATABASE ... TEMPLATE: a file copy, not timed)."""
    if database_exists(pg, name):
        pg.drop_database(name)
    pg.create_database(name, template=template)
    return name


def database_exists(pg: Cluster, name: str) -> bool:
    return psql(pg, "postgres", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"


def dir_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- datasets -----------------------------------------------------------------------------------------
def prepare(pg: Cluster, size: str, seed: int) -> dict[str, Any]:
    """Template database tpl_<size> from the project's generator (tpl_empty: the baseline schema only)."""
    name = f"tpl_{size}"
    pg.create_database(name)
    if size == "empty":
        psql(pg, name, "-f", str(SQL_DIR / "baseline" / "baseline_schema.sql"))
        return {"rows": 0}
    conn = pg.connect(name)
    try:
        made = generate(conn, seed, JUNTAS[size])
    finally:
        conn.close()
    psql(pg, name, "-c", "VACUUM ANALYZE")  # a live database has a visibility map and statistics
    return {"rows": made.total_rows, "juntas": JUNTAS[size], "seed": seed}


# -- speed --------------------------------------------------------------------------------------------
def measure_floor(pg: Cluster, tpl: str) -> float:
    db = clone(pg, tpl, "b_floor")
    seconds, _ = timed(lambda: psql(pg, db, "-f", str(BENCH / "floor.sql")))
    pg.drop_database(db)
    return seconds


def measure_dumps(pg: Cluster, tpl: str, workdir: Path) -> dict[str, dict[str, float]]:
    """pg_dump plain (the guide's), custom, and directory with -j 2, on the same unchanged copy."""
    db = clone(pg, tpl, "b_dump")
    env = tool_env(pg, db)
    out: dict[str, dict[str, float]] = {}
    for name, args in (
        ("plain", ["--format=plain"]),
        ("custom", ["--format=custom"]),
        ("directory_j2", ["--format=directory", "--jobs=2"]),
    ):
        target = workdir / f"dump-{name}"
        seconds, _ = timed(lambda args=args, target=target: run(["pg_dump", *args, f"--file={target}"], env))
        out[name] = {"seconds": seconds, "bytes": dir_size(target)}
        subprocess.run(["rm", "-rf", str(target)], check=True)
    pg.drop_database(db)
    return out


def migration_connect(pg: Cluster, db: str, options: str = "") -> Any:
    """A connection named like the module's (the lock sampler tells the migration's sessions by it)."""
    import psycopg2  # the harness runs in the project venv

    extra = {"options": options} if options else {}
    return psycopg2.connect(pg.dsn(db), application_name=APPLICATION_NAME, **extra)


def measure_module(pg: Cluster, tpl: str, options: str = "", sessions: int = 1) -> dict[str, Any]:
    """The migrate stage in-process (module_utils Migrator): phases and every backfill batch's time (the first
    session's batches: with ``sessions`` above 1 the others' are not observed)."""
    db = clone(pg, tpl, "b_module")
    conn = migration_connect(pg, db, options)
    batches: list[dict[str, Any]] = []

    def after_batch(batch: Batch) -> None:
        # A step that waited for transactions older than the phase flip (rows < 0) is the barrier.
        source = batch.step.source if batch.step.rows >= 0 else "barrier"
        batches.append({"source": source, "rows": max(batch.step.rows, 0), "seconds": batch.seconds})

    try:
        def connect() -> Any:
            return migration_connect(pg, db, options)

        migrator = observed(conn, Options(backfill_connections=sessions), after_batch, connect)
        seconds, result = timed(migrator.run)
    finally:
        conn.close()
    pg.drop_database(db)
    return {
        "seconds": seconds,
        "phases": {p["name"]: p["seconds"] for p in result["phases"]},
        "batches": batches,
        # The backfill piece's own statements: the junta index build and VACUUM between the ledger steps
        # and the junta steps.
        "index_seconds": sum(s["seconds"] for s in result["statements"] if phase_of(s["file"]) == "backfill"),
    }


def batch_trend(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ledger source: median time of its first 3 full batches vs its last 3 (is it linear?)."""
    out: dict[str, Any] = {}
    for source in LEDGER_SOURCES:
        full = [b["seconds"] for b in batches if b["source"] == source and b["rows"] >= 5000]
        if len(full) >= 6:
            start, end = statistics.median(full[:3]), statistics.median(full[-3:])
            out[source] = {"batches": len(full), "start": start, "end": end, "end_over_start": end / start}
    sweep = [b["seconds"] for b in batches if b["source"] == "PrestamoNew"]
    out["sweep_seconds"] = sum(sweep)
    return out


def step_seconds(batches: list[dict[str, Any]], phases: dict[str, float], index: float = 0.0) -> dict[str, float]:
    """Where the in-process migrate stage spends its time: expand, each backfill step, enforce."""
    out = {"expand": phases.get("expand", 0.0)}
    for b in batches:
        if b["source"] not in LEDGER_SOURCES and "junta index" not in out:
            out["junta index"] = index  # built between the ledger steps and the junta steps
        out[b["source"]] = out.get(b["source"], 0.0) + b["seconds"]
    out["enforce"] = phases.get("enforce", 0.0)
    return out


def plan_check(pg: Cluster, tpl: str) -> dict[str, Any]:
    """One untimed run with auto_explain on every batch statement: does any batch plan scan the ledger?"""
    log = pg.logfile
    offset = log.stat().st_size
    opts = (
        "-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0 "
        "-c auto_explain.log_nested_statements=on -c auto_explain.log_level=warning"
    )
    measure_module(pg, tpl, opts)
    with log.open(encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        text = fh.read()
    chunks = text.split("duration: ")[1:]
    plans = [p for p in chunks if "INSERT INTO capital_movements" in p.split("Query Text")[-1][:600]]
    scans = [p for p in plans if "Seq Scan on capital_movements" in p]
    return {"ledger_insert_plans": len(plans), "plans_scanning_the_ledger": len(scans)}


def measure_playbook(pg: Cluster, tpl: str, workdir: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """migrate.yml end to end with ansible-playbook on a fresh copy of tpl; stage times from the report JSON.

    extra_env is added to the run's environment (bench.overhead enables the junit callback with it)."""
    db = clone(pg, tpl, "b_play")
    out = playbook_on(pg, db, workdir, extra_env)
    pg.drop_database(db)
    return out


def playbook_on(pg: Cluster, db: str, workdir: Path, extra_env: dict[str, str] | None = None,
                extra_vars: Sequence[str] = (), playbook: str = "migrate.yml",
                prefix: Sequence[str] = ()) -> dict[str, Any]:
    """migrate.yml (or another playbook) end to end with ansible-playbook on database db, the command line
    after `prefix` (bench.footprint's `nice -n 19`); stage times from the capital_report JSON, and how many
    modules ran (bench/callback_plugins/bench_module_runs.py)."""
    report_dir = Path(tempfile.mkdtemp(prefix="report-", dir=workdir))
    env = tool_env(pg, db)
    env["ANSIBLE_CALLBACKS_ENABLED"] = "prestamos.capital.capital_report,bench_module_runs"
    env["ANSIBLE_CALLBACK_PLUGINS"] = str(Path(__file__).parent / "callback_plugins")  # this checkout's, always
    env["BENCH_MODULE_RUNS"] = str(runs := report_dir / "module-runs")
    env.update(extra_env or {})
    argv = [
        *prefix,
        "ansible-playbook",
        playbook,
        "-i",
        "inventories/local",
        "-e",
        f"capital_report_dir={report_dir}",
        "-e",
        f"capital_backup_dir={workdir / 'backups'}",
    ]
    for extra in extra_vars:
        argv += ["-e", extra]
    began = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    reports = sorted(report_dir.glob("*.json"))
    out: dict[str, Any] = {"wall": wall, "rc": done.returncode}
    if runs.exists():
        out["module_runs"] = int(runs.read_text())
    if reports:
        rep = json.loads(reports[-1].read_text())
        out["stages"] = {s["name"]: s["duration_s"] for s in rep.get("stages", [])}
        # Each stage's window in epoch seconds (the report's UTC start and its duration), for the footprint.
        out["windows"] = {
            s["name"]: (start, start + s["duration_s"])
            for s in rep.get("stages", [])
            if (start := datetime.fromisoformat(s["started_at"]).replace(tzinfo=UTC).timestamp())
        }
        out["outcome"] = rep.get("outcome")
    if done.returncode != 0:
        out["error"] = done.stdout[-1500:]
    subprocess.run(["rm", "-rf", str(report_dir), str(workdir / "backups")], check=True)
    return out


# -- footprint ----------------------------------------------------------------------------------------
class LockSampler(threading.Thread):
    """Every 100 ms: who waits for a lock, for how long, and is the migration (or a holder) the blocker?"""

    def __init__(self, pg: Cluster, db: str) -> None:
        super().__init__(daemon=True)
        self.conn = pg.connect(db)
        self.conn.autocommit = True
        self.stop_event = threading.Event()
        self.app_wait_on_migration = 0.0
        self.app_wait_any = 0.0
        self.migration_wait = 0.0
        self.samples = 0

    def run(self) -> None:
        cur = self.conn.cursor()
        while not self.stop_event.is_set():
            # The migration's sessions (all of them, its backfill sessions too) are named capital-migrate.
            cur.execute(
                "SELECT a.application_name, extract(epoch FROM clock_timestamp() - a.query_start)::float8,"
                " EXISTS (SELECT 1 FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))"
                "         AND b.application_name = %s)"
                " FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock' AND a.datname = current_database()",
                (APPLICATION_NAME,),
            )
            for app, waited, behind_migration in cur.fetchall():
                self.samples += 1
                if app == APPLICATION_NAME:
                    self.migration_wait = max(self.migration_wait, waited)
                elif app == "pgbench":
                    self.app_wait_any = max(self.app_wait_any, waited)
                    if behind_migration:
                        self.app_wait_on_migration = max(self.app_wait_on_migration, waited)
            time.sleep(0.1)
        self.conn.close()


def pgbench_cmd(prefix: Path, seconds: int, rate: int, npick: int, nrich: int) -> list[str]:
    argv = [
        "pgbench",
        "-n",
        "-c",
        "4",
        "-j",
        "2",
        "-R",
        str(rate),
        "-T",
        str(seconds),
        "-l",
        f"--log-prefix={prefix}",
        "--failures-detailed",
        "-D",
        f"npick={npick}",
        "-D",
        f"nrich={nrich}",
    ]
    for name, weight in SCRIPTS:
        argv += ["-f", f"{BENCH / 'pgbench' / name}.sql@{weight}"]
    return argv


def latencies(prefix: Path, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """p50/p99/max latency (ms) and failures from pgbench's per-transaction logs, optionally in a window."""
    lat: list[float] = []
    failed = 0
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 6:
                continue
            end = int(parts[4]) + int(parts[5]) / 1e6
            if window and not (window[0] <= end <= window[1]):
                continue
            if parts[2].isdigit():
                lat.append(int(parts[2]) / 1000.0)
            else:
                failed += 1
    lat.sort()

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, math.ceil(p * len(lat)) - 1)] if lat else None

    return {
        "transactions": len(lat),
        "failed": failed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] if lat else None,
    }


def capital_check(pg: Cluster, db: str, workdir: Path) -> dict[str, Any]:
    """prestamos.capital.capital_check through real Ansible (bench/check.yml writes its result as JSON)."""
    target = workdir / f"check-{db}.json"
    done = subprocess.run(
        ["ansible-playbook", "bench/check.yml", "-i", "inventories/local", "-e", f"bench_check_out={target}"],
        env=tool_env(pg, db),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not target.exists():
        return {"error": (done.stdout or done.stderr)[-800:]}
    res = json.loads(target.read_text())
    target.unlink()
    return {"discrepancy_count": res.get("discrepancy_count"), "juntas_checked": res.get("juntas_checked")}


QUIET_WINDOW_S = 5  # about the preflight stage's window, and the noop control's


def load_run(
    pg: Cluster, tpl: str, workdir: Path, tag: str, seconds: int, rate: int, migrate: bool, holder_seconds: float = 0.0,
    whole_run: bool = False, extra_vars: Sequence[str] = (), work: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The application's load for `seconds`; with migrate, the migration starts 3 s in (after an optional
    transaction holding a lock on "Junta" for holder_seconds): the migrate stage in-process, or with whole_run
    all of migrate.yml through ansible-playbook (preflight, backup, migrate, verify), or `work(db)` instead
    (bench.footprint's controls: a play that does not touch the database, a bare pg_dump)."""
    db = clone(pg, tpl, f"b_load_{tag}")
    psql(pg, db, "-f", str(BENCH / "pgbench" / "setup.sql"))
    npick, nrich = (
        int(x)
        for x in psql(pg, db, "-c", "SELECT (SELECT count(*) FROM bench_pick), (SELECT count(*) FROM bench_rich)")
        .strip()
        .split("|")
    )
    prefix = workdir / f"pgbench-{tag}"
    started = time.time()
    bench = subprocess.Popen(
        pgbench_cmd(prefix, seconds, rate, npick, nrich),
        env=tool_env(pg, db),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: dict[str, Any] = {"rate": rate, "seconds": seconds}
    sampler = LockSampler(pg, db)
    sampler.start()
    window: tuple[float, float] | None = None
    if migrate:
        time.sleep(3)
        holder = None
        if holder_seconds:
            holder = pg.connect(db)
            holder.cursor().execute('SELECT count(*) FROM "Junta"')  # ACCESS SHARE until commit
            threading.Timer(holder_seconds, holder.commit).start()
        began = time.time()
        if work is not None:
            out["migration"] = work(db)
        elif whole_run:
            out["migration"] = playbook_on(pg, db, workdir, extra_vars=extra_vars)
        else:
            conn = migration_connect(pg, db)
            try:
                options = Options(backfill_connections=BACKFILL_SESSIONS, connections_while_live=LIVE_SESSIONS)
                result = Migrator(conn, sql_files(), options,
                                  connect=lambda: migration_connect(pg, db)).run()
                out["migration"] = {"seconds": time.time() - began, "lock_retries": result["lock_retries"],
                                    "batches_rerun": result["batches_rerun"],
                                    "backfill_sessions": result["backfill_sessions"],
                                    "application_sessions": result["application_sessions"]}
            except MigrationError as exc:
                out["migration"] = {"seconds": time.time() - began, "error": exc.msg}
            conn.close()
        window = (began, time.time() + 1)
        if holder is not None:
            time.sleep(max(0.0, holder_seconds - (time.time() - began)) + 0.2)
            holder.close()
    stdout, _ = bench.communicate()
    sampler.stop_event.set()
    sampler.join()
    out["pgbench_rc"] = bench.returncode
    out["pgbench_failed_line"] = next((ln.strip() for ln in stdout.splitlines() if "failed" in ln), "")
    out["all"] = latencies(prefix)
    if window:
        out["during_migration"] = latencies(prefix, window)
        out["per_stage"] = {name: latencies(prefix, tuple(w))
                            for name, w in out.get("migration", {}).get("windows", {}).items()}
        out["app_lock_wait_on_migration_s"] = sampler.app_wait_on_migration
        out["migration_lock_wait_s"] = sampler.migration_wait
    out["app_lock_wait_any_s"] = sampler.app_wait_any
    if not migrate:
        # The same load's own short windows, nothing else running: how far a window's p99 strays from the
        # whole load's on this machine (the noise under every per-stage ratio).
        out["quiet_windows_p99_ms"] = [
            latencies(prefix, (t, t + QUIET_WINDOW_S))["p99_ms"]
            for t in range(int(started) + 3, int(started) + seconds - QUIET_WINDOW_S, QUIET_WINDOW_S)
        ]
    out["loans_rejected"] = int(psql(pg, db, "-c", "SELECT count(*) FROM bench_loan_outcome"))
    if migrate and work is None:
        out["capital_check"] = capital_check(pg, db, workdir)
    for path in workdir.glob(prefix.name + ".*"):
        path.unlink()
    pg.drop_database(db)
    return out


def stop_cleanly(pg: Cluster, tpl: str) -> dict[str, Any]:
    """A lock on "Junta" held past the whole retry budget: the run must stop with a clear error."""
    db = clone(pg, tpl, "b_stop")
    holder = pg.connect(db)
    holder.cursor().execute('SELECT count(*) FROM "Junta"')
    conn = pg.connect(db)
    began = time.time()
    try:
        Migrator(conn, sql_files(), Options(lock_timeout="1s", lock_retries=2)).run()
        out: dict[str, Any] = {"stopped": False}
    except MigrationError as exc:
        out = {"stopped": True, "error": exc.msg[:300]}
    out["seconds"] = time.time() - began
    conn.close()
    holder.rollback()
    holder.close()
    pg.drop_database(db)
    return out


# -- report -------------------------------------------------------------------------------------------
def fmt(s: dict[str, Any], unit: str = "s") -> str:
    if s.get("median") is None:
        return "n/a"
    return f"{s['median']:.2f} {unit} ({s['min']:.2f}-{s['max']:.2f}, n={s['n']})"


def ratio(num: list[float], den: list[float]) -> dict[str, Any]:
    """Per-run ratios (run i of one against run i of the other, measured side by side)."""
    return summary([a / b for a, b in zip(num, den, strict=False) if a is not None and b])


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Results of `{res['command']}` ({res['started']}, {res['runs']} runs)", ""]
    for size, r in res["sizes"].items():
        floor = r["floor"]
        module = [m["seconds"] for m in r["module"]]
        lines += [
            f"### {size} ({r['dataset']['rows']:,} rows)",
            "",
            "| measure | median (min-max) | ratio |",
            "|---|---|---|",
            f"| floor (bench/floor.sql, psql) | {fmt(summary(floor))} | 1 |",
            f"| migrate stage in-process (Migrator), one session | {fmt(summary(module))} | "
            f"{fmt(ratio(module, floor), 'x')} |",
        ]
        shared = [m["seconds"] for m in r.get("module_sessions", [])]
        if shared:
            lines.append(
                f"| migrate stage in-process, {BACKFILL_SESSIONS} backfill sessions (the role's default) | "
                f"{fmt(summary(shared))} | {fmt(ratio(shared, floor), 'x')} |"
            )
        for fmt_name in ("plain", "custom", "directory_j2"):
            vals = [d[fmt_name]["seconds"] for d in r["dumps"]]
            size_mb = statistics.median(d[fmt_name]["bytes"] for d in r["dumps"]) / 1e6
            plain = [d["plain"]["seconds"] for d in r["dumps"]]
            lines.append(
                f"| pg_dump {fmt_name} ({size_mb:.1f} MB) | {fmt(summary(vals))} | "
                f"{fmt(ratio(vals, plain), 'x')} of plain |"
            )
        plays = [p for p in r["playbook"] if p.get("rc") == 0]
        if plays:
            floor_plus_dump = [f + d["plain"]["seconds"] for f, d in zip(floor, r["dumps"], strict=False)]
            walls = [p["wall"] for p in plays]
            lines.append(
                f"| migrate.yml whole run | {fmt(summary(walls))} | "
                f"{fmt(ratio(walls, floor_plus_dump), 'x')} of floor + plain dump |"
            )
            for stage in ("preflight", "backup", "migrate", "verify"):
                vals = [p["stages"].get(stage) for p in plays if "stages" in p]
                extra = f"{fmt(ratio(vals, floor), 'x')} of floor" if stage == "migrate" else ""
                lines.append(f"| migrate.yml stage {stage} | {fmt(summary(vals))} | {extra} |")
        trend = r["module"][0]["trend"] if r["module"] else {}
        for source, t in trend.items():
            if isinstance(t, dict):
                lines.append(
                    f"| batch time {source} ({t['batches']} full batches): first 3 vs last 3 | "
                    f"{t['start']:.3f} s -> {t['end']:.3f} s | {t['end_over_start']:.2f}x |"
                )
        steps = [m["steps"] for m in r["module"] if "steps" in m]
        if steps:
            names = list(dict.fromkeys(k for st in steps for k in st))
            parts = [f"{k} {statistics.median(st.get(k, 0.0) for st in steps):.2f}" for k in names]
            lines.append(f"| migrate stage in-process per step, s (median of {len(steps)}) | {' / '.join(parts)} | |")
        if "sweep_seconds" in trend:
            lines.append(f"| loan_number/capital_at_time sweep | {trend['sweep_seconds']:.2f} s | |")
        lines.append("")
    if res.get("empty"):
        walls = [p["wall"] for p in res["empty"] if p.get("rc") == 0]
        lines += [f"Ansible fixed overhead (migrate.yml on an empty baseline): {fmt(summary(walls))}", ""]
    return "\n".join(lines)


def apply_settings(pg: Cluster, settings: Sequence[str]) -> dict[str, str]:
    """Server settings for an experiment (`--set NAME=VALUE`): ALTER SYSTEM, then a restart; returns them."""
    applied: dict[str, str] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name.replace("_", "").isalnum() or "'" in value:
            raise SystemExit(f"--set {setting!r}: expected NAME=VALUE, e.g. --set shared_buffers=1GB")
        psql(pg, "postgres", "-c", f"ALTER SYSTEM SET {name} = '{value}'")
        applied[name] = value
    if applied:
        pg.restart()
        for name in applied:
            applied[name] = psql(pg, "postgres", "-c", f"SHOW {name}").strip()
        print(f"[bench] server settings: {applied}", file=sys.stderr, flush=True)
    return applied


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="server setting for both sides of every comparison (ALTER SYSTEM); repeatable",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium", help="comma list of small, medium, large")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of floor, dumps and migrate stage")
    parser.add_argument("--playbook-runs", type=int, default=None, help="repetitions of migrate.yml (default: runs)")
    parser.add_argument("--footprint-size", default="medium", help="dataset of the load tests")
    parser.add_argument("--lock-size", default="small", help="dataset of the long-lock scenario")
    parser.add_argument("--rate", type=int, default=40, help="pgbench -R (transactions per second)")
    parser.add_argument("--no-footprint", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/<time>.json)")
    add_set_option(parser)
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    playbook_runs = args.runs if args.playbook_runs is None else args.playbook_runs
    res: dict[str, Any] = {
        "command": "python -m bench.run " + " ".join(argv or sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": args.runs,
        "sizes": {},
    }
    out = args.out or BENCH / "results" / f"{res['started'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with Cluster() as pg, tempfile.TemporaryDirectory(prefix="capital-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o700)
        res["settings"] = apply_settings(pg, args.set)
        needed = set(sizes) | ({args.footprint_size, args.lock_size} if not args.no_footprint else set())
        datasets = {s: prepare(pg, s, args.seed) for s in sorted(needed)}
        for size in sizes:
            tpl = f"tpl_{size}"
            r: dict[str, Any] = {"dataset": datasets[size], "floor": [], "dumps": [], "module": [], "playbook": []}
            for i in range(args.runs):
                print(f"[bench] {size} run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
                r["floor"].append(measure_floor(pg, tpl))
                r["dumps"].append(measure_dumps(pg, tpl, workdir))
                module = measure_module(pg, tpl)
                batches = module.pop("batches")
                module["trend"] = batch_trend(batches)
                module["steps"] = step_seconds(batches, module["phases"], module["index_seconds"])
                r["module"].append(module)
                shared = measure_module(pg, tpl, sessions=BACKFILL_SESSIONS)
                r.setdefault("module_sessions", []).append({"seconds": shared["seconds"], "phases": shared["phases"]})
                if i < playbook_runs:
                    r["playbook"].append(measure_playbook(pg, tpl, workdir))
            r["plan_check"] = plan_check(pg, tpl) if size == "small" else None
            res["sizes"][size] = r
            out.write_text(json.dumps(res, indent=1, default=str))
        prepare(pg, "empty", args.seed)
        res["empty"] = [measure_playbook(pg, "tpl_empty", workdir) for _ in range(playbook_runs)]
        if not args.no_footprint:
            fsize = args.footprint_size
            module_s = [m["seconds"] for m in res["sizes"].get(fsize, {}).get("module", [])] or [60.0]
            seconds = int(statistics.median(module_s) * 1.3) + 10
            print(f"[bench] footprint on {fsize}: {seconds} s of load, twice", file=sys.stderr, flush=True)
            res["footprint"] = {
                "size": fsize,
                "baseline": load_run(pg, f"tpl_{fsize}", workdir, "base", seconds, args.rate, migrate=False),
                "migration": load_run(pg, f"tpl_{fsize}", workdir, "mig", seconds, args.rate, migrate=True),
            }
            print(f'[bench] long lock on "Junta" ({args.lock_size})', file=sys.stderr, flush=True)
            res["long_lock"] = {
                "size": args.lock_size,
                "baseline": load_run(pg, f"tpl_{args.lock_size}", workdir, "lbase", 30, args.rate, migrate=False),
                "held_7s": load_run(
                    pg, f"tpl_{args.lock_size}", workdir, "lock", 30, args.rate, migrate=True, holder_seconds=7.0
                ),
                "held_past_budget": stop_cleanly(pg, f"tpl_{args.lock_size}"),
            }
    out.write_text(json.dumps(res, indent=1, default=str))
    print(markdown(res))
    print(f"\nfull results: {out}")
    if res.get("footprint") or res.get("long_lock"):
        print(json.dumps({k: res.get(k) for k in ("footprint", "long_lock")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
