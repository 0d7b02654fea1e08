"""Run the project's real playbooks from tests and read what they hand to the run report.

Shared by the preflight and backup tests: ansible-playbook runs from the repository root with its
ansible.cfg and ``inventories/local``, the connection comes from the libpq environment of a throwaway
database, and the report data (``set_stats``) is read from the default callback's custom stats,
printed as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


@dataclass
class PlaybookRun:
    """One finished ansible-playbook run: exit code, output, and the custom stats it set."""

    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def stats(self) -> dict[str, Any]:
        """The `set_stats` data of the run (``{}`` when none was printed)."""
        for line in self.stdout.splitlines():
            if line.lstrip().startswith("RUN: "):
                data: dict[str, Any] = json.loads(line.split("RUN: ", 1)[1])
                return data
        return {}

    def report(self, stage: str) -> dict[str, Any]:
        section: dict[str, Any] = self.stats.get("capital_report", {}).get(stage, {})
        return section

    def checks(self) -> dict[str, dict[str, Any]]:
        """Preflight checks by name."""
        return {check["name"]: check for check in self.report("preflight").get("checks", [])}


def playbook_env(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """Environment for ansible-playbook: the database's libpq variables plus the project's config."""
    env = {**os.environ, **base}
    env.pop("DATABASE_URL", None)
    env.update({
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_SHOW_CUSTOM_STATS": "true",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    })
    env.update(extra)
    return env


def run_playbook(playbook: str, env: Mapping[str, str], extravars: Mapping[str, Any] | None = None,
                 args: Sequence[str] = (), timeout: int = 600, inventory: Path | None = None) -> PlaybookRun:
    """ansible-playbook <playbook> -i inventories/local (or ``inventory``), from the repository root."""
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory or ROOT / "inventories" / "local"), playbook, *args]
    if extravars:
        argv += ["-e", json.dumps(dict(extravars))]
    done = subprocess.run(argv, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout,
                          check=False)
    return PlaybookRun(done.returncode, done.stdout, done.stderr)
