# Copyright: prestamos capital-tracking project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback that writes the capital migration run report (JSON + Markdown) from Ansible's events."""

from __future__ import annotations

DOCUMENTATION = r"""
name: capital_report
type: notification
short_description: Write the capital migration run report (JSON and Markdown)
description:
  - Builds the run report of a capital-tracking migration from Ansible's events, for plain
    C(ansible-playbook) runs, AWX and the C(capital-migrate) CLI alike.
  - The stage timeline comes from the role of each task (roles preflight, backup, migrate, verify and
    rollback are the stages; the run protocol and the connection role are not); failures carry their messages;
    the data of the stages is the merged C(capital_report) custom stats (C(ansible.builtin.set_stats)).
  - Writes C(<report_dir>/<UTC timestamp>-<env>-<run id>.json) and C(.md), mode 0600, with every
    secret redacted (values under keys like password/secret/passwd/PGPASSWORD, and the literal values
    of PGPASSWORD, DATABASE_URL's password, the passwords in PGPASSFILE and C(capital_db_password)).
  - When the play sets C(capital_notify_url) (optional C(capital_notify_headers), a dict, for example an
    Authorization header from a vault or an AWX credential), POSTs one JSON notice after writing the report -
    run id, playbook, environment, databases, outcome, failed stage, a one-line cause, durations, the report's
    paths (plugin_utils/notify.py). A receiver that is down, slow (5 s) or answers an error only warns; the
    run's outcome and exit code stand. The URL and the header values are redacted like passwords.
requirements:
  - enable in ansible.cfg (C(callbacks_enabled = prestamos.capital.capital_report)) or with
    E(ANSIBLE_CALLBACKS_ENABLED)
options:
  report_dir:
    description:
      - Directory for the reports (created 0700 if missing).
      - The variable C(capital_report_dir) (inventory, extra var or set_stats) wins when present.
    type: path
    default: ./reports
    env:
      - name: CAPITAL_REPORT_DIR
    ini:
      - section: capital_report
        key: report_dir
  run_id:
    description: Identifier of the run, part of the file names; a random one when unset.
    type: str
    env:
      - name: CAPITAL_RUN_ID
    ini:
      - section: capital_report
        key: run_id
  index_file:
    description:
      - When set, the paths of the written report are also written to this file as JSON (keys
        C(json) and C(markdown)), so an orchestrator such as C(capital-migrate) finds them.
    type: path
    env:
      - name: CAPITAL_REPORT_INDEX
"""

import json
import os
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from ansible.plugins.callback import CallbackBase
from ansible_collections.prestamos.capital.plugins.plugin_utils.notify import build_notice, send
from ansible_collections.prestamos.capital.plugins.plugin_utils.report import (
    REPORT_FORMAT,
    database_entry,
    deep_merge,
    evidence,
    fleet_totals,
    redact,
    render_markdown,
    secret_literals,
    stage_of_role,
    worst_outcome,
    write_private,
)

# Variables read from the play (templated) once per play: where to write, what to call the run.
_PLAY_VARS = ("capital_report_dir", "capital_env", "capital_db_password", "capital_notify_url")
# Who approved and launched the run, for the report's evidence: the operator's own variables, and the extra
# variables AWX gives every job (user, job and workflow job ids).
_APPROVAL_VARS = {"change_ticket": "capital_change_ticket", "approved_by": "capital_approved_by",
                  "launched_by": "awx_user_name", "awx_job_id": "awx_job_id",
                  "awx_workflow_job_id": "awx_workflow_job_id"}


def _task_stage(task: Any) -> str | None:
    """The stage of a task: its role's name when that role is a stage (plugin_utils.report.stage_of_role)."""
    role = getattr(task, "_role", None)
    return stage_of_role(role.get_name() if role is not None else None)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if moment else None


