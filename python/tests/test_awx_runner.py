"""Run the playbooks the way AWX does, without AWX: `ansible-runner run` on an AWX-shaped private data dir.

AWX (through receptor, in the execution environment) hands ansible-runner a private data directory:
`project/` (the project checkout), `inventory/hosts` (an executable printing the inventory as JSON),
`env/extravars` (survey answers), `env/envvars` (what the credential types inject, plus AWX's own
variables), `env/settings`, and the files credential types inject (`{{ tower.filename }}`). The job's
events, stdout and the run report come back as artifacts. These tests build exactly that directory
for the "Prestamos PostgreSQL" credential type of awx/controller_configuration.yml, against a
throwaway PostgreSQL, and check what lands in the artifacts.

What ansible-runner 2.4 writes to disk (found while writing these tests, see docs/awx.md):
- `artifacts/<ident>/command` (0600) holds the argv, the cwd and the *whole environment* of the
  ansible-playbook process, so every injected environment variable, PGPASSWORD included when a
  credential injects it. AWX deletes the private data dir after the job; the "Prestamos PostgreSQL"
  credential type injects a pgpass file instead, so with it the password is in no artifact at all.
- `env/envvars` and `env/extravars` are inputs written by AWX (or these tests), not by runner.
- A credential type's `extra_vars` injector (the "Prestamos run notice" type: the end-of-run notice's URL
  and Authorization header) is rendered by AWX into a 0400 file `env/tmp*`, every string marked `!unsafe`,
  and handed to ansible-playbook as `-e @<file>` (`env/cmdline` here): the argv in `command` holds the
  path, not the values.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from awx_support import REPO, credential_type
from capital_migrate import datagen
from capital_migrate.pgtmp import Database, clean_environ
from jinja2.sandbox import ImmutableSandboxedEnvironment
from notify_support import receiver, refuse_ddl
from system_support import fragments, hostile_password, login_role
from test_awx_config import render_injectors

BIN = Path(sys.executable).parent
PLAYBOOK_TIMEOUT = 900


@dataclass
class AwxJob:
    """One private data directory plus what is needed to run jobs in it and inspect them."""

    root: Path
    password: str
    mount: Path  # stands for the volume mounted into the job container (backups, reports)
    db: Database
    role: str

    @property
    def report_dir(self) -> Path:
        return self.mount / "reports"

    @property
    def backup_dir(self) -> Path:
        return self.mount / "backups"

    def run(self, playbook: str, ident: str) -> subprocess.CompletedProcess[str]:
        """`ansible-runner run` as the AWX worker does, from a clean environment (no PG* of ours)."""
        env = clean_environ()
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("ANSIBLE_CONFIG", None)  # AWX does not set it: ansible.cfg comes from the project dir
        return subprocess.run(
            [str(BIN / "ansible-runner"), "run", str(self.root), "-p", playbook, "--ident", ident],
            env=env,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )

    def artifacts(self, ident: str) -> Path:
        return self.root / "artifacts" / ident

    def events(self, ident: str) -> list[dict[str, Any]]:
        files = sorted(
            (self.artifacts(ident) / "job_events").glob("*.json"), key=lambda p: int(p.name.split("-")[0])
        )
        return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _inventory_script(hostvars: dict[str, Any], groupvars: dict[str, Any]) -> str:
    """inventory/hosts as AWX writes it: an executable that prints the inventory as JSON."""
    inventory = {
        "all": {"hosts": ["localhost"], "vars": groupvars},
        "_meta": {"hostvars": {"localhost": hostvars}},
    }
    return f"#!{sys.executable}\nprint({json.dumps(inventory)!r})\n"


def build_private_data_dir(
    root: Path, db: Database, user: str, password: str, mount: Path, inject: str
) -> None:
    """Lay out `root` like AWX's private data dir for a job with the Prestamos PostgreSQL credential."""
    (root / "project").symlink_to(REPO, target_is_directory=True)
    # Inventory: the mounted-path route of awx/inventories/ (psql/pg_dump in the EE, backups on a volume).
    _write(
        root / "inventory" / "hosts",
        _inventory_script(
            {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            {
                "capital_env": "staging",
                "capital_backup_dir": str(mount / "backups"),
                "capital_report_dir": str(mount / "reports"),
            },
        ),
        mode=0o700,
    )
    # Survey answers arrive as strings (AWX surveys have no boolean type).
    _write(
        root / "env" / "extravars",
        json.dumps({"capital_env": "staging", "capital_confirm_production": "false"}),
    )
    pgpass = root / "env" / f"tmp{secrets.token_hex(4)}"  # AWX names injected files like this, 0600
    cluster = db.cluster
    cred_env, pgpass_text = render_injectors(
        {
            "host": cluster.host,
            "port": str(cluster.port),
            "database": db.name,
            "username": user,
            "password": password,
            "sslmode": "disable",
        },
        # AWX maps the host path to the container path; without a container both are this path.
        str(pgpass),
    )
    envvars: dict[str, str] = {
        # What AWX itself adds to every job (awx/main/tasks/jobs.py build_env).
        "JOB_ID": "4242",
        "INVENTORY_ID": "7",
        "PROJECT_REVISION": "test",
        "AWX_HOST": "https://awx.example",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_FORCE_COLOR": "False",
        "MAX_EVENT_RES": "700000",
        "ANSIBLE_ROLES_PATH": f"{root}/requirements_roles:./roles:~/.ansible/roles",
        "ANSIBLE_COLLECTIONS_PATHS": f"{root}/requirements_collections:./collections:./python",
        "ANSIBLE_COLLECTIONS_PATH": f"{root}/requirements_collections:./collections:./python",
    }
    if inject == "pgpass":
        envvars.update(cred_env)
        _write(pgpass, pgpass_text + "\n")
    else:
        # What a plain env-only credential type would inject: PGPASSWORD in the environment.
        envvars.update({k: v for k, v in cred_env.items() if k != "PGPASSFILE"})
        envvars["PGPASSWORD"] = password
    _write(root / "env" / "envvars", json.dumps(envvars))
    _write(
        root / "env" / "settings",
        json.dumps(
            {
                "job_timeout": PLAYBOOK_TIMEOUT,
                "idle_timeout": 0,
                "pexpect_timeout": 5,
                "pexpect_use_poll": True,
            }
        ),
    )


def inject_extra_vars_credential(root: Path, type_name: str, inputs: dict[str, str]) -> Path:
    """A credential type's extra_vars injector as AWX applies it (awx/main/models/credential/__init__.py,
    inject_credential): values rendered in a sandbox (nested dicts and lists too), written with every string
    marked !unsafe to a 0400 file in env/, passed as `-e @<file>`."""
    jinja = ImmutableSandboxedEnvironment()

    def render(node: Any) -> Any:
        if isinstance(node, dict):
            return {render(k): render(v) for k, v in node.items()}
        if isinstance(node, list):
            return [render(v) for v in node]
        return jinja.from_string(node).render(**inputs)

    class UnsafeDumper(yaml.SafeDumper):
        pass

    UnsafeDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar("!unsafe", text))
    extra_vars = render(credential_type(type_name)["injectors"]["extra_vars"])
    path = root / "env" / f"tmp{secrets.token_hex(4)}"
    _write(path, yaml.dump(extra_vars, Dumper=UnsafeDumper), mode=0o400)
    cmdline = root / "env" / "cmdline"
    before = cmdline.read_text(encoding="utf-8") + " " if cmdline.exists() else ""
    _write(cmdline, f"{before}-e @{path}")
    return path


