"""What every subcommand shares: the resolved context, running a stage playbook, output, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from ansible_collections.prestamos.capital.plugins.module_utils.inputs import RULES

from capital_migrate import report as report_mod
from capital_migrate.connection import (
    DB_VARIABLES,
    DbTarget,
    inventory_variables,
    report_dir_problem,
    resolve_target,
)
from capital_migrate.errors import OperatorError
from capital_migrate.exitcodes import DESCRIPTIONS, OUTCOME_CODES, ExitCode
from capital_migrate.runner import ConsoleView, LiveView, QuietView, RunRequest, RunResult, repo_root, run_playbook

ENVIRONMENTS = ("local", "dev", "staging", "production")
OUTPUT_FORMAT = "capital-migrate-output/1"


@dataclass
class Context:
    """Everything a command needs, resolved once from the arguments (before anything runs)."""

    args: argparse.Namespace
    root: Path
    inventory: Path
    env_name: str
    extravars: dict[str, Any]
    target: DbTarget
    report_dir: Path | None
    view: LiveView
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    # The connection before the inventory's capital_db_* (DATABASE_URL, PG*): a fleet's hosts each go on top.
    base_target: DbTarget = field(default_factory=DbTarget)

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))

    def say(self, text: str) -> None:
        """Human output: stdout normally, stderr under --json (stdout then holds only the JSON)."""
        if self.quiet and self.json:
            return
        print(text, file=self.err if self.json else self.out)

    def group_vars(self) -> dict[str, Any]:
        """The inventory's group_vars/all/main.yml (plain YAML; vault files are not read here)."""
        path = self.inventory / "group_vars" / "all" / "main.yml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_extravars(items: list[str] | None) -> dict[str, Any]:
    """`-e key=value` and `-e @file.yml` into one dict; refuses secrets (they would sit on argv or disk)."""
    merged: dict[str, Any] = {}
    for item in items or []:
        if item.startswith("@"):
            path = Path(item[1:])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise OperatorError(f"-e {item}: cannot read {path} ({exc.strerror})") from None
            if text.startswith("$ANSIBLE_VAULT"):
                raise OperatorError(f"-e {item}: vault-encrypted files go in the inventory's group_vars "
                                    "(vault.yml), with --vault-password-file")
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise OperatorError(f"-e {item}: not valid YAML/JSON ({exc})") from None
            if not isinstance(data, dict):
                raise OperatorError(f"-e {item}: the file must hold a mapping of variables")
            merged.update(data)
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not key.strip().isidentifier():
            raise OperatorError(f"-e {item!r}: expected key=value or @file (a YAML/JSON file of variables)")
        merged[key.strip()] = value
    for key in merged:
        if report_mod.SECRET_KEY_RE.search(str(key)):
            raise OperatorError(
                f"-e {key}: secrets are not accepted as variables (they would be on the command line and in "
                "ansible-runner's files); use --database-url (prompt), --database-url-env VAR, PGPASSFILE, "
                "or the inventory's vault.yml"
            )
    return merged


def wave_variables(args: argparse.Namespace) -> dict[str, Any]:
    """--serial and --max-fail-percentage as migrate.yml's extra variables (the only kind its waves see)."""
    found: dict[str, Any] = {}
    serial = getattr(args, "serial", None)
    if serial is not None:
        sizes: list[Any] = [int(part) if part.strip().isdigit() else part.strip() for part in serial.split(",")]
        problem = RULES["capital_serial"].problem(sizes)
        if problem is not None:
            raise OperatorError(f"--serial {serial!r}: expected {problem}, separated by commas (e.g. 1,25%,100%)")
        found["capital_serial"] = sizes
    percentage = getattr(args, "max_fail_percentage", None)
    if percentage is not None:
        if not 0 <= percentage <= 100:
            raise OperatorError(f"--max-fail-percentage {percentage}: expected a whole number 0-100")
        found["capital_max_fail_percentage"] = percentage
    return found


