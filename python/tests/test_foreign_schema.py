"""A database that is not the guide's is recognised: the application's ORM-shaped database (domain.md §5).

The judging part of module_utils/schema_check.py runs without a database; the detector, preflight, status
and the migration run against the ORM-shaped database that orm_fixture.py builds on real PostgreSQL, in each
of its states. Every refusal must carry the one message, agree on the state foreign_schema, and leave the
database exactly as it was (catalog fingerprint and every table's rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    MigrationError,
    Migrator,
    migration_state,
)
from ansible_collections.prestamos.capital.plugins.module_utils.schema_check import (
    CAPITAL_COLUMNS,
    FOREIGN_SCHEMA,
    GUIDE_COLUMNS,
    NEXT_STEP,
    SchemaFacts,
    camel,
    foreign_schema,
    judge,
)
from capital_migrate.exitcodes import ExitCode
from cli_support import base_env, run_cli
from migration_helpers import migrate, seed_db, sql_files
from orm_fixture import ORM_STATES, build_orm_database, database_checksums

# The guide's columns with made-up types: judge() reads types only for the capital columns.
GUIDE = {table: dict.fromkeys(columns, "text") for table, columns in GUIDE_COLUMNS.items()}


def _orm_columns(table: str) -> dict[str, str]:
    return {camel(c): "text" for c in GUIDE_COLUMNS[table]}


# -- judging, without a database ----------------------------------------------------------------------------
def test_camel_is_the_orms_spelling_of_a_guide_column() -> None:
    assert [camel(c) for c in ("id", "created_at", "created_by_id", "prestamo_id")] == [
        "id", "createdAt", "createdById", "prestamoId"]


def test_the_guides_schema_is_not_foreign() -> None:
    assert judge(SchemaFacts(columns=GUIDE)) is None


def test_the_guides_schema_after_this_migration_is_not_foreign() -> None:
    junta = {**GUIDE["Junta"], **dict.fromkeys(CAPITAL_COLUMNS, "numeric(14,2)")}
    shadow = {"PrestamoNew": dict.fromkeys(("id", "original_prestamo_id", "junta_id", "created_at"), "text"),
              "PagoPrestamoNew": dict.fromkeys(("id", "original_pago_id", "prestamo_id"), "text")}
    assert judge(SchemaFacts(columns={**GUIDE, "Junta": junta, **shadow})) is None


def test_missing_legacy_tables_are_not_evidence_of_the_orm() -> None:
    """An empty database, or one missing tables, stays whatever it is today (not_applied, preflight's
    legacy_tables_present): only positive evidence of the ORM's shape makes it foreign."""
    assert judge(SchemaFacts()) is None
    assert judge(SchemaFacts(columns={"Junta": GUIDE["Junta"]})) is None


def test_camelcase_legacy_columns_are_named_with_the_guides() -> None:
    finding = judge(SchemaFacts(columns={**GUIDE, "Prestamo": _orm_columns("Prestamo")}))
    assert finding is not None
    assert finding["state"] == FOREIGN_SCHEMA
    assert finding["found"] == [
        '"Prestamo" has "createdAt", "updatedAt", "juntaId", "memberId" '
        "where the guide has created_at, updated_at, junta_id, member_id"
    ]
    assert '"Prestamo"(id, amount, description, status, created_at, updated_at, junta_id, member_id)' in (
        finding["expected"])
    assert finding["next_step"] == NEXT_STEP


@pytest.mark.parametrize(
    ("facts", "line"),
    [
        (SchemaFacts(columns=GUIDE, prisma_present=True, prisma_migrations=3),
         "_prisma_migrations present (3 migrations)"),
        (SchemaFacts(columns=GUIDE, prisma_present=True), "_prisma_migrations present (rows unreadable)"),
        (SchemaFacts(columns={**GUIDE, "CapitalMovement": {"id": "text", "juntaId": "text"}}),
         '"CapitalMovement" present (the application\'s own capital ledger)'),
        (SchemaFacts(columns={**GUIDE, "Junta": {**GUIDE["Junta"], "base_capital": "double precision"}}),
         '"Junta".base_capital are double precision where the migration creates numeric(14,2)'),
        (SchemaFacts(columns={**GUIDE, "PagoPrestamoNew": {"id": "text", "prestamoId": "text"}}),
         '"PagoPrestamoNew" has "prestamoId" where the migration\'s shadow table has prestamo_id'),
    ],
    ids=["prisma", "prisma-unreadable", "orm-ledger", "double-capital", "orm-shadow"],
)
def test_each_piece_of_orm_evidence_alone_is_foreign(facts: SchemaFacts, line: str) -> None:
    finding = judge(facts)
    assert finding is not None and finding["found"] == [line]


def test_the_message_says_found_expected_nothing_changed_and_what_to_do() -> None:
    columns = {table: _orm_columns(table) for table in GUIDE_COLUMNS}
    finding = judge(SchemaFacts(columns={**columns, "CapitalMovement": {"id": "text"}}, prisma_present=True,
                                prisma_migrations=4))
    assert finding is not None
    message = finding["message"]
    assert message.startswith("This database is not the guide's")
    assert '"juntaId"' in message and "junta_id" in message
    assert '"CapitalMovement"' in message and "_prisma_migrations (4 migrations" in message
    assert "The migration expects the guide's schema" in message
    assert "Nothing was changed." in message
    assert "do not apply it here" in message and "prisma migrate" in message
    assert len(finding["found"]) == len(GUIDE_COLUMNS) + 2


