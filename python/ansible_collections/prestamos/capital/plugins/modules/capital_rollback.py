#!/usr/bin/python
"""Ansible module capital_rollback: the reverse migration of the capital-tracking migration."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_rollback
short_description: Remove the prestamos capital-tracking migration, keeping every legacy row
description:
  - Drops exactly the objects the record of provenance (table C(capital_migration_objects)) holds, each found
    by its OID, never by name. Every row of the legacy tables stays, including rows written after the
    migration; an object not in the record (a DBA's own C(capital_*) function, the application's tables) is
    never touched.
  - A database migrated before the record existed is adopted first, object by object, where each matches
    what the SQL files create (the C(inventory)); objects that do not match are left alone and named.
  - Refuses before the first drop, naming each, an object whose definition changed since it was recorded or
    on which an object outside the record depends (a view over the ledger, a foreign key into a shadow
    table), unless C(force_changed) is set.
  - Before dropping tables that hold rows it locks them, writes every row to a new 0600 file in
    C(export_dir) (COPY blocks), checks the file against the row counts and writes a manifest (sha256, row
    counts), then drops them in the same transaction.
  - Works from any state the migration can leave (partial, applied, an earlier partial rollback); with
    nothing of the migration left it changes nothing (C(changed=false)).
  - Holds the migration's advisory lock for its whole run and fails at once, naming the holder, when a
    migration or another rollback holds it.
  - Refuses, changing nothing, when the shadow tables hold rows that no legacy row stands behind, unless
    C(force) is set (the rollback role exports them first).
  - Each statement that locks a legacy table runs under C(lock_timeout) and is retried with backoff on
    SQLSTATE 55P03/40P01 only.
version_added: 0.1.0
author: prestamos capital-tracking project (@prestamos)
extends_documentation_fragment:
  - prestamos.capital.connection
options:
  inventory:
    description: Text of C(files/sql/migration_objects.json), the objects the migration creates.
    type: str
    required: true
  force:
    description: Drop shadow rows that exist nowhere else (they are exported first).
    type: bool
    default: false
  force_changed:
    description:
      - Drop recorded objects even when their definition changed since they were recorded or objects outside
        the record depend on them; those dependents are dropped too (CASCADE).
    type: bool
    default: false
  export_dir:
    description: Directory for the export of the dropped tables' rows (created 0700 when missing).
    type: path
  export_prefix:
    description: Middle of the export's file name, C(rollback-export-<prefix>-<UTC time>.sql).
    type: str
    default: rollback
  restored:
    description:
      - The database was just restored from a verified backup of itself, the record with it; recorded objects
        are then recognised by their recorded definition, as pg_restore gave them new OIDs.
    type: bool
    default: false
  run_id:
    description: Names this run in the record (random when empty).
    type: str
    default: ""
  inspect_only:
    description: Only report the state, the objects present and the shadow-only rows; change nothing.
    type: bool
    default: false
  lock_timeout:
    description: lock_timeout of each statement (C(2s), C(500ms), or milliseconds).
    type: str
    default: 2s
  lock_retries:
    description: Retries of a statement that hit lock_timeout or a deadlock.
    type: int
    default: 5
  lock_backoff:
    description: First backoff in seconds; doubles each retry.
    type: float
    default: 0.5
attributes:
  check_mode:
    support: full
    description: Reports what would be removed; executes nothing but catalog reads.
"""

EXAMPLES = r"""
- name: rollback | Remove everything the migration added
  prestamos.capital.capital_rollback:
    inventory: "{{ lookup('ansible.builtin.file', 'files/sql/migration_objects.json') }}"
    export_dir: /var/backups/prestamos-capital
    lock_timeout: 2s
"""

RETURN = r"""
state_before:
  description: not_applied, partial or applied.
  returned: always
  type: str
state_after:
  description: not_applied after a rollback.
  returned: success
  type: str
removed:
  description: The objects the rollback drops (or would drop), each C(kind) and C(name).
  returned: always
  type: list
  elements: dict
rows:
  description: Rows of each table it drops (exported first).
  returned: always
  type: dict
blocked_by:
  description: Changed objects and outside dependents that stop the rollback unless C(force_changed).
  returned: always
  type: list
  elements: str
left_alone:
  description: Objects with a name the migration uses that are not its own; never touched.
  returned: always
  type: list
  elements: str
export:
  description: The export file (C(path), C(manifest), C(sha256), C(row_counts)); empty when no rows.
  returned: success
  type: dict
shadow_only:
  description: Counts of shadow rows no legacy row stands behind (C(loans), C(payments)).
  returned: always
  type: dict
lock_retries:
  description: Statements retried after a lock timeout or deadlock.
  returned: always
  type: int
refused:
  description: True when shadow-only rows stopped the rollback.
  returned: on refusal
  type: bool
lock_held:
  description: True when another run holds the advisory lock.
  returned: on lock failure
  type: bool
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.prestamos.capital.plugins.module_utils.entry import run_module
from ansible_collections.prestamos.capital.plugins.module_utils.pg import connection_argument_spec
from ansible_collections.prestamos.capital.plugins.module_utils.rollback import Reverter
from ansible_collections.prestamos.capital.plugins.module_utils.unitrunner import Options


def argument_spec() -> dict[str, Any]:
    """The rollback's options plus the shared connection options."""
    return {
        "inventory": {"type": "str", "required": True},
        "force": {"type": "bool", "default": False},
        "force_changed": {"type": "bool", "default": False},
        "export_dir": {"type": "path"},
        "export_prefix": {"type": "str", "default": "rollback"},
        "run_id": {"type": "str", "default": ""},
        "restored": {"type": "bool", "default": False},
        "inspect_only": {"type": "bool", "default": False},
        "lock_timeout": {"type": "str", "default": "2s"},
        "lock_retries": {"type": "int", "default": 5},
        "lock_backoff": {"type": "float", "default": 0.5},
        **connection_argument_spec(),
    }


def main() -> None:
    """Thin entry point: Reverter does the work, this adapts parameters and errors."""
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    options = Options(lock_timeout=p["lock_timeout"], lock_retries=p["lock_retries"], lock_backoff=p["lock_backoff"],
                      run_id=p["run_id"])

    def error_details(details: dict[str, Any]) -> dict[str, Any]:
        return {**details, "changed": bool(details.pop("changed", False))}

    run_module(
        module,
        "capital_rollback",
        lambda conn: Reverter(conn, p["inventory"], options, force=p["force"], force_changed=p["force_changed"],
                              export_dir=p["export_dir"], export_prefix=p["export_prefix"],
                              restored=p["restored"]),
        lambda reverter: reverter.run(check_mode=module.check_mode, inspect_only=p["inspect_only"]),
        error_details,
    )


if __name__ == "__main__":
    main()
