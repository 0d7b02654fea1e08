"""Restore by identity: a restore takes only this database's own dumps (anchored name, then the manifest's
database and cluster), refuses another's naming both and changing nothing, restores another's only when its
source is named on purpose, and directory-format dumps restore and are refused when a file changed.

Real PostgreSQL, the real backup.yml and rollback.yml. The databases are baseline-only (never migrated), so
the restore's reverse-migration steps are no-ops and these tests pin the choice and the checks of the dump.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from capital_migrate.datagen import table_checksums
from capital_migrate.pgtmp import Cluster, Database, clean_environ
from migration_helpers import run_sql, seed_db
from playbook_support import PlaybookRun, playbook_env, run_playbook
from test_backup import backup, dumps


def database(cluster: Cluster, name: str) -> Database:
    cluster.create_database(name)
    return Database(cluster, name, {**clean_environ(), **cluster.env(name)})


@pytest.fixture
def pair(pg_cluster: Cluster) -> Iterator[tuple[Database, Database]]:
    """`prestamos_<hex>` and `prestamos_<hex>-eu`, different data: the second's dump names start with the
    first's name, as `prestamos-eu`'s do with `prestamos`'s."""
    name = f"prestamos_{uuid.uuid4().hex[:8]}"
    made = []
    try:
        for suffix, seed in (("", 7), ("-eu", 11)):
            made.append(database(pg_cluster, name + suffix))
            seed_db(made[-1], juntas=2, seed=seed)
        yield made[0], made[1]
    finally:
        for db in made:
            pg_cluster.drop_database(db.name)


def checksums(db: Database) -> dict[str, str]:
    with closing(db.connect()) as conn:
        return table_checksums(conn)


def change_rows(db: Database) -> None:
    """What happens after the backup: rows written and removed through the legacy tables."""
    run_sql(db, 'DELETE FROM "PagoPrestamo" WHERE id IN (SELECT id FROM "PagoPrestamo" ORDER BY id LIMIT 3)')
    run_sql(db, 'UPDATE "Accion" SET amount = amount + 1 WHERE id IN (SELECT id FROM "Accion" ORDER BY id LIMIT 5)')


def backed_up(db: Database, backup_dir: Path, tmp_path: Path, **extravars: Any) -> Path:
    run = backup(db, backup_dir, tmp_path / "reports", **extravars)
    assert run.rc == 0, run.output
    return Path(run.report("backup")["file"])


def restore(db: Database, backup_dir: Path, tmp_path: Path, **extravars: Any) -> PlaybookRun:
    return run_playbook("rollback.yml", playbook_env(db.env),
                        {"capital_backup_dir": str(backup_dir), "capital_report_dir": str(tmp_path / "reports"),
                         "capital_rollback_mode": "restore", **extravars})


def safety_dumps(backup_dir: Path) -> list[Path]:
    return [p for p in dumps(backup_dir) if p.name.startswith("local-safety-")]


def manifest_of(dump: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(f"{dump}.manifest.json").read_text(encoding="utf-8"))
    return data


def test_the_manifest_records_the_database_cluster_and_server(pair: tuple[Database, Database],
                                                               tmp_path: Path) -> None:
    first, _ = pair
    manifest = manifest_of(backed_up(first, tmp_path / "backups", tmp_path))

    assert manifest["database"] == first.name
    [(sysid, version_num)] = run_sql(first, "SELECT system_identifier::text, current_setting('server_version_num')::int"
                                            " FROM pg_control_system()")
    assert manifest["system_identifier"] == sysid and manifest["server_version_num"] == version_num


def test_restore_picks_this_databases_own_dump_when_another_databases_is_newer(
        pair: tuple[Database, Database], tmp_path: Path) -> None:
    first, second = pair
    backup_dir = tmp_path / "backups"
    own = backed_up(first, backup_dir, tmp_path)
    expected = checksums(first)
    other = backed_up(second, backup_dir, tmp_path)
    assert other.name > own.name and other.name.startswith(own.name.rsplit("-", 1)[0])
    second_rows = checksums(second)
    change_rows(first)

    run = restore(first, backup_dir, tmp_path)

    assert run.rc == 0, run.output
    report = run.report("rollback")
    assert report["restored"] == str(own) and report["source_database"] == first.name
    assert report["identity_checked"] == ["database", "system_identifier"]
    assert checksums(first) == expected
    assert checksums(second) == second_rows


