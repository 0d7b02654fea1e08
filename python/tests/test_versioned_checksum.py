"""Versioned checksums (issue 18): a pure reorganisation of files/sql leaves a database applied by the earlier
layout `applied` once that layout's checksum is accepted for the migration version; without it, drifted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    ACCEPTED_FILE,
    MigrationError,
    Migrator,
    Options,
    load_sql_dir,
)
from capital_migrate.exitcodes import ExitCode
from cli_support import REPO, base_env, run_cli
from migration_helpers import SQL_DIR, migrate, seed_db
from playbook_support import playbook_env, run_playbook


def reorganised_copy(tmp_path: Path, accept: list[str]) -> Path:
    """files/sql with one comment reworded (a new checksum, the same objects) and ``accept`` for version 1."""
    copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, copy)
    piece = copy / "13_indexes.sql"
    piece.write_text(piece.read_text().replace("-- 13_indexes.sql -- expand, step 4:", "-- 13_indexes.sql -- step 4:"))
    doc = json.loads((copy / ACCEPTED_FILE).read_text())
    doc["accepted"]["1"] = accept
    (copy / ACCEPTED_FILE).write_text(json.dumps(doc))
    return copy


def run(db: Any, sql_dir: Path, check: bool = False) -> dict[str, Any]:
    conn = db.connect()
    try:
        return Migrator(conn, load_sql_dir(sql_dir), Options()).run(check_mode=check)
    finally:
        conn.close()


def test_a_reorganised_layout_keeps_an_applied_database_applied_only_when_accepted(
    pg_db: Any, tmp_path: Path
) -> None:
    seed_db(pg_db, juntas=1)
    applied_with = migrate(pg_db)["sql_sha256"]

    with pytest.raises(MigrationError) as drift:
        run(pg_db, reorganised_copy(tmp_path / "a", accept=[]))
    assert drift.value.details["drift"] is True

    accepted = reorganised_copy(tmp_path / "b", accept=[applied_with])
    result = run(pg_db, accepted)
    assert result["sql_sha256"] != applied_with
    assert (result["state_before"], result["state_after"], result["changed"]) == ("applied", "applied", False)

    # preflight (its own state check reads the module's accepted list) and status agree.
    preflight = run_playbook("playbooks/preflight.yml", playbook_env(pg_db.env),
                             {"capital_sql_dir": str(accepted), "capital_backup_dir": str(tmp_path / "bk"),
                              "capital_report_dir": str(tmp_path / "r")})
    assert preflight.rc == 0, preflight.output[-3000:]
    assert preflight.checks()["migration_state"]["value"]["state"] == "applied"
    checkout = tmp_path / "checkout"
    (checkout / "files").mkdir(parents=True)
    shutil.copytree(accepted, checkout / "files" / "sql")
    shutil.copytree(REPO / "inventories", checkout / "inventories")
    shutil.copytree(REPO / "python" / "ansible_collections", checkout / "python" / "ansible_collections")
    status = run_cli(["status", "--json", "--report-dir", str(tmp_path / "r")],
                     {**base_env(pg_db.cluster.env(pg_db.name)), "CAPITAL_REPO_ROOT": str(checkout)})
    assert status.code == ExitCode.SUCCESS, status.stdout + status.stderr
    assert status.json()["status"]["state"] == "applied"
