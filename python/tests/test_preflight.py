"""Preflight: read-only checks on a real throwaway database through the real playbook.

Every test runs ``ansible-playbook playbooks/preflight.yml -i inventories/local`` with the connection in
the libpq environment, as an operator would, and reads the checks the role hands to the run report.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.migration import Interrupted
from capital_migrate.pgtmp import Database
from migration_helpers import migrate, run_sql
from playbook_support import ROOT, PlaybookRun, playbook_env, run_playbook

PLAYBOOK = "playbooks/preflight.yml"
BASELINE = ROOT / "files" / "sql" / "baseline" / "baseline_schema.sql"

# The guide's "Verify Current State" query (capital-tracking-migration-guide.md), character for character.
GUIDE_STATE_SQL = """\
-- Check current capital state
SELECT j.id, j.name,
       COUNT(p.id) as prestamos_count,
       COUNT(m.id) as multas_count,
       COUNT(a.id) as acciones_count
FROM "Junta" j
LEFT JOIN "Prestamo" p ON p.junta_id = j.id
LEFT JOIN "Multa" m ON m.junta_id = j.id
LEFT JOIN "Accion" a ON a.junta_id = j.id
GROUP BY j.id, j.name;
"""

# A small clean data set: every junta's history stays positive, no loan is overpaid.
CLEAN_SEED = """
INSERT INTO "User" (id, full_name) SELECT 'u' || g, 'Member ' || g FROM generate_series(1, 12) g;
INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id)
  SELECT 'j' || g, 'Junta ' || g, TIMESTAMP '2024-01-01', 'u' || g FROM generate_series(1, 3) g;
INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
  SELECT 'a' || g, 'COMPRA', 100.1, TIMESTAMP '2024-01-02' + g * INTERVAL '1 hour',
         'j' || (1 + g % 3), 'u' || (1 + g % 12)
    FROM generate_series(1, 30) g;
INSERT INTO "Multa" (id, amount, description, status, created_at, junta_id, member_id)
  SELECT 'm' || g, 5.5, 'late', CASE WHEN g % 2 = 0 THEN 'PAID' ELSE 'PENDING' END,
         TIMESTAMP '2024-02-01' + g * INTERVAL '1 hour', 'j' || (1 + g % 3), 'u' || (1 + g % 12)
    FROM generate_series(1, 6) g;
INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
  SELECT 'p' || g, 150, (ARRAY['APPROVED', 'PAID', 'REJECTED', 'PENDING'])[1 + g % 4],
         TIMESTAMP '2024-03-01' + g * INTERVAL '1 day', TIMESTAMP '2024-03-01', 'j' || (1 + g % 3), 'u' || g
    FROM generate_series(1, 8) g;
INSERT INTO "PagoPrestamo" (id, amount, date, prestamo_id)
  SELECT 'g' || g, 25.25, TIMESTAMP '2024-04-01' + g * INTERVAL '1 day', 'p' || (1 + g % 8)
    FROM generate_series(1, 16) g;
