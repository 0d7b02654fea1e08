#!/usr/bin/python
"""Ansible module capital_migrate: apply the capital-tracking migration (expand, backfill, enforce, record)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_migrate
short_description: Apply the prestamos capital-tracking migration, resumable and lock-safe
description:
  - Applies the SQL of C(files/sql) (C(add_capital_tracking.sql) and the pieces its C(\\ir) lines name, in
    that order) to a baseline prestamos database, in four phases; expand (new tables, columns, functions,
    triggers), backfill (keyset batches, one transaction each, resumable), enforce (business rules), record
    (history row).
  - Holds the session-level advisory lock C(hashtext('prestamos.capital_tracking')) for the whole run and
    fails at once, naming the holder, when another run holds it.
  - A completed migration with the same SQL checksum is a no-op (C(changed=false)); a recorded checksum that
    differs fails with C(drift=true) before anything is touched; a partial run is resumed.
  - Every statement that locks a legacy table runs in its own transaction with C(SET LOCAL lock_timeout) and
    is retried with exponential backoff on SQLSTATE 55P03/40P01 only; other errors fail at once with the
    server's message and the failing file and line.
version_added: 0.1.0
author: prestamos capital-tracking project (@prestamos)
extends_documentation_fragment:
  - prestamos.capital.connection
options:
  sql:
    description:
      - The SQL files by name, as text (the module runs on the target host and cannot read the controller's
        C(files/sql)); must contain C(add_capital_tracking.sql) and every piece it includes.
    type: dict
    required: true
  order:
    description:
      - The pieces in order. Optional; when given it must equal the C(\\ir) lines of C(add_capital_tracking.sql),
        which are the one source of truth.
    type: list
    elements: str
  version:
    description: Version label written to C(capital_migration_history).
    type: str
    default: '1'
  lock_timeout:
    description: C(lock_timeout) of each lock-taking attempt, in milliseconds or like C(2s), C(500ms).
    type: str
    default: 2s
  lock_retries:
    description: How many times an attempt that hit 55P03/40P01 is retried before the run fails.
    type: int
    default: 5
  lock_backoff:
    description: Seconds to wait before the first retry; doubled after every retry, capped by O(lock_backoff_max).
    type: float
    default: 0.5
  lock_backoff_max:
    description: Cap of the wait between retries, in seconds.
    type: float
    default: 30.0
  batch_size:
    description: Rows (or juntas) per backfill batch; each batch is its own transaction.
    type: int
    default: 5000
  statement_timeout:
    description: C(statement_timeout) of each backfill batch (C(0) means none).
    type: str
    default: '0'
  connections:
    description:
      - Sessions running the backfill, 1-16. The four ledger steps (Accion, Multa, Prestamo, PagoPrestamo)
        are independent of each other; C(capital_backfill_step()) gives each session a step no other session
        is in (its progress row locked C(FOR UPDATE SKIP LOCKED)). The loan sweep is shared, each batch locking
        juntas no other session holds. The junta recompute, the expand and the enforce steps run on the first
        session. A session that cannot connect runs nothing.
      - Every batch is still one transaction of one step, with its own progress, limits and retries, so a run
        stopped or killed anywhere resumes as with one session.
    type: int
    default: 1
  connections_while_live:
    description:
      - At most this many backfill sessions when the application is at work on the database as the backfill
        starts, that is another client session (not one named C(capital*)) in a statement or a transaction,
        or in one within the last two seconds (module_utils/live.py). C(0) does not look.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    description: Can run in check_mode and return changed status prediction without modifying target.
    details: In check mode the module reads the state and reports the plan; it executes no DDL and no batch.
  diff_mode:
    support: none
    description: Returns no diff; the result lists the executed statements instead.
notes:
  - Files are run in the order of C(add_capital_tracking.sql); the first digit of a piece's name is its phase
    (1 expand, 2 backfill, 3 enforce).
  - A statement a piece declares batched with the psql meta-command C(\set capital_unit batched) before it
    is not executed (psql runs it, C(CALL capital_backfill_run(...)), a loop in SQL); the module runs that
    loop itself, one C(capital_backfill_step()) call per transaction, so each batch has its own
    O(statement_timeout), lock retries, timing and a stop between batches on SIGINT/SIGTERM.
"""

