"""The playbooks end to end, as an operator runs them: ansible-playbook from the repository root against a
real throwaway PostgreSQL, connection from the libpq environment (inventories/local)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from capital_migrate.datagen import table_checksums
from migration_helpers import seed_db
from test_rollback import GUIDE_VERIFY_ROLLBACK, fingerprint, query, write_application_rows

ROOT = Path(__file__).resolve().parents[2]


def run_playbook(db: Any, playbook: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    """ansible-playbook <playbook> -i inventories/local with backups and reports under tmp_path."""
    argv = [
        str(ROOT / ".venv" / "bin" / "ansible-playbook"),
        playbook,
        "-i",
        "inventories/local",
        "-e",
        f"capital_backup_dir={tmp_path / 'backups'}",
        "-e",
        f"capital_report_dir={tmp_path / 'reports'}",
        *extra,
    ]
    run_env = {
        **(env if env is not None else db.env),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(argv, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600, check=False)


def checksums(db: Any) -> dict[str, str]:
    conn = db.connect()
    try:
        return table_checksums(conn)
    finally:
        conn.close()


def test_round_trip_reverse_keeps_every_row(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=3)
    shape = fingerprint(pg_db)

    migrated = run_playbook(pg_db, "migrate.yml", tmp_path)
    assert migrated.returncode == 0, migrated.stdout[-3000:]
    write_application_rows(pg_db)
    expected = checksums(pg_db)

    rolled = run_playbook(pg_db, "rollback.yml", tmp_path)

    assert rolled.returncode == 0, rolled.stdout[-3000:]
    assert checksums(pg_db) == expected
    assert fingerprint(pg_db) == shape
    assert query(pg_db, GUIDE_VERIFY_ROLLBACK) == [(False,)]


def test_round_trip_restore_brings_back_the_backup(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=3)
    shape = fingerprint(pg_db)
    before = checksums(pg_db)
    migrated = run_playbook(pg_db, "migrate.yml", tmp_path)
    assert migrated.returncode == 0, migrated.stdout[-3000:]
    # The backup's identity is preflight's reading (same play, same connection): no second read, the same
    # manifest, and the restore below accepts it as this database's own.
    # (Skipped tasks are not shown: ansible.cfg's display_skipped_hosts = false.)
    assert "TASK [preflight : preflight | Read size, privileges, activity and migration objects" in migrated.stdout
    assert "TASK [backup : backup | Read the database's identity]" not in migrated.stdout
    [manifest_path] = (tmp_path / "backups").glob("local-*.dump.manifest.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    [(sysid, version_num)] = query(pg_db, "SELECT system_identifier::text, current_setting('server_version_num')::int"
                                          " FROM pg_control_system()")
    assert (manifest["database"], manifest["system_identifier"], manifest["server_version_num"]) == \
        (pg_db.name, sysid, version_num)
    write_application_rows(pg_db)

    restored = run_playbook(pg_db, "rollback.yml", tmp_path, "-e", "capital_rollback_mode=restore")

    assert restored.returncode == 0, restored.stdout[-3000:]
    assert checksums(pg_db) == before
    assert fingerprint(pg_db) == shape
    safety = list((tmp_path / "backups").glob("local-safety-*.dump"))
    assert len(safety) == 1 and safety[0].stat().st_mode & 0o777 == 0o600


def test_failure_in_the_migrate_stage_rolls_back_and_exits_non_zero(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=2)
    shape = fingerprint(pg_db)
    before = checksums(pg_db)
    blocker = pg_db.connect()
    blocker.cursor().execute('LOCK TABLE "Junta" IN ACCESS SHARE MODE')  # a reader that never finishes
    try:
        result = run_playbook(
            pg_db, "migrate.yml", tmp_path, "-e", "capital_lock_timeout=100ms", "-e", "capital_lock_retries=1"
        )
    finally:
        blocker.rollback()
        blocker.close()

    assert result.returncode != 0
    assert "failed in stage migrate and was rolled back" in result.stdout
    assert "lock timeout" in result.stdout
    assert fingerprint(pg_db) == shape
    assert checksums(pg_db) == before


def test_failure_in_the_verify_stage_rolls_back_and_exits_non_zero(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=2)
    # The verification suite creates its own fixtures; a row already holding one of their ids makes it fail
    # after the migration has been applied (a real failure, not a mocked one).
    query(pg_db, """INSERT INTO "User" (id, username) VALUES ('zz-verify-user', 'already here')""")
    shape = fingerprint(pg_db)
    before = checksums(pg_db)

    result = run_playbook(pg_db, "migrate.yml", tmp_path)

    assert result.returncode != 0
    assert "failed in stage verify and was rolled back" in result.stdout
    assert fingerprint(pg_db) == shape
    assert checksums(pg_db) == before


def test_production_refuses_without_confirmation(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    result = run_playbook(pg_db, "migrate.yml", tmp_path, "-e", "capital_require_confirmation=true")
    assert result.returncode != 0
    assert "capital_confirm_production=true" in result.stdout
    assert fingerprint(pg_db) == shape
    assert not (tmp_path / "backups").exists()


def test_second_migrate_run_changes_nothing(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    assert run_playbook(pg_db, "migrate.yml", tmp_path).returncode == 0
    again = run_playbook(pg_db, "migrate.yml", tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert " changed=0 " in again.stdout


def test_invalid_variable_is_refused_before_anything_changes(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    result = run_playbook(pg_db, "migrate.yml", tmp_path, "-e", "capital_lock_retries=many")
    assert result.returncode != 0
    assert "capital_lock_retries" in result.stdout
    assert fingerprint(pg_db) == shape


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"PGPASSWORD": "wrong-" + uuid.uuid4().hex}, "password authentication failed"),
        ({"PGDATABASE": "no_such_database"}, 'database "no_such_database" does not exist'),
        ({"PGHOST": "127.0.0.1", "PGPORT": "1"}, "Connection refused"),
    ],
    ids=["wrong-password", "missing-database", "unreachable-host"],
)
def test_bad_connection_fails_in_preflight_with_the_cause(
    pg_db: Any, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    result = run_playbook(pg_db, "migrate.yml", tmp_path, env={**pg_db.env, **change})
    assert result.returncode != 0
    assert "Preflight refused" in result.stdout
    assert expected in result.stdout
    assert fingerprint(pg_db) == shape
    assert not list((tmp_path / "backups").glob("*.dump"))


def test_password_never_appears_in_output_files_or_process_list(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=2)
    password = pg_db.env["PGPASSWORD"]
    seen: list[str] = []
    done = threading.Event()

    def watch_processes() -> None:
        while not done.is_set():
            for proc in Path("/proc").iterdir():
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if password in cmdline:
                    seen.append(cmdline)
            done.wait(0.02)

    watcher = threading.Thread(target=watch_processes)
    watcher.start()
    # The runs' temp files (the connection role's pgpass file among them) land under tmp_path, checked below.
    env = {**pg_db.env, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    try:
        result = run_playbook(pg_db, "migrate.yml", tmp_path, "-v", env=env)
        rolled = run_playbook(pg_db, "rollback.yml", tmp_path, "-v", env=env)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0 and rolled.returncode == 0
    assert seen == []
    assert password not in result.stdout + result.stderr + rolled.stdout + rolled.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(("playbook", "succeeds"), [("preflight.yml", True), ("verify.yml", False)])
def test_the_password_file_is_removed_when_the_run_ends(pg_db: Any, tmp_path: Path, playbook: str,
                                                        succeeds: bool) -> None:
    """The connection role's pgpass file lives only as long as the run, whether it passes or fails (verify.yml
    on an unmigrated database fails)."""
    seed_db(pg_db, juntas=1)
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    result = run_playbook(pg_db, playbook, tmp_path, env={**pg_db.env, "TMPDIR": str(tmp)})

    assert (result.returncode == 0) == succeeds, result.stdout[-3000:]
    assert "connection | Write the password file" in result.stdout
    assert [p.name for p in tmp.iterdir() if p.name.startswith("capital-conn-")] == []


def test_restore_refuses_a_backup_whose_sha256_does_not_match(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    assert run_playbook(pg_db, "migrate.yml", tmp_path).returncode == 0
    dump = next((tmp_path / "backups").glob("local-*.dump"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the dump
    dump.write_bytes(bytes(data))
    shape = fingerprint(pg_db)
    rows = checksums(pg_db)

    result = run_playbook(pg_db, "rollback.yml", tmp_path, "-e", "capital_rollback_mode=restore")

    assert result.returncode != 0
    assert "Refusing to restore" in result.stdout
    assert "its manifest records" in result.stdout
    assert fingerprint(pg_db) == shape  # still migrated, nothing dropped
    assert checksums(pg_db) == rows
    assert not list((tmp_path / "backups").glob("local-safety-*.dump"))


def test_the_guides_rollback_check_runs_character_for_character() -> None:
    text = (ROOT / "files" / "sql" / "guide" / "verify_rollback.sql").read_text(encoding="utf-8")
    assert text.strip() == "-- Check system state\n" + GUIDE_VERIFY_ROLLBACK.strip()


@pytest.mark.parametrize(("opt_in", "check"), [(True, False), (False, False), (True, True)],
                         ids=["cancel_queries", "default", "cancel_queries_check_mode"])
def test_stop_all_activity_cancels_active_queries_only_when_asked(
    pg_db: Any, tmp_path: Path, opt_in: bool, check: bool
) -> None:
    """The guide's rollback step 1 is an explicit opt-in (capital_rollback_cancel_queries): with it, an active
    query of another session on this database is cancelled (never terminated); without it, or in a dry run
    (--check, `rollback --plan`), left alone."""
    import psycopg2

    seed_db(pg_db, juntas=2)
    assert run_playbook(pg_db, "migrate.yml", tmp_path).returncode == 0
    outcome: dict[str, str] = {}
    sleeper = pg_db.connect()
    with sleeper.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]

    def sleep() -> None:
        try:
            with sleeper.cursor() as cur:
                cur.execute("SELECT pg_sleep(120)")
            outcome["query"] = "finished"
        except psycopg2.errors.QueryCanceled:
            outcome["query"] = "cancelled"
            sleeper.rollback()

    thread = threading.Thread(target=sleep)
    thread.start()
    try:
        for _ in range(100):
            if query(pg_db, f"SELECT state FROM pg_stat_activity WHERE pid = {pid}") == [("active",)]:
                break
            threading.Event().wait(0.05)
        extra = [*(["-e", "capital_rollback_cancel_queries=true"] if opt_in else []), *(["--check"] if check else [])]
        rolled = run_playbook(pg_db, "rollback.yml", tmp_path, *extra)
        assert rolled.returncode == 0, rolled.stdout[-3000:]
        still_active = query(pg_db, f"SELECT state FROM pg_stat_activity WHERE pid = {pid}") == [("active",)]
        cancelled_by_rollback = outcome.get("query") == "cancelled"
    finally:
        query(pg_db, f"SELECT pg_cancel_backend({pid})")
        thread.join(timeout=30)
    try:
        # Cancelled, never terminated: the session is still there and usable.
        with sleeper.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        sleeper.close()
    assert query(pg_db, GUIDE_VERIFY_ROLLBACK) == [(check,)]
    cancels = opt_in and not check
    assert still_active is not cancels
    assert cancelled_by_rollback is cancels
    if check:
        assert "a real run would cancel 1 active query" in " ".join(rolled.stdout.split())
