#!/usr/bin/python
"""Ansible module capital_check: read-only, cent-exact reconciliation of the capital-tracking migration."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: capital_check
short_description: Reconcile every junta's capital, the ledger and the shadow tables, to the cent
description:
  - Recomputes every junta's C(base_capital), C(current_capital) and C(available_capital) independently from
    the raw legacy rows (C("Accion"), C("Multa"), C("Prestamo"), C("PagoPrestamo")), using the capital model
    of the project's C(domain.md) section 3, and compares the result with the C("Junta") columns, with the
    ledger C(capital_movements) summed per movement type, and with C(calculate_available_capital(junta_id)).
  - Compares the shadow tables C("PrestamoNew") and C("PagoPrestamoNew") with the legacy tables per junta
    (row counts and cent sums) and row by row (missing, orphaned and differing rows).
  - Read-only. Everything runs in one C(READ ONLY), C(REPEATABLE READ) transaction, so all figures come
    from one consistent snapshot while the application keeps writing; the transaction is rolled back.
  - Equality is exact. A difference of 0.01 is a discrepancy; there is no tolerance.
  - Money in the results is always a string with two decimals, never a float.
version_added: 0.1.0
author: prestamos capital-tracking project (@prestamos)
options:
  method:
    description:
      - How the expected figures are recomputed from the raw rows.
      - C(sql) lets PostgreSQL aggregate C(sum(round(amount::numeric, 2))) per junta and source type (the
        rounding is per row, so this is exact). Nothing but the aggregates crosses the wire, so it suits
        databases of millions of rows.
      - C(python) streams the raw float rows through server-side cursors into the pure model in
        C(module_utils/capital.py), which mimics the C(float8 -> numeric) cast itself. Slower; an
        independent cross-check of the SQL path for small and medium databases. It keeps one entry per loan
        in memory (a payment names its loan, not its junta).
    type: str
    choices: [sql, python]
    default: sql
  fail_on_discrepancy:
    description:
      - Fail (C(failed=true), a message naming the first discrepancies) when any figure differs.
      - With C(false) the module only reports; the discrepancies are still returned.
    type: bool
    default: true
  check_shadow:
    description:
      - Compare the shadow tables with the legacy tables.
    type: bool
    default: true
  check_function:
    description:
      - Also call C(calculate_available_capital(junta_id)) for every junta and compare its result.
    type: bool
    default: true
  max_discrepancies:
    description:
      - At most this many discrepancies are returned in RV(discrepancies) (all are counted in
        RV(discrepancy_count)); keeps a disastrous run's result readable.
    type: int
    default: 1000
  queries:
    description:
      - Further read-only queries run after the reconciliation, verbatim, in the same snapshot (the
        project's verify role passes the guide's verification queries, saving a module start-up of their
        own). Each runs under a savepoint, so a query the server refuses is reported in RV(query_results)
        with its error and does not stop the others or the reconciliation.
    type: list
    elements: str
    default: []
  connections:
    description:
      - Sessions that read at once. With 2 or more (and O(method=sql)) the check exports its snapshot and a
        second session imports it and reads the aggregates from the end of the list while the first reads
        from its start (module_utils/prefetch.py), so the figures are the same ones, read sooner. A second
        session that cannot connect reads nothing; the first then reads everything.
    type: int
    default: 1
  connections_while_live:
    description:
      - At most this many sessions when the application is at work on the database as the check starts
        reading, that is another client session (not one named C(capital*); O(alongside) runs as
        C(capital_check alongside)) in a statement or a transaction, or in one within the last two seconds
        (module_utils/live.py). C(0) does not look.
    type: int
    default: 0
  alongside:
    description:
      - A command run beside the check (the project's verify role passes psql with the SQL test suite
        C(verify_migration.sql) on its standard input). It is started first (on a thread), runs on its own
        session, and is waited for after the check's last read, so the two read the legacy tables at the
        same time and the module returns when both are done, without an async task and a polling wait of
        its own.
      - Its outcome is returned in RV(alongside) and never fails the module; the caller judges it.
      - It runs with the module's environment (a task's C(environment), e.g. the libpq variables).
    type: dict
    suboptions:
      argv:
        description: The command and its arguments, run without a shell.
        type: list
        elements: str
        required: true
      stdin:
        description: Text sent to the command's standard input (then closed).
        type: str
        default: ''
  settings:
    description:
      - Server settings for the check's transaction on every session it reads with (C(set_config(name, value,
        true)), so they end with it), e.g. C(max_parallel_workers_per_gather=0) where the check shares the
        machine with other readers and its own second session already is the parallelism.
    type: dict
    default: {}
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for the check's reads, so it fails instead of queueing forever behind
        DDL that holds an exclusive lock (and never makes other sessions queue behind it).
    type: str
    default: 10s
attributes:
  check_mode:
    support: full
    description: Read-only in every mode; check mode runs exactly the same read-only queries.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
extends_documentation_fragment:
  - prestamos.capital.connection
notes:
  - The connection options have the names and meaning of the community.postgresql modules, so one
    C(module_defaults) entry serves both (the project's playbooks set it for C(group/prestamos.capital.all)).
  - The login role only needs SELECT on the legacy and capital tables and EXECUTE on
    C(calculate_available_capital).
  - The migration must have been applied (the ledger table must exist); otherwise the module fails naming
    what is missing.
"""

