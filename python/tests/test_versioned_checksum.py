"""Versioned checksums (issue 18): a pure reorganisation of files/sql leaves a database applied by the earlier
layout `applied` once that layout's checksum is accepted for the migration version; without it, drifted.

A layout that also changed a definition keeps that definition as data (accepted_checksums.json "definitions"):
a database it applied stays applied and rolls back, one it began resumes and rolls back, one it migrated through
psql is adopted. Two such layouts: 223f0f7 (capital_backfill_batch's four ledger inserts became one, and
capital_backfill_step changed after it) and 5eadf5d (capital_backfill_step let several sessions run the ledger
steps side by side)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils import provenance
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    ACCEPTED_FILE,
    MAIN_SCRIPT,
    Interrupted,
    MigrationError,
    Migrator,
    Options,
    accepted_checksums,
    load_sql_dir,
    parse_order,
    sql_checksum,
)
from capital_migrate.exitcodes import ExitCode
from capital_migrate.pgtmp import temporary_database
from cli_support import REPO, base_env, run_cli
from migration_helpers import SQL_DIR, assert_same_end_state, capital_mismatches, migrate, previous_layout, seed_db
from migration_helpers import run_sql as query
from playbook_support import playbook_env, run_playbook
from test_provenance import leftovers_now
from test_rollback import fingerprint, roll_back, write_application_rows


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


# -- layouts that changed a definition: 223f0f7 (the one ledger insert), 5eadf5d (the backfill's sessions) ------
BATCH_FUNCTION = "capital_backfill_batch(text,integer)"
BATCH_KEY = provenance.Key("function", "", BATCH_FUNCTION)
STEP_KEY = provenance.Key("function", "", "capital_backfill_step(integer)")
ONE_BATCH_DEF = "SELECT pg_get_functiondef('capital_backfill_batch(text,integer)'::regprocedure)"
# Each earlier layout and the objects the SQL files now define differently from it.
CHANGED_SINCE = {"223f0f7": {BATCH_KEY, STEP_KEY}, "5eadf5d": {BATCH_KEY, STEP_KEY}}
LAYOUTS = pytest.mark.parametrize("layout", sorted(CHANGED_SINCE))


def sha_of(files: dict[str, str]) -> str:
    """The checksum a run of these files records (the Migrator's)."""
    return sql_checksum([files[MAIN_SCRIPT], *(files[name] for name in parse_order(files[MAIN_SCRIPT]))])


def batch_definition(db: Any, key: provenance.Key = BATCH_KEY) -> tuple[str, str, str]:
    """(the function's definition sha256 in the catalog, its record row's sha256, its record row's state)."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            now = provenance.read_catalog(cur)[key].sha256
    finally:
        conn.close()
    [(recorded, state)] = query(db, "SELECT definition_sha256, state FROM capital_migration_objects"
                                    " WHERE kind = 'function' AND name = %s", (key.name,))
    return now, recorded, state


def changed_definitions(db: Any, layout: str) -> dict[provenance.Key, tuple[str, str, str]]:
    return {key: batch_definition(db, key) for key in CHANGED_SINCE[layout]}


@LAYOUTS
def test_the_previous_layout_is_accepted_and_differs_only_in_the_one_ledger_insert(
    tmp_path: Path, layout: str
) -> None:
    """The data the other tests rely on: each earlier layout's checksum is accepted for version 1, and of
    everything it creates only the functions of CHANGED_SINCE are defined differently now, with their old
    definitions accepted. (A changed definition without an accepted entry fails here before it fails a DBA.)"""
    old = load_sql_dir(previous_layout(tmp_path, layout))
    new = load_sql_dir(SQL_DIR)
    assert sha_of(old) in accepted_checksums(new)["1"]
    old_inventory = provenance.load_inventory(old[provenance.INVENTORY_FILE])
    new_inventory = provenance.load_inventory(new[provenance.INVENTORY_FILE])
    assert set(old_inventory) == set(new_inventory)
    changed = {k for k in new_inventory if old_inventory[k] != new_inventory[k]}
    assert changed == CHANGED_SINCE[layout]
    for key in changed:
        assert old_inventory[key] in provenance.known_definitions(new_inventory, key)
    assert new_inventory.accepted == provenance.load_accepted_definitions(new[ACCEPTED_FILE])


def test_the_one_ledger_insert_writes_what_the_four_copies_wrote(pg_cluster: Any, tmp_path: Path) -> None:
    """Same dirty data, small batches: the ledger, the shadow tables and the junta columns are the same row by
    row under the previous layout and this one."""
    old = load_sql_dir(previous_layout(tmp_path))
    with temporary_database(pg_cluster) as before, temporary_database(pg_cluster) as after:
        for db in (before, after):
            seed_db(db, juntas=4, dirty=True)
        migrate(before, sql=old, batch_size=37)
        migrate(after, batch_size=37)
        assert_same_end_state(after, before)


@LAYOUTS
def test_a_database_applied_by_the_previous_layout_stays_applied_and_rolls_back(
    pg_db: Any, tmp_path: Path, layout: str
) -> None:
    """(a) applied with the earlier files: applied to these, a rerun changes nothing (the old definitions
    stay, recorded as they are); (b) the rollback with these files removes everything, after application
    writes through the old layout's triggers."""
    seed_db(pg_db, juntas=2, dirty=True)
    shape = fingerprint(pg_db)
    old = load_sql_dir(previous_layout(tmp_path, layout))
    applied = migrate(pg_db, sql=old)
    assert applied["sql_sha256"] == sha_of(old)
    old_defs = changed_definitions(pg_db, layout)
    old_inventory = provenance.load_inventory(old[provenance.INVENTORY_FILE])
    assert old_defs == {key: (old_inventory[key],) * 2 + ("created",) for key in CHANGED_SINCE[layout]}

    rerun = migrate(pg_db)
    assert (rerun["state_before"], rerun["state_after"], rerun["changed"]) == ("applied", "applied", False)
    assert rerun["statements"] == [] and rerun["batches"] == 0
    assert rerun["provenance"]["drift"] == [] and rerun["provenance"]["changed"] == []
    assert changed_definitions(pg_db, layout) == old_defs

    write_application_rows(pg_db)
    conn = pg_db.connect()
    try:
        assert capital_mismatches(conn) == []
    finally:
        conn.close()
    result = roll_back(pg_db)
    assert result["state_after"] == "not_applied" and result["blocked_by"] == [] and result["left_alone"] == []
    assert leftovers_now(pg_db) == []
    assert fingerprint(pg_db) == shape


@LAYOUTS
@pytest.mark.parametrize("stop", [
    pytest.param({"stop_after_file": "11_expand_columns.sql"}, id="before-the-functions"),
    pytest.param({"stop_after_file": "14_triggers.sql"}, id="after-expand"),
    pytest.param({"stop_after_batches": 3}, id="mid-backfill"),
])
def test_a_database_partly_migrated_by_the_previous_layout_resumes_with_these_files_then_rolls_back(
    pg_cluster: Any, tmp_path: Path, stop: dict[str, Any], layout: str
) -> None:
    """(c) begun with the earlier files, resumed with these (on two backfill sessions): the run replaces the
    old definitions and their record rows follow in the same transaction, so the end state is this layout's,
    row by row, and the rollback finds nothing changed and leaves nothing behind."""
    old = load_sql_dir(previous_layout(tmp_path, layout))
    with temporary_database(pg_cluster) as reference, temporary_database(pg_cluster) as victim:
        for db in (reference, victim):
            seed_db(db, juntas=3, dirty=True)
        shape = fingerprint(victim)
        migrate(reference, batch_size=40)
        with pytest.raises(Interrupted):
            migrate(victim, sql=old, batch_size=40, **stop)
        resumed = migrate(victim, batch_size=40, backfill_connections=2)
        assert (resumed["state_before"], resumed["state_after"]) == ("partial", "applied")
        new_inventory = provenance.load_inventory((SQL_DIR / provenance.INVENTORY_FILE).read_text())
        assert changed_definitions(victim, layout) == {
            key: (new_inventory[key], new_inventory[key], "created") for key in CHANGED_SINCE[layout]
        }
        assert_same_end_state(victim, reference)
        assert migrate(victim)["changed"] is False
        result = roll_back(victim)
        assert result["state_after"] == "not_applied" and result["blocked_by"] == []
        assert leftovers_now(victim) == []
        assert fingerprint(victim) == shape


def psql_migrate(db: Any, sql_dir: Path, sha: str) -> None:
    """The previous files through psql, recording an applied history row as an operator would (no record)."""
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "batch_size=50", "-v", f"sql_sha256={sha}",
         "-v", "version=1", "-f", str(sql_dir / "add_capital_tracking.sql")],
        env=db.env, check=True, capture_output=True,
    )