# -- the detector on real databases -------------------------------------------------------------------------
@pytest.fixture(params=ORM_STATES)
def orm_state(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def orm_db(pg_db: Any, orm_state: str) -> Any:
    """The throwaway database built in one of the ORM's states (``orm_state``)."""
    build_orm_database(pg_db, orm_state)
    return pg_db


def _finding(db: Any) -> dict[str, Any]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            finding = foreign_schema(cur)
            assert migration_state(cur, "0" * 64) == FOREIGN_SCHEMA
    finally:
        conn.close()
    assert finding is not None
    return finding


def test_the_detector_recognises_every_orm_state(orm_db: Any, orm_state: str) -> None:
    finding = _finding(orm_db)
    found = finding["found"]
    assert '"Prestamo" has "createdAt", "updatedAt", "juntaId", "memberId" where the guide has created_at, ' \
           "updated_at, junta_id, member_id" in found
    assert '"Junta" has "createdAt", "updatedAt", "createdById" where the guide has created_at, updated_at, ' \
           "created_by_id" in found
    migrations = 3 if orm_state == "earlier" else 4
    assert f"_prisma_migrations present ({migrations} migrations)" in found
    later = orm_state != "earlier"
    assert ('"CapitalMovement" present (the application\'s own capital ledger)' in found) is later


def test_the_guides_database_before_and_after_the_migration_is_not_foreign(pg_db: Any) -> None:
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            assert foreign_schema(cur) is None
            assert migration_state(cur, "0" * 64) == "not_applied"
    finally:
        conn.close()
    seed_db(pg_db, juntas=2)
    migrate(pg_db)
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            assert foreign_schema(cur) is None
    finally:
        conn.close()


def test_the_migration_module_refuses_before_any_change(orm_db: Any) -> None:
    """capital_migrate's code path, in check mode and for real: foreign_schema, the message, nothing changed."""
    before = database_checksums(orm_db)
    message = _finding(orm_db)["message"]
    for check_mode in (True, False):
        conn = orm_db.connect()
        try:
            with pytest.raises(MigrationError) as caught:
                Migrator(conn, sql_files()).run(check_mode=check_mode)
        finally:
            conn.close()
        assert caught.value.msg == message
        assert caught.value.details["foreign_schema"] is True
        assert caught.value.details["state_before"] == FOREIGN_SCHEMA
        assert caught.value.details["found"] == _finding(orm_db)["found"]
    assert database_checksums(orm_db) == before


# -- preflight, status and migrate through the CLI and the real playbooks ---------------------------------
def _report(path: str) -> tuple[dict[str, Any], str]:
    json_path = Path(path)
    return json.loads(json_path.read_text()), json_path.with_suffix(".md").read_text()


def test_preflight_status_and_migrate_refuse_with_one_message_and_change_nothing(orm_db: Any,
                                                                                 tmp_path: Path) -> None:
    before = database_checksums(orm_db)
    finding = _finding(orm_db)
    message = finding["message"]
    env = base_env(orm_db.cluster.env(orm_db.name))
    reports = tmp_path / "reports"
    backups = tmp_path / "backups"
    args = ["--report-dir", str(reports), "-e", f"capital_backup_dir={backups}"]

    # preflight with the default capital_no_log: the reason in the summary, not "(output hidden by no_log ...)".
    text = run_cli(["preflight", *args], env)
    assert text.code == ExitCode.PREFLIGHT_REFUSED, text.stdout + text.stderr
    assert message in text.stdout
    assert "hidden by no_log" not in text.stdout + text.stderr
    assert "does not exist" not in text.stdout + text.stderr

    done = run_cli(["preflight", "--quiet", "--json", *args], env)
    assert done.code == ExitCode.PREFLIGHT_REFUSED
    doc = done.json()
    assert message in doc["cause"]
    preflight = doc["data"]["preflight"]
    checks = {c["name"]: c for c in preflight["checks"]}
    assert checks["guide_schema"]["status"] == "fail"
    assert checks["guide_schema"]["message"] == message
    assert checks["guide_schema"]["value"] == {"state": FOREIGN_SCHEMA, "found": finding["found"]}
    assert preflight["failed"] == ["guide_schema"]
    # It stops there: no data-quality pass, no guide query, no plan on a schema they cannot read.
    assert not [name for name in checks if name.startswith("data_") or name == "guide_state_query"]
    assert "migration_state" not in checks
    assert preflight["plan"] == {}
    assert preflight["foreign_schema"] == {**finding}
    report, markdown = _report(doc["report"]["json"])
    assert message in report["cause"]
    assert report["data"]["preflight"]["foreign_schema"]["next_step"] == NEXT_STEP
    assert message in markdown

    # status agrees with preflight, with the detector's next step (not "run migrate.yml").
    status = run_cli(["status", "--json", "--report-dir", str(reports)], env)
    assert status.code == ExitCode.PREFLIGHT_REFUSED
    state = status.json()["status"]
    assert state["state"] == checks["guide_schema"]["value"]["state"] == FOREIGN_SCHEMA
    assert state["next_step"] == NEXT_STEP
    assert state["detail"]["message"] == message
    said = run_cli(["status", "--report-dir", str(reports)], env)
    assert "migration state: FOREIGN_SCHEMA" in said.stdout and message in said.stdout
    assert "run migrate.yml" not in said.stdout

    # migrate.yml refuses in preflight: no backup, nothing changed.
    migrated = run_cli(["migrate", "--quiet", "--json", *args], env)
    assert migrated.code == ExitCode.PREFLIGHT_REFUSED, migrated.stdout
    result = migrated.json()
    assert result["outcome"] == "preflight_refused"
    assert message in result["cause"]
    assert [s["name"] for s in result["stages"]] == ["preflight"]
    assert not backups.exists() or not any(backups.iterdir())
    assert message in _report(result["report"]["json"])[1]
    assert database_checksums(orm_db) == before
