# Copyright: prestamos capital-tracking project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Molecule-only fault injection: run a SQL file against the database when a named task starts."""
# Ansible plugins put DOCUMENTATION before the imports (ansible-doc reads it), hence E402.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
name: capital_fault
type: notification
short_description: Inject a fault into a run by executing SQL when a named task starts
description:
  - Test support for the Molecule rollback scenario, never for operators' runs.
  - When the task named in the fault spec is about to start, runs the spec's SQL file with
    C(psql -X -v ON_ERROR_STOP=1 --single-transaction) against the spec's database, before the
    task runs (the linear strategy waits for callbacks), then writes C(<spec>.fired) with psql's output.
    So a fault lands at an exact point of the playbook, e.g. between the migrate and verify stages.
  - A failed injection is written to C(<spec>.fired) too (C(rc) non-zero); the scenario asserts on it.
requirements:
  - enable with E(ANSIBLE_CALLBACKS_ENABLED) and E(ANSIBLE_CALLBACK_PLUGINS)
options: {}
notes:
  - "The spec is a 0600 JSON file named by E(CAPITAL_FAULT_SPEC): C(task) (exact task name),
    C(sql_file), C(pgenv) (libpq environment, password included: hence the file, not the command line)."
"""

import json
import os
import subprocess
from typing import Any

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Fires once, at the first task whose name equals the spec's."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "capital_fault"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._spec_path = os.environ.get("CAPITAL_FAULT_SPEC", "")
        self._spec: dict[str, Any] = {}
        if self._spec_path:
            with open(self._spec_path, encoding="utf-8") as handle:
                self._spec = json.load(handle)
        self._fired = False

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        if self._fired or not self._spec or task.get_name() != self._spec.get("task"):
            return
        self._fired = True
        env = {**os.environ, **{str(k): str(v) for k, v in self._spec.get("pgenv", {}).items()}}
        argv = [
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-f",
            str(self._spec["sql_file"]),
        ]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        record = {"task": task.get_name(), "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        fd = os.open(self._spec_path + ".fired", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        self._display.display(
            f"capital_fault: injected {self._spec['sql_file']} before {task.get_name()!r} (psql rc={done.returncode})"
        )
