"""The run protocol (roles/run): one set of project-wide defaults that every stage of every playbook sees alike,
and every playbook built the same way (begin, the stage, failure in rescue, end in always)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from migration_helpers import migration_lock_held, seed_db
from test_playbooks import run_playbook

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "data" / "role_vars_probe.py"
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yml"))
SHARED = ("capital_env", "capital_backup_dir", "capital_lock_timeout", "capital_lock_retries", "capital_batch_size",
          "capital_no_log", "capital_report_dir")


def _seen_by_roles(tmp_path: Path) -> dict[str, dict[str, object]]:
    """{"<playbook>:<role>": {variable: value}} with an inventory that sets none of the project's variables."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": f"{ROOT / 'collections'}{os.pathsep}{ROOT / 'python'}"}
    done = subprocess.run([sys.executable, str(PROBE), str(inventory), ",".join(SHARED), *map(str, PLAYBOOKS)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    seen: dict[str, dict[str, object]] = json.loads(done.stdout)
    return seen


def test_every_stage_of_every_playbook_sees_the_same_project_wide_defaults(tmp_path: Path) -> None:
    """capital_backup_dir was /var/backups/prestamos-capital for backup and preflight but playbook_dir/../backups
    for rollback: a restore with an inventory that does not set it looked where no backup was written."""
    defaults = yaml.safe_load((ROOT / "roles" / "run" / "defaults" / "main.yml").read_text())
    seen = _seen_by_roles(tmp_path)
    for stage in ("preflight", "backup", "rollback"):
        assert f"{stage}:{stage}" in seen, sorted(seen)
    for where, values in seen.items():
        for name in SHARED:
            assert values[name] == defaults[name], (where, name, values[name])
    assert seen["rollback:rollback"]["capital_backup_dir"] == seen["backup:backup"]["capital_backup_dir"]


def test_no_stage_role_declares_a_project_wide_default_again() -> None:
    shared = set(yaml.safe_load((ROOT / "roles" / "run" / "defaults" / "main.yml").read_text()))
    for role in ("preflight", "backup", "migrate", "verify", "rollback"):
        own = set(yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {})
        spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
        options = set(spec["argument_specs"]["main"].get("options") or {})
        assert not own & shared, (role, own & shared)
        assert not options & shared, (role, options & shared)


def test_every_playbook_runs_the_protocol_of_roles_run() -> None:
    for path in PLAYBOOKS:
        (play,) = yaml.safe_load(path.read_text())
        begin, main = play["tasks"]
        assert begin["ansible.builtin.import_role"] == {"name": "run", "tasks_from": "begin"}, path.name
        assert "always" in begin["tags"], path.name
        assert main["rescue"][0]["ansible.builtin.import_role"] == {"name": "run", "tasks_from": "failure"}, path.name
        assert main["always"] == [{"name": "run | End the run (record the outcome, remove the password file)",
                                   "ansible.builtin.import_role": {"name": "run", "tasks_from": "end"}}], path.name
        assert play["vars"]["__capital_run_playbook"] == path.stem


def _outcome(tmp_path: Path) -> dict[str, object]:
    """capital_report.run of the one report the run wrote."""
    (report,) = (tmp_path / "reports").glob("*.json")
    run: dict[str, object] = json.loads(report.read_text())["data"]["run"]
    return run


@pytest.mark.parametrize(("playbook", "outcome"), [("preflight.yml", "success"), ("backup.yml", "success"),
                                                   ("verify.yml", "failed")])
def test_preflight_backup_and_verify_record_their_outcome(pg_db: Any, tmp_path: Path, playbook: str,
                                                          outcome: str) -> None:
    """Every playbook records capital_report.run.outcome, on success and on failure (verify.yml on an unmigrated
    database fails), so the CLI maps it through OUTCOME_CODES alone."""
    seed_db(pg_db, juntas=1)
    result = run_playbook(pg_db, playbook, tmp_path)
    assert (result.returncode == 0) == (outcome == "success"), result.stdout[-3000:]
    run = _outcome(tmp_path)
    assert run["outcome"] == outcome
    assert run["playbook"] == playbook.removesuffix(".yml")
    if outcome != "success":
        assert run["failed_stage"] == "verify"
        assert "Failed in stage verify" in result.stdout


def test_preflight_alone_records_a_held_lock_as_lock_held(pg_db: Any, tmp_path: Path) -> None:
    """preflight.yml, like migrate.yml, says lock_held (exit 7), not only 'preflight refused', when another run
    holds the migration lock: its migration_lock check failed."""
    seed_db(pg_db, juntas=1)
    with migration_lock_held(pg_db):
        result = run_playbook(pg_db, "preflight.yml", tmp_path)
    assert result.returncode != 0
    run = _outcome(tmp_path)
    assert run["outcome"] == "lock_held" and run["failed_stage"] == "preflight"
    assert "Another run holds the migration lock; nothing was changed" in result.stdout
