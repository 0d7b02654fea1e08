"""No fragment of a password anywhere a run writes (issue 17): output, reports, manifests, exports, kept runner
artifacts, temporary files, and the process list while it runs, through ansible-playbook and the CLI.

The password is built to break parsers (``/ # ? @ : %``, ``{{ {%``, quotes, a backslash, unicode) and is really
used: the login role has it, so a run that did not pass it on could not connect. A fragment is any 4 characters
of it, raw or JSON-escaped. (The AWX-style runner has its own scan with the same password: test_awx_runner.)
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capital_migrate.pgtmp import Database
from cli_support import base_env, run_cli
from migration_helpers import seed_db
from playbook_support import playbook_env, run_playbook
from system_support import fragments, hostile_password, login_role


class ProcessWatch:
    """Samples every process's command line while a run goes on (what `ps` would show anyone)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        self.seen.add((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass
            self._stop.wait(0.05)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def hostile_login(pg_db: Database) -> Iterator[tuple[str, str]]:
    """A login role whose password holds every character that breaks a parser; yields (role, password)."""
    role = f"capital_scan_{secrets.token_hex(4)}"
    password = hostile_password()
    seed_db(pg_db, juntas=2)
    with login_role(pg_db, role, password):
        yield role, password


def leaks(password: str, texts: dict[str, bytes]) -> list[str]:
    """Where any fragment of the password (or its URL-encoded form) appears."""
    needles = fragments(password) | {urllib.parse.quote(password, safe="").encode()}
    return sorted(f"{where}: {needle!r}" for where, text in texts.items() for needle in needles if needle in text)


def written_under(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def test_ansible_playbook_migrate_and_rollback_leave_no_fragment_of_the_password(
    pg_db: Database, hostile_login: tuple[str, str], tmp_path: Path
) -> None:
    role, password = hostile_login
    env = playbook_env({k: v for k, v in pg_db.env.items() if k != "PGPASSWORD"},
                       PGUSER=role, PGPASSWORD=password, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dirs = {"capital_backup_dir": str(tmp_path / "backups"), "capital_report_dir": str(tmp_path / "reports")}

    with ProcessWatch() as watch:
        migrated = run_playbook("playbooks/migrate.yml", env, dirs, args=["-v"])
        rolled = run_playbook("playbooks/rollback.yml", env, dirs, args=["-v"])

    assert migrated.rc == 0, migrated.output[-3000:]
    assert rolled.rc == 0, rolled.output[-3000:]
    assert list((tmp_path / "backups").glob("rollback-export-*.sql")), "the rollback exported nothing?"
    found = leaks(password, {
        "migrate output": migrated.output.encode(), "rollback output": rolled.output.encode(),
        **written_under(tmp_path / "backups", tmp_path / "reports", tmp_path / "tmp"),
        **{f"ps: {line[:60]}": line.encode() for line in watch.seen},
    })
    assert found == []


def test_the_cli_with_a_database_url_and_kept_artifacts_leaves_no_fragment_of_the_password(
    pg_db: Database, hostile_login: tuple[str, str], tmp_path: Path
) -> None:
    role, password = hostile_login
    cluster = pg_db.cluster
    url = (f"postgresql://{role}:{urllib.parse.quote(password, safe='')}@{cluster.host}:{cluster.port}/"
           f"{urllib.parse.quote(pg_db.name)}")
    (tmp_path / "tmp").mkdir()
    env = base_env({"THE_URL": url, "TMPDIR": str(tmp_path / "tmp")})
    args = ["--database-url-env", "THE_URL", "--keep-artifacts", "--report-dir", str(tmp_path / "reports"),
            "-e", f"capital_backup_dir={tmp_path / 'backups'}"]

    with ProcessWatch() as watch:
        migrated = run_cli(["migrate", *args], env)
        status = run_cli(["status", "--database-url-env", "THE_URL", "--json"], env)
        rolled = run_cli(["rollback", "--json", *args], env)

    assert migrated.code == 0, migrated.stdout + migrated.stderr
    assert rolled.code == 0, rolled.stdout + rolled.stderr
    assert '"applied"' in status.stdout
    kept: dict[str, Any] = written_under(tmp_path / "tmp")
    assert any("artifacts" in k for k in kept), "--keep-artifacts kept nothing?"
    found = leaks(password, {
        **{f"{name} {stream}": text.encode() for name, done in (("migrate", migrated), ("status", status),
                                                                 ("rollback", rolled))
           for stream, text in (("stdout", done.stdout), ("stderr", done.stderr))},
        **written_under(tmp_path / "backups", tmp_path / "reports"), **kept,
        **{f"ps: {line[:60]}": line.encode() for line in watch.seen},
    })
    assert found == []


def test_a_password_with_template_braces_in_the_inventory_is_refused_by_the_cli_without_a_fragment(
    tmp_path: Path,
) -> None:
    """Ansible templates a `{{` in a plain inventory value and quotes the value in its error; the CLI reads
    the inventory first and refuses with exit 2, naming the fix (`!unsafe`), quoting nothing."""
    password = "Qx{{Zj-KVWQ{%XJ"
    inventory = tmp_path / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    (inventory / "group_vars" / "all" / "main.yml").write_text(f'capital_db_password: "{password}"\n')

    done = run_cli(["status", "-i", str(inventory)], base_env())

    assert done.code == 2, done.stdout + done.stderr
    assert "!unsafe" in done.stderr
    assert leaks(password, {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}) == []


def operator_inventory(root: Path, pg_db: Database, role: str, vault_line: str) -> tuple[Path, Path]:
    """An inventory laid out like inventories/<env>: the password named from an encrypted vault file, as
    group_vars/all/main.yml does; returns (inventory, vault password file)."""
    cluster = pg_db.cluster
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n")
    (root / "group_vars" / "all" / "main.yml").write_text(
        f"capital_env: scan\ncapital_db_host: {cluster.host}\ncapital_db_port: {cluster.port}\n"
        f"capital_db_name: {pg_db.name}\ncapital_db_user: {role}\n"
        "capital_db_password: \"{{ vault_capital_db_password | default('') }}\"\n")
    vault, secret = root / "group_vars" / "all" / "vault.yml", root.parent / "vault-pass"
    vault.write_text(vault_line + "\n")
    secret.write_text("scan-vault-key\n")
    encrypted = subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt",
                                "--vault-password-file", str(secret), str(vault)],
                               capture_output=True, text=True, check=False)
    assert encrypted.returncode == 0, encrypted.stderr
    return root, secret