@contextmanager
def awx_job_in(pg_db: Database, tmp_path: Path, inject: str) -> Iterator[AwxJob]:
    """A loaded baseline database, a login role with a distinctive password, and an AWX-shaped dir."""
    role = f"capital_awx_{secrets.token_hex(4)}"
    # Built to break parsers; its ':' and '\' exercise the pgpass escaping of the credential type.
    password = hostile_password("Awx")
    conn = pg_db.connect()
    try:
        datagen.generate(conn, seed=11, juntas=6)
        conn.commit()
    finally:
        conn.close()
    mount = tmp_path / "mnt"
    mount.mkdir(mode=0o700)
    root = tmp_path / "pdd"
    root.mkdir(mode=0o700)
    build_private_data_dir(root, pg_db, role, password, mount, inject)
    with login_role(pg_db, role, password):
        yield AwxJob(root, password, mount, pg_db, role)


@pytest.fixture(params=["pgpass", "pgpassword"])
def awx_job(request: pytest.FixtureRequest, pg_db: Database, tmp_path: Path) -> Iterator[AwxJob]:
    with awx_job_in(pg_db, tmp_path, request.param) as job:
        yield job


def _has_ledger(db: Database) -> bool:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.capital_movements') IS NOT NULL")
            row = cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


def _checksums(db: Database) -> dict[str, str]:
    conn = db.connect()
    try:
        return datagen.table_checksums(conn)
    finally:
        conn.close()


