"""preflight, plan, backup, migrate, verify, rollback: each runs its playbook and maps the outcome."""

from __future__ import annotations

import argparse

from capital_migrate.commands._common import build_context, confirm_if_required, finish, playbook_path, run_stage

# subcommand -> playbook under playbooks/ (plan is preflight's plan, read from the same run).
PLAYBOOKS = {
    "preflight": "preflight",
    "plan": "preflight",
    "backup": "backup",
    "migrate": "migrate",
    "verify": "verify",
    "rollback": "rollback",
}
# Subcommands that change the database ask for the production confirmation first.
CHANGES_DATABASE = frozenset({"migrate", "rollback"})


def run_stage_command(args: argparse.Namespace) -> int:
    """Run the subcommand's playbook and print its summary (plan: the plan too)."""
    command: str = args.command
    ctx = build_context(args)
    playbook = playbook_path(ctx, PLAYBOOKS[command])
    if command in CHANGES_DATABASE:
        confirm_if_required(ctx)
    result = run_stage(ctx, playbook)
    code = finish(ctx, command, result)
    if command == "plan" and not ctx.json:
        plan = (result.capital_report.get("preflight") or {}).get("plan") or {}
        if plan:
            ctx.say(render_plan(plan))
    return code


def render_plan(plan: dict[str, object]) -> str:
    """The plan as a few lines: state, action, objects, rows and batches per source."""
    lines = ["", "plan:", f"  state:  {plan.get('state', '?')}", f"  action: {plan.get('action', '?')}"]
    objects = plan.get("objects_to_create")
    if isinstance(objects, dict) and objects:
        for kind, names in objects.items():
            listed = ", ".join(str(n) for n in names) if isinstance(names, list) else str(names)
            lines.append(f"  create {kind}: {listed}")
    elif isinstance(objects, list) and objects:
        lines.append("  create: " + ", ".join(str(o) for o in objects))
    backfill = plan.get("backfill")
    if isinstance(backfill, list):
        for item in backfill:
            if isinstance(item, dict):
                lines.append(f"  backfill {item.get('source')}: {item.get('rows')} rows in "
                             f"{item.get('batches')} batches -> {item.get('targets')}")
    if plan.get("junta_rows_to_update"):
        lines.append(f"  update Junta capital columns: {plan['junta_rows_to_update']} rows")
    return "\n".join(lines)
