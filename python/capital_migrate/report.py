"""Render run reports (text for a terminal, Markdown for a ticket) and find past ones.

The rendering and redaction code lives once, in the collection
(`prestamos.capital` plugin_utils/report.py), because the callback must work without this CLI (AWX, plain
ansible-playbook). This module imports it by its collection name so both render a report identically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ansible_collections.prestamos.capital.plugins.plugin_utils import report as _core

from capital_migrate.errors import OperatorError

REDACTED: str = _core.REDACTED
redact = _core.redact
redact_text = _core.redact_text
render_markdown = _core.render_markdown
render_text = _core.render_text
secret_literals = _core.secret_literals
stage_of = _core.stage_of
backup_info = _core.backup_info
capital_rows = _core.capital_rows
checks = _core.checks
SECRET_KEY_RE = _core.SECRET_KEY_RE
pgpass_passwords = _core.pgpass_passwords


def load(path: Path) -> dict[str, Any]:
    """Read a report JSON file; OperatorError (exit 2) when it is missing or not a report."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OperatorError(f"no report at {path}; list the report directory (--report-dir) for runs") from None
    except (OSError, ValueError) as exc:
        raise OperatorError(f"{path} is not a readable report JSON file ({exc})") from None
    if not isinstance(data, dict) or "stages" not in data:
        raise OperatorError(f"{path} is not a capital-migrate run report (no 'stages')")
    return data


def latest(report_dir: Path, env: str | None = None) -> Path | None:
    """The newest report JSON in `report_dir` (names start with a UTC timestamp, so names sort by time)."""
    if not report_dir.is_dir():
        return None
    pattern = f"*-{env}-*.json" if env else "*.json"
    found = sorted(p for p in report_dir.glob(pattern) if p.is_file())
    return found[-1] if found else None


def resolve(spec: str, report_dir: Path) -> Path:
    """A report named by path, by run id, or `latest`."""
    if spec == "latest":
        found = latest(report_dir)
        if found is None:
            raise OperatorError(f"no reports in {report_dir}; pass --report-dir or a report file path")
        return found
    path = Path(spec)
    if path.suffix == ".md":
        path = path.with_suffix(".json")
    if path.is_file():
        return path
    matches = sorted(report_dir.glob(f"*-{spec}.json")) if report_dir.is_dir() else []
    if matches:
        return matches[-1]
    raise OperatorError(f"no report {spec!r}: not a file, and no run with that id in {report_dir}")