def _assert_successful(job: AwxJob, ident: str, result: subprocess.CompletedProcess[str]) -> None:
    artifacts = job.artifacts(ident)
    status = (artifacts / "status").read_text(encoding="utf-8") if (artifacts / "status").exists() else "?"
    stdout = (
        (artifacts / "stdout").read_text(encoding="utf-8")[-6000:] if (artifacts / "stdout").exists() else ""
    )
    assert result.returncode == 0 and status == "successful", (
        f"{ident}: rc={result.returncode} status={status}\n{stdout}\n{result.stderr[-3000:]}"
    )
    assert (artifacts / "rc").read_text(encoding="utf-8").strip() == "0"


def _files_under(path: Path) -> list[Path]:
    return [p for p in sorted(path.rglob("*")) if p.is_file()]


def _assert_no_password(job: AwxJob, paths: list[Path]) -> None:
    """No 4-character fragment of the password, raw or JSON-escaped, in any of the files."""
    needles = fragments(job.password)
    leaked = sorted({f"{p}: {n!r}" for p in paths for n in needles if n in p.read_bytes()})
    assert not leaked, f"the database password appears in: {leaked}"


NOTIFY_SECRETS = (b"T0KEN-in-the-path", b"QXZJ-h3ader-KVWQ")  # notify_support's URL path, the header's core


def _assert_no_notify_secret(paths: list[Path]) -> None:
    leaked = sorted({f"{p}: {s!r}" for p in paths for s in NOTIFY_SECRETS if s in p.read_bytes()})
    assert not leaked, f"a notify secret appears in: {leaked}"


def test_migrate_then_rollback_under_ansible_runner_like_awx(
    awx_job: AwxJob, request: pytest.FixtureRequest
) -> None:
    job = awx_job
    before = _checksums(job.db)
    with_pgpass = request.node.callspec.params["awx_job"] == "pgpass"
    with ExitStack() as stack:
        if with_pgpass:
            # The job templates carry the run notice credential too: one notice per job, at no extra run.
            hook = stack.enter_context(receiver())
            inject_extra_vars_credential(
                job.root, "Prestamos run notice", {"url": hook.url, "authorization": "Bearer awx-QXZJ-h3ader-KVWQ"}
            )
        migrate = job.run("playbooks/migrate.yml", "migrate")
        _assert_successful(job, "migrate", migrate)
        assert _has_ledger(job.db), "migrate job succeeded but capital_movements does not exist"
        # The backup went to the mounted path, not into the job's (ephemeral) private data dir.
        assert _files_under(job.backup_dir), f"no backup under {job.backup_dir}"
        assert not any(job.root.rglob("*.dump")), "a dump landed inside the private data dir"

        rollback = job.run("playbooks/rollback.yml", "rollback")
        _assert_successful(job, "rollback", rollback)
    if with_pgpass:
        assert [(n["playbook"], n["outcome"]) for n in hook.notices()] == [
            ("migrate.yml", "success"), ("rollback.yml", "success")
        ]
    assert not _has_ledger(job.db), "rollback job succeeded but capital_movements still exists"
    assert _checksums(job.db) == before, "legacy tables differ after migrate + rollback"

    for ident, playbook in (("migrate", "playbooks/migrate.yml"), ("rollback", "playbooks/rollback.yml")):
        events = job.events(ident)
        kinds = {e.get("event") for e in events}
        assert {
            "playbook_on_start",
            "playbook_on_task_start",
            "runner_on_ok",
            "playbook_on_stats",
        } <= kinds, ident
        starts = [e for e in events if e.get("event") == "playbook_on_start"]
        assert starts[0]["event_data"]["playbook"] == playbook
        # The run's stats reach AWX as the job's artifacts (set_stats), which a workflow passes downstream.
        stats = next(e for e in events if e.get("event") == "playbook_on_stats")
        assert "capital_report" in (stats["event_data"].get("artifact_data") or {}), ident
        assert (job.artifacts(ident) / "stdout").stat().st_size > 0

    # The run report (callback prestamos.capital.capital_report), one JSON and one Markdown per run.
    reports = sorted(job.report_dir.glob("*.json"))
    assert len(reports) >= 2, f"expected a report per run in {job.report_dir}, found {reports}"
    assert len(sorted(job.report_dir.glob("*.md"))) >= 2
    for report in reports:
        json.loads(report.read_text(encoding="utf-8"))

    # The password: in no job event, no stdout, no report, no backup manifest.
    checked: list[Path] = []
    for ident in ("migrate", "rollback"):
        artifacts = job.artifacts(ident)
        checked += [*_files_under(artifacts / "job_events"), artifacts / "stdout"]
        checked += [p for p in _files_under(artifacts) if p.name != "command"]
    checked += _files_under(job.mount)
    assert len(checked) > 10
    _assert_no_password(job, checked)

    command = job.artifacts("migrate") / "command"
    assert stat.S_IMODE(command.stat().st_mode) == 0o600
    recorded_env = json.loads(command.read_text(encoding="utf-8"))["env"]
    if request.node.callspec.params["awx_job"] == "pgpass":
        # The Prestamos PostgreSQL credential type: the password is in no artifact at all; nor the notice's secrets.
        _assert_no_password(job, _files_under(job.root / "artifacts"))
        _assert_no_notify_secret([*_files_under(job.root / "artifacts"), *_files_under(job.mount)])
        assert "PGPASSWORD" not in recorded_env and recorded_env["PGPASSFILE"].startswith(
            str(job.root / "env")
        )
    else:
        # The finding that made the credential type use a pgpass file: ansible-runner records the whole
        # environment, PGPASSWORD included, in artifacts/<ident>/command (AWX deletes it with the job).
        assert recorded_env.get("PGPASSWORD") == job.password


