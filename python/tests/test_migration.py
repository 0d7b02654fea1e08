"""The capital-tracking migration against real throwaway PostgreSQL: exactness, idempotence, resumption."""

from __future__ import annotations

import psycopg2
import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.migration import (
    Interrupted,
    MigrationError,
    Migrator,
    Options,
    parse_units,
    split_statements,
    sql_checksum,
)
from migration_helpers import (
    GUIDE_CAPITAL_CHECK,
    GUIDE_CONSTRAINTS,
    assert_figures_exact,
    assert_same_end_state,
    capital_mismatches,
    migrate,
    seed_db,
    shadow_mismatches,
    snapshot,
    sql_files,
)


def test_splitter_keeps_dollar_quotes_comments_and_gexec_together() -> None:
    text = (
        "SELECT 'a;b';\n-- c;\nDO $x$ BEGIN PERFORM 1; END $x$;\nSELECT 'DROP x'\n\\gexec\nSELECT \"q;\";\n"
    )
    stmts = split_statements(text)
    assert [s.bare for s in stmts] == [
        "SELECT 'a;b';",
        "DO $x$ BEGIN PERFORM 1; END $x$;",
        "SELECT 'DROP x'",
        'SELECT "q;";',
    ]
    assert [s.gexec for s in stmts] == [False, False, True, False]


def test_units_group_begin_commit_blocks_and_lone_statements() -> None:
    units = parse_units(
        "x.sql", "BEGIN;\nSELECT 1;\nSELECT 2;\nCOMMIT;\nCREATE INDEX CONCURRENTLY i ON t (c);\n"
    )
    assert [(u.kind, len(u.statements)) for u in units] == [("tx", 2), ("auto", 1)]
    with pytest.raises(MigrationError, match="BEGIN without COMMIT"):
        parse_units("x.sql", "BEGIN;\nSELECT 1;\n")


def test_a_statement_declared_batched_is_a_unit_of_its_own_kind_and_psql_sees_a_variable() -> None:
    units = parse_units(
        "2x.sql", "SELECT 1;\n-- the loop\n\\set capital_unit batched\nCALL loop(:batch_size);\nSELECT 2;\n"
    )
    assert [(u.kind, u.summary) for u in units] == [
        ("auto", "SELECT 1;"), ("batched", "CALL loop(:batch_size);"), ("auto", "SELECT 2;")
    ]
    backfill = parse_units("20_backfill.sql", sql_files()["20_backfill.sql"])
    assert [u.kind for u in backfill] == ["batched", "auto", "auto", "batched"]
    for text, refusal in (
        ("\\set capital_unit batched\n", "followed by no statement"),
        ("SELECT 1\n\\set capital_unit batched\n;", "between two statements"),
        ("BEGIN;\n\\set capital_unit batched\nSELECT 1;\nCOMMIT;\n", "outside a transaction block"),
        ("\\set capital_unit loop\nSELECT 1;\n", "declare one of"),
        ("\\set other x\nSELECT 1;\n", "not supported in a piece"),
    ):
        with pytest.raises(MigrationError, match=refusal):
            parse_units("x.sql", text)


def test_checksum_changes_with_any_text_and_order() -> None:
    assert sql_checksum(["a", "b"]) != sql_checksum(["b", "a"])
    assert sql_checksum(["ab", ""]) != sql_checksum(["a", "b"])
    assert len(sql_checksum(["a"])) == 64


@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "dirty"])
def test_migrate_is_cent_exact_and_rerun_is_unchanged(pg_db, dirty: bool) -> None:
    seed_db(pg_db, juntas=5, dirty=dirty)
    first = migrate(pg_db, batch_size=97)
    assert first["changed"] is True
    assert first["state_before"] == "not_applied" and first["state_after"] == "applied"
    assert first["rows_backfilled"]["Accion"] > 0
    conn = pg_db.connect()
    try:
        assert capital_mismatches(conn) == []
        assert shadow_mismatches(conn) == []
        with conn.cursor() as cur:
            cur.execute(GUIDE_CAPITAL_CHECK)
            assert cur.fetchall() == []
            cur.execute(GUIDE_CONSTRAINTS)
            assert cur.fetchall() == []
            cur.execute("SELECT outcome, sql_sha256 FROM capital_migration_history ORDER BY id")
            assert cur.fetchall() == [("applied", first["sql_sha256"])]
        before = snapshot(conn)
        conn.rollback()  # the runner drives its own transactions (autocommit + BEGIN/COMMIT)
    finally:
        conn.close()
    if dirty:
        assert first["violations"], "dirty data must report existing violations"
    second = migrate(pg_db)
    assert second["changed"] is False and second["state_before"] == "applied"
    assert second["statements"] == [] and second["batches"] == 0
    conn = pg_db.connect()
    try:
        assert snapshot(conn) == before
    finally:
        conn.close()


