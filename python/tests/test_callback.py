"""The capital_report callback under plain ansible-playbook: timeline, data, files, redaction."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from capital_migrate import report as report_mod
from cli_support import DISTINCTIVE, REPO, base_env

PLAYBOOK = """\
- name: Callback probe
  hosts: localhost
  gather_facts: false
  vars:
    capital_env: cbtest
    capital_db_password: "{{ lookup('ansible.builtin.env', 'PROBE_VAR_PASSWORD') }}"
  tasks:
    - name: Preflight
      ansible.builtin.import_role:
        name: preflight
    - name: Bookkeeping that is not a stage
      ansible.builtin.import_role:
        name: run
    - name: Work and fail
      block:
        - name: Migrate
          ansible.builtin.import_role:
            name: migrate
      rescue:
        - name: Undo
          ansible.builtin.include_role:
            name: rollback
"""
# The stages are the roles of the tasks (the callback reads task._role), as in the project's playbooks; these
# stand-ins sit beside the playbook (roles/), where Ansible looks first.
ROLES = {
    "preflight": """\
- name: preflight | Check something
  ansible.builtin.set_stats:
    data:
      capital_report:
        preflight:
          checks:
            - {name: server_version, status: pass, value: "15.4", message: supported}
            - {name: long_transactions, status: warn, value: 2, message: two old transactions}
          login_password: "{{ capital_db_password }}"
    aggregate: true
""",
    "run": """\
- name: run | Bookkeeping that is not a stage
  ansible.builtin.debug:
    msg: not a stage
""",
    "migrate": """\
- name: migrate | Fail with the secrets in the message
  ansible.builtin.fail:
    msg: "boom {{ lookup('ansible.builtin.env', 'PGPASSWORD') }} postgresql://u:urlsecret@db/x"
""",
    "rollback": """\
- name: rollback | Undo
  ansible.builtin.set_stats:
    data:
      capital_report:
        migrate: {rows_backfilled: 12, lock_retries: 1}
        run: {outcome: rolled_back, failed_stage: migrate, cause: boom}
    aggregate: true