def build_context(args: argparse.Namespace, need_db: bool = True) -> Context:
    """Resolve inventory, environment, variables, connection and view; refuse bad input before running."""
    root = repo_root()
    if getattr(args, "inventory", None) and getattr(args, "env", None):
        raise OperatorError("use either -i/--inventory or --env, not both")
    if getattr(args, "inventory", None):
        inventory = Path(args.inventory).resolve()
        env_name = inventory.name
    else:
        env_name = getattr(args, "env", None) or "local"
        inventory = root / "inventories" / env_name
    if not inventory.exists():
        raise OperatorError(f"inventory {inventory} does not exist; use --env {'|'.join(ENVIRONMENTS)} "
                            "or -i PATH to an inventory directory")
    extravars = parse_extravars(getattr(args, "extra_vars", None))
    extravars.update(wave_variables(args))
    report_dir = Path(args.report_dir).resolve() if getattr(args, "report_dir", None) else None
    if report_dir is not None:
        extravars["capital_report_dir"] = str(report_dir)
    target = (resolve_target(bool(getattr(args, "database_url", False)), getattr(args, "database_url_env", None))
              if need_db else DbTarget())
    base_target = target
    if need_db:
        target = target.under(playbook_db_variables(inventory, extravars, getattr(args, "vault_password_file", None)))
    quiet = bool(getattr(args, "quiet", False))
    view: LiveView = QuietView() if quiet else ConsoleView()
    ctx = Context(args=args, root=root, inventory=inventory, env_name=env_name, extravars=extravars,
                  target=target, report_dir=report_dir, view=view, base_target=base_target)
    env_from_inventory = ctx.group_vars().get("capital_env")
    if isinstance(env_from_inventory, str) and env_from_inventory:
        ctx.env_name = env_from_inventory
    return ctx


def playbook_db_variables(inventory: Path, extravars: dict[str, Any],
                          vault_password_file: str | None) -> dict[str, Any]:
    """The capital_db_* values the playbooks will use: -e over the inventory's (group_vars, vault).

    They win over DATABASE_URL and PG* in the connection role, so the CLI's target (status, the production
    confirmation, the backfill poller) puts them first too: `DbTarget.under(playbook_db_variables(...))`.
    """
    pattern = str(extravars.get("capital_target_hosts") or "all")
    found = inventory_variables(inventory, DB_VARIABLES, Path(vault_password_file) if vault_password_file else None,
                                pattern)
    return {**found, **{k: v for k, v in extravars.items() if k in DB_VARIABLES}}


def default_report_dir(ctx: Context) -> Path:
    """Where reports land when --report-dir is not given (the inventory's capital_report_dir, resolved)."""
    if ctx.report_dir is not None:
        return ctx.report_dir
    configured = ctx.group_vars().get("capital_report_dir")
    if isinstance(configured, str) and configured:
        text = configured.replace("{{ inventory_dir }}", str(ctx.inventory))
        if "{{" not in text:
            return Path(os.path.normpath(text))
    return ctx.root / "reports"


def confirm_if_required(ctx: Context) -> None:
    """Production asks for confirmation; the playbook refuses anyway, this only asks before starting."""
    needs = bool(ctx.group_vars().get("capital_require_confirmation"))
    if not needs or str(ctx.extravars.get("capital_confirm_production", "")).lower() in ("true", "yes", "1"):
        return
    if getattr(ctx.args, "confirm_production", False):
        ctx.extravars["capital_confirm_production"] = True
        return
    if not sys.stdin.isatty():
        raise OperatorError(f"environment {ctx.env_name} requires confirmation; rerun with --confirm-production "
                            "once the change window is open")
    answer = input(f"This changes the {ctx.env_name} database {ctx.target.describe()}. "
                   f"Type the environment name ({ctx.env_name}) to go on: ")
    if answer.strip() != ctx.env_name:
        raise OperatorError("not confirmed; nothing was run")
    ctx.extravars["capital_confirm_production"] = True


def playbook_path(ctx: Context, name: str) -> str:
    """playbooks/<name>.yml, or a clear error when that stage's playbook is not in this checkout.

    CAPITAL_PLAYBOOKS_DIR points at another directory of stage playbooks (the CLI's own tests use it
    to drive the runner with a probe playbook; a site could keep wrapped playbooks there).
    """
    override = os.environ.get("CAPITAL_PLAYBOOKS_DIR")
    base = Path(override) if override else ctx.root / "playbooks"
    path = base / f"{name}.yml"
    if not path.is_file():
        raise OperatorError(f"{path} does not exist in this checkout; the {name} stage cannot run",
                            ExitCode.FAILURE)
    return str(path)


def run_stage(ctx: Context, playbook: str, extravars: dict[str, Any] | None = None, check: bool = False) -> RunResult:
    """Run one playbook with the context's inventory, connection and variables (``check``: --check)."""
    report_dir = ctx.report_dir or default_report_dir(ctx)
    problem = report_dir_problem(str(report_dir))
    if problem is not None:  # refused before the run: a run without its report must not happen (issue 17)
        raise OperatorError(f"{problem}; choose another with --report-dir DIR (nothing was run)")
    request = RunRequest(
        playbook=playbook,
        inventory=ctx.inventory,
        extravars={**ctx.extravars, **(extravars or {})},
        target=ctx.target,
        report_dir=report_dir,
        keep_artifacts=bool(getattr(ctx.args, "keep_artifacts", False)),
        vault_password_file=Path(ctx.args.vault_password_file) if getattr(ctx.args, "vault_password_file", None)
        else None,
        secret_env_names=(ctx.args.database_url_env,) if getattr(ctx.args, "database_url_env", None) else (),
        check=check,
    )
    return run_playbook(request, ctx.view)