def test_psql_entry_point_gives_the_same_end_state(pg_db, pg_cluster, tmp_path) -> None:
    import subprocess

    from migration_helpers import SQL_DIR

    seed_db(pg_db, juntas=3, dirty=True)
    subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "batch_size=50",
            "-f",
            str(SQL_DIR / "add_capital_tracking.sql"),
        ],
        env=pg_db.env,
        check=True,
        capture_output=True,
    )
    assert_figures_exact(pg_db)
    # The module then records the run (no applied row yet: partial), executing only idempotent pieces.
    result = migrate(pg_db)
    assert result["state_before"] == "partial" and result["state_after"] == "applied"


KILL_POINTS = [
    pytest.param({"stop_after_file": "11_expand_columns.sql"}, id="mid-expand"),
    pytest.param({"stop_after_file": "14_triggers.sql"}, id="after-expand"),
    pytest.param({"stop_after_batches": 3}, id="mid-backfill-ledger"),
    pytest.param({"stop_after_batches": 9}, id="mid-backfill-juntas"),
    pytest.param({"stop_after_file": "20_backfill.sql"}, id="before-enforce"),
]


@pytest.mark.parametrize("stop", KILL_POINTS)
def test_rerun_after_interruption_ends_in_the_same_state_row_by_row(pg_cluster, stop: dict) -> None:
    from capital_migrate.pgtmp import temporary_database

    with temporary_database(pg_cluster) as reference, temporary_database(pg_cluster) as victim:
        for db in (reference, victim):
            seed_db(db, juntas=3, dirty=True)
        migrate(reference, batch_size=40)
        with pytest.raises(Interrupted):
            migrate(victim, batch_size=40, **stop)
        resumed = migrate(victim, batch_size=40)
        assert resumed["state_before"] == "partial" and resumed["state_after"] == "applied"
        ref_conn, vic_conn = reference.connect(), victim.connect()
        try:
            assert capital_mismatches(vic_conn) == []
            assert snapshot(vic_conn) == snapshot(ref_conn)
            with vic_conn.cursor() as cur:
                cur.execute("SELECT outcome FROM capital_migration_history ORDER BY id")
                outcomes = [r[0] for r in cur.fetchall()]
            assert outcomes[-1] == "applied" and set(outcomes[:-1]) <= {"failed"}
        finally:
            ref_conn.close()
            vic_conn.close()


