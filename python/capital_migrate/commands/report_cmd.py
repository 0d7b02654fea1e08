"""`capital-migrate report`: render a past run's report JSON as text or Markdown."""

from __future__ import annotations

import argparse
import sys

from capital_migrate import report as report_mod
from capital_migrate.commands._common import build_context, default_report_dir, emit_json
from capital_migrate.exitcodes import DESCRIPTIONS, ExitCode


def run_report(args: argparse.Namespace) -> int:
    """Print the report named by path, run id or `latest` as text, Markdown (--format) or --json."""
    ctx = build_context(args, need_db=False)
    path = report_mod.resolve(args.run, default_report_dir(ctx))
    # Reports are redacted when written; redact again in case one came from elsewhere.
    data = report_mod.redact(report_mod.load(path), report_mod.secret_literals({}))
    if ctx.json:
        emit_json(ctx, {
            "format": "capital-migrate-output/1",
            "command": "report",
            "exit_code": 0,
            "exit_meaning": DESCRIPTIONS[ExitCode.SUCCESS],
            "env": data.get("env"),
            "run_id": data.get("run_id"),
            "outcome": data.get("outcome"),
            "failed_stage": data.get("failed_stage"),
            "cause": data.get("cause"),
            "stages": data.get("stages") or [],
            "failures": data.get("failures") or [],
            "warnings": data.get("warnings") or [],
            "report": {"json": str(path), "markdown": str(path.with_suffix(".md"))},
            "data": data.get("data") or {},
            "run_report": data,
        })
    elif args.format == "markdown":
        sys.stdout.write(report_mod.render_markdown(data) + "\n")
    else:
        sys.stdout.write(report_mod.render_text(data, f"capital-migrate report {path.name}") + "\n")
    return 0