EXAMPLES = r"""
- name: verify | Reconcile capital to the cent
  prestamos.capital.capital_check:
    login_host: db.example.org
    login_user: migrator
    login_password: "{{ vault_db_password }}"
    login_db: prestamos
  register: capital_check_result
  no_log: true

- name: verify | Cross-check with the Python model and only report
  prestamos.capital.capital_check:
    method: python
    fail_on_discrepancy: false
  register: capital_check_python
"""

RETURN = r"""
read_ahead:
  description: How many of the reads a second session made in the same snapshot (O(connections)); 0 with one.
  returned: success
  type: int
  sample: 7
application_sessions:
  description: The application's sessions at work when the check started reading (see
    O(connections_while_live)); null when it did not look.
  returned: success
  type: int
  sample: 4
sessions:
  description: Sessions the check started to read with; 2 when a second one was started to read ahead (it may
    still have read nothing, RV(read_ahead)).
  returned: success
  type: int
  sample: 2
juntas_checked:
  description: Number of rows in C("Junta") that were checked.
  returned: success
  type: int
  sample: 42
totals:
  description: Recomputed capital summed over all juntas (what the columns must add up to).
  returned: success
  type: dict
  sample: {"base_capital": "125000.00", "current_capital": "80312.55", "available_capital": "80312.55"}
totals_recorded:
  description: The C("Junta") columns summed over all juntas.
  returned: success
  type: dict
  sample: {"base_capital": "125000.00", "current_capital": "80312.55", "available_capital": "80312.55"}
ledger:
  description: Ledger row count and signed balance (increases minus decreases) over all juntas.
  returned: success
  type: dict
  sample: {"movements": 1200, "balance": "80312.55"}
discrepancies:
  description:
    - Every figure that differs, at most O(max_discrepancies).
    - C(field) is a C("Junta") column, C(ledger.<TYPE>), C(ledger.balance), C(calculate_available_capital)
      or C(shadow.<what>). C(difference) is actual minus expected. Counts are whole numbers, money has two
      decimals; all values are strings.
  returned: always
  type: list
  elements: dict
  sample: [{"junta_id": "j-1", "field": "current_capital", "expected": "100.00", "actual": "100.01",
            "difference": "0.01"}]
discrepancy_count:
  description: Number of discrepancies found (the list may be truncated, this is not).
  returned: always
  type: int
  sample: 0
shadow:
  description: Legacy versus shadow totals and the number of shadow discrepancies.
  returned: success and O(check_shadow=true)
  type: dict
  sample: {"checked": true, "legacy": {"loan_count": 10, "loan_amount": "500.00", "payment_count": 20,
           "payment_amount": "250.00"}, "shadow": {"loan_count": 10, "loan_amount": "500.00",
           "payment_count": 20, "payment_amount": "250.00"}, "discrepancy_count": 0}
method:
  description: The recomputation method used.
  returned: always
  type: str
  sample: sql
snapshot_time:
  description: Start of the snapshot the figures come from (server time, ISO 8601).
  returned: success
  type: str
  sample: "2024-05-01T10:00:00.123456+00:00"
summary:
  description: One line naming the first discrepancies (also the failure message), or saying there are none.
  returned: success
  type: str
  sample: "capital_check found no discrepancies (exact to the cent)"
query_results:
  description:
    - One entry per O(queries) item, in order; C(rows) holds its rows as dicts by column name (NUMERIC values
      as exact strings, timestamps in ISO 8601), C(error) the server's message when it failed, else empty.
  returned: success
  type: list
  elements: dict
  sample: [{"rows": [], "error": ""}]
alongside:
  description:
    - The outcome of O(alongside), shaped like a command task's result; C(msg) says why it failed when it
      exited non-zero or could not start (C(rc) 127).
  returned: when O(alongside) is given
  type: dict
  sample: {"rc": 0, "stdout": "", "stderr": "psql:<stdin>:12: NOTICE:  ok: ledger_append_only",
           "stdout_lines": [], "stderr_lines": ["psql:<stdin>:12: NOTICE:  ok: ledger_append_only"], "msg": ""}
executed_queries:
  description: The SQL statements run, in order.
  returned: always
  type: list
  elements: str
"""