def exit_code_for(command: str, result: RunResult) -> ExitCode:
    """Map a run to an exit code through the one table, OUTCOME_CODES, from the outcome the playbook recorded.

    Every playbook records capital_report.run.outcome (roles/run: tasks/failure.yml classifies a failure, tasks/
    end.yml records it); a refusal of the inputs is recorded as bad input (exit 2). Nothing is read from the
    text of a failure message.
    """
    run = _dict(result.capital_report.get("run"))
    if run.get("bad_input") and result.rc != 0:  # roles/run/tasks/validate.yml refused the inputs
        return ExitCode.BAD_ARGUMENTS
    return OUTCOME_CODES[run_outcome(command, result)]


def run_outcome(command: str, result: RunResult) -> str:
    """The run's outcome word: the playbook's own, else (a playbook that records none: a site's own stage
    playbook in CAPITAL_PLAYBOOKS_DIR, a play that failed to parse) what the exit status and the stage's
    command say."""
    outcome = _dict(result.capital_report.get("run")).get("outcome")
    succeeded = result.status == "successful" and result.rc == 0
    if isinstance(outcome, str) and outcome in OUTCOME_CODES and (outcome != "success" or result.rc == 0):
        return outcome
    if succeeded:
        return "success"
    return {"preflight": "preflight_refused", "plan": "preflight_refused", "rollback": "rollback_failed"}.get(
        command, "failed")


def result_document(ctx: Context, command: str, code: ExitCode, result: RunResult | None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The --json document (python/capital_migrate/schemas/output.schema.json)."""
    report = (result.report if result else None) or {}
    data = result.capital_report if result else {}
    run = _dict(data.get("run"))
    outcome = run.get("outcome") or report.get("outcome")
    if outcome is None and result is not None:
        outcome = "success" if code == ExitCode.SUCCESS else "failed"
    doc: dict[str, Any] = {
        "format": OUTPUT_FORMAT,
        "command": command,
        "exit_code": int(code),
        "exit_meaning": DESCRIPTIONS[code],
        "env": ctx.env_name,
        "run_id": result.run_id if result else None,
        "outcome": outcome,
        "failed_stage": run.get("failed_stage") or report.get("failed_stage"),
        "cause": run.get("cause") or report.get("cause"),
        "stages": report.get("stages") or [],
        "failures": report.get("failures") or (result.failures if result else []),
        "warnings": (result.warnings if result else []),
        "output_tail": result.output_tail if result and not result.report else [],
        "report": {
            "json": str(result.report_json) if result and result.report_json else None,
            "markdown": str(result.report_md) if result and result.report_md else None,
        },
        "data": data,
    }
    if isinstance(report.get("fleet"), dict) and len(report["fleet"].get("databases") or []) > 1:
        doc["fleet"] = report["fleet"]
    doc.update(extra or {})
    literals = report_mod.secret_literals(os.environ, [ctx.target.password])
    safe: dict[str, Any] = report_mod.redact(doc, literals)
    return safe


def emit_json(ctx: Context, doc: dict[str, Any]) -> None:
    ctx.out.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    ctx.out.flush()


def finish(ctx: Context, command: str, result: RunResult, extra: dict[str, Any] | None = None) -> int:
    """Print the summary (or the JSON document) of a playbook run and return its exit code."""
    code = exit_code_for(command, result)
    if ctx.json:
        emit_json(ctx, result_document(ctx, command, code, result, extra))
        return int(code)
    if result.report is not None:
        literals = report_mod.secret_literals(os.environ, [ctx.target.password])
        ctx.say(report_mod.redact_text(report_mod.render_text(result.report, f"capital-migrate {command}"), literals))
    else:
        ctx.say(f"capital-migrate {command}: the run wrote no report (is the capital_report callback "
                f"loadable?); ansible-runner status {result.status}, rc {result.rc}")
        for failure in result.failures[:5]:
            ctx.say(f"  - [{failure.get('stage') or '-'}] {failure.get('task')}: {failure.get('message')}")
        if not result.failures and result.output_tail:
            ctx.say("  last output of ansible-playbook:")
            ctx.say("\n".join(f"    {line}" for line in result.output_tail))
    if result.report_md is not None:
        ctx.say(f"  report: {result.report_md}")
    if result.private_data_dir is not None:
        ctx.say(f"  artifacts kept (scrubbed of env and command files): {result.private_data_dir}")
    ctx.say(f"exit {int(code)}: {DESCRIPTIONS[code]}")
    return int(code)