def test_a_failed_awx_job_sends_one_notice_and_leaves_no_secret_in_the_artifacts(
    pg_db: Database, tmp_path: Path
) -> None:
    """The run notice credential (awx/controller_configuration.yml) injected as AWX does, a migrate job whose
    trigger creation the database refuses: the job fails after rolling back by itself, the receiver on
    127.0.0.1 gets exactly one notice saying so, and neither the URL's token, the Authorization header nor
    the database password is in any artifact, report or job event."""
    header = "Bearer awx-QXZJ-h3ader-KVWQ"
    with awx_job_in(pg_db, tmp_path, "pgpass") as job, receiver() as hook:
        refuse_ddl(job.db, "refuse_triggers", ["CREATE TRIGGER"])
        injected = inject_extra_vars_credential(
            job.root, "Prestamos run notice", {"url": hook.url, "authorization": header}
        )
        result = job.run("playbooks/migrate.yml", "migrate")
    artifacts = job.artifacts("migrate")
    status = (artifacts / "status").read_text(encoding="utf-8")
    assert result.returncode != 0 and status == "failed", (artifacts / "stdout").read_text(encoding="utf-8")[-4000:]
    assert not _has_ledger(job.db), "the migrate job's rescue should have rolled back"

    assert len(hook.received) == 1, hook.received
    (notice,) = hook.notices()
    assert notice["outcome"] == "rolled_back" and notice["failed_stage"] == "migrate", notice
    assert notice["playbook"] == "migrate.yml" and notice["env"] == "staging"
    assert [d["database"] for d in notice["databases"]] == [job.db.name]
    assert hook.received[0]["headers"]["Authorization"] == header
    # AWX shows the job's stats as its artifacts: the same outcome word.
    stats = next(e for e in job.events("migrate") if e.get("event") == "playbook_on_stats")
    assert stats["event_data"]["artifact_data"]["capital_report"]["run"]["outcome"] == "rolled_back"

    # ansible-runner recorded the argv and the environment: the injected file's path, not its values.
    command = json.loads((artifacts / "command").read_text(encoding="utf-8"))
    assert f"@{injected}" in command["command"]
    assert not any("capital_notify" in k or "T0KEN" in v for k, v in command["env"].items())
    written = [*_files_under(job.root / "artifacts"), *_files_under(job.mount)]
    assert any(p.suffix == ".json" for p in _files_under(job.report_dir))
    _assert_no_notify_secret(written)
    _assert_no_password(job, written)