import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.prestamos.capital.plugins.module_utils import live
from ansible_collections.prestamos.capital.plugins.module_utils.capital import (
    ZERO,
    AccionRow,
    Discrepancy,
    JuntaCapital,
    PagoRow,
    PrestamoRow,
    ShadowFigures,
    capital_from_type_sums,
    compare_shadow,
    legacy_shadow_figures,
    money_str,
    reconcile,
    signed_type_sums,
    totals,
)
from ansible_collections.prestamos.capital.plugins.module_utils.pg import (
    HAS_PSYCOPG2,
    PSYCOPG2_IMPORT_ERROR,
    connect_kwargs,
    connection_argument_spec,
)
from ansible_collections.prestamos.capital.plugins.module_utils.prefetch import Prefetch

if HAS_PSYCOPG2:
    import psycopg2
    import psycopg2.extensions

# How many discrepancies the failure message names before "and N more".
MESSAGE_DISCREPANCIES = 5
# Rows fetched per round trip by the python method's server-side cursors.
STREAM_BATCH = 10000

# --- SQL -------------------------------------------------------------------------------------------------
# Every statement reads only; the transaction is READ ONLY, so a write would fail, not happen.

SQL_SCHEMA = """
SELECT to_regclass('public.capital_movements') IS NOT NULL AS ledger,
       to_regclass('public."PrestamoNew"') IS NOT NULL AS shadow_loans,
       to_regclass('public."PagoPrestamoNew"') IS NOT NULL AS shadow_payments,
       to_regprocedure('public.calculate_available_capital(text)') IS NOT NULL AS calc_function,
       (SELECT count(*) FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = 'Junta'
           AND column_name IN ('base_capital', 'current_capital', 'available_capital')) AS junta_columns,
       (SELECT count(*) FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name IN ('Accion', 'Multa')
           AND column_name = 'affects_capital') AS affects_capital_columns,
       transaction_timestamp() AS snapshot_time
""".strip()

# The independent recomputation: per row float8 -> numeric, round to cents, then exact sums per junta and
# type. Deliberately does not call any function the migration created.
SQL_EXPECTED_SUMS = """
SELECT junta_id, 'ACCION' AS kind, sum(round(amount::numeric, 2)) AS cents
  FROM "Accion" WHERE affects_capital GROUP BY junta_id
UNION ALL
SELECT junta_id, 'MULTA', sum(round(amount::numeric, 2))
  FROM "Multa" WHERE affects_capital GROUP BY junta_id
UNION ALL
SELECT junta_id, 'PRESTAMO', -sum(round(amount::numeric, 2))
  FROM "Prestamo" WHERE status <> 'REJECTED' GROUP BY junta_id
UNION ALL
SELECT p.junta_id, 'PAGO', sum(round(g.amount::numeric, 2))
  FROM "PagoPrestamo" g JOIN "Prestamo" p ON p.id = g.prestamo_id GROUP BY p.junta_id
""".strip()

