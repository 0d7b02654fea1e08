#!/usr/bin/python
"""Ansible module capital_snapshot_dump: pg_dump and read-only probes in one exported snapshot, side by side."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_snapshot_dump
short_description: Dump the database with pg_dump and run read-only probes in the same snapshot at the same time
description:
  - Opens a C(READ ONLY), C(REPEATABLE READ) transaction, locks O(lock_tables) C(ACCESS SHARE) (before the
    snapshot is taken, so no DDL on them falls between the snapshot and C(pg_dump)'s own locks), exports its
    snapshot with C(pg_export_snapshot()) and starts O(dump_argv) with C(--snapshot=<id>) added; while
    C(pg_dump) runs, the same transaction runs every probe of O(probes) (as M(prestamos.capital.capital_probe)
    does). It waits for C(pg_dump) with the snapshot still exported, then rolls back.
  - So the probes' rows describe exactly the data the dump holds (RV(snapshot), RV(snapshot_time)), and the
    two reads of the same rows overlap instead of following each other (BENCHMARKS.md).
  - O(dump_argv) is run as given (an argv, no shell parsing of it); the password reaches C(pg_dump) only through
    the task's environment (C(PGPASSFILE)), never an argument.
  - A C(pg_dump) that exits non-zero fails the task with its exit code RV(rc) and RV(stderr), and O(partial) is
    removed; so does a probe the server refuses (the dump is stopped first).
  - In check mode nothing is dumped; the probes run alone in the snapshot (RV(dumped) is false).
version_added: 0.9.0
author: prestamos capital-tracking project (@prestamos)
options:
  dump_argv:
    description:
      - The dump command, ending in C(pg_dump) and its options (C(--file=) O(partial) among them); the module
        appends C(--snapshot=<id>).
    type: list
    elements: str
    required: true
  partial:
    description: The file or directory C(pg_dump) writes; removed when the dump or a probe fails.
    type: path
    required: true
  probes:
    description: Probe name to SQL text (one statement each), run in the order given, in the exported snapshot.
    type: dict
    default: {}
  params:
    description: Named parameters offered to every probe; a probe uses those it names as C(%(name\)s).
    type: dict
    default: {}
  settings:
    description: Settings for the probes' transaction only (C(set_config(name, value, true))).
    type: dict
    default: {}
  optional:
    description: Probes that may be refused; such a probe gives C(null) and its error under C(_errors) in RV(rows).
    type: list
    elements: str
    default: []
  connections:
    description:
      - Sessions that read O(probes) at once, the one that exported the snapshot included; each other one
        imports the snapshot (C(SET TRANSACTION SNAPSHOT)) and takes the next probe when it is free, so list
        the costly probes first. All of them read the same data.
      - A session that cannot be opened (C(max_connections) reached) takes no probe; the others read them all.
    type: int
    default: 1
  connections_while_live:
    description:
      - At most this many sessions when the application is at work on the database as the module starts, that is
        another client session (not one named C(capital*)) in a statement or a transaction, or in one within
        the last two seconds (module_utils/live.py). C(0) does not look.
    type: int
    default: 0
  lock_tables:
    description: Tables locked C(ACCESS SHARE) before the snapshot is taken.
    type: list
    elements: str
    default: []
  lock_timeout:
    description: Seconds to wait for the locks of O(lock_tables) (the dump's C(--lock-wait-timeout)).
    type: int
    default: 60
extends_documentation_fragment:
  - prestamos.capital.connection
attributes:
  check_mode:
    support: partial
    description: Check mode runs the read-only probes and dumps nothing.
    details: In check mode the probes run alone in their own snapshot; no pg_dump starts and no file is written.
  diff_mode:
    support: none
    description: Writes a dump file only; there is nothing to show.
"""

EXAMPLES = r"""
- name: backup | Dump the database while preflight reads the legacy data in the same snapshot
  prestamos.capital.capital_snapshot_dump:
    dump_argv: [pg_dump, --format=custom, --no-password, --file=/var/backups/capital/db.dump.1.partial]
    partial: /var/backups/capital/db.dump.1.partial
    probes:
      counts: "{{ lookup('ansible.builtin.file', 'files/sql/probes/counts.sql') }}"
    lock_tables: [Junta, Accion]
  environment: "{{ capital_conn_env }}"
  register: dumped
"""