@LAYOUTS
def test_a_database_migrated_through_psql_by_the_previous_layout_is_adopted_with_its_old_definition(
    pg_db: Any, tmp_path: Path, layout: str
) -> None:
    """(d) migrated with the earlier files through psql, before any record: these files adopt every object,
    the changed functions with the definitions the earlier layout gave them (accepted), and change nothing
    else; the rollback then removes everything."""
    seed_db(pg_db, juntas=2, dirty=True)
    shape = fingerprint(pg_db)
    old_dir = previous_layout(tmp_path, layout)
    old = load_sql_dir(old_dir)
    psql_migrate(pg_db, old_dir, sha_of(old))
    before = {key: batch_definition_in_catalog(pg_db, key) for key in CHANGED_SINCE[layout]}

    adopted = migrate(pg_db)
    assert (adopted["state_before"], adopted["state_after"], adopted["changed"]) == ("applied", "applied", True)
    for key in CHANGED_SINCE[layout]:
        assert f"function {key.name}" in adopted["provenance"]["adoptable"]
    assert adopted["provenance"]["drift"] == [] and adopted["statements"] == []
    assert changed_definitions(pg_db, layout) == {key: (sha, sha, "adopted") for key, sha in before.items()}
    assert migrate(pg_db)["changed"] is False

    result = roll_back(pg_db)
    assert result["state_after"] == "not_applied" and result["left_alone"] == []
    assert leftovers_now(pg_db) == []
    assert fingerprint(pg_db) == shape


