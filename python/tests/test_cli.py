"""capital-migrate: arguments, exit codes, --json, reports and secrets, driven through the probe playbook.

The probe (tests/data/runner_probe.yml) stands in for each stage playbook via CAPITAL_PLAYBOOKS_DIR: it
connects to a real throwaway database through PGPASSFILE, drives the backfill progress table, and ends
with the outcome the test asks for, so every exit-code mapping runs through ansible-runner for real.
The same behaviours against the real playbooks are in test_cli_real.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from capital_migrate.exitcodes import DESCRIPTIONS, ExitCode
from cli_support import DISTINCTIVE, REPO, SCHEMA, base_env, files_containing, probe_playbooks, run_cli


def test_help_documents_every_exit_code() -> None:
    done = run_cli(["--help"], base_env())
    assert done.code == 0
    for code in ExitCode:
        assert f"  {int(code)}  {DESCRIPTIONS[code]}" in done.stdout


def test_docs_list_the_same_exit_codes() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in text, f"docs/cli.md lacks exit code {int(code)}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["migrate", "--no-such-option"], "unrecognized arguments"),
        (["migrate", "--env", "nowhere"], "invalid choice"),
        (["migrate", "-i", "/nonexistent/inventory"], "does not exist"),
        (["migrate", "-e", "capital_db_password=hunter2"], "secrets are not accepted"),
        (["migrate", "-e", "not-a-pair"], "expected key=value"),
        (["migrate", "--database-url"], "stdin is not a terminal"),
        (["migrate", "--database-url-env", "CAPITAL_TEST_UNSET_URL"], "CAPITAL_TEST_UNSET_URL is not set"),
        (["migrate", "--database-url", "postgresql://u:p@h/d"], "unrecognized arguments"),
        (["report", "no-such-run"], "no report"),
        (["rehearse", "--from-dump", "/nonexistent.dump"], "no such file"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args: list[str], fragment: str, tmp_path: Path) -> None:
    done = run_cli([*args, "--report-dir", str(tmp_path), "--json"], base_env())
    assert done.code == ExitCode.BAD_ARGUMENTS, done.stderr
    assert fragment in done.stderr
    doc = done.json()
    assert doc["exit_code"] == 2
    assert fragment in doc["error"]
    # The refused secret never echoes back.
    assert "hunter2" not in done.stdout + done.stderr


def test_bad_database_url_is_refused(tmp_path: Path) -> None:
    done = run_cli(["preflight", "--database-url-env", "MY_URL", "--report-dir", str(tmp_path)],
                   base_env({"MY_URL": "mysql://root:Sekrit-Bad-Url@db/x"}))
    assert done.code == ExitCode.BAD_ARGUMENTS
    assert "postgresql://" in done.stderr
    assert "Sekrit-Bad-Url" not in done.stdout + done.stderr


def test_production_refuses_without_confirmation(tmp_path: Path) -> None:
    done = run_cli(["migrate", "--env", "production", "--report-dir", str(tmp_path)],
                   base_env({"PGDATABASE": "prestamos"}))
    assert done.code == ExitCode.BAD_ARGUMENTS
    assert "--confirm-production" in done.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ through ansible-runner

OUTCOMES = {
    "success": ExitCode.SUCCESS,
    "failed": ExitCode.FAILURE,
    "preflight_refused": ExitCode.PREFLIGHT_REFUSED,
    "rolled_back": ExitCode.ROLLED_BACK,
    "rollback_failed": ExitCode.ROLLBACK_FAILED,
    "drift": ExitCode.DRIFT,
    "lock_held": ExitCode.LOCK_HELD,
}


def _probe_env(pg_db: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env({**pg_db.cluster.env(pg_db.name), "CAPITAL_PLAYBOOKS_DIR": str(probe_playbooks(tmp_path)),
                     **extra})


@pytest.mark.parametrize(("outcome", "code"), list(OUTCOMES.items()))
def test_outcome_maps_to_exit_code_and_json_validates(pg_db: Any, tmp_path: Path, outcome: str,
                                                      code: ExitCode) -> None:
    reports = tmp_path / "reports"
    done = run_cli(["migrate", "--quiet", "--json", "--report-dir", str(reports),
                    "-e", f"probe_outcome={outcome}", "-e", "probe_backfill_steps=1"], _probe_env(pg_db, tmp_path))
    assert done.code == code, done.stderr
    doc = done.json()
    assert doc["exit_code"] == int(code)
    assert doc["outcome"] == outcome
    assert [s["name"] for s in doc["stages"]] == ["preflight", "migrate", "verify"]
    report_json = Path(doc["report"]["json"])
    assert report_json.parent == reports
    for path in (report_json, Path(doc["report"]["markdown"])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = json.loads(report_json.read_text())
    assert written["outcome"] == outcome
    assert written["data"]["migrate"]["rows_backfilled"] == {"Accion": 3000, "Multa": 1000}


@pytest.mark.parametrize("command", ["preflight", "plan", "backup", "migrate", "verify", "rollback"])
def test_every_stage_subcommand_runs_its_playbook(pg_db: Any, tmp_path: Path, command: str) -> None:
    done = run_cli([command, "--quiet", "--report-dir", str(tmp_path / "r"), "-e", "probe_backfill_steps=1"],
                   _probe_env(pg_db, tmp_path))
    assert done.code == ExitCode.SUCCESS, done.stdout + done.stderr
    assert "RESULT: SUCCESS" in done.stdout
    assert f"capital-migrate {command}" in done.stdout
    assert "exit 0: success" in done.stdout


def test_failed_stage_playbook_without_verdict_uses_the_stage_code(pg_db: Any, tmp_path: Path) -> None:
    """preflight.yml has no run outcome of its own: a failure there is 'preflight refused'."""
    playbooks = probe_playbooks(tmp_path)
    (playbooks / "preflight.yml").write_text(
        "- name: Probe\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Run the preflight stage\n      ansible.builtin.import_role:\n        name: preflight\n"
    )
    (playbooks / "roles" / "preflight" / "tasks" / "main.yml").write_text(
        "- name: preflight | Refuse\n  ansible.builtin.fail:\n    msg: disk too small\n"
    )
    env = base_env({**pg_db.cluster.env(pg_db.name), "CAPITAL_PLAYBOOKS_DIR": str(playbooks)})
    done = run_cli(["preflight", "--quiet", "--json", "--report-dir", str(tmp_path / "r")], env)
    assert done.code == ExitCode.PREFLIGHT_REFUSED
    doc = done.json()
    assert doc["failed_stage"] == "preflight"
    assert doc["failures"][0]["message"] == "disk too small"


def test_live_view_shows_stages_tasks_failures_and_backfill_progress(pg_db: Any, tmp_path: Path) -> None:
    done = run_cli(["migrate", "--report-dir", str(tmp_path / "r"), "-e", "probe_outcome=rolled_back",
                    "-e", "probe_backfill_steps=4"], _probe_env(pg_db, tmp_path))
    assert done.code == ExitCode.ROLLED_BACK
    assert "== preflight ==" in done.stderr
    assert "== migrate ==" in done.stderr
    assert "Backfill in batches" in done.stderr
    assert "backfill " in done.stderr and "/4,000 rows" in done.stderr
    assert "FAILED [verify]" in done.stderr
    assert "RESULT: FAILED - ROLLED BACK" in done.stdout


def test_quiet_prints_only_the_summary(pg_db: Any, tmp_path: Path) -> None:
    done = run_cli(["migrate", "--quiet", "--report-dir", str(tmp_path / "r"), "-e", "probe_backfill_steps=1"],
                   _probe_env(pg_db, tmp_path))
    assert done.code == 0
    assert "==" not in done.stderr
    assert "RESULT: SUCCESS" in done.stdout


def _distinctive_role(pg_db: Any) -> None:
    with pg_db.connect() as conn, conn.cursor() as cur:
        cur.execute("drop role if exists leak_canary")
        cur.execute(f"create role leak_canary login superuser password '{DISTINCTIVE}'")
    conn.close()


def test_password_reaches_nothing_on_disk_or_in_output(pg_db: Any, tmp_path: Path) -> None:
    """Through --database-url-env: the password is in no artifact, report, output, or leftover pgpass file."""
    _distinctive_role(pg_db)
    cluster = pg_db.cluster
    url = f"postgresql://leak_canary:{DISTINCTIVE}@{cluster.host}:{cluster.port}/{pg_db.name}"
    env = base_env({"CAPITAL_PLAYBOOKS_DIR": str(probe_playbooks(tmp_path)), "MY_DB_URL": url,
                    "TMPDIR": str(tmp_path / "tmp")})
    (tmp_path / "tmp").mkdir()
    reports = tmp_path / "reports"
    done = run_cli(["migrate", "--json", "--keep-artifacts", "--report-dir", str(reports),
                    "--database-url-env", "MY_DB_URL", "-e", "probe_outcome=rolled_back",
                    "-e", "probe_backfill_steps=1"], env)
    assert done.code == ExitCode.ROLLED_BACK, done.stderr
    doc = done.json()
    # It connected as the URL's user: the password worked (through PGPASSFILE).
    checks = doc["data"]["preflight"]["checks"]
    assert checks[0]["value"] == "leak_canary"
    assert DISTINCTIVE not in done.stdout + done.stderr
    assert files_containing(reports, DISTINCTIVE) == []
    kept = [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("capital-migrate-run-")]
    assert len(kept) == 1
    assert (kept[0] / "artifacts").is_dir()
    assert files_containing(kept[0], DISTINCTIVE) == []
    assert not (kept[0] / "env").exists()
    # The pgpass file and its directory are gone.
    assert [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("capital-pgpass-")] == []
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o700


def test_password_from_pgpassword_is_moved_to_a_pgpass_file(pg_db: Any, tmp_path: Path) -> None:
    _distinctive_role(pg_db)
    env = _probe_env(pg_db, tmp_path, PGUSER="leak_canary", PGPASSWORD=DISTINCTIVE, TMPDIR=str(tmp_path))
    done = run_cli(["preflight", "--json", "--report-dir", str(tmp_path / "r"), "--keep-artifacts",
                    "-e", "probe_backfill_steps=1"], env)
    assert done.code == 0, done.stderr
    assert done.json()["data"]["preflight"]["checks"][0]["value"] == "leak_canary"
    assert files_containing(tmp_path, DISTINCTIVE) == []
    assert DISTINCTIVE not in done.stdout + done.stderr


def test_private_data_dir_is_removed_by_default(pg_db: Any, tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    env = _probe_env(pg_db, tmp_path, TMPDIR=str(tmp_path / "tmp"))
    done = run_cli(["verify", "--quiet", "--report-dir", str(tmp_path / "r"), "-e", "probe_backfill_steps=1"], env)
    assert done.code == 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_report_subcommand_renders_text_markdown_and_json(pg_db: Any, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    first = run_cli(["migrate", "--quiet", "--json", "--report-dir", str(reports), "-e", "probe_backfill_steps=1",
                     "-e", "probe_outcome=rolled_back"], _probe_env(pg_db, tmp_path))
    run_id = first.json()["run_id"]
    text = run_cli(["report", run_id, "--report-dir", str(reports)], base_env())
    assert text.code == 0
    assert "RESULT: FAILED - ROLLED BACK" in text.stdout
    assert "4,000 rows backfilled" in text.stdout
    markdown = run_cli(["report", "latest", "--format", "markdown", "--report-dir", str(reports)], base_env())
    assert markdown.code == 0
    assert "| stage | started (UTC) | duration | outcome | tasks |" in markdown.stdout
    assert "| Junta Uno | j1 | 1,500.10 | 1,500.10 | 0.00 |" in markdown.stdout
    assert "- sha256: `" + "0" * 64 + "`" in markdown.stdout
    as_json = run_cli(["report", str(Path(first.json()["report"]["json"])), "--json", "--report-dir",
                       str(reports)], base_env())
    doc = as_json.json()
    assert doc["run_report"]["run_id"] == run_id
    jsonschema.validate(doc, SCHEMA)


def test_status_of_a_fresh_database_is_not_applied(pg_db: Any, tmp_path: Path) -> None:
    """status reads the state through module_utils/migration.py; a fresh database is not_applied."""
    utils = REPO / "python/ansible_collections/prestamos/capital/plugins/module_utils/migration.py"
    env = base_env(pg_db.cluster.env(pg_db.name))
    done = run_cli(["status", "--json", "--report-dir", str(tmp_path)], env)
    if not utils.exists():
        assert done.code == ExitCode.FAILURE
        assert "migration.py is missing" in done.stderr
        return
    assert done.code == 0, done.stderr
    assert done.json()["status"]["state"] == "not_applied"


def test_report_goes_to_the_inventorys_report_dir(pg_db: Any, tmp_path: Path) -> None:
    """Without --report-dir the inventory's capital_report_dir decides (local: <repo>/reports)."""
    inventory = tmp_path / "inv"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n")
    (inventory / "group_vars" / "all" / "main.yml").write_text(
        f"capital_env: probe\ncapital_report_dir: {tmp_path / 'inv-reports'}\n")
    done = run_cli(["verify", "--quiet", "--json", "-i", str(inventory), "-e", "probe_backfill_steps=1"],
                   _probe_env(pg_db, tmp_path))
    assert done.code == 0, done.stderr
    doc = done.json()
    assert doc["env"] == "probe"
    assert Path(doc["report"]["json"]).parent == tmp_path / "inv-reports"
    assert Path(doc["report"]["json"]).name.endswith(f"-probe-{doc['run_id']}.json")
    assert os.access(doc["report"]["json"], os.R_OK)
