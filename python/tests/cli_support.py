"""Helpers for the CLI tests: run `capital-migrate` as a real process and check what it printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "capital-migrate"
SCHEMA = json.loads((REPO / "python" / "capital_migrate" / "schemas" / "output.schema.json").read_text())
PROBE = Path(__file__).resolve().parent / "data" / "runner_probe.yml"
PROBE_ROLES = Path(__file__).resolve().parent / "data" / "runner_probe_roles"
STAGES = ("preflight", "backup", "migrate", "verify", "rollback")
# A password nobody would type by accident: found anywhere means it leaked.
DISTINCTIVE = "Zq7-Capital-Leak-Canary-9f3e"


@dataclass
class Done:
    """A finished CLI process."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.stdout)
        jsonschema.validate(doc, SCHEMA)
        return doc


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process environment without any inherited libpq/URL settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in ("DATABASE_URL",)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CALLBACKS_ENABLED"] = "prestamos.capital.capital_report"
    env.update(extra or {})
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: int = 600, stdin: str | None = None) -> Done:
    """Run capital-migrate with `args`; stdin is not a terminal (as in CI)."""
    done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          input=stdin if stdin is not None else "", check=False)
    return Done(done.returncode, done.stdout, done.stderr)


def probe_playbooks(tmp: Path) -> Path:
    """A playbooks dir where every stage is the probe playbook (CAPITAL_PLAYBOOKS_DIR), its stage roles beside it
    in roles/ (found before the project's own: Ansible looks beside the playbook first)."""
    directory = tmp / "playbooks"
    directory.mkdir()
    shutil.copytree(PROBE_ROLES, directory / "roles")
    for stage in STAGES:
        (directory / f"{stage}.yml").write_text(PROBE.read_text())
    return directory


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under `root` whose bytes contain `needle`."""
    hits = []
    if not root.exists():
        return hits
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits
