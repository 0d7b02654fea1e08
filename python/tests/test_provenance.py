"""The record of provenance: the migration records what it creates, and the rollback drops only that."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils import provenance
from ansible_collections.prestamos.capital.plugins.module_utils.migration import Interrupted, MigrationError
from capital_migrate import inventory as inventory_builder
from capital_migrate.exitcodes import ExitCode
from cli_support import base_env, run_cli
from migration_helpers import SQL_DIR, migrate, seed_db
from migration_helpers import run_sql as query
from orm_fixture import ORM_STATES, build_orm_database, database_checksums
from playbook_support import playbook_env, run_playbook
from test_rollback import fingerprint, leftovers, roll_back, write_application_rows

# A DBA's own objects, named like the migration's, made before it ran.
DBA_OBJECTS = """
CREATE FUNCTION capital_monthly_summary() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM "Junta"';
CREATE INDEX capital_user_idx ON "Junta" (created_by_id);
CREATE VIEW capital_dashboard AS SELECT id, name FROM "Junta";
"""
DBA_SHAPE = """
SELECT 'function', pg_get_functiondef('capital_monthly_summary()'::regprocedure)
UNION ALL SELECT 'index', pg_get_indexdef('capital_user_idx'::regclass)
UNION ALL SELECT 'view', pg_get_viewdef('capital_dashboard'::regclass)
ORDER BY 1
"""


def inventory() -> dict[provenance.Key, str]:
    return provenance.load_inventory((SQL_DIR / provenance.INVENTORY_FILE).read_text())


def catalog(db: Any) -> dict[provenance.Key, provenance.Found]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            return provenance.read_catalog(cur)
    finally:
        conn.close()


def record(db: Any) -> dict[str, tuple[Any, ...]]:
    return {
        f"{kind} {table}.{name}": (state, objid, objsubid, sha)
        for kind, table, name, state, objid, objsubid, sha in query(
            db, "SELECT kind, table_name, name, state, objid, objsubid, definition_sha256"
                " FROM capital_migration_objects",
        )
    }


def test_the_inventory_is_what_the_sql_files_create() -> None:
    """migration_objects.json is derived from a real migration; a change to files/sql without
    `make inventory` fails here."""
    assert inventory_builder.build() == (SQL_DIR / provenance.INVENTORY_FILE).read_text(), (
        "files/sql/migration_objects.json is stale: run `make inventory` and review the diff"
    )



def test_accepted_earlier_definitions_are_data_copied_into_the_inventory() -> None:
    """accepted_checksums.json "definitions" -> the objects' accepted lists -> known definitions; an accepted
    definition of an object the SQL files do not create is refused when the inventory is written."""
    key = provenance.Key("function", "", "capital_phase()")
    other = provenance.Key("function", "", "capital_gone()")
    accepted = provenance.load_accepted_definitions(json.dumps({"definitions": {"objects": [
        {"kind": "function", "table": "", "name": "capital_phase()", "sha256": "a" * 64, "layout": "x"},
        {"kind": "function", "table": "", "name": "capital_phase()", "sha256": "b" * 64, "layout": "y"},
    ]}}))
    assert accepted == {key: frozenset({"a" * 64, "b" * 64})}
    text = provenance.dump_inventory({key: "c" * 64, other: "d" * 64}, "test", accepted)
    loaded = provenance.load_inventory(text)
    assert dict(loaded) == {key: "c" * 64, other: "d" * 64}
    assert provenance.known_definitions(loaded, key) == {"a" * 64, "b" * 64, "c" * 64}
    assert provenance.known_definitions(loaded, other) == {"d" * 64}
    assert provenance.known_definitions({key: "c" * 64}, key) == {"c" * 64}  # a plain mapping: no earlier ones
    with pytest.raises(provenance.ProvenanceError, match="capital_phase"):
        provenance.dump_inventory({other: "d" * 64}, "test", accepted)
    # The shipped files agree: every accepted definition is in the inventory, none differs.
    assert inventory().accepted == provenance.load_accepted_definitions(
        (SQL_DIR / "accepted_checksums.json").read_text())

def test_every_object_the_migration_creates_is_recorded_with_its_oid_and_definition(pg_db: Any) -> None:
    seed_db(pg_db, juntas=2)
    before = catalog(pg_db)
    result = migrate(pg_db)
    after = catalog(pg_db)

    created = {k for k in after if k not in before and not (k.kind == "column" and k.table not in
                                                              {t.name for t in before if t.kind == "table"})}
    rec = record(pg_db)
    assert created, "the migration created nothing?"
    for key in created:
        state, objid, objsubid, sha = rec[f"{key.kind} {key.table}.{key.name}"]
        found = after[key]
        assert (state, objid, objsubid, sha) == ("created", found.objid, found.objsubid, found.sha256), key
    assert {s for s, *_ in rec.values()} == {"created"}
    assert result["provenance"]["claimed"] == len(created)
    # The history row and the record name the same run.
    assert query(pg_db, "SELECT DISTINCT run_id FROM capital_migration_objects") == [(result["run_id"],)]
    assert query(pg_db, "SELECT detail->>'run_id' FROM capital_migration_history") == [(result["run_id"],)]


def test_a_dbas_own_capital_objects_survive_migrate_and_rollback(pg_db: Any) -> None:
    seed_db(pg_db, juntas=2)
    query(pg_db, DBA_OBJECTS)
    dba_before = query(pg_db, DBA_SHAPE)
    shape = fingerprint(pg_db)

    migrate(pg_db)
    result = roll_back(pg_db)

    assert result["state_after"] == "not_applied"
    assert query(pg_db, DBA_SHAPE) == dba_before
    assert fingerprint(pg_db) == shape
    assert not any("capital_user_idx" in o["name"] or "capital_monthly_summary" in o["name"]
                   for o in result["removed"])


@pytest.mark.parametrize(
    ("ddl", "named"),
    [
        ("CREATE FUNCTION calculate_available_capital(p text) RETURNS numeric LANGUAGE sql AS 'SELECT 1::numeric'",
         "function calculate_available_capital(text)"),
        ('CREATE INDEX capital_pagoprestamo_prestamo_id_idx ON "PagoPrestamo" (amount)',
         'index "PagoPrestamo".capital_pagoprestamo_prestamo_id_idx'),
        ('ALTER TABLE "Junta" ADD COLUMN base_capital numeric(12, 2)',
         'column "Junta".base_capital'),
    ],
    ids=["function", "index", "column"],
)
def test_an_object_the_migration_would_create_that_exists_unrecorded_is_refused_before_any_change(
    pg_db: Any, ddl: str, named: str
) -> None:
    seed_db(pg_db, juntas=1)
    query(pg_db, ddl)
    shape = fingerprint(pg_db)

    with pytest.raises(MigrationError) as refused:
        migrate(pg_db)

    assert refused.value.details["refused"] is True
    assert any(p.startswith(named) for p in refused.value.details["provenance_drift"]), refused.value.details
    assert named in refused.value.msg and "Nothing was changed" in refused.value.msg
    assert fingerprint(pg_db) == shape
    assert query(pg_db, "SELECT to_regclass('capital_migration_objects')") == [(None,)]


def test_rollback_stops_before_its_first_drop_on_a_view_over_the_ledger_unless_forced(pg_db: Any) -> None:
    seed_db(pg_db, juntas=2)
    migrate(pg_db)
    query(pg_db, "CREATE VIEW app_movements AS SELECT junta_id, amount FROM capital_movements")
    shape = fingerprint(pg_db)

    with pytest.raises(MigrationError) as refused:
        roll_back(pg_db)

    assert refused.value.details["refused"] is True
    assert any("view app_movements" in b for b in refused.value.details["blocked_by"])
    assert "view app_movements" in refused.value.msg
    assert fingerprint(pg_db) == shape  # nothing dropped
    result = roll_back(pg_db, force_changed=True)
    assert result["state_after"] == "not_applied"
    assert query(pg_db, "SELECT to_regclass('app_movements')") == [(None,)]


def test_a_foreign_key_into_a_shadow_table_and_a_changed_function_stop_the_rollback(pg_db: Any) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    query(pg_db, 'CREATE TABLE app_loan_notes (loan_id text REFERENCES "PrestamoNew" (id), note text)')
    query(pg_db, "CREATE OR REPLACE FUNCTION capital_phase() RETURNS text LANGUAGE sql AS $$SELECT 'x'$$")
    shape = fingerprint(pg_db)

    with pytest.raises(MigrationError) as refused:
        roll_back(pg_db)

    blocked = refused.value.details["blocked_by"]
    assert any("app_loan_notes" in b and "PrestamoNew" in b for b in blocked), blocked
    assert any(b.startswith("function capital_phase()") and "changed since it was recorded" in b for b in blocked)
    assert fingerprint(pg_db) == shape


def test_rows_of_dropped_tables_are_exported_to_a_verified_private_file(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=2)
    migrate(pg_db)
    write_application_rows(pg_db)  # movements written after the migration, through the triggers
    tables = ("capital_movements", "PrestamoNew", "PagoPrestamoNew")
    counts = {t: query(pg_db, f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}
    export_dir = tmp_path / "backups"

    plan = roll_back(pg_db, check_mode=True, export_dir=str(export_dir))
    assert {t: plan["rows"][t] for t in tables} == counts
    assert not export_dir.exists()  # the dry run writes nothing

    result = roll_back(pg_db, export_dir=str(export_dir))

    export = result["export"]
    path = Path(export["path"])
    assert path.parent == export_dir and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(export_dir.stat().st_mode) == 0o700
    manifest = json.loads(Path(export["manifest"]).read_text())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == export["sha256"]
    assert {t: manifest["row_counts"][t] for t in tables} == counts
    text = path.read_text()
    assert text.count("COPY ") == len(manifest["row_counts"])
    assert "500.25" in text  # the application's movement written after the migration


def test_a_database_migrated_before_the_record_existed_is_adopted_object_by_object(pg_db: Any) -> None:
    seed_db(pg_db, juntas=2)
    shape = fingerprint(pg_db)
    migrate(pg_db)
    query(pg_db, "DROP TABLE capital_migration_objects")  # as every database migrated before the record
    # One object no longer matches what the SQL files create: it is not adopted, and named.
    query(pg_db, "CREATE OR REPLACE FUNCTION capital_phase() RETURNS text LANGUAGE sql AS $$SELECT 'x'$$")

    with pytest.raises(MigrationError) as refused:
        migrate(pg_db)
    assert "function capital_phase()" in refused.value.msg

    result = roll_back(pg_db)

    assert len(result["adopted"]) == len(inventory()) - 1 - 9  # all but the changed one and the record's own 9
    assert [p.split(":")[0] for p in result["left_alone"]] == ["function capital_phase()"]
    assert [o["name"] for o in leftovers_now(pg_db)] == ["function capital_phase()"]
    query(pg_db, "DROP FUNCTION capital_phase()")
    assert fingerprint(pg_db) == shape


def leftovers_now(db: Any) -> list[dict[str, str]]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            return leftovers(cur)
    finally:
        conn.close()


def test_an_index_built_but_not_yet_claimed_is_claimed_by_the_next_run(pg_db: Any) -> None:
    """CREATE INDEX CONCURRENTLY commits on its own: a run killed before the claim leaves a planned row and
    the index; the planned row, written before the index existed, is what makes it ours."""
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    query(pg_db, "UPDATE capital_migration_objects SET state = 'planned', objid = NULL, definition_sha256 = NULL"
                 " WHERE name = 'capital_movements_junta_created_idx'")

    result = migrate(pg_db)

    assert result["changed"] is True and result["provenance"]["claimed"] >= 1
    assert record(pg_db)["index capital_movements.capital_movements_junta_created_idx"][0] == "created"
    assert roll_back(pg_db)["state_after"] == "not_applied"
    assert leftovers_now(pg_db) == []


def test_rollback_plan_from_the_cli_lists_objects_and_rows_then_the_rollback_names_its_export(
    pg_db: Any, tmp_path: Path
) -> None:
    """`capital-migrate rollback --plan` is ansible-playbook --check through the real role: it lists what the
    reverse migration would drop and the rows it would discard, and changes nothing."""
    seed_db(pg_db, juntas=2)
    migrate(pg_db)
    query(pg_db, DBA_OBJECTS)
    shape = fingerprint(pg_db)
    ledger_rows = query(pg_db, "SELECT count(*) FROM capital_movements")[0][0]
    env = base_env(pg_db.cluster.env(pg_db.name))
    args = ["--report-dir", str(tmp_path / "reports"), "-e", f"capital_backup_dir={tmp_path / 'backups'}"]

    plan = run_cli(["rollback", "--plan", "--quiet", *args], env)

    assert plan.code == ExitCode.SUCCESS, plan.stdout + plan.stderr
    assert "drop table capital_movements" in plan.stdout and 'drop column "Junta".base_capital' in plan.stdout
    assert f"export then discard capital_movements: {ledger_rows} rows" in plan.stdout
    assert "capital_user_idx" not in plan.stdout and "capital_monthly_summary" not in plan.stdout
    assert fingerprint(pg_db) == shape and not (tmp_path / "backups").exists()

    done = run_cli(["rollback", "--quiet", "--json", *args], env)

    assert done.code == ExitCode.SUCCESS, done.stdout + done.stderr
    rollback = done.json()["data"]["rollback"]
    export = Path(rollback["export_file"])
    assert export.parent == tmp_path / "backups" and export.is_file()
    assert rollback["export_sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    assert rollback["rows_exported"]["capital_movements"] == ledger_rows
    assert query(pg_db, DBA_SHAPE)  # the DBA's objects are still there


@pytest.mark.parametrize("state", ORM_STATES)
def test_rollback_on_the_applications_orm_database_changes_nothing(pg_db: Any, state: str) -> None:
    """The ORM's "PrestamoNew", "CapitalMovement" and "Junta" capital columns are the application's live
    data (domain.md §5): the rollback recognises the database, refuses and drops nothing."""
    build_orm_database(pg_db, state)
    before = database_checksums(pg_db)

    with pytest.raises(MigrationError) as refused:
        roll_back(pg_db)

    assert refused.value.details["foreign_schema"] is True and refused.value.details["changed"] is False
    assert "Nothing was changed" in refused.value.msg
    assert database_checksums(pg_db) == before


def test_rollback_yml_on_the_orm_database_with_capital_columns_exits_non_zero_and_keeps_them(
    pg_db: Any, tmp_path: Path
) -> None:
    """The issue's worst case: the application keeps its capital columns and has no new-style loans yet."""
    build_orm_database(pg_db, "later")
    before = database_checksums(pg_db)

    run = run_playbook("playbooks/rollback.yml", playbook_env(pg_db.env),
                       {"capital_backup_dir": str(tmp_path / "b"), "capital_report_dir": str(tmp_path / "r")})

    assert run.rc != 0, run.output
    assert "not the guide's" in run.output
    assert run.stats["capital_report"]["run"]["outcome"] == "preflight_refused"  # exit 3, not 5: nothing changed
    assert database_checksums(pg_db) == before
    assert query(pg_db, 'SELECT count(*) FROM information_schema.columns'
                        " WHERE table_name = 'Junta' AND column_name = 'base_capital'") == [(1,)]


def test_restoring_a_backup_of_a_partly_migrated_database_removes_what_its_record_holds(
    pg_db: Any, tmp_path: Path
) -> None:
    """A backup taken while the migration was partial holds the record too; pg_restore brings its objects back
    under new OIDs, and the restore still removes exactly them."""
    seed_db(pg_db, juntas=2)
    shape = fingerprint(pg_db)
    with pytest.raises(Interrupted):
        migrate(pg_db, stop_after_file="14_triggers.sql")
    env = playbook_env(pg_db.env)
    dirs = {"capital_backup_dir": str(tmp_path / "b"), "capital_report_dir": str(tmp_path / "r")}
    assert run_playbook("playbooks/backup.yml", env, dirs).rc == 0
    migrate(pg_db)  # then it was finished, and the operator wants the backup back

    restored = run_playbook("playbooks/rollback.yml", env, {**dirs, "capital_rollback_mode": "restore"})

    assert restored.rc == 0, restored.output[-3000:]
    assert leftovers_now(pg_db) == []
    assert fingerprint(pg_db) == shape


def test_preflight_names_an_object_that_is_not_provably_the_migrations_and_migrate_changes_nothing(
    pg_db: Any, tmp_path: Path
) -> None:
    seed_db(pg_db, juntas=1)
    query(pg_db, "CREATE FUNCTION calculate_available_capital(p text) RETURNS numeric LANGUAGE sql"
                 " AS 'SELECT 42::numeric'")
    shape = fingerprint(pg_db)
    dirs = {"capital_backup_dir": str(tmp_path / "b"), "capital_report_dir": str(tmp_path / "r")}

    preflight = run_playbook("playbooks/preflight.yml", playbook_env(pg_db.env), dirs)

    assert preflight.rc != 0
    check = preflight.checks()["object_provenance"]
    assert check["status"] == "fail"
    assert check["value"]["not_provably_ours"][0].startswith("function calculate_available_capital(text)")
    migrated = run_playbook("playbooks/migrate.yml", playbook_env(pg_db.env), dirs)
    assert migrated.rc != 0 and "calculate_available_capital(text)" in migrated.output
    assert fingerprint(pg_db) == shape and not (tmp_path / "b").exists()


def test_a_refused_rollback_exits_3_from_the_cli_naming_what_stops_it(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    query(pg_db, "CREATE VIEW app_movements AS SELECT junta_id, amount FROM capital_movements")
    shape = fingerprint(pg_db)

    done = run_cli(["rollback", "--quiet", "--json", "--report-dir", str(tmp_path / "r"),
                    "-e", f"capital_backup_dir={tmp_path / 'b'}"], base_env(pg_db.cluster.env(pg_db.name)))

    assert done.code == ExitCode.PREFLIGHT_REFUSED, done.stdout + done.stderr
    doc = done.json()
    assert doc["outcome"] == "preflight_refused" and "view app_movements" in (doc["cause"] or "")
    assert fingerprint(pg_db) == shape