def test_naming_another_databases_dump_is_refused_and_changes_nothing(pair: tuple[Database, Database],
                                                                     tmp_path: Path) -> None:
    first, second = pair
    backup_dir = tmp_path / "backups"
    other = backed_up(second, backup_dir, tmp_path)
    change_rows(first)
    before = checksums(first)

    run = restore(first, backup_dir, tmp_path, capital_rollback_backup_file=str(other))

    assert run.rc != 0
    assert f"Refusing to restore {other}" in run.output
    assert f"database '{second.name}'" in run.output and f"database '{first.name}'" in run.output
    assert "capital_rollback_restore_from_database" in run.output
    assert checksums(first) == before
    assert safety_dumps(backup_dir) == []  # refused before the safety dump


def test_the_disaster_recovery_variable_restores_another_databases_dump(pair: tuple[Database, Database],
                                                                        tmp_path: Path) -> None:
    first, second = pair
    backup_dir = tmp_path / "backups"
    own = backed_up(first, backup_dir, tmp_path)
    other = backed_up(second, backup_dir, tmp_path)
    wanted = checksums(second)

    # Even on purpose, the manifest's database must be the source named.
    refused = restore(first, backup_dir, tmp_path, capital_rollback_backup_file=str(own),
                      capital_rollback_restore_from_database=second.name)
    assert refused.rc != 0 and f"Refusing to restore {own}" in refused.output
    assert f"the source named is '{second.name}'" in refused.output
    assert safety_dumps(backup_dir) == []

    run = restore(first, backup_dir, tmp_path, capital_rollback_restore_from_database=second.name)

    assert run.rc == 0, run.output
    report = run.report("rollback")
    assert report["restored"] == str(other) and report["source_database"] == second.name
    assert report["target_database"] == first.name and report["identity_checked"] == ["database"]
    assert checksums(first) == wanted


def test_a_same_named_database_of_another_cluster_is_skipped_by_the_search_and_refused_by_name(
        pg_db: Database, tmp_path: Path) -> None:
    backup_dir = tmp_path / "backups"
    seed_db(pg_db, juntas=2, seed=7)
    own = backed_up(pg_db, backup_dir, tmp_path)
    expected = checksums(pg_db)
    with Cluster() as elsewhere:
        twin = database(elsewhere, pg_db.name)  # same name, another cluster: another system identifier
        seed_db(twin, juntas=2, seed=11)
        foreign = backed_up(twin, backup_dir, tmp_path)
    assert foreign.name > own.name
    assert manifest_of(foreign)["system_identifier"] != manifest_of(own)["system_identifier"]
    change_rows(pg_db)

    refused = restore(pg_db, backup_dir, tmp_path, capital_rollback_backup_file=str(foreign))
    assert refused.rc != 0 and "another cluster than the target" in refused.output
    assert manifest_of(foreign)["system_identifier"] in refused.output
    assert manifest_of(own)["system_identifier"] in refused.output

    run = restore(pg_db, backup_dir, tmp_path)

    assert run.rc == 0, run.output
    report = run.report("rollback")
    assert report["restored"] == str(own)
    assert [s["file"] for s in report["skipped_backups"]] == [foreign.name]
    assert checksums(pg_db) == expected


def test_a_directory_format_backup_round_trips(pg_db: Database, tmp_path: Path) -> None:
    backup_dir = tmp_path / "backups"
    seed_db(pg_db, juntas=2)
    dump = backed_up(pg_db, backup_dir, tmp_path, capital_backup_format="directory")
    assert dump.is_dir()
    expected = checksums(pg_db)
    change_rows(pg_db)
    assert checksums(pg_db) != expected

    run = restore(pg_db, backup_dir, tmp_path)

    assert run.rc == 0, run.output
    report = run.report("rollback")
    assert report["restored"] == str(dump) and report["format"] == "directory"
    assert checksums(pg_db) == expected


def test_a_tampered_directory_backup_is_refused(pg_db: Database, tmp_path: Path) -> None:
    backup_dir = tmp_path / "backups"
    seed_db(pg_db, juntas=2)
    dump = backed_up(pg_db, backup_dir, tmp_path, capital_backup_format="directory")
    change_rows(pg_db)
    before = checksums(pg_db)
    victim = max((p for p in dump.iterdir() if p.name != "toc.dat"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    run = restore(pg_db, backup_dir, tmp_path)

    assert run.rc != 0
    assert f"Refusing to restore {dump}" in run.output and "its manifest records" in run.output
    assert checksums(pg_db) == before
    assert safety_dumps(backup_dir) == []
