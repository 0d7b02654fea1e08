"""Throwaway PostgreSQL: starts as root and as a plain user, demands a password, leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from capital_migrate import pgtmp
from capital_migrate.pgtmp import Cluster, Database, PgTmpError, pid_alive, temporary_database

PYTHON_DIR = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "capital-pgtmp"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "capital_migrate.pgtmp"]
IS_ROOT = os.geteuid() == 0

# Prints "<tmpdir> <postmaster pid> <port>" so the test can check all three are gone afterwards.
REPORT = ('printf "%s %s %s\\n" "$CAPITAL_PGTMP_DIR" '
          '"$(head -n1 "$CAPITAL_PGTMP_DIR/data/postmaster.pid")" "$PGPORT"')


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def assert_gone(tmpdir: Path, pid: int, port: int) -> None:
    assert not tmpdir.exists(), f"{tmpdir} left behind"
    assert not pid_alive(pid), f"postmaster {pid} still running"
    assert port_free(port), f"port {port} still taken"


def parse_report(line: str) -> tuple[Path, int, int]:
    tmpdir, pid, port = line.split()
    return Path(tmpdir), int(pid), int(port)


def parse_exports(text: str) -> dict[str, str]:
    """The variables of ``export KEY=VALUE`` lines, unquoted as a shell would."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in text.splitlines() if line)
    return {key: shlex.split(value)[0] for key, value in pairs}


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def read_until(proc: subprocess.Popen[bytes], needle: str, timeout: float = 30) -> str:
    """The child's stdout up to the line holding ``needle``, failing instead of hanging."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    text = ""
    while needle not in text or not text.endswith("\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"capital-pgtmp printed no {needle!r} in time: {text!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"capital-pgtmp closed stdout before {needle!r}: {text!r}"
        text += chunk.decode()
    return text


def expected_owner_uid() -> int:
    return pwd.getpwnam(pgtmp.OWNER_NAME).pw_uid if IS_ROOT else os.geteuid()


@contextlib.contextmanager
def cli(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The CLI in the background; a test that fails half way still lets it tear down (SIGTERM first)."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, bufsize=0, env=pgtmp.clean_environ())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.integration
def test_cluster_runs_unprivileged_and_leaves_nothing_after_stop(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = Cluster()
    with cluster:
        with capsys.disabled():
            print(f"\npgtmp start-to-ready: {cluster.startup_seconds:.2f}s ({cluster.bindir})")
        conn = cluster.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("select current_user, current_setting('fsync'), current_setting('port')::int, "
                            "current_setting('max_connections')::int, inet_server_addr()::text")
                user, fsync, port, max_connections, addr = cur.fetchone()
        finally:
            conn.close()
        assert (user, fsync, port, max_connections) == (cluster.user, "off", cluster.port, 100)
        assert addr.split("/")[0] == cluster.host
        tmpdir, pid = cluster.tmpdir, cluster.pid
        assert pid is not None and pid_alive(pid)
        assert process_uid(pid) == expected_owner_uid()
        assert cluster.datadir.stat().st_uid == expected_owner_uid()
        assert not cluster.tmpdir.is_relative_to("/root")
        assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").is_socket()
        assert "database system is ready" in cluster.logfile.read_text()
        assert not port_free(cluster.port)
    assert_gone(tmpdir, pid, cluster.port)
    cluster.stop()  # idempotent


@pytest.mark.integration
def test_password_never_lands_on_disk_or_a_command_line() -> None:
    with Cluster() as cluster:
        secret = cluster.password.encode()
        assert not (cluster.tmpdir / "pwfile").exists()
        leaks = [path for path in cluster.tmpdir.rglob("*")
                 if path.is_file() and secret in path.read_bytes()]
        assert leaks == []
        assert cluster.pid is not None
        for pid in [cluster.pid, *pgtmp._children(cluster.pid)]:
            with contextlib.suppress(FileNotFoundError):
                assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cluster.password not in repr(cluster)


def test_password_is_required_over_tcp_and_socket(pg_cluster: Cluster) -> None:
    wrong = pg_cluster.dsn().replace(pg_cluster.password, pg_cluster.password + "x")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong)
    no_password = {k: v for k, v in pg_cluster.env().items() if k != "PGPASSWORD"}
    base = {**pgtmp.clean_environ(), **no_password, "PGPASSFILE": os.devnull}
    for host in (pg_cluster.host, str(pg_cluster.socket_dir)):
        done = subprocess.run(["psql", "-X", "-w", "-v", "ON_ERROR_STOP=1", "-c", "select 1"],
                              env={**base, "PGHOST": host}, capture_output=True, text=True, check=False)
        assert done.returncode != 0
        assert "password" in done.stderr
    done = subprocess.run(["psql", "-X", "-w", "-v", "ON_ERROR_STOP=1", "-Atc", "select 1"],
                          env={**pgtmp.clean_environ(), **pg_cluster.env()},
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "1")


def test_pg_db_is_fresh_empty_and_marked_integration(pg_db: Database, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("select current_database(), count(*) from pg_class c join pg_namespace n "
                        "on n.oid = c.relnamespace where n.nspname = 'public'")
            assert cur.fetchone() == (pg_db.name, 0)
    finally:
        conn.close()
    assert pg_db.env["PGDATABASE"] == pg_db.name
    done = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-Atc", "select current_database()"],
                          env=pg_db.env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == pg_db.name


def test_temporary_database_is_dropped_even_with_sessions_and_errors(pg_cluster: Cluster) -> None:
    with pytest.raises(RuntimeError), temporary_database(pg_cluster) as db:
        name = db.name
        held = db.connect()
        with held.cursor() as cur:
            cur.execute("create table t (x int)")
        held.commit()
        raise RuntimeError("test body failed")
    held.close()
    conn = pg_cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("select count(*) from pg_database where datname = %s", (name,))
            assert cur.fetchone() == (0,)
    finally:
        conn.close()


def test_create_database_from_template_copies_it(pg_cluster: Cluster) -> None:
    with temporary_database(pg_cluster, prefix="tpl") as template:
        conn = template.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("create table baseline (amount numeric(14,2));"
                            "insert into baseline values (12.34)")
            conn.commit()
        finally:
            conn.close()
        with temporary_database(pg_cluster, template=template.name) as copy:
            conn = copy.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("select amount::text from baseline")
                    assert cur.fetchall() == [("12.34",)]
            finally:
                conn.close()


@pytest.mark.integration
def test_crash_then_restart_keeps_commits_and_port() -> None:
    with Cluster() as cluster:
        conn = cluster.connect()
        with conn.cursor() as cur:
            cur.execute("create table ledger (amount numeric(14,2));"
                        "insert into ledger values (10.01), (0.99)")
        conn.commit()
        first_pid, port = cluster.pid, cluster.port
        assert first_pid is not None
        cluster.crash()
        conn.close()
        assert not pid_alive(first_pid)
        assert cluster.datadir.is_dir()
        cluster.restart()
        assert cluster.port == port
        assert cluster.pid is not None and cluster.pid != first_pid and pid_alive(cluster.pid)
        conn = cluster.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("select sum(amount)::text from ledger")
                assert cur.fetchone() == ("11.00",)
        finally:
            conn.close()
        assert "database system was interrupted" in cluster.logfile.read_text()
    assert_gone(cluster.tmpdir, cluster.pid, port)


@pytest.mark.integration
@pytest.mark.parametrize(("command", "code"), [
    ("psql -X -v ON_ERROR_STOP=1 -Atc 'select 1' >/dev/null && exit 7", 7),
    ("psql -X -v ON_ERROR_STOP=1 -c 'select no_such_column' 2>/dev/null", 1),
    ("psql -X -v ON_ERROR_STOP=1 -Atc 'select 1' >/dev/null", 0),
])
def test_cli_run_propagates_exit_code_and_tears_down(command: str, code: int) -> None:
    done = subprocess.run([*CLI, "run", "--", "sh", "-c", f"{REPORT}; {command}"],
                          capture_output=True, text=True, env=pgtmp.clean_environ(), check=False, timeout=120)
    assert done.returncode == code, done.stderr
    assert_gone(*parse_report(done.stdout))


@pytest.mark.integration
@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch user; as non-root the other tests cover it")
def test_cli_run_as_non_root_user_runs_server_as_that_user() -> None:
    nobody = pwd.getpwnam("nobody")
    # The venv's interpreter lives under /root; a plain user gets the system one (pgtmp is stdlib-only).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the non-root user")
    script = (f"{REPORT}; P=$(head -n1 \"$CAPITAL_PGTMP_DIR/data/postmaster.pid\"); "
              "awk '/^Uid:/ {print $2}' /proc/$P/status; "
              "psql -X -v ON_ERROR_STOP=1 -Atc 'select current_user'; exit 5")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(PYTHON_DIR),
           "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": "/tmp", "HOME": "/tmp"}
    done = subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i",
                           *(f"{k}={v}" for k, v in env.items()),
                           python, "-m", "capital_migrate.pgtmp", "run", "--", "sh", "-c", script],
                          capture_output=True, text=True, cwd="/tmp", check=False, timeout=120)
    assert done.returncode == 5, done.stderr
    report, uid, user = done.stdout.splitlines()
    assert (int(uid), user) == (nobody.pw_uid, pgtmp.SUPERUSER)
    assert_gone(*parse_report(report))


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "signum"), [("run", signal.SIGTERM), ("start", signal.SIGTERM),
                                              ("run", signal.SIGINT)])
def test_cli_tears_down_on_signal(mode: str, signum: signal.Signals) -> None:
    args = ["run", "--", "sh", "-c", f"{REPORT}; exec sleep 60"] if mode == "run" else ["start"]
    with cli(*args) as proc:
        if mode == "run":
            tmpdir, pid, port = parse_report(read_until(proc, "\n"))
        else:
            exports = parse_exports(read_until(proc, "CAPITAL_PGTMP_DIR="))
            tmpdir, port = Path(exports["CAPITAL_PGTMP_DIR"]), int(exports["PGPORT"])
            pid = int((tmpdir / "data" / "postmaster.pid").read_text().split()[0])
        assert pid_alive(pid)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum
    assert_gone(tmpdir, pid, port)


@pytest.mark.integration
def test_cli_start_keep_runs_until_stop_dir(tmp_path: Path) -> None:
    done = subprocess.run([*CLI, "start", "--keep"], capture_output=True, text=True,
                          env=pgtmp.clean_environ(), check=True, timeout=120)
    exports = parse_exports(done.stdout)
    tmpdir = Path(exports.pop("CAPITAL_PGTMP_DIR"))
    port = int(exports["PGPORT"])
    try:
        pid = int((tmpdir / "data" / "postmaster.pid").read_text().split()[0])
        query = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-Atc", "select current_user"],
                               env={**pgtmp.clean_environ(), **exports}, capture_output=True, text=True,
                               check=True)
        assert query.stdout.strip() == pgtmp.SUPERUSER
        assert "PGPASSWORD" not in (tmpdir / pgtmp.STATE_FILE).read_text()
        refused = subprocess.run([*CLI, "stop", "--dir", str(tmp_path)], capture_output=True, text=True,
                                 check=False)
        assert refused.returncode == 2
        assert "not a capital-pgtmp directory" in refused.stderr
        assert tmp_path.is_dir() and pid_alive(pid)
    finally:
        stopped = subprocess.run([*CLI, "stop", "--dir", str(tmpdir)], capture_output=True, text=True,
                                 check=False, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert_gone(tmpdir, pid, port)


@pytest.mark.integration
def test_cluster_of_a_killed_process_is_reaped_by_the_next_start() -> None:
    code = ("from capital_migrate.pgtmp import Cluster; import time; c = Cluster().start(); "
            "print(c.tmpdir, c.pid, c.port, flush=True); time.sleep(120)")
    orphan = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, bufsize=0,
                              env=pgtmp.clean_environ())
    try:
        tmpdir, pid, port = parse_report(read_until(orphan, "\n"))
    finally:
        orphan.kill()  # SIGKILL: no atexit, no handler; the server is orphaned
        orphan.wait()
        assert orphan.stdout is not None
        orphan.stdout.close()
    assert pid_alive(pid) and tmpdir.is_dir()
    with Cluster() as fresh:
        assert fresh.tmpdir != tmpdir
    assert_gone(tmpdir, pid, port)


def test_unknown_server_version_is_a_clear_error() -> None:
    with pytest.raises(PgTmpError, match="no PostgreSQL 7 server binaries"):
        pgtmp.find_bindir(7)


def test_cli_run_without_command_is_an_error() -> None:
    done = subprocess.run([*CLI, "run", "--"], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert "nothing to run" in done.stderr
