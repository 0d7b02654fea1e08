"""The one entry point of the prestamos.capital modules that change the database (capital_migrate,
capital_rollback): connect, stop between statements on SIGINT/SIGTERM, run, and turn every outcome into
exit_json or fail_json. Never a silent success, never a half-closed connection."""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import missing_required_lib
from ansible_collections.prestamos.capital.plugins.module_utils.errors import MigrationError
from ansible_collections.prestamos.capital.plugins.module_utils.pg import (
    HAS_PSYCOPG2,
    PSYCOPG2_IMPORT_ERROR,
    connect,
)
from ansible_collections.prestamos.capital.plugins.module_utils.unitrunner import UnitRunner


def stop_between_statements(runner: UnitRunner) -> None:
    """On SIGINT/SIGTERM finish the statement or batch in flight, then stop and record why.

    ansible-playbook passes SIGINT (Ctrl-C) and SIGTERM on to the module's process group and then exits
    without waiting for the module. Python's default would cut the run at an arbitrary point (SIGTERM
    kills it mid-statement); with this handler the run stops at the next boundary, says how to resume,
    and closes its connection.
    """

    def handler(signum: int, _frame: Any) -> None:
        runner.request_stop(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def run_module(
    module: Any,
    name: str,
    build: Callable[[Any], UnitRunner],
    run: Callable[[Any], dict[str, Any]],
    error_details: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Connect, ``build(conn)`` the runner, ``run(runner)`` it; report its result or its error.

    ``error_details`` turns a MigrationError's details into fail_json's keyword arguments (each module
    decides what ``changed`` means after a failure).
    """
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)
    conn = None
    try:
        try:
            conn = connect(module.params, "capital-migrate")
        except Exception as exc:
            module.fail_json(msg=f"cannot connect to the database: {str(exc).strip()}", changed=False)
        runner = build(conn)
        stop_between_statements(runner)
        result = run(runner)
    except MigrationError as exc:
        module.fail_json(msg=exc.msg, **error_details(dict(exc.details)))
    except Exception as exc:  # anything unexpected: report it, never a silent success
        module.fail_json(msg=f"{name} failed unexpectedly: {exc}", exception=traceback.format_exc())
    finally:
        if conn is not None and not conn.closed:
            conn.close()
    module.exit_json(**result)
