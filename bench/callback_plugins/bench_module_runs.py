"""bench only: counts the module runs of a play (bench.footprint's noop control runs as many).

A task whose action runs on the controller alone (set_fact, assert, include_*, ...) starts no module; every
other task result that was not skipped is one module run on the host, a loop's items one each. The count is
written to the file named by BENCH_MODULE_RUNS when the play ends."""

from __future__ import annotations

import os
from typing import Any

from ansible.plugins.callback import CallbackBase

CONTROLLER_ONLY = {
    "set_fact", "assert", "debug", "fail", "meta", "include_tasks", "import_tasks", "include_role", "import_role",
    "include_vars", "add_host", "group_by", "set_stats", "pause", "validate_argument_spec", "end_play", "noop",
}


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_module_runs"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def _count(self, result: Any) -> None:
        if result._task.action.rsplit(".", 1)[-1] in CONTROLLER_ONLY:
            return
        items = result._result.get("results")
        if isinstance(items, list):
            self.runs += sum(1 for item in items if not item.get("skipped"))
        elif not result._result.get("skipped"):
            self.runs += 1

    def v2_runner_on_ok(self, result: Any) -> None:
        self._count(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._count(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        target = os.environ.get("BENCH_MODULE_RUNS")
        if target:
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(str(self.runs))