@pytest.mark.parametrize("where", ["vault", "plain group_vars"])
def test_ansible_playbook_refuses_a_password_it_would_template_without_printing_a_fragment(
    pg_db: Database, hostile_login: tuple[str, str], tmp_path: Path, where: str
) -> None:
    """Not marked !unsafe, a `{{` in the password is a template to Ansible, and a failed template prints the
    source line. The connection gate reads the value untemplated and refuses it, naming the fix; nothing is
    written and nothing of the password is printed or reported."""
    role, password = hostile_login
    inventory, secret = operator_inventory(tmp_path / "inventory", pg_db, role,
                                           f"vault_capital_db_password: {json.dumps(password)}")
    if where == "plain group_vars":
        (inventory / "group_vars" / "all" / "main.yml").write_text(
            (inventory / "group_vars" / "all" / "main.yml").read_text().replace(
                "\"{{ vault_capital_db_password | default('') }}\"", json.dumps(password)))
    env = playbook_env({k: v for k, v in pg_db.env.items() if k not in ("PGPASSWORD", "PGUSER")})
    dirs = {"capital_backup_dir": str(tmp_path / "backups"), "capital_report_dir": str(tmp_path / "reports")}

    done = run_playbook("playbooks/migrate.yml", env, dirs, inventory=inventory,
                        args=["--vault-password-file", str(secret), "-v"])

    assert done.rc != 0
    assert "Mark the value !unsafe" in done.output
    assert done.stats["capital_report"]["run"]["bad_input"] is True
    assert not (tmp_path / "backups").exists()
    assert leaks(password, {"output": done.output.encode(), **written_under(tmp_path / "reports")}) == []


def test_a_password_marked_unsafe_in_an_encrypted_vault_logs_in_through_ansible_playbook(
    pg_db: Database, hostile_login: tuple[str, str], tmp_path: Path
) -> None:
    """vault.yml.example's way: `!unsafe` in the vault, named from group_vars. The role has only this password
    (no PGPASSWORD), so the run could not log in without it; nothing of it is printed or written."""
    role, password = hostile_login
    inventory, secret = operator_inventory(tmp_path / "inventory", pg_db, role,
                                           f"vault_capital_db_password: !unsafe {json.dumps(password)}")
    env = playbook_env({k: v for k, v in pg_db.env.items() if k not in ("PGPASSWORD", "PGUSER")})
    dirs = {"capital_backup_dir": str(tmp_path / "backups"), "capital_report_dir": str(tmp_path / "reports")}

    done = run_playbook("playbooks/migrate.yml", env, dirs, inventory=inventory,
                        args=["--vault-password-file", str(secret), "-v"])

    assert done.rc == 0, done.output[-3000:]
    assert done.stats["capital_report"]["run"]["outcome"] == "success"
    assert leaks(password, {"output": done.output.encode(),
                            **written_under(tmp_path / "backups", tmp_path / "reports")}) == []
