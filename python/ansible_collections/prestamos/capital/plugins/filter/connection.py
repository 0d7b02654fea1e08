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
)

LIBPQ_ENV = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE")
_VARIABLES = ("capital_db_host", "capital_db_port", "capital_db_user", "capital_db_password", "capital_db_name",
              "capital_db_sslmode")


def capital_conn(variables: Mapping[str, Any], database_url: str = "",
                 environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """capital_conn {host, port, user, password, dbname, sslmode} from capital_db_*, DATABASE_URL, PG*."""
    try:
        parts = resolve({k: variables.get(k) for k in _VARIABLES}, database_url or None,
                        {k: v for k, v in (environ or {}).items() if v})
    except DatabaseUrlError as exc:  # its message holds nothing of the URL after the user name
        raise AnsibleFilterError(str(exc)) from None
    conn = parts.as_dict()
    conn["port"] = conn["port"] or 5432
    return conn


def capital_input_errors(values: Mapping[str, Any], database_url: str = "",
                         environ: Mapping[str, str] | None = None, report_dir: str = "") -> list[str]:
    """Every problem of the run's inputs (module_utils/inputs.py), the report directory's last."""
    known = {name: values[name] for name in (*RULES, *_VARIABLES) if name in values and name != "capital_db_password"}
    errors = input_errors(known, database_url, {k: v for k, v in (environ or {}).items() if v})
    problem = report_dir_problem(report_dir) if isinstance(report_dir, str) else None
    return [*errors, *([problem] if problem else [])]


class FilterModule:
    """prestamos.capital.capital_conn and prestamos.capital.capital_input_errors."""

    def filters(self) -> dict[str, Any]:
        return {"capital_conn": capital_conn, "capital_input_errors": capital_input_errors}
