"""Where the CLI's database connection comes from, and how its password stays off argv and disk.

The operator gives a URL by prompt (`--database-url`), by naming an environment variable
(`--database-url-env VAR`), through `DATABASE_URL`, or leaves it to the libpq environment (PG*). The
non-secret parts become PGHOST/PGPORT/... for the playbook; the password goes into a 0600 pgpass file
named by PGPASSFILE, never into ansible-runner's envvars (which it writes to disk) nor onto a command line.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from capital_migrate.errors import OperatorError

# Variables that carry a secret; removed from the environment ansible-playbook inherits.
SECRET_ENV = ("PGPASSWORD", "DATABASE_URL")
LIBPQ_KEYS = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE"}


@dataclass(frozen=True)
class DbTarget:
    """One database to work on; `password` never appears in repr or in `libpq_env()`."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str | None = None
    sslmode: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> DbTarget:
        """Parse a libpq URL (postgres[ql]://user:pass@host:port/db?sslmode=...&host=/socket/dir)."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise OperatorError(f"the database URL is not valid ({exc}); expected "
                                "postgresql://user@host:5432/dbname") from None
        if parts.scheme not in ("postgres", "postgresql"):
            raise OperatorError("the database URL must start with postgresql:// (or postgres://); "
                                f"got scheme {parts.scheme or 'none'!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(
            host=query.get("host") or (unquote(parts.hostname) if parts.hostname else None),
            port=port or (int(query["port"]) if query.get("port", "").isdigit() else None),
            user=query.get("user") or (unquote(parts.username) if parts.username else None),
            dbname=query.get("dbname") or (unquote(parts.path.lstrip("/")) or None),
            sslmode=query.get("sslmode"),
            password=query.get("password") or (unquote(parts.password) if parts.password else None),
        )

    @classmethod
    def from_libpq_env(cls, environ: Mapping[str, str]) -> DbTarget:
        """The connection the libpq environment describes (PGHOST, PGPORT, ..., PGPASSWORD)."""
        port = environ.get("PGPORT", "")
        return cls(
            host=environ.get("PGHOST") or None,
            port=int(port) if port.isdigit() else None,
            user=environ.get("PGUSER") or None,
            dbname=environ.get("PGDATABASE") or None,
            sslmode=environ.get("PGSSLMODE") or None,
            password=environ.get("PGPASSWORD") or None,
        )

    @property
    def is_empty(self) -> bool:
        return not any((self.host, self.port, self.user, self.dbname, self.password))

    def libpq_env(self) -> dict[str, str]:
        """PGHOST/PGPORT/PGUSER/PGDATABASE/PGSSLMODE for what is known; never the password."""
        values = {name: getattr(self, attr) for attr, name in LIBPQ_KEYS.items()}
        return {name: str(value) for name, value in values.items() if value not in (None, "")}

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg2.connect() keywords, password included (in memory only)."""
        kwargs: dict[str, Any] = {k: v for k, v in (
            ("host", self.host), ("port", self.port), ("user", self.user), ("dbname", self.dbname),
            ("sslmode", self.sslmode), ("password", self.password)) if v not in (None, "")}
        kwargs.setdefault("application_name", "capital-migrate")
        return kwargs

    def describe(self) -> str:
        """`user@host:port/db` for messages (no password)."""
        return f"{self.user or '(os user)'}@{self.host or '(socket)'}:{self.port or 5432}/{self.dbname or '?'}"


def resolve_target(prompt: bool, url_env: str | None, environ: Mapping[str, str] | None = None) -> DbTarget:
    """The connection the operator asked for; raises OperatorError (exit 2) when it cannot be had."""
    env = os.environ if environ is None else environ
    if prompt and url_env:
        raise OperatorError("use either --database-url (prompt) or --database-url-env VAR, not both")
    if prompt:
        if not sys.stdin.isatty():
            raise OperatorError("--database-url prompts for the URL, but stdin is not a terminal; put the URL "
                                "in an environment variable and pass --database-url-env VAR instead")
        url = getpass.getpass("Database URL (not echoed): ")
        if not url.strip():
            raise OperatorError("no database URL entered")
        return DbTarget.from_url(url)
    if url_env:
        url = env.get(url_env, "")
        if not url:
            raise OperatorError(f"--database-url-env {url_env}: the environment variable {url_env} is not set "
                                "or empty; export it (without echoing it) or use --database-url to be prompted")
        return DbTarget.from_url(url)
    if env.get("DATABASE_URL"):
        return DbTarget.from_url(env["DATABASE_URL"])
    return DbTarget.from_libpq_env(env)


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def pgpass_file(target: DbTarget) -> Iterator[Path | None]:
    """A 0600 pgpass file holding the target's password, in its own 0700 dir, removed afterwards.

    Host, port, database and user are wildcards: the run also connects to scratch databases (restore
    test) and over the unix socket, where libpq matches the host as "localhost"; the file lives only
    as long as this one run and names only this one password.
    """
    if not target.password:
        yield None
        return
    holder = Path(tempfile.mkdtemp(prefix="capital-pgpass-"))
    try:
        path = holder / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:*:*:{_pgpass_escape(target.password)}\n")
        yield path
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def environ_without(names: tuple[str, ...]) -> Iterator[None]:
    """Hide secret variables from os.environ while ansible-runner copies it (it records the copy on disk)."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)