RETURN = r"""
rows:
  description: Each probe's rows, as dicts by column name, under the probe's name.
  returned: success
  type: dict
  sample: {"counts": [{"table": "Accion", "rows": 411000}]}
snapshot:
  description: The exported snapshot both read (C(pg_export_snapshot())).
  returned: always
  type: str
  sample: 00000003-0000001B-1
snapshot_time:
  description: The time of the snapshot's transaction (UTC, ISO 8601).
  returned: always
  type: str
  sample: "2026-12-01T20:44:20.123456Z"
dumped:
  description: Whether C(pg_dump) ran (false in check mode).
  returned: always
  type: bool
rc:
  description: C(pg_dump)'s exit code.
  returned: when the dump ran
  type: int
stderr:
  description: C(pg_dump)'s standard error.
  returned: when the dump ran
  type: str
lanes:
  description: Sessions that read the probes (at most O(connections)).
  returned: when the dump ran
  type: int
  sample: 2
application_sessions:
  description: The application's sessions at work when the module started (see O(connections_while_live));
    null when it did not look.
  returned: when the dump ran
  type: int
  sample: 4
seconds:
  description: Wall time of the whole call, of the dump and of the probes (they overlap).
  returned: always
  type: dict
  sample: {"total": 8.1, "dump": 7.9, "probes": 6.2}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.prestamos.capital.plugins.module_utils import live
from ansible_collections.prestamos.capital.plugins.module_utils.pg import (
    HAS_PSYCOPG2,
    PSYCOPG2_IMPORT_ERROR,
    connect,
    connection_argument_spec,
)
from ansible_collections.prestamos.capital.plugins.module_utils.probe import ProbeError, run_probes
from ansible_collections.prestamos.capital.plugins.module_utils.snapshot_dump import snapshot_dump


def main() -> None:
    """Connect, export a snapshot, dump and probe in it side by side, return both."""
    module = AnsibleModule(
        argument_spec={
            **connection_argument_spec(),
            "dump_argv": {"type": "list", "elements": "str", "required": True},
            "partial": {"type": "path", "required": True},
            "probes": {"type": "dict", "default": {}},
            "params": {"type": "dict", "default": {}},
            "settings": {"type": "dict", "default": {}},
            "optional": {"type": "list", "elements": "str", "default": []},
            "connections": {"type": "int", "default": 1},
            "connections_while_live": {"type": "int", "default": 0},
            "lock_tables": {"type": "list", "elements": "str", "default": []},
            "lock_timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)
    p = module.params
    probes = {str(k): str(v) for k, v in p["probes"].items()}
    try:
        conn: Any = connect(p, "capital_snapshot_dump", autocommit=False)
    except Exception as exc:  # psycopg2.Error: libpq's message names host, port and user, never the password
        module.fail_json(msg=f"unable to connect to database: {str(exc).strip()}")
    try:
        if module.check_mode:
            rows = run_probes(conn, probes, p["params"], p["settings"], None, p["optional"])
            module.exit_json(changed=False, dumped=False, rows=rows, snapshot="", snapshot_time="",
                             seconds={})
        if p["connections"] < 1:
            module.fail_json(msg=f"connections must be 1 or more, got {p['connections']}", dumped=False)
        sessions, seen = live.sessions(conn, p["connections"], p["connections_while_live"])
        conn.rollback()  # the snapshot's transaction must be the first one
        done = snapshot_dump(conn, p["dump_argv"], p["partial"], probes, p["params"], p["settings"],
                             p["optional"], p["lock_tables"], p["lock_timeout"],
                             connect=lambda: connect(p, "capital_snapshot_dump", autocommit=False),
                             connections=sessions)
    except ProbeError as exc:
        module.fail_json(msg=str(exc), probe=exc.probe, sqlstate=exc.sqlstate, dumped=False)
    except Exception as exc:  # psycopg2.Error (a lock not granted in time), OSError (pg_dump not found)
        module.fail_json(msg=str(exc).strip(), dumped=False)
    finally:
        conn.close()
    result = {"dumped": True, "rc": done.rc, "stderr": done.stderr, "rows": done.rows, "lanes": done.lanes,
              "application_sessions": seen,
              "snapshot": done.snapshot, "snapshot_time": done.snapshot_time,
              "seconds": {"total": done.seconds, "dump": done.dump_seconds, "probes": done.probe_seconds}}
    if done.rc != 0:
        module.fail_json(msg=f"pg_dump exited {done.rc}: {done.stderr.strip()}", **result)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
