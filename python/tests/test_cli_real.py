"""capital-migrate against the real playbooks and real throwaway PostgreSQL: every failure made to happen.

Skipped only while the migrate role is not in the checkout (roles/migrate/tasks/main.yml).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from capital_migrate import datagen
from capital_migrate.exitcodes import ExitCode
from cli_support import DISTINCTIVE, REPO, base_env, files_containing, run_cli

pytestmark = pytest.mark.skipif(
    not (REPO / "roles" / "migrate" / "tasks" / "main.yml").exists(),
    reason="needs the migrate role (roles/migrate/tasks/main.yml)",
)


def _filled(pg_db: Any, juntas: int = 2, seed: int = 3) -> None:
    with pg_db.connect() as conn:
        datagen.generate(conn, seed=seed, juntas=juntas)
    conn.close()


def _env(pg_db: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env({**pg_db.cluster.env(pg_db.name), **extra})


def _args(tmp_path: Path) -> list[str]:
    return ["--quiet", "--json", "--report-dir", str(tmp_path / "reports"),
            "-e", f"capital_backup_dir={tmp_path / 'backups'}"]


def test_rehearse_generated_data_succeeds_with_summary(tmp_path: Path) -> None:
    done = run_cli(["rehearse", "--juntas", "3", "--seed", "7", "--report-dir", str(tmp_path)], base_env())
    assert done.code == ExitCode.SUCCESS, done.stdout + done.stderr
    assert "RESULT: SUCCESS" in done.stdout
    for stage in ("preflight", "backup", "migrate", "verify"):
        assert f"  {stage} " in done.stdout


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_rehearse_from_dump(pg_db: Any, tmp_path: Path, fmt: str) -> None:
    _filled(pg_db)
    dump = tmp_path / ("prod.dump" if fmt == "custom" else "prod.sql")
    argv = ["pg_dump", "--no-password", "-f", str(dump), pg_db.name]
    if fmt == "custom":
        argv.insert(1, "-Fc")
    subprocess.run(argv, env=pg_db.env, check=True)
    done = run_cli(["rehearse", "--from-dump", str(dump), "--json", "--quiet", "--report-dir", str(tmp_path / "r")],
                   base_env())
    assert done.code == ExitCode.SUCCESS, done.stderr
    doc = done.json()
    assert doc["rehearsal"] == {**doc["rehearsal"], "source": "dump", "dump_format": fmt}
    assert doc["data"]["migrate"]["state_after"] == "applied"


def test_every_subcommand_on_a_real_database(pg_db: Any, tmp_path: Path) -> None:
    _filled(pg_db)
    env = _env(pg_db, tmp_path)
    status = run_cli(["status", "--json", "--report-dir", str(tmp_path / "reports")], env)
    assert status.code == 0 and status.json()["status"]["state"] == "not_applied"
    for command in ("preflight", "plan", "backup", "migrate", "verify"):
        extra = ["-e", "capital_change_ticket=CHG-4711"] if command == "migrate" else []
        done = run_cli([command, *_args(tmp_path), *extra], env)
        assert done.code == ExitCode.SUCCESS, (command, done.stderr, done.stdout)
        doc = done.json()
        if command == "migrate":  # the report's evidence for the change record, from this run's own measurements
            report = json.loads(Path(doc["report"]["json"]).read_text(encoding="utf-8"))
            [entry] = report["evidence"]
            assert entry["approval"] == {"change_ticket": "CHG-4711"}
            assert entry["backup"]["sha256"] == doc["data"]["backup"]["sha256"] and len(entry["backup"]["sha256"]) == 64
            assert entry["verification"]["passed"] is True and entry["verification"]["capital_discrepancies"] == 0
            assert {"connection", "backup_space", "migration_state"} <= {c["name"] for c in entry["preflight_checks"]}
            assert entry["locks"]["lock_retries"] == 0 and entry["locks"]["longest_statement"]["seconds"] > 0
            markdown = Path(doc["report"]["markdown"]).read_text(encoding="utf-8")
            assert "## Evidence for the change record" in markdown and entry["backup"]["sha256"] in markdown
    status = run_cli(["status", "--json", "--report-dir", str(tmp_path / "reports")], env)
    assert status.code == 0
    doc = status.json()
    assert doc["status"]["state"] == "applied"
    assert doc["status"]["last_history"]["outcome"] == "applied"
    assert doc["status"]["last_report"]["outcome"] == "success"
    rollback = run_cli(["rollback", *_args(tmp_path)], env)
    assert rollback.code == ExitCode.SUCCESS, rollback.stderr
    status = run_cli(["status", "--json", "--report-dir", str(tmp_path / "reports")], env)
    assert status.json()["status"]["state"] == "not_applied"


def test_wrong_password_is_preflight_refused(pg_db: Any, tmp_path: Path) -> None:
    _filled(pg_db)
    cluster = pg_db.cluster
    url = f"postgresql://{cluster.user}:{DISTINCTIVE}@{cluster.host}:{cluster.port}/{pg_db.name}"
    done = run_cli(["migrate", "--database-url-env", "THE_URL", *_args(tmp_path)],
                   base_env({"THE_URL": url}))
    assert done.code == ExitCode.PREFLIGHT_REFUSED, done.stderr
    assert DISTINCTIVE not in done.stdout + done.stderr
    assert files_containing(tmp_path, DISTINCTIVE) == []
    with pg_db.connect() as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('capital_movements')")
        assert cur.fetchone() == (None,)
    conn.close()


def test_lock_held_by_another_session(pg_db: Any, tmp_path: Path) -> None:
    _filled(pg_db)
    holder = pg_db.connect()
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("select pg_advisory_lock(hashtext('prestamos.capital_tracking'))")
        done = run_cli(["migrate", *_args(tmp_path)], _env(pg_db, tmp_path))
    finally:
        holder.close()
    assert done.code == ExitCode.LOCK_HELD, done.stdout + done.stderr
    doc = done.json()
    # Preflight sees the holder first and names it; the migrate module would refuse the same way.
    assert doc["outcome"] in ("lock_held", "preflight_refused")
    assert "holds the migration lock" in (doc["cause"] or "")


def test_status_reports_drift_after_the_sql_changed(pg_db: Any, tmp_path: Path) -> None:
    _filled(pg_db)
    env = _env(pg_db, tmp_path)
    assert run_cli(["migrate", *_args(tmp_path)], env).code == 0
    copy = tmp_path / "checkout"
    shutil.copytree(REPO / "files", copy / "files")
    shutil.copytree(REPO / "inventories", copy / "inventories")
    shutil.copytree(REPO / "python" / "ansible_collections", copy / "python" / "ansible_collections")
    piece = sorted((copy / "files" / "sql").glob("1*.sql"))[0]
    piece.write_text(piece.read_text() + "\n-- edited after it was applied\n")
    done = run_cli(["status", "--json", "--report-dir", str(tmp_path / "reports")],
                   {**env, "CAPITAL_REPO_ROOT": str(copy)})
    assert done.code == ExitCode.DRIFT, done.stderr
    assert done.json()["status"]["state"] == "drifted"
    text = run_cli(["status", "--report-dir", str(tmp_path / "reports")], {**env, "CAPITAL_REPO_ROOT": str(copy)})
    assert "DRIFTED" in text.stdout


def _event_trigger(pg_db: Any, name: str, tags: list[str]) -> None:
    """An event trigger that makes given DDL fail: a real failure inside the migration or the rollback."""
    with pg_db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"""
            create function {name}() returns event_trigger language plpgsql as $$
            begin raise exception 'injected failure: % refused by the test', tg_tag; end $$;
            create event trigger {name} on ddl_command_start
              when tag in ({", ".join("'" + t + "'" for t in tags)}) execute function {name}();""")
    conn.close()


def test_failure_in_migrate_is_rolled_back(pg_db: Any, tmp_path: Path) -> None:
    _filled(pg_db)
    _event_trigger(pg_db, "refuse_triggers", ["CREATE TRIGGER"])
    done = run_cli(["migrate", *_args(tmp_path)], _env(pg_db, tmp_path))
    assert done.code == ExitCode.ROLLED_BACK, done.stdout + done.stderr
    doc = done.json()
    assert doc["outcome"] == "rolled_back"
    assert "injected failure" in (doc["cause"] or "")
    with pg_db.connect() as conn, conn.cursor() as cur:
        cur.execute("select to_regclass('capital_movements')")
        assert cur.fetchone() == (None,)
    conn.close()


def test_failed_rollback_needs_a_human(pg_db: Any, tmp_path: Path) -> None:
    _filled(pg_db)
    # The migration fails at its first ALTER TABLE (after the expand tables committed); the rollback
    # then cannot drop those tables.
    _event_trigger(pg_db, "refuse_alter_and_drop", ["ALTER TABLE", "DROP TABLE"])
    done = run_cli(["migrate", *_args(tmp_path)], _env(pg_db, tmp_path))
    assert done.code == ExitCode.ROLLBACK_FAILED, done.stdout + done.stderr
    assert done.json()["outcome"] == "rollback_failed"
