"""Doc fragment: the connection options shared by the prestamos.capital modules."""

from __future__ import annotations


class ModuleDocFragment:
    """Same names and meaning as community.postgresql, so one module_defaults block serves both groups."""

    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host of the PostgreSQL server. Empty means the libpq default (Unix socket or C(PGHOST)).
    type: str
    default: ''
  login_unix_socket:
    description:
      - Directory of the server's Unix socket, used when O(login_host) is empty.
    type: str
    default: ''
  login_port:
    description:
      - Port of the PostgreSQL server.
    type: int
    default: 5432
  login_user:
    description:
      - Role to connect as. It needs to own the legacy tables (it alters them).
    type: str
    default: ''
  login_password:
    description:
      - Password of O(login_user). Never logged; prefer a C(PGPASSFILE) on the target.
    type: str
    default: ''
  login_db:
    description:
      - Database to connect to.
    type: str
    default: ''
    aliases: [db]
  ssl_mode:
    description:
      - libpq C(sslmode).
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - CA certificate file for O(ssl_mode=verify-ca) or O(ssl_mode=verify-full).
    type: str
    aliases: [ssl_rootcert]
requirements:
  - psycopg2 on the target host
"""