EXAMPLES = r"""
- name: migrate | Apply the capital-tracking migration
  prestamos.capital.capital_migrate:
    sql: "{{ capital_sql_files }}"
    lock_timeout: 2s
    lock_retries: 5
    batch_size: 5000
  register: capital_migrate_result

- name: migrate | Show the plan only
  prestamos.capital.capital_migrate:
    sql: "{{ capital_sql_files }}"
  check_mode: true
"""

RETURN = r"""
state_before:
  description: not_applied, partial, applied or drifted, before the run.
  returned: always
  type: str
state_after:
  description: The state after the run.
  returned: always
  type: str
sql_sha256:
  description: sha256 of the main script and the pieces, in order.
  returned: always
  type: str
phases:
  description: Per phase (expand, backfill, enforce, record) the seconds, statements and attempts.
  returned: always
  type: list
  elements: dict
statements:
  description: Every executed unit with its file, line, attempts and seconds.
  returned: always
  type: list
  elements: dict
rows_backfilled:
  description: Rows (juntas for Junta/PrestamoNew) handled by the backfill per step, in this run.
  returned: always
  type: dict
lock_retries:
  description: Total retries after lock timeouts or deadlocks.
  returned: always
  type: int
longest_lock_wait_ms:
  description:
    - The longest attempt that gave up waiting for a lock (lock_timeout) or on a deadlock, in milliseconds; 0 when
      every lock was granted at once. For the change record (the run report's evidence).
  returned: success
  type: int
backfill_sessions:
  description: Sessions that ran backfill batches in this run (see O(connections)).
  returned: always
  type: int
application_sessions:
  description: The application's sessions at work when the backfill started (see O(connections_while_live));
    null when it did not look.
  returned: always
  type: int
batches_rerun:
  description:
    - Backfill batches an application write raced (its sync trigger wrote one of the batch's rows after the
      batch's snapshot); each was run again at once with ON CONFLICT DO NOTHING, which skips that row.
  returned: always
  type: int
violations:
  description: Existing rule violations found at enforce (kind, table, count, sample_ids, action).
  returned: always
  type: list
  elements: dict
plan:
  description: In check mode, the pieces, their number of units and of batched units among them.
  returned: check mode
  type: list
  elements: dict
drift:
  description: True when the recorded checksum differs from the SQL's.
  returned: on drift failure
  type: bool
lock_held:
  description: True when another run holds the advisory lock; C(holder) names it.
  returned: on lock failure
  type: bool
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.prestamos.capital.plugins.module_utils.entry import run_module
from ansible_collections.prestamos.capital.plugins.module_utils.migration import APPLICATION_NAME, Migrator, Options
from ansible_collections.prestamos.capital.plugins.module_utils.pg import connect, connection_argument_spec


def argument_spec() -> dict[str, Any]:
    """The migration's options plus the shared connection options."""
    return {
        "sql": {"type": "dict", "required": True},
        "order": {"type": "list", "elements": "str"},
        "version": {"type": "str", "default": "1"},
        "lock_timeout": {"type": "str", "default": "2s"},
        "lock_retries": {"type": "int", "default": 5},
        "lock_backoff": {"type": "float", "default": 0.5},
        "lock_backoff_max": {"type": "float", "default": 30.0},
        "batch_size": {"type": "int", "default": 5000},
        "statement_timeout": {"type": "str", "default": "0"},
        "connections": {"type": "int", "default": 1},
        "connections_while_live": {"type": "int", "default": 0},
        **connection_argument_spec(),
    }


def main() -> None:
    """Thin entry point: Migrator does the work, this adapts parameters and errors."""
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    options = Options(
        version=p["version"],
        lock_timeout=p["lock_timeout"],
        lock_retries=p["lock_retries"],
        lock_backoff=p["lock_backoff"],
        lock_backoff_max=p["lock_backoff_max"],
        batch_size=p["batch_size"],
        statement_timeout=p["statement_timeout"],
        backfill_connections=p["connections"],
        connections_while_live=p["connections_while_live"],
    )

    def error_details(details: dict[str, Any]) -> dict[str, Any]:
        details.setdefault("changed", details.get("state_after") not in (None, details.get("state_before")))
        return details

    run_module(
        module,
        "capital_migrate",
        lambda conn: Migrator(
            conn, {str(k): str(v) for k, v in p["sql"].items()}, options, p["order"],
            connect=lambda: connect(p, APPLICATION_NAME),
        ),
        lambda migrator: migrator.run(check_mode=module.check_mode),
        error_details,
    )


if __name__ == "__main__":
    main()
