#!/usr/bin/python
"""Ansible module capital_probe: named read-only SQL probes in one snapshot, results by name."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_probe
short_description: Run named read-only SQL probes in one snapshot and return their rows by name
description:
  - Runs every probe of O(probes) - a name and its SQL, which the roles read from the project's
    C(files/sql/probes/) and C(files/sql/guide/) - in one C(READ ONLY), C(REPEATABLE READ) transaction, so
    all of them describe one state of the database while the application writes. The transaction is
    rolled back.
  - Returns each probe's rows under its name (RV(rows)), so no caller zips a list of results back to
    names by position.
  - A connection that fails fails the task with a message starting C(unable to connect to database), as
    community.postgresql's modules do, so a caller can record it as a finding; a probe the server refuses
    fails the task naming the probe.
  - NUMERIC values come back as their exact strings (never floats), timestamps as ISO 8601 strings.
version_added: 0.4.0
author: prestamos capital-tracking project (@prestamos)
options:
  probes:
    description:
      - Probe name to SQL text (one statement each), run in the order given.
    type: dict
    default: {}
  params:
    description:
      - Named parameters offered to every probe; a probe uses those it names as C(%(name\)s).
    type: dict
    default: {}
  settings:
    description:
      - Settings for the transaction only (C(set_config(name, value, true))), such as C(jit) and C(work_mem)
        for a pass over many rows.
    type: dict
    default: {}
  optional:
    description:
      - Probes that may be refused (a function an administrator revoked). Such a probe gives C(null), its
        error under C(_errors) in RV(rows), and the others still run. Any other refused probe fails the task.
    type: list
    elements: str
    default: []
  count_rows:
    description:
      - Tables whose exact row count to read in the same snapshot, returned as the probe C(row_counts)
        (C(name), C(rows)). Each name is quoted as an identifier, so a name read from a manifest is never SQL.
    type: list
    elements: str
    default: []
  snapshot:
    description:
      - A snapshot exported by another session (C(pg_export_snapshot())) to read in, so that the probes see
        exactly the data that session sees.
    type: str
extends_documentation_fragment:
  - prestamos.capital.connection
attributes:
  check_mode:
    support: full
    description: Read-only in every mode; check mode runs the same read-only probes.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to show.
"""

EXAMPLES = r"""
- name: preflight | Read the catalog in one snapshot
  prestamos.capital.capital_probe:
    probes:
      db_size: "{{ lookup('ansible.builtin.file', 'files/sql/probes/db_size.sql') }}"
    params:
      tables: Junta,Prestamo
  register: probe
"""

RETURN = r"""
rows:
  description: Each probe's rows, as dicts by column name, under the probe's name.
  returned: success
  type: dict
  sample: {"db_size": [{"bytes": 8912896, "server_major": 15}]}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.prestamos.capital.plugins.module_utils.pg import (
    HAS_PSYCOPG2,
    PSYCOPG2_IMPORT_ERROR,
    connect,
    connection_argument_spec,
)
from ansible_collections.prestamos.capital.plugins.module_utils.probe import ProbeError, run_probes


def main() -> None:
    """Connect, run the probes in one read-only snapshot, return the rows by name."""
    module = AnsibleModule(
        argument_spec={
            **connection_argument_spec(),
            "probes": {"type": "dict", "default": {}},
            "params": {"type": "dict", "default": {}},
            "settings": {"type": "dict", "default": {}},
            "snapshot": {"type": "str"},
            "optional": {"type": "list", "elements": "str", "default": []},
            "count_rows": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)
    try:
        conn: Any = connect(module.params, "capital_probe", autocommit=False)
    except Exception as exc:  # psycopg2.Error: libpq's message names host, port and user, never the password
        module.fail_json(msg=f"unable to connect to database: {str(exc).strip()}")
    try:
        results = run_probes(conn, {str(k): str(v) for k, v in module.params["probes"].items()},
                             module.params["params"], module.params["settings"], module.params["snapshot"],
                             module.params["optional"], module.params["count_rows"])
    except ProbeError as exc:
        module.fail_json(msg=str(exc), probe=exc.probe, sqlstate=exc.sqlstate)
    finally:
        conn.close()
    module.exit_json(changed=False, rows=results)


if __name__ == "__main__":
    main()
