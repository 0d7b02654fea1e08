"""Connection helpers shared by the prestamos.capital modules (one argument spec, one connect())."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

try:
    import psycopg2
    import psycopg2.extensions

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - reported by the module through missing_required_lib
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = str(exc)


def connection_argument_spec() -> dict[str, Any]:
    """The connection options of doc_fragments/connection.py; the password is no_log."""
    return {
        "login_host": {"type": "str", "default": ""},
        "login_unix_socket": {"type": "str", "default": ""},
        # Like community.postgresql: PGPORT of the target's environment, else 5432.
        "login_port": {"type": "int", "default": int(os.environ.get("PGPORT") or 5432)},
        "login_user": {"type": "str", "default": ""},
        "login_password": {"type": "str", "default": "", "no_log": True},
        "login_db": {"type": "str", "default": "", "aliases": ["db"]},
        "ssl_mode": {
            "type": "str",
            "default": "prefer",
            "choices": ["allow", "disable", "prefer", "require", "verify-ca", "verify-full"],
        },
        "ca_cert": {"type": "str", "aliases": ["ssl_rootcert"]},
    }


def connect_kwargs(params: Mapping[str, Any], application_name: str) -> dict[str, Any]:
    """psycopg2.connect() keyword arguments from module params; empty values fall back to libpq defaults."""
    kwargs: dict[str, Any] = {
        "application_name": application_name,
        "sslmode": params.get("ssl_mode") or "prefer",
    }
    host = params.get("login_host") or params.get("login_unix_socket")
    for key, value in (
        ("host", host),
        ("port", params.get("login_port")),
        ("user", params.get("login_user")),
        ("password", params.get("login_password")),
        ("dbname", params.get("login_db")),
        ("sslrootcert", params.get("ca_cert")),
    ):
        if value not in (None, ""):
            kwargs[key] = value
    return kwargs


def connect(params: Mapping[str, Any], application_name: str, *, autocommit: bool = True) -> Any:
    """Open a connection; libpq's error names host/port/user and the cause, never the password."""
    conn = psycopg2.connect(**connect_kwargs(params, application_name))
    conn.autocommit = autocommit
    return conn