SQL_STREAM = {
    "accion": 'SELECT id, junta_id, amount, affects_capital FROM "Accion"',
    "multa": 'SELECT id, junta_id, amount, affects_capital FROM "Multa"',
    "prestamo": 'SELECT id, junta_id, amount, status FROM "Prestamo"',
    "pago": 'SELECT id, prestamo_id, amount FROM "PagoPrestamo"',
}

SQL_JUNTA = 'SELECT id, base_capital, current_capital, available_capital FROM "Junta"'

SQL_LEDGER = """
SELECT junta_id, type,
       sum(CASE direction WHEN 'INCREASE' THEN amount WHEN 'DECREASE' THEN -amount END) AS cents,
       count(*) AS movements,
       count(*) FILTER (WHERE direction NOT IN ('INCREASE', 'DECREASE') OR direction IS NULL) AS bad
  FROM capital_movements GROUP BY junta_id, type
""".strip()

SQL_CALCULATED = 'SELECT id, calculate_available_capital(id) FROM "Junta"'

SQL_SHADOW = {
    "legacy_loans": (
        'SELECT junta_id, count(*), sum(round(amount::numeric, 2)) FROM "Prestamo" GROUP BY junta_id'
    ),
    "legacy_payments": (
        'SELECT p.junta_id, count(*), sum(round(g.amount::numeric, 2)) FROM "PagoPrestamo" g '
        'JOIN "Prestamo" p ON p.id = g.prestamo_id GROUP BY p.junta_id'
    ),
    "shadow_loans": 'SELECT junta_id, count(*), sum(amount) FROM "PrestamoNew" GROUP BY junta_id',
    "shadow_payments": (
        'SELECT n.junta_id, count(*), sum(g.amount) FROM "PagoPrestamoNew" g '
        'JOIN "PrestamoNew" n ON n.id = g.prestamo_id GROUP BY n.junta_id'
    ),
}

# Row-by-row checks: (field name, query returning junta_id and a count of offending rows).
SQL_SHADOW_ROWS = (
    (
        "shadow.loans_missing",
        'SELECT p.junta_id, count(*) FROM "Prestamo" p WHERE NOT EXISTS '
        '(SELECT 1 FROM "PrestamoNew" n WHERE n.original_prestamo_id = p.id) GROUP BY p.junta_id',
    ),
    (
        "shadow.loans_orphaned",
        'SELECT n.junta_id, count(*) FROM "PrestamoNew" n WHERE NOT EXISTS '
        '(SELECT 1 FROM "Prestamo" p WHERE p.id = n.original_prestamo_id) GROUP BY n.junta_id',
    ),
    (
        "shadow.loans_differing",
        'SELECT p.junta_id, count(*) FROM "Prestamo" p JOIN "PrestamoNew" n ON n.original_prestamo_id = p.id '
        "WHERE n.amount IS DISTINCT FROM round(p.amount::numeric, 2) "
        "OR n.junta_id IS DISTINCT FROM p.junta_id OR n.member_id IS DISTINCT FROM p.member_id "
        "OR n.status IS DISTINCT FROM p.status "
        "GROUP BY p.junta_id",
    ),
    (
        "shadow.payments_missing",
        'SELECT p.junta_id, count(*) FROM "PagoPrestamo" g JOIN "Prestamo" p ON p.id = g.prestamo_id '
        'WHERE NOT EXISTS (SELECT 1 FROM "PagoPrestamoNew" n WHERE n.original_pago_id = g.id) '
        "GROUP BY p.junta_id",
    ),
    (
        "shadow.payments_orphaned",
        'SELECT l.junta_id, count(*) FROM "PagoPrestamoNew" n JOIN "PrestamoNew" l ON l.id = n.prestamo_id '
        'WHERE NOT EXISTS (SELECT 1 FROM "PagoPrestamo" g WHERE g.id = n.original_pago_id) '
        "GROUP BY l.junta_id",
    ),
    (
        "shadow.payments_differing",
        'SELECT p.junta_id, count(*) FROM "PagoPrestamo" g JOIN "Prestamo" p ON p.id = g.prestamo_id '
        'JOIN "PagoPrestamoNew" n ON n.original_pago_id = g.id '
        'LEFT JOIN "PrestamoNew" l ON l.id = n.prestamo_id '
        "WHERE n.amount IS DISTINCT FROM round(g.amount::numeric, 2) "
        "OR l.original_prestamo_id IS DISTINCT FROM g.prestamo_id GROUP BY p.junta_id",
    ),
)


