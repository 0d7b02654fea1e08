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
    dry_run = bool(getattr(args, "plan", False))
    if command in CHANGES_DATABASE and not dry_run:
        confirm_if_required(ctx)
    result = run_stage(ctx, playbook, check=dry_run)
    code = finish(ctx, command, result)
    if command == "plan" and not ctx.json:
        plan = (result.capital_report.get("preflight") or {}).get("plan") or {}
        if plan:
            ctx.say(render_plan(plan))
    if dry_run and not ctx.json:
        rollback_plan = (result.capital_report.get("rollback") or {}).get("plan") or {}
        if rollback_plan:
            ctx.say(render_rollback_plan(rollback_plan))
    return code


def render_rollback_plan(plan: dict[str, object]) -> str:
    """The reverse migration's dry run: every object it would drop, every row it would export and discard."""
    listed = plan.get("objects")
    objects: list[object] = listed if isinstance(listed, list) else []
    lines = ["", f"rollback plan (dry run, nothing changed): drop {len(objects)} object(s) of the record"]
    lines += [f"  drop {name}" for name in objects]
    rows = plan.get("rows")
    if isinstance(rows, dict):
        lines += [f"  export then discard {table}: {count} rows" for table, count in sorted(rows.items())]
    for key, label in (("blocked_by", "stops the rollback"), ("left_alone", "left alone (not this migration's)")):
        items = plan.get(key)
        if isinstance(items, list):
            lines += [f"  {label}: {item}" for item in items]
    return "\n".join(lines)


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
