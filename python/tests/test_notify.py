"""The end-of-run notice (plugin_utils/notify.py) against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.prestamos.capital.plugins.plugin_utils.notify import (
    NOTICE_FORMAT,
    build_notice,
    send,
    url_problem,
)
from cli_support import base_env, run_cli
from migration_helpers import seed_db
from notify_support import closed_port_url, receiver, refuse_ddl
from playbook_support import playbook_env, run_playbook

REPORT: dict[str, Any] = {
    "run_id": "abc123", "playbook": "migrate.yml", "env": "staging", "outcome": "rolled_back",
    "failed_stage": "migrate", "cause": "lock_timeout on \"Junta\"\n  after 3 retries",
    "started_at": "2026-12-02T10:00:00Z", "finished_at": "2026-12-02T10:01:00Z", "duration_s": 60.0,
    "stages": [{"name": "preflight", "outcome": "ok", "duration_s": 3.2, "tasks": 12},
               {"name": "migrate", "outcome": "failed", "duration_s": 40.1, "tasks": 5}],
    "data": {"run": {"outcome": "rolled_back"}}, "failures": [{"message": "x"}], "hosts": {},
}


def test_the_notice_carries_the_run_and_nothing_else() -> None:
    notice = build_notice(REPORT, ["/r/x.json", "/r/x.md"], [{"host": "db1", "database": "prestamos"}])
    assert notice == {
        "format": NOTICE_FORMAT, "run_id": "abc123", "playbook": "migrate.yml", "env": "staging",
        "databases": [{"host": "db1", "database": "prestamos"}], "outcome": "rolled_back",
        "failed_stage": "migrate", "cause": 'lock_timeout on "Junta" after 3 retries',
        "started_at": "2026-12-02T10:00:00Z", "finished_at": "2026-12-02T10:01:00Z", "duration_s": 60.0,
        "stages": [{"name": "preflight", "outcome": "ok", "duration_s": 3.2},
                   {"name": "migrate", "outcome": "failed", "duration_s": 40.1}],
        "report": ["/r/x.json", "/r/x.md"],
    }


def test_a_receiver_that_answers_gets_one_json_post_with_the_headers() -> None:
    notice = build_notice(REPORT, [])
    with receiver(status=204) as hook:
        warning = send(hook.url, notice, {"Authorization": "Bearer s3cr3t-QXZJ"})
    assert warning is None
    assert hook.notices() == [notice]
    assert hook.received[0]["headers"]["Authorization"] == "Bearer s3cr3t-QXZJ"
    assert hook.received[0]["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize("case", ["http_500", "down", "slow"])
def test_a_receiver_that_fails_only_warns_naming_the_host_not_the_token(case: str) -> None:
    headers = {"Authorization": "Bearer s3cr3t-QXZJ"}
    if case == "down":
        warning = send(closed_port_url(), build_notice(REPORT, []), headers, timeout=2)
        expected = "unreachable"
    else:
        with receiver(status=500 if case == "http_500" else 204, delay_s=2.0 if case == "slow" else 0) as hook:
            warning = send(hook.url, build_notice(REPORT, []), headers, timeout=0.5)
        expected = "HTTP 500" if case == "http_500" else "timed out"
    assert warning is not None and expected in warning, warning
    assert "http://127.0.0.1:" in warning and "outcome stands" in warning
    assert "T0KEN" not in warning and "s3cr3t" not in warning


@pytest.mark.parametrize("url", ["", "ftp://x/y", "file:///etc/passwd", "http://", "http://h:port/x", 5])
def test_only_http_urls_are_receivers(url: Any) -> None:
    assert url_problem(url) is not None
    assert send(url, {}) is not None


# --------------------------------------------------------------------- end to end: a real run, a real receiver

QUALITY_KINDS = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles" / "preflight" / "vars" / "main.yml")
                               .read_text(encoding="utf-8"))["__capital_preflight_quality_kinds"]


@pytest.mark.parametrize(("plant", "outcome", "code"), [
    (None, "success", 0),
    ("refuse_triggers", "rolled_back", 4),
    ("refuse_alter_and_drop", "rollback_failed", 5),
    ("dirty_data", "preflight_refused", 3),
])
def test_every_outcome_reaches_the_receiver_through_the_cli(
    pg_db: Any, tmp_path: Path, plant: str | None, outcome: str, code: int
) -> None:
    """One notice per run, with the report's outcome word; the run's exit code is the report's, not the
    receiver's; nothing of the password, the token in the URL's path or the Authorization header's value
    goes anywhere but to the receiver."""
    seed_db(pg_db, juntas=2, dirty=plant == "dirty_data")
    if plant == "refuse_triggers":
        refuse_ddl(pg_db, plant, ["CREATE TRIGGER"])
    elif plant == "refuse_alter_and_drop":
        refuse_ddl(pg_db, plant, ["ALTER TABLE", "DROP TABLE"])
    settings = tmp_path / "notify.yml"
    with receiver() as hook:
        settings.write_text(json.dumps({"capital_notify_url": hook.url,
                                        "capital_notify_headers": {"Authorization": "Bearer QXZJ-h3ader-KVWQ"},
                                        "capital_preflight_fail_on": QUALITY_KINDS}))
        done = run_cli(["migrate", "--json", "--report-dir", str(tmp_path / "reports"),
                        "-e", f"capital_backup_dir={tmp_path / 'backups'}", "-e", f"@{settings}"],
                       base_env(pg_db.cluster.env(pg_db.name)))
    assert done.code == code, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(hook.received) == 1, hook.received
    notice = hook.notices()[0]
    assert notice["outcome"] == outcome == done.json()["outcome"]
    assert notice["playbook"] == "migrate.yml"
    assert [d["database"] for d in notice["databases"]] == [pg_db.name]
    assert all(Path(p).is_file() for p in notice["report"]) and notice["report"]
    if outcome != "success":
        assert notice["failed_stage"] and notice["cause"]
    assert hook.received[0]["headers"]["Authorization"] == "Bearer QXZJ-h3ader-KVWQ"
    written = b"".join(p.read_bytes() for p in (tmp_path / "reports").rglob("*") if p.is_file())
    for secret in (pg_db.env["PGPASSWORD"].encode(), b"T0KEN-in-the-path", b"QXZJ-h3ader-KVWQ"):
        assert secret not in hook.received[0]["raw"]
        assert secret not in written
        assert secret not in (done.stdout + done.stderr).encode()


@pytest.mark.parametrize("receiver_state", ["down", "slow"])
def test_a_receiver_that_is_down_or_slow_only_warns_and_the_run_stands(
    pg_db: Any, tmp_path: Path, receiver_state: str
) -> None:
    """Through plain ansible-playbook: the migration succeeds and exits 0; the notice's failure is a warning."""
    seed_db(pg_db, juntas=2)
    dirs = {"capital_backup_dir": str(tmp_path / "backups"), "capital_report_dir": str(tmp_path / "reports")}
    if receiver_state == "down":
        done = run_playbook("playbooks/migrate.yml", playbook_env(pg_db.env),
                            {**dirs, "capital_notify_url": closed_port_url()})
    else:
        with receiver(delay_s=8) as hook:
            done = run_playbook("playbooks/migrate.yml", playbook_env(pg_db.env),
                                {**dirs, "capital_notify_url": hook.url})
        assert len(hook.received) == 1
    assert done.rc == 0, done.output[-3000:]
    assert done.stats["capital_report"]["run"]["outcome"] == "success"
    text = " ".join(done.output.split())
    assert ("unreachable" if receiver_state == "down" else "timed out") in text
    assert "the run's outcome stands" in text and "T0KEN" not in text