class CheckError(Exception):
    """A condition that makes the check impossible (not a discrepancy): the message says what to do."""


class Alongside:
    """O(alongside): a command run by module.run_command on a thread of its own while the check reads (its
    output collected as it comes, so a full pipe never stalls it), its outcome returned like a command task's."""

    def __init__(self, module: AnsibleModule, argv: list[str], stdin: str) -> None:
        self.module = module
        self.argv = argv
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(stdin,), daemon=True)
        self.thread.start()

    def _run(self, stdin: str) -> None:
        try:
            # Named like the check's own sessions, so that it does not count as the application (live.py).
            rc, out, err = self.module.run_command(self.argv, data=stdin or None, binary_data=True,
                                                   expand_user_and_vars=False, handle_exceptions=False,
                                                   environ_update={"PGAPPNAME": "capital_check alongside"})
        except OSError as exc:
            self.outcome = self._result(127, "", "", f"cannot run {self.argv[0]}: {exc.strerror or exc}")
            return
        self.outcome = self._result(rc, out, err, f"{self.argv[0]} exited {rc}" if rc else "")

    @staticmethod
    def _result(rc: int, out: str, err: str, msg: str) -> dict[str, Any]:
        return {"rc": rc, "stdout": out, "stderr": err, "stdout_lines": out.splitlines(),
                "stderr_lines": err.splitlines(), "msg": msg}

    def wait(self) -> dict[str, Any]:
        """Wait for the command to end; its outcome."""
        self.thread.join()
        return self.outcome