""",
}


def _run(tmp_path: Path, extra_env: dict[str, Any] | None = None, args: tuple[str, ...] = ()) -> tuple[int, str]:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PLAYBOOK)
    for role, tasks in ROLES.items():
        (tmp_path / "roles" / role / "tasks").mkdir(parents=True, exist_ok=True)
        (tmp_path / "roles" / role / "tasks" / "main.yml").write_text(tasks)
    env = base_env({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": f"{REPO / 'collections'}:{REPO / 'python'}",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "PGPASSWORD": DISTINCTIVE,
        "PROBE_VAR_PASSWORD": "var-secret-xyz",
        **(extra_env or {}),
    })
    # ANSIBLE_CALLBACKS_ENABLED="" is an ansible-core error; an explicit None means "leave it unset".
    env = {k: v for k, v in env.items() if v is not None}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", *args, str(playbook)],
        env=env, capture_output=True, text=True, check=False, cwd=tmp_path, timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def _reports(directory: Path) -> tuple[dict[str, Any], str, list[Path]]:
    files = sorted(directory.iterdir())
    json_file = next(p for p in files if p.suffix == ".json")
    return json.loads(json_file.read_text()), json_file.with_suffix(".md").read_text(), files


def test_plain_playbook_run_writes_redacted_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    code, output = _run(tmp_path, {"CAPITAL_REPORT_DIR": str(out)})
    assert code == 0, output
    report, markdown, files = _reports(out)
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.name.startswith("20") and "-cbtest-" in path.name
        text = path.read_text()
        assert DISTINCTIVE not in text
        assert "var-secret-xyz" not in text
        assert "urlsecret" not in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert report["outcome"] == "rolled_back"
    assert report["failed_stage"] == "migrate"
    assert [s["name"] for s in report["stages"]] == ["preflight", "migrate", "rollback"]
    assert [s["outcome"] for s in report["stages"]] == ["ok", "failed", "ok"]
    assert all(s["duration_s"] >= 0 for s in report["stages"])
    assert report["failures"][0]["message"] == "boom ******** postgresql://u:********@db/x"
    assert report["data"]["preflight"]["login_password"] == "********"
    assert report["data"]["migrate"] == {"rows_backfilled": 12, "lock_retries": 1}
    assert "| server_version | pass | 15.4 | supported |" in markdown
    assert "| long_transactions | warn | 2 | two old transactions |" in markdown
    assert "- Rows backfilled: 12" in markdown
    assert "- Lock retries: 1" in markdown


def test_capital_report_dir_variable_wins_over_the_option(tmp_path: Path) -> None:
    code, output = _run(tmp_path, {"CAPITAL_REPORT_DIR": str(tmp_path / "from-env")},
                        ("-e", f"capital_report_dir={tmp_path / 'from-var'}"))
    assert code == 0, output
    assert not (tmp_path / "from-env").exists()
    assert len(list((tmp_path / "from-var").iterdir())) == 2


def test_run_id_and_index_file_options(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    code, output = _run(tmp_path, {"CAPITAL_REPORT_DIR": str(tmp_path / "r"), "CAPITAL_RUN_ID": "abc123",
                                   "CAPITAL_REPORT_INDEX": str(index)})
    assert code == 0, output
    written = json.loads(index.read_text())
    assert written["json"].endswith("-cbtest-abc123.json")
    assert Path(written["markdown"]).is_file()


def test_callback_is_off_unless_enabled(tmp_path: Path) -> None:
    # The project's ansible.cfg enables it; a configuration without that line must not get a report.
    config = tmp_path / "ansible.cfg"
    config.write_text(
        "".join(
            line
            for line in (REPO / "ansible.cfg").read_text().splitlines(keepends=True)
            if not line.startswith("callbacks_enabled")
        )
    )
    code, output = _run(
        tmp_path,
        {"CAPITAL_REPORT_DIR": str(tmp_path / "r"), "ANSIBLE_CALLBACKS_ENABLED": None, "ANSIBLE_CONFIG": str(config)},
    )
    assert code == 0, output
    assert not (tmp_path / "r").exists()


def test_project_configuration_enables_the_callback(tmp_path: Path) -> None:
    code, output = _run(tmp_path, {"CAPITAL_REPORT_DIR": str(tmp_path / "r"), "ANSIBLE_CALLBACKS_ENABLED": None})
    assert code == 0, output
    assert len(list((tmp_path / "r").iterdir())) == 2


def test_redaction_covers_keys_literals_urls_and_pgpass(tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("db:5432:*:app:pass\\:with\\:colons\n")
    literals = report_mod.secret_literals(
        {"PGPASSWORD": "envpw", "DATABASE_URL": "postgresql://u:url%40pw@h/d", "PGPASSFILE": str(passfile)},
        ["varpw"],
    )
    assert set(literals) == {"envpw", "url@pw", "pass:with:colons", "varpw"}
    data = {"PGPASSWORD": "x", "nested": {"db_secret": "y", "note": "envpw and varpw and pass:with:colons"},
            "list": ["postgres://a:b@c/d"], "password": ""}
    assert report_mod.redact(data, literals) == {
        "PGPASSWORD": "********",
        "nested": {"db_secret": "********", "note": "******** and ******** and ********"},
        "list": ["postgres://a:********@c/d"],
        "password": "",
    }


def test_text_summary_puts_the_outcome_first_and_sums_capital_exactly() -> None:
    report = {
        "run_id": "r1", "env": "local", "outcome": "success", "duration_s": 12.5,
        "stages": [{"name": "migrate", "duration_s": 10.0, "outcome": "ok"}],
        "data": {
            "migrate": {"rows_backfilled": {"Accion": 2, "Multa": 1}, "lock_retries": 0},
            "verify": {"capital": [{"junta_id": "a", "before": "0.10", "after": "0.10"},
                                   {"junta_id": "b", "before": "0.20", "after": "0.20"}]},
        },
    }
    text = report_mod.render_text(report)
    lines = text.splitlines()
    assert lines[1].startswith("RESULT: SUCCESS")
    assert "3 rows backfilled, 0 lock retries" in text
    assert "before 0.30  after 0.30" in text
