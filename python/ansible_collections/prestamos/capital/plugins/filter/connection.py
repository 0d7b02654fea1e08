"""Filters of the connection role: resolve the connection and check the run's inputs, on the controller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.prestamos.capital.plugins.module_utils.dburl import DatabaseUrlError, resolve
from ansible_collections.prestamos.capital.plugins.module_utils.inputs import (
    RULES,
    input_errors,
    report_dir_problem,
    wave_keyword_errors,
)
from jinja2 import Undefined

LIBPQ_ENV = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE")
_VARIABLES = ("capital_db_host", "capital_db_port", "capital_db_user", "capital_db_password", "capital_db_name",
              "capital_db_sslmode")
CREDENTIAL_VARIABLE = "capital_db_password"
UNTEMPLATABLE_CREDENTIAL = (
    "capital_db_password cannot be read: Ansible takes the `{{` or `{%` in it (or in the vault value it names) "
    "for a template, and would print the line that holds it. Mark the value !unsafe where it is set "
    "(see inventories/*/group_vars/all/vault.yml.example), or give it as DATABASE_URL or in a pgpass file")


def _password(host_vars: Mapping[str, Any] | None) -> Any:
    """The host's capital_db_password, read without tripping a template error.

    Ansible templates the value when it is read and, when that fails, prints the source line that holds it.
    Read from the host's variables here, a failed template is a marker (a jinja2 Undefined) that is never
    rendered, so the refusal quotes nothing of it.
    """
    value = host_vars.get(CREDENTIAL_VARIABLE) if host_vars is not None else None
    if isinstance(value, Undefined):
        raise AnsibleFilterError(UNTEMPLATABLE_CREDENTIAL)
    return value


def capital_conn(variables: Mapping[str, Any], database_url: str = "",
                 environ: Mapping[str, str] | None = None,
                 host_vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """capital_conn {host, port, user, password, dbname, sslmode} from capital_db_*, DATABASE_URL, PG*.

    The password is read from host_vars (the host's variables) when given, never from a templated copy.
    """
    given = {k: variables.get(k) for k in _VARIABLES}
    if host_vars is not None:
        given[CREDENTIAL_VARIABLE] = _password(host_vars)
    try:
        parts = resolve(given, database_url or None,
                        {k: v for k, v in (environ or {}).items() if v})
    except DatabaseUrlError as exc:  # its message holds nothing of the URL after the user name
        raise AnsibleFilterError(str(exc)) from None
    conn = parts.as_dict()
    conn["port"] = conn["port"] or 5432
    return conn


def _extra_var_names() -> frozenset[str] | None:
    """The names given as extra variables (-e) to this ansible-playbook, or None when they cannot be read."""
    try:
        from ansible.parsing.dataloader import DataLoader
        from ansible.utils.vars import load_extra_vars

        return frozenset(load_extra_vars(DataLoader()))
    except Exception:  # e.g. a vaulted extra-vars file: then nothing is refused for its sake
        return None


def capital_input_errors(values: Mapping[str, Any], database_url: str = "",
                         environ: Mapping[str, str] | None = None, report_dir: str = "",
                         waves: bool = False) -> list[str]:
    """Every problem of the run's inputs (module_utils/inputs.py), the report directory's last.

    ``waves``: the play splits into waves (migrate.yml), so its wave settings must be extra variables.
    """
    known = {name: values[name] for name in (*RULES, *_VARIABLES) if name in values and name != CREDENTIAL_VARIABLE}
    unreadable = [UNTEMPLATABLE_CREDENTIAL] if isinstance(values.get(CREDENTIAL_VARIABLE), Undefined) else []
    errors = unreadable + input_errors(known, database_url, {k: v for k, v in (environ or {}).items() if v})
    if waves:
        errors += wave_keyword_errors(known, _extra_var_names())
    problem = report_dir_problem(report_dir) if isinstance(report_dir, str) else None
    return [*errors, *([problem] if problem else [])]


class FilterModule:
    """prestamos.capital.capital_conn and prestamos.capital.capital_input_errors."""

    def filters(self) -> dict[str, Any]:
        return {"capital_conn": capital_conn, "capital_input_errors": capital_input_errors}