def test_rerun_rebuilds_a_junta_index_left_invalid_between_ledger_and_junta_steps(pg_cluster) -> None:
    """Stopped after the ledger steps with the junta index left INVALID (as by a killed or timed-out CREATE
    INDEX CONCURRENTLY): the rerun drops it, builds the real one and ends in the reference state."""
    from capital_migrate.pgtmp import temporary_database
    from migration_helpers import run_sql

    with temporary_database(pg_cluster) as reference, temporary_database(pg_cluster) as victim:
        for db in (reference, victim):
            seed_db(db, juntas=3, dirty=True)
        migrate(reference, batch_size=40)
        counts = run_sql(
            victim,
            'SELECT (SELECT count(*) FROM "Accion"), (SELECT count(*) FROM "Multa"), '
            '(SELECT count(*) FROM "Prestamo"), (SELECT count(*) FROM "PagoPrestamo")',
        )[0]
        ledger_batches = sum(n // 40 + 1 for n in counts)  # the last batch of a source is the short one
        with pytest.raises(Interrupted):
            migrate(victim, batch_size=40, stop_after_batches=ledger_batches)
        assert run_sql(victim, "SELECT source, done FROM capital_backfill_progress ORDER BY source") == [
            ("Accion", True), ("Junta", False), ("Multa", True), ("PagoPrestamo", True), ("Prestamo", True),
            ("PrestamoNew", False),
        ]
        # A build that failed half-way leaves an INVALID index under the name (here: a UNIQUE build that
        # meets duplicates).
        conn = victim.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur, pytest.raises(psycopg2.Error, match="could not create unique index"):
                cur.execute("CREATE UNIQUE INDEX CONCURRENTLY capital_movements_junta_created_idx"
                            " ON capital_movements (junta_id)")
        finally:
            conn.close()
        index = "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index" \
                " WHERE indexrelid = to_regclass('capital_movements_junta_created_idx')"
        assert run_sql(victim, index)[0][0] is False
        resumed = migrate(victim, batch_size=40)
        assert resumed["state_before"] == "partial" and resumed["state_after"] == "applied"
        assert run_sql(victim, index) == run_sql(reference, index)
        valid, definition = run_sql(victim, index)[0]
        assert valid is True and "UNIQUE" not in definition and "INCLUDE (type, direction, amount)" in definition
        assert_same_end_state(victim, reference)


def test_drift_fails_before_touching_anything(pg_db) -> None:
    seed_db(pg_db, juntas=2)
    migrate(pg_db)
    changed = sql_files()
    changed["30_enforce.sql"] += "\n-- an edit\n"
    conn = pg_db.connect()
    try:
        before = snapshot(conn)
        conn.rollback()  # the runner drives its own transactions (autocommit + BEGIN/COMMIT)
        with pytest.raises(MigrationError) as err:
            Migrator(conn, changed, Options()).run()
        assert err.value.details["drift"] is True
        assert "drift" in err.value.msg
        assert snapshot(conn) == before
    finally:
        conn.close()


def test_second_concurrent_run_fails_at_once_naming_the_holder(pg_db) -> None:
    seed_db(pg_db, juntas=1)
    holder = pg_db.connect()
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SET application_name = 'other-migration'")
            cur.execute("SELECT pg_advisory_lock(hashtext('prestamos.capital_tracking'))")
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        with pytest.raises(MigrationError) as err:
            migrate(pg_db)
        assert err.value.details["lock_held"] is True
        assert err.value.details["holder"]["pid"] == pid
        assert str(pid) in err.value.msg and "other-migration" in err.value.msg
        conn = pg_db.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('capital_movements')")
            assert cur.fetchone()[0] is None
        conn.close()
    finally:
        holder.close()


def test_lock_held_on_junta_retries_then_fails_cleanly(pg_db) -> None:
    seed_db(pg_db, juntas=1)
    blocker = pg_db.connect()
    try:
        with blocker.cursor() as cur:
            cur.execute('LOCK TABLE "Junta" IN ACCESS SHARE MODE')  # a long read transaction
        with pytest.raises(MigrationError) as err:
            migrate(pg_db, lock_timeout="200ms", lock_retries=2, lock_backoff=0.05)
        assert err.value.details["sqlstate"] == "55P03"
        assert err.value.details["attempts"] == 3
        assert err.value.details["lock_retries"] == 2
        assert "11_expand_columns.sql" in err.value.msg and "gave up after 3 attempts" in err.value.msg
        conn = pg_db.connect()
        with conn.cursor() as cur:
            cur.execute(
                """SELECT count(*) FROM pg_attribute WHERE attrelid = '"Junta"'::regclass
                    AND attname IN ('base_capital', 'current_capital', 'available_capital')"""
            )
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT outcome FROM capital_migration_history")
            assert [r[0] for r in cur.fetchall()] == ["failed"]
        conn.close()
    finally:
        blocker.rollback()
        blocker.close()
    assert migrate(pg_db)["state_after"] == "applied"


def test_check_mode_executes_nothing(pg_db) -> None:
    seed_db(pg_db, juntas=1)
    conn = pg_db.connect()
    try:
        result = Migrator(conn, sql_files(), Options()).run(check_mode=True)
        assert result["state_before"] == "not_applied" and result["plan"]
        backfill = next(piece for piece in result["plan"] if piece["phase"] == "backfill")
        # The ledger CALL, the junta index build, VACUUM and the junta CALL; the two CALLs run in batches.
        assert (backfill["units"], backfill["batched_units"]) == (4, 2), backfill
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('capital_migration_state')")
            assert cur.fetchone()[0] is None
    finally:
        conn.close()


def test_capital_cents_refuses_non_finite_amounts_and_is_inlined(pg_db) -> None:
    """capital_cents is the one float -> cents conversion: exact rounding, NaN/Infinity refused with
    SQLSTATE 22003, NULL passed through, and plain SQL the planner inlines into the batch queries (a
    function call per row was measurable on a million rows, BENCHMARKS.md)."""
    seed_db(pg_db, juntas=1)
    migrate(pg_db)
    conn = pg_db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT capital_cents(2.675::float8), capital_cents(-0.005::float8), capital_cents(NULL),"
                " round(2.675::float8::numeric, 2), round(-0.005::float8::numeric, 2)"
            )
            a, b, null, want_a, want_b = cur.fetchone()
            assert (a, b, null) == (want_a, want_b, None)
            cur.execute('EXPLAIN (VERBOSE) SELECT capital_cents(amount) FROM "Accion"')
            plan = "\n".join(row[0] for row in cur.fetchall())
            assert "capital_cents" not in plan and "round(" in plan, plan
            for bad in ("NaN", "Infinity", "-Infinity"):
                with pytest.raises(Exception, match="is not a finite number") as err:
                    cur.execute("SELECT capital_cents(%s::float8)", (bad,))
                assert err.value.pgcode == "22003"
                conn.rollback()
    finally:
        conn.close()