class CapitalChecker:
    """Runs the reconciliation on one read-only snapshot and builds the module result."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params: Mapping[str, Any] = module.params
        self.executed_queries: list[str] = []
        self.conn: Any = None
        self._found: list[Discrepancy] = []
        self.prefetch: Prefetch | None = None
        self.application_sessions: int | None = None

    # -- database plumbing ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Open one connection whose transactions are READ ONLY and REPEATABLE READ (one snapshot)."""
        try:
            self.conn = psycopg2.connect(**connect_kwargs(self.params, "capital_check"))
        except psycopg2.Error as exc:
            # libpq's message names host/port/user and the cause, never the password.
            raise CheckError(f"cannot connect to the database: {str(exc).strip()}") from exc
        self.conn.set_session(
            isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True
        )

    def close(self) -> None:
        """Roll back (nothing was written; this just ends the snapshot) and disconnect."""
        if self.prefetch is not None:
            self.prefetch.close()
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                pass  # the connection is already broken; the error that broke it is what we report
            finally:
                self.conn.close()

    def query(self, sql: str, args: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """Run one read and fetch all of it (used only for aggregated, per-junta sized results)."""
        self.executed_queries.append(sql)
        ahead = self.prefetch.take(sql) if self.prefetch is not None and args is None else None
        if ahead is not None:
            return ahead
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows

    def setup_statements(self) -> list[tuple[str, tuple[str, ...]]]:
        """What every session runs first in its transaction: lock_timeout, then O(settings) (SET LOCAL)."""
        settings = {"lock_timeout": self.params["lock_timeout"], **self.params["settings"]}
        return [("SELECT set_config(%s, %s, true)", (str(name), str(value))) for name, value in settings.items()]

    def read_ahead(self, calc_ok: bool, shadow_ok: bool) -> None:
        """With connections > 1 (method sql): export this snapshot and let a second session read, from the
        end, the aggregates run() will ask for, in the order it asks (module_utils/prefetch.py)."""
        if self.params["connections"] < 2 or self.params["method"] != "sql":
            return
        # In this snapshot's transaction: pg_stat_activity is read as it is now, and nothing is ended.
        sessions, self.application_sessions = live.sessions(
            self.conn, self.params["connections"], self.params["connections_while_live"]
        )
        if sessions < 2:
            return
        queries = [SQL_EXPECTED_SUMS, SQL_JUNTA, SQL_LEDGER]
        if self.params["check_function"] and calc_ok:
            queries.append(SQL_CALCULATED)
        if self.params["check_shadow"] and shadow_ok:
            queries += [SQL_SHADOW[name] for name in ("legacy_loans", "legacy_payments", "shadow_loans",
                                                      "shadow_payments")]
            queries += [sql for _field, sql in SQL_SHADOW_ROWS]
        snapshot = self.query("SELECT pg_export_snapshot()")[0][0]
        self.prefetch = Prefetch(queries)
        self.prefetch.start(
            lambda: psycopg2.connect(**connect_kwargs(self.params, "capital_check")), snapshot,
            self.setup_statements())

    def stream(self, name: str, sql: str) -> Iterator[tuple[Any, ...]]:
        """Yield rows through a server-side cursor, STREAM_BATCH at a time (raw tables can be huge)."""
        self.executed_queries.append(sql)
        with self.conn.cursor(name=f"capital_check_{name}") as cur:
            cur.itersize = STREAM_BATCH
            cur.execute(sql)
            yield from cur

    # -- the check -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Check everything on one snapshot; return the module result (without failed/msg)."""
        # set_config(..., true) is SET LOCAL: it ends with the snapshot transaction.
        for sql, args in self.setup_statements():
            self.query(sql, args)
        schema = self.query(SQL_SCHEMA)[0]
        ledger_ok, shadow_loans, shadow_payments, calc_ok, junta_cols, affects_cols, snapshot = schema
        missing = [
            what
            for what, present in (
                ("table capital_movements", ledger_ok),
                ('"Junta" capital columns', junta_cols == 3),
                ('"Accion"/"Multa".affects_capital', affects_cols == 2),
            )
            if not present
        ]
        if missing:
            raise CheckError(
                "the capital-tracking migration is not applied (missing: "
                + ", ".join(missing)
                + "); run the migrate stage (migrate.yml) first"
            )
        self.read_ahead(bool(calc_ok), bool(shadow_loans and shadow_payments))

        expected_sums = self.expected_sums()
        junta_columns = {row[0]: JuntaCapital(row[1], row[2], row[3]) for row in self.query(SQL_JUNTA)}
        ledger_sums: dict[str, dict[str, Decimal]] = {}
        movements = 0
        bad_direction = 0
        for junta_id, kind, cents, count, bad in self.query(SQL_LEDGER):
            ledger_sums.setdefault(junta_id, {})[kind] = cents if cents is not None else ZERO
            movements += count
            bad_direction += bad
        calculated: dict[str, Decimal] | None = None
        if self.params["check_function"]:
            if not calc_ok:
                raise CheckError(
                    "function calculate_available_capital(text) is missing; the migration is incomplete "
                    "(rerun migrate.yml) or set check_function: false"
                )
            calculated = {row[0]: row[1] for row in self.query(SQL_CALCULATED)}

        discrepancies = reconcile(expected_sums, junta_columns, ledger_sums, calculated)
        if bad_direction:
            discrepancies.append(
                Discrepancy("*", "ledger.bad_direction", ZERO, Decimal(bad_direction), "count")
            )

        result: dict[str, Any] = {}
        if self.params["check_shadow"]:
            if not (shadow_loans and shadow_payments):
                raise CheckError(
                    'shadow tables "PrestamoNew"/"PagoPrestamoNew" are missing; the migration is incomplete '
                    "(rerun migrate.yml) or set check_shadow: false"
                )
            shadow_found, result["shadow"] = self.check_shadow()
            discrepancies.extend(shadow_found)
        else:
            result["shadow"] = {"checked": False}

        expected = capital_from_type_sums(expected_sums)
        for junta_id in junta_columns:
            expected.setdefault(junta_id, JuntaCapital(ZERO, ZERO, ZERO))
        limit = self.params["max_discrepancies"]
        result.update(
            juntas_checked=len(junta_columns),
            totals={name: money_str(value) for name, value in totals(expected).items()},
            totals_recorded={name: money_str(value) for name, value in totals(junta_columns).items()},
            ledger={
                "movements": movements,
                "balance": money_str(sum((sum(t.values(), ZERO) for t in ledger_sums.values()), ZERO)),
            },
            discrepancies=[d.as_dict() for d in discrepancies[:limit]],
            discrepancy_count=len(discrepancies),
            snapshot_time=snapshot.isoformat(),
            read_ahead=self.prefetch.read_ahead if self.prefetch is not None else 0,
            application_sessions=self.application_sessions,
            sessions=1 if self.prefetch is None else 2,
        )
        result["query_results"] = [self.extra_query(sql) for sql in self.params["queries"]]
        self._found = discrepancies
        return result

    def extra_query(self, sql: str) -> dict[str, Any]:
        """One of the caller's read-only queries, under a savepoint so that its failure stays its own."""
        self.executed_queries.append(sql)
        with self.conn.cursor() as cur:
            cur.execute("SAVEPOINT capital_check_query")
            try:
                cur.execute(sql)
                names = [c.name for c in cur.description or []]
                rows = [dict(zip(names, map(_plain, row), strict=True)) for row in cur.fetchall()]
            except psycopg2.Error as exc:
                cur.execute("ROLLBACK TO SAVEPOINT capital_check_query")
                return {"rows": [], "error": str(exc).strip()}
            cur.execute("RELEASE SAVEPOINT capital_check_query")
        return {"rows": rows, "error": ""}

    def expected_sums(self) -> dict[str, dict[str, Decimal]]:
        """Signed cents per junta and type, recomputed from raw rows by the chosen method."""
        if self.params["method"] == "sql":
            sums: dict[str, dict[str, Decimal]] = {}
            for junta_id, kind, cents in self.query(SQL_EXPECTED_SUMS):
                sums.setdefault(junta_id, {})[kind] = cents
            return sums
        return signed_type_sums(
            (AccionRow(*row) for row in self.stream("accion", SQL_STREAM["accion"])),
            (AccionRow(*row) for row in self.stream("multa", SQL_STREAM["multa"])),
            (PrestamoRow(*row) for row in self.stream("prestamo", SQL_STREAM["prestamo"])),
            (PagoRow(*row) for row in self.stream("pago", SQL_STREAM["pago"])),
        )

    def check_shadow(self) -> tuple[list[Discrepancy], dict[str, Any]]:
        """Per-junta counts and sums, then row-by-row differences, legacy versus shadow."""
        if self.params["method"] == "sql":
            legacy = self._figures(SQL_SHADOW["legacy_loans"], SQL_SHADOW["legacy_payments"])
        else:
            legacy = legacy_shadow_figures(
                (PrestamoRow(*row) for row in self.stream("shadow_prestamo", SQL_STREAM["prestamo"])),
                (PagoRow(*row) for row in self.stream("shadow_pago", SQL_STREAM["pago"])),
            )
        shadow = self._figures(SQL_SHADOW["shadow_loans"], SQL_SHADOW["shadow_payments"])
        found = compare_shadow(legacy, shadow)
        for field, sql in SQL_SHADOW_ROWS:
            for junta_id, count in self.query(sql):
                found.append(Discrepancy(junta_id, field, ZERO, Decimal(count), "count"))
        found.sort(key=lambda d: (d.junta_id, d.field))
        summary = {
            "checked": True,
            "legacy": _figures_total(legacy.values()),
            "shadow": _figures_total(shadow.values()),
            "discrepancy_count": len(found),
        }
        return found, summary

    def _figures(self, loans_sql: str, payments_sql: str) -> dict[str, ShadowFigures]:
        # A NULL amount sum counts as zero here; the row-by-row checks report NULL amounts themselves.
        loans = {row[0]: (row[1], row[2] or ZERO) for row in self.query(loans_sql)}
        payments = {row[0]: (row[1], row[2] or ZERO) for row in self.query(payments_sql)}
        return {
            junta_id: ShadowFigures(
                loan_count=loans.get(junta_id, (0, ZERO))[0],
                loan_amount=loans.get(junta_id, (0, ZERO))[1],
                payment_count=payments.get(junta_id, (0, ZERO))[0],
                payment_amount=payments.get(junta_id, (0, ZERO))[1],
            )
            for junta_id in set(loans) | set(payments)
        }

    def summary(self) -> str:
        """One line for operators: no discrepancies, or the first few, cent-exact, and how many more."""
        found = self._found
        if not found:
            return "capital_check found no discrepancies (exact to the cent)"
        shown = "; ".join(str(d) for d in found[:MESSAGE_DISCREPANCIES])
        more = len(found) - MESSAGE_DISCREPANCIES
        tail = f"; and {more} more (see discrepancies)" if more > 0 else ""
        return f"capital_check found {len(found)} discrepancies (exact to the cent): {shown}{tail}"


def _plain(value: Any) -> Any:
    """A result value Ansible can carry without losing a cent: NUMERIC as its exact string, times ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _figures_total(figures: Any) -> dict[str, Any]:
    """Sum per-junta shadow figures: counts as ints, money as strings."""
    items = list(figures)
    return {
        "loan_count": sum(f.loan_count for f in items),
        "loan_amount": money_str(sum((f.loan_amount for f in items), ZERO)),
        "payment_count": sum(f.payment_count for f in items),
        "payment_amount": money_str(sum((f.payment_amount for f in items), ZERO)),
    }


def argument_spec() -> dict[str, Any]:
    """Options: the check's own plus the shared connection options (module_utils/pg.py)."""
    return {
        "method": {"type": "str", "choices": ["sql", "python"], "default": "sql"},
        "fail_on_discrepancy": {"type": "bool", "default": True},
        "check_shadow": {"type": "bool", "default": True},
        "check_function": {"type": "bool", "default": True},
        "max_discrepancies": {"type": "int", "default": 1000},
        "lock_timeout": {"type": "str", "default": "10s"},
        "settings": {"type": "dict", "default": {}},
        "queries": {"type": "list", "elements": "str", "default": []},
        "connections": {"type": "int", "default": 1},
        "connections_while_live": {"type": "int", "default": 0},
        "alongside": {"type": "dict", "options": {
            "argv": {"type": "list", "elements": "str", "required": True},
            "stdin": {"type": "str", "default": ""},
        }},
        **connection_argument_spec(),
    }


def main() -> None:
    """Thin entry point: the checker does the work; read-only, so check mode behaves the same."""
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    base: dict[str, Any] = {
        "changed": False,
        "method": module.params["method"],
        "discrepancies": [],
        "discrepancy_count": 0,
    }
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR, **base)
    if module.params["max_discrepancies"] < 1:
        module.fail_json(msg="max_discrepancies must be at least 1", **base)
    if module.params["connections"] < 1:
        module.fail_json(msg=f"connections must be 1 or more, got {module.params['connections']}", **base)
    # Started first, so that the command and the check read at the same time; waited for whatever the check
    # finds or fails on, so its outcome is always returned.
    spec = module.params["alongside"]
    alongside = Alongside(module, spec["argv"], spec["stdin"]) if spec else None
    checker = CapitalChecker(module)
    failure: dict[str, Any] | None = None
    result: dict[str, Any] = {}
    try:
        checker.connect()
        result = checker.run()
    except CheckError as exc:
        failure = {"msg": f"capital_check: {exc}"}
    except psycopg2.Error as exc:
        failure = {"msg": f"capital_check: a query failed: {str(exc).strip()}",
                   "sqlstate": getattr(exc, "pgcode", None)}
    except ValueError as exc:
        # The python method refuses amounts PostgreSQL cannot store as NUMERIC(14,2) (NaN, infinity, huge).
        failure = {"msg": f"capital_check: {exc}"}
    finally:
        checker.close()
        if alongside is not None:
            base["alongside"] = alongside.wait()
    if failure is not None:
        module.fail_json(executed_queries=checker.executed_queries, **failure, **base)
    base.update(result, executed_queries=checker.executed_queries, summary=checker.summary())
    if base["discrepancy_count"] and module.params["fail_on_discrepancy"]:
        module.fail_json(msg=base["summary"], **base)
    module.exit_json(msg=base["summary"], **base)


if __name__ == "__main__":
    main()
