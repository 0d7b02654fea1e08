#!/usr/bin/python
"""Ansible module capital_rollback: the reverse migration of the capital-tracking migration."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_rollback
short_description: Remove the prestamos capital-tracking migration, keeping every legacy row
description:
  - Runs C(files/sql/rollback_capital_tracking.sql) unit by unit. The triggers, constraints, indexes and added
    columns of the legacy tables, the ledger, the shadow tables, the bookkeeping tables and the functions go.
    Every row of the legacy tables stays, including rows written after the migration.
  - Works from any state the migration can leave (partial, applied, an earlier partial rollback); with
    nothing of the migration left it changes nothing (C(changed=false)).
  - Holds the migration's advisory lock for its whole run and fails at once, naming the holder, when a
    migration or another rollback holds it.
  - Refuses, changing nothing, when the shadow tables hold rows that no legacy row stands behind, unless
    C(force) is set (the rollback role exports them first).
  - Each statement that locks a legacy table runs under C(lock_timeout) and is retried with backoff on
    SQLSTATE 55P03/40P01 only.
version_added: 0.1.0
author: prestamos capital-tracking project
extends_documentation_fragment:
  - prestamos.capital.connection
options:
  sql:
    description: Text of C(rollback_capital_tracking.sql) (the module runs on the target host).
    type: str
    required: true
  force:
    description: Drop shadow rows that exist nowhere else.
    type: bool
    default: false
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
    sql: "{{ lookup('ansible.builtin.file', 'files/sql/rollback_capital_tracking.sql') }}"
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
  description: The objects found (and removed), each C(kind) and C(name).
  returned: always
  type: list
  elements: dict
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
from ansible_collections.prestamos.capital.plugins.module_utils.migration import Options
from ansible_collections.prestamos.capital.plugins.module_utils.pg import connection_argument_spec
from ansible_collections.prestamos.capital.plugins.module_utils.rollback import Reverter


def argument_spec() -> dict[str, Any]:
    """The rollback's options plus the shared connection options."""
    return {
        "sql": {"type": "str", "required": True},
        "force": {"type": "bool", "default": False},
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
    options = Options(lock_timeout=p["lock_timeout"], lock_retries=p["lock_retries"], lock_backoff=p["lock_backoff"])

    def error_details(details: dict[str, Any]) -> dict[str, Any]:
        return {**details, "changed": bool(details.pop("changed", False))}

    run_module(
        module,
        "capital_rollback",
        lambda conn: Reverter(conn, p["sql"], options, force=p["force"]),
        lambda reverter: reverter.run(check_mode=module.check_mode, inspect_only=p["inspect_only"]),
        error_details,
    )


if __name__ == "__main__":
    main()