def test_scheduled_verification_catches_one_cent_and_notifies(pg_db: Any, tmp_path: Path) -> None:
    """Post-migration monitoring: verify.yml on an applied database. An update that bypasses the triggers moves
    one junta's available capital by one cent: verify exits non-zero, and the notice says the run failed in
    the verify stage. Before the planted cent the same run passes and notifies success."""
    seed_db(pg_db, juntas=3)
    dirs = {"capital_backup_dir": str(tmp_path / "backups"), "capital_report_dir": str(tmp_path / "reports")}
    assert run_playbook("playbooks/migrate.yml", playbook_env(pg_db.env), dirs).rc == 0
    env = playbook_env(pg_db.env)
    with receiver() as hook:
        clean = run_playbook("playbooks/verify.yml", env, {**dirs, "capital_notify_url": hook.url})
        conn = pg_db.connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL session_replication_role = replica")  # no trigger fires
                cur.execute('UPDATE "Junta" SET available_capital = available_capital + 0.01 '
                            'WHERE id = (SELECT min(id) FROM "Junta")')
        finally:
            conn.close()
        drifted = run_playbook("playbooks/verify.yml", env, {**dirs, "capital_notify_url": hook.url})
    assert clean.rc == 0, clean.output[-3000:]
    assert drifted.rc != 0
    assert [n["outcome"] for n in hook.notices()] == ["success", "failed"]
    assert hook.notices()[1]["failed_stage"] == "verify"
    assert "(difference 0.01)" in hook.notices()[1]["cause"]