"""


@pytest.fixture
def baseline_db(pg_db: Database) -> Database:
    """The throwaway database with the baseline schema and the small clean data set."""
    run_sql(pg_db, BASELINE.read_text(encoding="utf-8"))
    run_sql(pg_db, CLEAN_SEED)
    return pg_db


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def preflight(db_env: dict[str, str], backup_dir: Path, args: list[str] | None = None,
              **extravars: Any) -> PlaybookRun:
    return run_playbook(PLAYBOOK, playbook_env(db_env), {"capital_backup_dir": str(backup_dir), **extravars},
                        args=args or [])


def failed(run: PlaybookRun) -> set[str]:
    return {name for name, check in run.checks().items() if check["status"] == "fail"}


def test_preflight_passes_on_clean_data_and_reports_guide_rows(baseline_db: Database, backup_dir: Path) -> None:
    run = preflight(baseline_db.env, backup_dir, capital_batch_size=7)

    assert run.rc == 0, run.output
    assert not backup_dir.exists(), "preflight changes nothing: the backup stage creates the directory"
    assert re.search(r"localhost\s+: ok=\d+\s+changed=0 ", run.stdout), "a read-only stage reports changed=0"
    checks = run.checks()
    assert failed(run) == set()
    for name in ("connection", "server_version", "tool_psql", "tool_pg_dump", "tool_pg_restore", "backup_space",
                 "privilege_schema_create", "legacy_tables_owned", "long_transactions", "migration_lock",
                 "migration_state", "data_orphans", "data_overdrawn_juntas", "data_unknown_status"):
        assert checks[name]["status"] == "pass", checks[name]
    assert checks["migration_state"]["value"]["state"] == "not_applied"

    # The guide's query, run here independently, returns exactly the rows in the report.
    expected = sorted(run_sql(baseline_db, GUIDE_STATE_SQL))
    reported = run.report("preflight")["pre_migration_state"]
    got = sorted((r["id"], r["name"], r["prestamos_count"], r["multas_count"], r["acciones_count"]) for r in reported)
    assert got == expected and len(got) == 3

    plan = run.report("preflight")["plan"]
    counts = dict(run_sql(baseline_db, """SELECT 'Accion', count(*) FROM "Accion" UNION ALL
        SELECT 'Multa', count(*) FROM "Multa" UNION ALL SELECT 'Prestamo', count(*) FROM "Prestamo"
        UNION ALL SELECT 'PagoPrestamo', count(*) FROM "PagoPrestamo" """))
    backfill = {item["source"]: item for item in plan["backfill"]}
    for source, rows in counts.items():
        assert backfill[source]["rows"] == rows
        assert backfill[source]["batches"] == math.ceil(rows / 7)
    assert plan["total_batches"] == sum(math.ceil(rows / 7) for rows in counts.values())
    assert "capital_movements" in plan["objects_to_create"]["tables"]
    assert baseline_db.env["PGPASSWORD"] not in run.output


def test_guide_query_runs_unchanged_in_the_role() -> None:
    """The role runs the guide's query from files/sql/guide/, whose text is the guide's."""
    text = (ROOT / "files" / "sql" / "guide" / "pre_migration_state.sql").read_text(encoding="utf-8")
    assert text.strip() == GUIDE_STATE_SQL.strip()
    tasks = (ROOT / "roles" / "preflight" / "tasks" / "guide_state.yml").read_text(encoding="utf-8")
    assert "/pre_migration_state.sql" in tasks


def _catalog_snapshot(db: Database) -> list[tuple[Any, ...]]:
    """Every relation, function and trigger, plus the table write counters: any change shows."""
    return run_sql(db, """
        SELECT 'rel', c.relname, c.relkind::text, c.relnatts::text FROM pg_class c
         WHERE c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
           AND c.relnamespace::regnamespace::text NOT LIKE 'pg_toast%'
        UNION ALL SELECT 'proc', p.proname, p.prokind::text, '' FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
        UNION ALL SELECT 'trigger', t.tgname, t.tgrelid::regclass::text, '' FROM pg_trigger t
        UNION ALL SELECT 'stat', s.relname, (s.n_tup_ins + s.n_tup_upd + s.n_tup_del)::text, s.n_live_tup::text
          FROM pg_stat_user_tables s
        UNION ALL SELECT 'attr', a.attrelid::regclass::text, a.attname::text, a.atttypid::regtype::text
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0
        ORDER BY 1, 2, 3, 4""")


def _settled_catalog_snapshot(db: Database) -> list[tuple[Any, ...]]:
    """_catalog_snapshot once every other session of the database has exited: a backend flushes its table
    statistics as it exits, which happens after its client has closed the connection (the fixture's seeding
    sessions, the playbook's), so a snapshot taken too soon misses their counts (seen in CI: 0 against 30)."""
    for _ in range(100):
        [(others,)] = run_sql(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid()")
        if others == 0:
            break
        time.sleep(0.1)
    time.sleep(0.2)  # the last one's exit, after it left pg_stat_activity
    return _catalog_snapshot(db)


def test_preflight_in_check_mode_changes_nothing(baseline_db: Database, backup_dir: Path) -> None:
    before = _settled_catalog_snapshot(baseline_db)
    run = preflight(baseline_db.env, backup_dir, args=["--check"])
    after = _settled_catalog_snapshot(baseline_db)

    assert run.rc == 0, run.output
    assert after == before
    assert not backup_dir.exists(), "check mode must not create the backup directory"
    assert run.checks()["backup_space"]["status"] == "pass"


DIRTY_DATA = """
ALTER TABLE "Accion" DROP CONSTRAINT "Accion_junta_id_fkey";
ALTER TABLE "PagoPrestamo" DROP CONSTRAINT "PagoPrestamo_prestamo_id_fkey";
ALTER TABLE "Multa" ALTER COLUMN amount DROP NOT NULL;
INSERT INTO "Junta" (id, name, fecha_inicio, created_by_id) VALUES ('jD', 'Dirty', TIMESTAMP '2024-01-01', 'u1');
-- jD: 100 in, then a loan of 300 -> balance -200 (overdrawn); payments 150 + 200 > 300 (overpaid)
INSERT INTO "Accion" (id, type, amount, created_at, junta_id, member_id)
  VALUES ('dA1', 'COMPRA', 100, TIMESTAMP '2024-05-01', 'jD', 'u1'),
         ('dA2', 'COMPRA', -5, TIMESTAMP '2024-06-01', 'jD', 'u1'),          -- negative_amounts
         ('dA3', 'COMPRA', 'NaN', TIMESTAMP '2024-06-02', 'jD', 'u1'),       -- null_amounts (cannot be booked)
         ('dA4', 'COMPRA', 10, TIMESTAMP '2024-06-03', 'ghost-junta', 'u1'); -- orphans
INSERT INTO "Prestamo" (id, amount, status, created_at, updated_at, junta_id, member_id)
  VALUES ('dP1', 300, 'APPROVED', TIMESTAMP '2024-05-02', TIMESTAMP '2024-05-02', 'jD', 'u2'),
         ('dP2', 1, 'WEIRD', TIMESTAMP '2024-06-04', TIMESTAMP '2024-06-04', 'jD', 'u2');  -- unknown_status
INSERT INTO "PagoPrestamo" (id, amount, date, prestamo_id)
  VALUES ('dG1', 150, TIMESTAMP '2024-05-03', 'dP1'),
         ('dG2', 200, TIMESTAMP '2024-05-04', 'dP1'),
         ('dG3', 20, TIMESTAMP '2024-05-05', 'ghost-loan');                    -- orphans
INSERT INTO "Multa" (id, amount, description, status, created_at, junta_id, member_id)
  VALUES ('dM1', 0.001, 'rounds to zero', 'PENDING', TIMESTAMP '2024-06-05', 'jD', 'u3'),  -- zero_amounts
         ('dM2', 1, 'odd status', 'LOST', TIMESTAMP '2024-06-06', 'jD', 'u3'),             -- unknown_status
         ('dM3', NULL, 'no amount', 'PENDING', TIMESTAMP '2024-06-07', 'jD', 'u3');        -- null_amounts
"""

EXPECTED_DIRTY = {
    "orphans": (2, {"Accion.junta_id:dA4", "PagoPrestamo.prestamo_id:dG3"}),
    "null_amounts": (2, {"Accion:dA3", "Multa:dM3"}),
    "zero_amounts": (1, {"Multa:dM1"}),
    "negative_amounts": (1, {"Accion:dA2"}),
    "overpaid_loans": (1, {"Prestamo:dP1"}),
    "overdrawn_juntas": (1, {"Junta:jD"}),
    "unknown_status": (2, {"Prestamo:dP2", "Multa:dM2"}),
}


def test_dirty_data_each_kind_is_counted_and_the_policy_decides(baseline_db: Database, backup_dir: Path) -> None:
    run_sql(baseline_db, DIRTY_DATA)

    default = preflight(baseline_db.env, backup_dir)
    assert default.rc != 0
    checks = default.checks()
    for kind, (count, sample) in EXPECTED_DIRTY.items():
        check = checks[f"data_{kind}"]
        assert check["value"]["count"] == count, check
        assert set(check["value"]["sample_ids"]) == sample, check
    # Default policy: orphans and null amounts fail the run, every other kind warns.
    assert {name for name in failed(default) if name.startswith("data_")} == {"data_orphans", "data_null_amounts"}
    assert checks["data_overpaid_loans"]["status"] == "warn"
    assert "data_orphans" in default.output and "data_null_amounts" in default.output

    lenient = preflight(baseline_db.env, backup_dir, capital_preflight_fail_on=[])
    assert lenient.rc == 0, lenient.output
    assert all(lenient.checks()[f"data_{kind}"]["status"] == "warn" for kind in EXPECTED_DIRTY)

    strict = preflight(baseline_db.env, backup_dir, capital_preflight_fail_on=["overpaid_loans"])
    assert strict.rc != 0
    assert failed(strict) == {"data_overpaid_loans"}


@pytest.mark.parametrize("connections", [2, 1])
def test_dirty_data_read_beside_the_dump_in_its_snapshot_refuses_migrate_before_any_ddl(
    baseline_db: Database, backup_dir: Path, tmp_path: Path, connections: int
) -> None:
    """migrate.yml: the same kinds and counts as preflight.yml, read by capital_snapshot_dump in the dump's
    snapshot on one or two sessions; the run is refused as preflight_refused and nothing is changed."""
    run_sql(baseline_db, DIRTY_DATA)

    run = run_playbook("playbooks/migrate.yml", playbook_env(baseline_db.env),
                       {"capital_backup_dir": str(backup_dir), "capital_report_dir": str(tmp_path / "reports"),
                        "capital_preflight_connections": connections})

    assert run.rc != 0
    assert run.stats["capital_report"]["run"]["outcome"] == "preflight_refused", run.output[-3000:]
    checks = run.checks()
    kinds = [name for name in checks if name.startswith("data_")]
    assert kinds == [f"data_{kind}" for kind in ("orphans", "null_amounts", "zero_amounts", "negative_amounts",
                                                  "overpaid_loans", "overdrawn_juntas", "unknown_status",
                                                  "float_artefacts", "identical_timestamps")]
    for kind, (count, sample) in EXPECTED_DIRTY.items():
        check = checks[f"data_{kind}"]
        assert check["value"]["count"] == count and set(check["value"]["sample_ids"]) == sample, check
    assert {name for name in failed(run) if name.startswith("data_")} == {"data_orphans", "data_null_amounts"}
    snapshot = run.report("preflight")["data_snapshot"]
    assert snapshot["id"] and snapshot["id"] == run.report("backup")["snapshot"]["id"]
    assert run_sql(baseline_db, "SELECT to_regclass('capital_movements') IS NULL")[0][0]


def test_every_kind_of_generated_dirty_data_is_reported_with_its_count(pg_db: Database, backup_dir: Path) -> None:
    from capital_migrate.datagen import DIRTY_KINDS, generate

    conn = pg_db.connect()
    try:
        summary = generate(conn, seed=11, juntas=6, dirty=True)
    finally:
        conn.close()
    run = preflight(pg_db.env, backup_dir, capital_preflight_fail_on=[])
    assert run.rc == 0, run.output
    checks = run.checks()
    reported = {kind: checks[f"data_{kind}"]["value"]["count"] for kind in DIRTY_KINDS}
    assert reported == summary.dirty_counts
    assert all(count > 0 for count in reported.values())


def test_an_invalid_policy_value_is_refused(baseline_db: Database, backup_dir: Path) -> None:
    run = preflight(baseline_db.env, backup_dir, capital_preflight_fail_on=["orphanz"])
    assert run.rc != 0
    assert "capital_preflight_fail_on" in run.output and "orphanz" in run.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("fault", ["wrong_password", "unreachable_host", "missing_database"])
def test_bad_connection_fails_with_a_clear_error(baseline_db: Database, backup_dir: Path, fault: str) -> None:
    env = dict(baseline_db.env)
    wrong_password = f"Wr0ng-{uuid.uuid4().hex}"
    expected = {
        "wrong_password": "password authentication failed",
        "unreachable_host": "Connection refused",
        "missing_database": "does not exist",
    }[fault]
    if fault == "wrong_password":
        env["PGPASSWORD"] = wrong_password
    elif fault == "unreachable_host":
        env["PGPORT"] = str(_free_port())
    else:
        env["PGDATABASE"] = "no_such_database"

    run = preflight(env, backup_dir, args=["-vvv"])

    assert run.rc != 0
    assert "connection: cannot connect to" in run.output
    assert expected in run.output
    assert wrong_password not in run.output
    assert baseline_db.env["PGPASSWORD"] not in run.output


@pytest.fixture
def weak_role(baseline_db: Database) -> Iterator[tuple[str, str]]:
    """A login role that may connect and read the legacy tables but owns nothing and lacks CREATE."""
    name = f"capital_weak_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    conn = baseline_db.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (password,))
            cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            cur.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}")
        yield name, password
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP OWNED BY {name}")
            cur.execute(f"DROP ROLE {name}")
        conn.close()


def test_a_role_without_create_fails_a_named_check(baseline_db: Database, backup_dir: Path,
                                                   weak_role: tuple[str, str]) -> None:
    name, password = weak_role
    env = {**baseline_db.env, "PGUSER": name, "PGPASSWORD": password}

    run = preflight(env, backup_dir)

    assert run.rc != 0
    assert {"privilege_schema_create", "legacy_tables_owned"} <= failed(run)
    assert f"role {name} lacks CREATE on schema public" in run.output
    assert password not in run.output


def _fake_tools(tmp_path: Path, pg_dump_script: str | None) -> str:
    """A PATH whose pg_dump is a fake script, or absent (every other command of /usr/bin stays)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    if pg_dump_script is not None:
        fake = bindir / "pg_dump"
        fake.write_text(pg_dump_script, encoding="utf-8")
        fake.chmod(0o755)
        return f"{bindir}{os.pathsep}{os.environ['PATH']}"
    for tool in Path("/usr/bin").iterdir():
        if tool.name != "pg_dump":
            (bindir / tool.name).symlink_to(tool)
    assert shutil.which("pg_dump", path=str(bindir)) is None
    return f"{bindir}{os.pathsep}{ROOT / '.venv' / 'bin'}"


def test_an_older_pg_dump_than_the_server_fails(baseline_db: Database, backup_dir: Path, tmp_path: Path) -> None:
    path = _fake_tools(tmp_path, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    run = preflight({**baseline_db.env, "PATH": path}, backup_dir)

    assert run.rc != 0
    assert failed(run) == {"tool_pg_dump"}
    assert "pg_dump major 9 is older than the server" in run.output


def test_a_missing_pg_dump_fails(baseline_db: Database, backup_dir: Path, tmp_path: Path) -> None:
    path = _fake_tools(tmp_path, None)
    run = preflight({**baseline_db.env, "PATH": path}, backup_dir)

    assert run.rc != 0
    assert failed(run) == {"tool_pg_dump"}
    assert "pg_dump not found" in run.output


def test_too_little_backup_space_fails(baseline_db: Database, backup_dir: Path) -> None:
    run = preflight(baseline_db.env, backup_dir, capital_backup_free_bytes_override=4096)

    assert run.rc != 0
    assert failed(run) == {"backup_space"}
    value = run.checks()["backup_space"]["value"]
    assert value["free_bytes"] == 4096 and value["needed_bytes"] > 4096
    assert "not enough space" in run.output


def test_a_backup_path_that_cannot_be_a_directory_fails_and_nothing_is_created(baseline_db: Database,
                                                                                tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the backup directory's parent should be")
    run = preflight(baseline_db.env, blocker / "backups")

    assert run.rc != 0
    assert failed(run) == {"backup_space"}
    assert f"{blocker} exists and is not a directory" in run.checks()["backup_space"]["message"]
    assert blocker.read_text() == "a file where the backup directory's parent should be"


def test_long_transactions_locks_and_another_run_are_reported(baseline_db: Database, backup_dir: Path) -> None:
    blocker = psycopg2.connect(baseline_db.dsn)
    other_run = psycopg2.connect(baseline_db.dsn)
    other_run.autocommit = True
    try:
        with blocker.cursor() as cur:  # an open transaction holding a lock on "Junta"
            cur.execute('SELECT count(*) FROM "Junta"')
            cur.execute("SELECT pg_backend_pid()")
            blocker_pid = cur.fetchone()[0]
        with other_run.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext('prestamos.capital_tracking')), pg_backend_pid()")
            holder_pid = cur.fetchone()[1]
        time.sleep(2.2)

        run = preflight(baseline_db.env, backup_dir, capital_max_xact_age=1)

        assert run.rc != 0
        checks = run.checks()
        assert failed(run) == {"long_transactions", "migration_lock"}
        old = checks["long_transactions"]["value"]
        assert blocker_pid in [row["pid"] for row in old]
        assert all(row["age_seconds"] >= 1 and row["query_start"] for row in old)
        locks = checks["legacy_table_locks"]
        assert locks["status"] == "warn"
        assert {"pid": blocker_pid, "relation": "Junta"}.items() <= next(
            row for row in locks["value"] if row["pid"] == blocker_pid).items()
        assert [row["pid"] for row in checks["migration_lock"]["value"]] == [holder_pid]
    finally:
        blocker.close()
        other_run.close()


def test_a_partly_applied_migration_is_reported_as_resumable(baseline_db: Database, backup_dir: Path) -> None:
    # A run stopped after its first two pieces: its objects are in its record of provenance.
    with pytest.raises(Interrupted):
        migrate(baseline_db, stop_after_file="11_expand_columns.sql")
    run = preflight(baseline_db.env, backup_dir)

    assert run.rc == 0, run.output
    state = run.checks()["migration_state"]
    assert state["status"] == "warn"
    assert state["value"]["state"] == "partial"
    assert {"capital_movements", "Junta capital columns"} <= set(state["value"]["objects_present"])
    assert run.checks()["object_provenance"]["status"] == "pass"


def test_look_alike_leftovers_made_by_hand_are_refused_not_resumed(baseline_db: Database, backup_dir: Path) -> None:
    """The team's first scripts' failure (domain.md §4): an earlier attempt's differently shaped table. Not this
    migration's by its record, so preflight refuses, naming each, before any change (issue 16)."""
    run_sql(baseline_db, 'CREATE TABLE capital_movements (id bigint PRIMARY KEY);'
                          'ALTER TABLE "Junta" ADD COLUMN base_capital numeric(14,2) NOT NULL DEFAULT 0')
    run = preflight(baseline_db.env, backup_dir)

    assert run.rc != 0
    state = run.checks()["migration_state"]
    assert state["value"]["state"] == "partial"
    refused = run.checks()["object_provenance"]
    assert refused["status"] == "fail"
    named = " ".join(refused["value"]["not_provably_ours"])
    assert "table capital_movements" in named and 'column "Junta".base_capital' in named
