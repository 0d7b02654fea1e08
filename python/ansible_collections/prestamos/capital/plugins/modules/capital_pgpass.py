#!/usr/bin/python
"""Ansible module capital_pgpass: a private pgpass file for psql, pg_dump and pg_restore."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_pgpass
short_description: Write a password into a new private pgpass file for libpq's command-line tools
description:
  - Creates a new directory (0700, a unique name under I(tmpdir)) holding one file, C(pgpass) (0600), whose
    single line C(*:*:*:*:<password>) matches any host, port, database and user, with backslash and colon
    escaped as libpq requires. Point C(PGPASSFILE) at RV(file) so the password never reaches a command line
    or an environment variable, and remove RV(path) when done (the playbooks do, with the connection
    role's C(cleanup) tasks).
  - One module call for what C(tempfile) plus C(copy) did in two (three module start-ups, BENCHMARKS.md).
  - The password is a C(no_log) option, so Ansible masks it in every result, log and C(-vvv) output.
  - Always reports C(changed=false), as a per-run credential file is not a change to the managed system.
version_added: 0.2.0
author: prestamos capital-tracking project (@prestamos)
options:
  password:
    description: The password to write (a C(no_log) option of the argument spec).
    type: str
    required: true
  tmpdir:
    description: Where the private directory is created (default the system temp directory).
    type: path
  prefix:
    description: Prefix of the private directory's name.
    type: str
    default: capital-conn-
attributes:
  check_mode:
    support: full
    description: Writes the file in check mode too, since the read-only checks of a --check run need it.
  diff_mode:
    support: none
    description: Never shows the file's content.
"""

EXAMPLES = r"""
- name: connection | Write the password file
  prestamos.capital.capital_pgpass:
    password: "{{ capital_conn.password }}"
  register: __capital_connection_tmp
  no_log: true
"""

RETURN = r"""
path:
  description: The private directory (remove it when done).
  returned: success
  type: str
file:
  description: The pgpass file, for C(PGPASSFILE).
  returned: success
  type: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.prestamos.capital.plugins.module_utils.dburl import pgpass_line


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "password": {"type": "str", "required": True, "no_log": True},
            "tmpdir": {"type": "path"},
            "prefix": {"type": "str", "default": "capital-conn-"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:  # the one pgpass writer (module_utils/dburl.py), shared with the CLI
        line = pgpass_line(p["password"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    directory = tempfile.mkdtemp(prefix=p["prefix"], dir=p["tmpdir"])  # 0700
    path = os.path.join(directory, "pgpass")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(line)
    except OSError as exc:
        module.fail_json(msg=f"Could not write the password file in {directory}: {exc}", path=directory)
    module.exit_json(changed=False, path=directory, file=path)


if __name__ == "__main__":
    main()