class CallbackModule(CallbackBase):  # type: ignore[misc]  # ansible ships no type information
    """Collects the stage timeline and the stages' data; writes the report when the playbook ends."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "prestamos.capital.capital_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display: Any = None) -> None:
        super().__init__(display=display)
        self._started = _now()
        self._playbook = ""
        self._stages: dict[str, dict[str, Any]] = {}
        self._failures: list[dict[str, Any]] = []
        self._warnings: list[str] = []
        self._vars: dict[str, Any] = {}
        self._notify_headers: dict[str, str] = {}
        self._written: list[str] = []
        # The fleet: every host of the play (inventory order, --limit applied), the hosts of each wave (one
        # play start per serial batch), each host's own capital_report stats and its first and last event.
        self._play_hosts: list[str] = []
        self._waves: list[list[str]] = []
        self._host_data: dict[str, dict[str, Any]] = {}
        self._host_times: dict[str, list[datetime]] = {}
        self._host_failure: dict[str, str] = {}

    # Every hook funnels into _event(kind, ...), like community.general.log_plays.
    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._event("playbook_start", playbook=playbook)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._event("play_start", play=play)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._event("task_start", task=task)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._event("task_start", task=task)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._event("ok", result=result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._event("ignored" if ignore_errors else "failed", result=result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._event("unreachable", result=result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._event("skipped", result=result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._event("stats", stats=stats)

    # ------------------------------------------------------------------------------------ internals

    def _event(self, kind: str, **info: Any) -> None:
        """Record one event; never let a report problem break the migration run itself."""
        try:
            getattr(self, f"_on_{kind}")(**info)
        except Exception as exc:
            self._display.warning(f"capital_report: could not record {kind}: {type(exc).__name__}: {exc}")

    def _on_playbook_start(self, playbook: Any) -> None:
        self._playbook = os.path.basename(getattr(playbook, "_file_name", "") or "")

    def _on_play_start(self, play: Any) -> None:
        manager = play.get_variable_manager()
        loader = getattr(play, "_loader", None)
        hosts: list[Any] = []
        inventory = getattr(manager, "_inventory", None)
        if inventory is not None:
            # Ansible restricts the inventory to the serial batch before each start of the play: one wave.
            hosts = inventory.get_hosts(play.hosts) or []
            self._waves.append([host.get_name() for host in hosts])
            for host in inventory.get_hosts(play.hosts, ignore_restrictions=True) or []:
                if host.get_name() not in self._play_hosts:
                    self._play_hosts.append(host.get_name())
        variables = manager.get_vars(play=play, host=hosts[0] if hosts else None)
        from ansible.template import Templar

        templar = Templar(loader=loader, variables=variables)
        for name in (*_PLAY_VARS, *_APPROVAL_VARS.values()):
            if name in variables:
                try:
                    value = templar.template(variables[name])
                except Exception:  # noqa: S112 - an unresolvable variable is simply unknown to the report
                    continue
                if value not in (None, ""):
                    self._vars[name] = str(value)
        if "capital_notify_headers" in variables:
            try:
                headers = templar.template(variables["capital_notify_headers"])
            except Exception:  # a header that cannot be read is left out, quoting nothing of it
                headers = None
            if isinstance(headers, dict):
                self._notify_headers = {str(k): str(v) for k, v in headers.items()}

    def _on_task_start(self, task: Any) -> None:
        stage = _task_stage(task)
        if stage is None:
            return
        now = _now()
        entry = self._stages.setdefault(
            stage, {"name": stage, "started": now, "finished": now, "outcome": "ok", "tasks": 0}
        )
        entry["finished"] = now
        entry["tasks"] += 1

    def _result_stage(self, result: Any) -> str | None:
        return _task_stage(result._task)

    def _touch(self, result: Any) -> str | None:
        times = self._host_times.setdefault(result._host.get_name(), [_now(), _now()])
        times[1] = _now()
        stage = self._result_stage(result)
        if stage in self._stages:
            self._stages[stage]["finished"] = _now()
        return stage

    def _on_ok(self, result: Any) -> None:
        self._touch(result)
        self._collect_warnings(result)
        self._host_stats(result)

    def _host_stats(self, result: Any) -> None:
        """Keep each host's own set_stats data: the merged custom stats mix a fleet's databases together."""
        res = result._result if isinstance(result._result, dict) else {}
        stats = res.get("ansible_stats")
        if not isinstance(stats, dict) or not isinstance(stats.get("data"), dict):
            return
        mine = self._host_data.setdefault(result._host.get_name(), {})
        if stats.get("aggregate", True):
            deep_merge(mine, stats["data"])
        else:
            mine.update(json.loads(json.dumps(stats["data"], default=str)))

    def _on_skipped(self, result: Any) -> None:
        self._touch(result)

    def _on_ignored(self, result: Any) -> None:
        self._touch(result)
        self._collect_warnings(result)

    def _on_failed(self, result: Any) -> None:
        stage = self._touch(result)
        if stage in self._stages:
            self._stages[stage]["outcome"] = "failed"
            self._stages[stage].setdefault("failed_task", result._task.get_name())
        res = result._result if isinstance(result._result, dict) else {}
        if res.get("_ansible_no_log") or res.get("censored"):
            message = "(output hidden by no_log; rerun with capital_no_log=false on a throwaway database)"
            message = str(res["msg"]) if res.get("msg") and "censored" not in str(res.get("msg")) else message
        else:
            message = str(res.get("msg") or res.get("stderr") or res.get("reason") or "")
            if not message and res.get("results"):
                message = "; ".join(
                    str(r.get("msg", "")) for r in res["results"] if isinstance(r, dict) and r.get("failed")
                )
        self._failures.append(
            {
                "stage": stage,
                "task": result._task.get_name(),
                "host": result._host.get_name(),
                "message": str(message).strip()[:4000],
            }
        )
        self._host_failure.setdefault(result._host.get_name(), str(message).strip()[:2000])
        self._collect_warnings(result)

    def _on_unreachable(self, result: Any) -> None:
        self._on_failed(result)

    def _collect_warnings(self, result: Any) -> None:
        res = result._result if isinstance(result._result, dict) else {}
        for warning in res.get("warnings") or []:
            self._warnings.append(str(warning))

    def _on_stats(self, stats: Any) -> None:
        custom = getattr(stats, "custom", {}) or {}
        merged: dict[str, Any] = {}
        for scope in ("_run", *sorted(k for k in custom if k != "_run")):
            value = custom.get(scope)
            if isinstance(value, dict):
                deep_merge(merged, value)
        data: dict[str, Any] = merged["capital_report"] if isinstance(merged.get("capital_report"), dict) else {}
        hosts = {host: stats.summarize(host) for host in sorted(set(stats.processed.keys()))}
        report = self._build(data, hosts, merged)
        literals = secret_literals(os.environ, [self._vars.get("capital_db_password"),
                                                self._vars.get("capital_notify_url"), *self._notify_headers.values()])
        safe = redact(report, literals)
        self._write(safe, merged)
        self._notify(safe)

    def _notify(self, report: dict[str, Any]) -> None:
        """The end-of-run notice, when capital_notify_url is set: a failed delivery only warns."""
        url = self._vars.get("capital_notify_url")
        if not url:
            return
        warning = send(url, build_notice(report, list(self._written)), self._notify_headers)
        if warning:
            self._display.warning(f"capital_report: {warning}")
        else:
            self._display.display("capital_report: notice sent")

    def _build(self, data: dict[str, Any], hosts: dict[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
        finished = _now()
        stages = []
        for entry in sorted(self._stages.values(), key=lambda e: e["started"]):
            stages.append(
                {
                    "name": entry["name"],
                    "started_at": _iso(entry["started"]),
                    "finished_at": _iso(entry["finished"]),
                    "duration_s": round((entry["finished"] - entry["started"]).total_seconds(), 3),
                    "outcome": entry["outcome"],
                    "tasks": entry["tasks"],
                    **({"failed_task": entry["failed_task"]} if "failed_task" in entry else {}),
                }
            )
        fleet = self._fleet(hosts)
        worst = worst_outcome(entry["outcome"] for entry in fleet["databases"])
        if len(fleet["databases"]) > 1 and worst is not None:
            # A fleet's run is its worst database's: its outcome, stage and cause (the CLI's exit code reads it).
            first = next(e for e in fleet["databases"] if e["outcome"] == worst)
            picked = self._host_data.get(first["host"], {}).get("capital_report", {}).get("run", {})
            data = {**data, "run": {**(data.get("run") or {}), **(picked if isinstance(picked, dict) else {}),
                                    "outcome": worst}}
            if worst == "success":
                for key in ("failed_stage", "cause", "failed_task", "bad_input"):
                    data["run"].pop(key, None)
        run: dict[str, Any] = data["run"] if isinstance(data.get("run"), dict) else {}
        failed_hosts = any(h.get("failures") or h.get("unreachable") for h in hosts.values())
        outcome = run.get("outcome") or ("failed" if failed_hosts else "success")
        failed_stage = run.get("failed_stage") or next(
            (s["name"] for s in stages if s["outcome"] == "failed"), None
        )
        cause = run.get("cause") or (
            self._failures[0]["message"] if self._failures and outcome != "success" else None
        )
        env = data.get("env") or run.get("env") or self._vars.get("capital_env") or "unknown"
        return {
            "format": REPORT_FORMAT,
            "run_id": self._run_id(),
            "env": str(env),
            "playbook": self._playbook,
            "started_at": _iso(self._started),
            "finished_at": _iso(finished),
            "duration_s": round((finished - self._started).total_seconds(), 3),
            "outcome": outcome,
            "failed_stage": failed_stage,
            "cause": cause,
            "stages": stages,
            "failures": self._failures,
            "warnings": self._warnings,
            "hosts": hosts,
            "fleet": fleet,
            "evidence": self._evidence(data, fleet),
            "data": data,
        }

    def _evidence(self, data: dict[str, Any], fleet: dict[str, Any]) -> list[dict[str, Any]]:
        """One evidence entry per database that ran (each from its own stats); the merged data without hosts."""
        approval = {key: self._vars.get(name) for key, name in _APPROVAL_VARS.items()}
        ran = [entry["host"] for entry in fleet["databases"] if entry["outcome"] != "not_run"]
        if not ran:
            return [evidence(None, data, approval)]
        return [evidence(host, self._host_data.get(host, {}).get("capital_report", {}), approval) for host in ran]

    def _fleet(self, hosts: dict[str, Any]) -> dict[str, Any]:
        """Every database of the play: its wave, states, outcome, rows, backup, lock retries; the waves; totals."""
        wave_of = {host: number for number, wave in enumerate(self._waves, 1) for host in wave}
        names = self._play_hosts or sorted(hosts)
        databases = []
        for host in names:
            times = self._host_times.get(host)
            seconds = (times[1] - times[0]).total_seconds() if times else None
            data = self._host_data.get(host, {}).get("capital_report", {})
            databases.append(database_entry(host, data if isinstance(data, dict) else {}, hosts.get(host) or {},
                                            wave_of.get(host) if host in hosts else None, seconds,
                                            self._host_failure.get(host)))
        waves = [{"number": number, "hosts": wave} for number, wave in enumerate(self._waves, 1)]
        return {"databases": databases, "waves": waves, "totals": fleet_totals(databases)}

    def _run_id(self) -> str:
        if not hasattr(self, "_run_id_value"):
            configured = self.get_option("run_id") if self._plugin_options_set() else None
            self._run_id_value = re.sub(r"[^A-Za-z0-9_.-]", "_", configured or uuid.uuid4().hex[:12])
        return self._run_id_value

    def _plugin_options_set(self) -> bool:
        try:
            self.get_option("run_id")
        except KeyError:
            return False
        return True

    def _report_dir(self, merged: dict[str, Any]) -> str:
        chosen = merged.get("capital_report_dir") or self._vars.get("capital_report_dir")
        if not chosen and self._plugin_options_set():
            chosen = self.get_option("report_dir")
        return os.path.abspath(os.path.expanduser(str(chosen or "./reports")))

    def _write(self, report: dict[str, Any], merged: dict[str, Any]) -> None:
        directory = self._report_dir(merged)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            # The playbooks refuse an unwritable report directory before they start
            # (roles/connection/tasks/validate.yml); this is what is left: say so loudly, naming it.
            self._display.error(f"capital_report: NO RUN REPORT: cannot create {directory}: {exc.strerror}")
            raise
        stamp = self._started.strftime("%Y%m%dT%H%M%SZ")
        env = re.sub(r"[^A-Za-z0-9_.-]", "_", report["env"])
        base = os.path.join(directory, f"{stamp}-{env}-{report['run_id']}")
        write_private(base + ".json", json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
        write_private(base + ".md", render_markdown(report))
        self._written = [base + ".json", base + ".md"]
        index = self.get_option("index_file") if self._plugin_options_set() else None
        if index:
            write_private(str(index), json.dumps({"json": base + ".json", "markdown": base + ".md"}) + "\n")
        self._display.display(f"capital_report: wrote {base}.json and .md")