def batch_definition_in_catalog(db: Any, key: provenance.Key = BATCH_KEY) -> str:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            return provenance.read_catalog(cur)[key].sha256
    finally:
        conn.close()


def test_an_old_definition_that_is_no_accepted_one_stays_drift(pg_db: Any, tmp_path: Path) -> None:
    """(d) the other way: the previous layout's function, changed by hand (one more comment line), is neither
    the accepted definition nor this one: refused before any change, named, and left alone by the rollback."""
    seed_db(pg_db, juntas=1)
    old_dir = previous_layout(tmp_path)
    psql_migrate(pg_db, old_dir, sha_of(load_sql_dir(old_dir)))
    [(definition,)] = query(pg_db, ONE_BATCH_DEF)
    query(pg_db, definition.replace("DECLARE", "DECLARE\n    -- changed by hand", 1))

    with pytest.raises(MigrationError) as refused:
        migrate(pg_db)
    assert refused.value.details["refused"] is True
    assert [p.split(":")[0] for p in refused.value.details["provenance_drift"]] == [f"function {BATCH_FUNCTION}"]

    result = roll_back(pg_db)
    assert [p.split(":")[0] for p in result["left_alone"]] == [f"function {BATCH_FUNCTION}"]
    assert [o["name"] for o in leftovers_now(pg_db)] == [f"function {BATCH_FUNCTION}"]
