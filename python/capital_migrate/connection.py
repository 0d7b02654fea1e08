"""Where the CLI's database connection comes from, and how its password stays off argv and disk.

The operator gives a URL by prompt (`--database-url`), by naming an environment variable
(`--database-url-env VAR`), through `DATABASE_URL`, or leaves it to the libpq environment (PG*). The
non-secret parts become PGHOST/PGPORT/... for the playbook; the password goes into a 0600 pgpass file
named by PGPASSFILE, never into ansible-runner's envvars (which it writes to disk) nor onto a command line.
The URL is read by the roles' own parser (module_utils/dburl.py), and the inventory's `capital_db_*` win over
it as in the playbooks (`inventory_variables`, `DbTarget.under`), so the CLI names the database they act on.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# The one URL parser and pgpass writer and the input rules, shared with the roles (capital_migrate/__init__.py
# puts the collection on the path).
from ansible_collections.prestamos.capital.plugins.module_utils import dburl
from ansible_collections.prestamos.capital.plugins.module_utils.inputs import (
    report_dir_problem as report_dir_problem,
)

from capital_migrate.errors import OperatorError

# Variables that carry a secret; removed from the environment ansible-playbook inherits.
SECRET_ENV = ("PGPASSWORD", "DATABASE_URL")
LIBPQ_KEYS = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE"}
# The inventory's connection variables (docs/design.md, Connection): they win over DATABASE_URL and PG*.
DB_VARIABLES = ("capital_db_host", "capital_db_port", "capital_db_user", "capital_db_password", "capital_db_name",
                "capital_db_sslmode")


@dataclass(frozen=True)
class DbTarget(dburl.ConnParts):
    """One database to work on (the parts of module_utils/dburl.py); `password` never in repr or `libpq_env()`."""

    @classmethod
    def from_parts(cls, parts: dburl.ConnParts) -> DbTarget:
        return cls(**{f.name: getattr(parts, f.name) for f in fields(parts)})

    def parts(self) -> dburl.ConnParts:
        return dburl.ConnParts(**{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_url(cls, url: str) -> DbTarget:
        """Parse a libpq URL with the collection's one parser (module_utils/dburl.py, libpq's rules)."""
        try:
            return cls.from_parts(dburl.parse_database_url(url))
        except dburl.DatabaseUrlError as exc:  # names the faulty part, never a value after the user name
            raise OperatorError(f"{exc}; expected postgresql://user:password@host:5432/dbname") from None

    @classmethod
    def from_libpq_env(cls, environ: Mapping[str, str]) -> DbTarget:
        """The connection the libpq environment describes (PGHOST, PGPORT, ..., PGPASSWORD)."""
        try:
            return cls.from_parts(dburl.parts_from_libpq_env(environ))
        except dburl.DatabaseUrlError as exc:
            raise OperatorError(str(exc)) from None

    def filled_from(self, environ: Mapping[str, str]) -> DbTarget:
        """Parts the URL leaves out taken from the libpq environment, as the connection role does."""
        return DbTarget.from_parts(dburl.first_of(self.parts(), DbTarget.from_libpq_env(environ).parts()))

    def under(self, variables: Mapping[str, Any]) -> DbTarget:
        """This target with the `capital_db_*` variables on top, as the connection role resolves it."""
        try:
            return DbTarget.from_parts(dburl.first_of(dburl.parts_from_variables(variables), self.parts()))
        except dburl.DatabaseUrlError as exc:
            raise OperatorError(f"{exc} (inventory or -e)") from None

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
        return DbTarget.from_url(url).filled_from(env)
    if url_env:
        url = env.get(url_env, "")
        if not url:
            raise OperatorError(f"--database-url-env {url_env}: the environment variable {url_env} is not set "
                                "or empty; export it (without echoing it) or use --database-url to be prompted")
        return DbTarget.from_url(url).filled_from(env)
    if env.get("DATABASE_URL"):
        return DbTarget.from_url(env["DATABASE_URL"]).filled_from(env)
    return DbTarget.from_libpq_env(env)


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
        try:  # the one pgpass writer (module_utils/dburl.py), shared with the capital_pgpass module
            line = dburl.pgpass_line(target.password)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(line)
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



def inventory_hosts(inventory: Path, pattern: str = "all") -> list[str]:
    """The inventory's hosts matching ``pattern`` (a fleet: one host per database), in inventory order."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    try:
        return [host.get_name() for host in InventoryManager(loader=DataLoader(), sources=[str(inventory)])
                .get_hosts(pattern)]
    except AnsibleError as exc:
        raise OperatorError(f"cannot read the hosts of inventory {inventory} ({type(exc).__name__})") from None


def inventory_variables(inventory: Path, names: tuple[str, ...] = DB_VARIABLES,
                        vault_password_file: Path | None = None, pattern: str = "all") -> dict[str, Any]:
    """`names` as the playbooks see them on the first host of `pattern`: inventory, group_vars and vault, templated.

    Read with Ansible's own InventoryManager and VariableManager, in process and without contacting any
    host, so the CLI's idea of the target (status, the production confirmation, the backfill poller) is the
    one the playbooks then act on. Raises OperatorError when the inventory cannot be read (a vault without
    its password: pass --vault-password-file, which the playbooks need as well).
    """
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    try:
        if vault_password_file is not None:
            from ansible.parsing.vault import get_file_vault_secret

            secret = get_file_vault_secret(filename=str(vault_password_file), loader=loader)
            secret.load()
            loader.set_vault_secrets([("default", secret)])
        manager = InventoryManager(loader=loader, sources=[str(inventory)])
        hosts = manager.get_hosts(pattern)
        variables = VariableManager(loader=loader, inventory=manager).get_vars(host=hosts[0] if hosts else None)
        templar = Templar(loader=loader, variables=variables)
        return {name: templar.template(variables[name]) for name in names if name in variables}
    except AnsibleError as exc:
        # Ansible's message may quote the file's text; name only the inventory and the kind of problem.
        kind = "its vault needs --vault-password-file" if "vault" in str(exc).lower() else type(exc).__name__
        if "Template" in type(exc).__name__:
            # A password holding '{{' or '{%' is a template to Ansible, which quotes it in its errors.
            kind += (": a capital_db_* value holds '{{' or '{%' that Ansible cannot template; if it is part of a "
                     "password, mark the value !unsafe (see inventories/*/group_vars/all/vault.yml.example)")
        raise OperatorError(f"cannot read the connection variables of inventory {inventory} ({kind})") from None
