"""The application's own database as its ORM (Prisma) creates it (domain.md §5), built on a real database.

The migration is written for the guide's schema (domain.md §1); an operator may still point the tool at the
application's production database. These builders make that database in a throwaway one, so tests can
prove the tool recognises it, refuses with a clear message and changes nothing:

    from orm_fixture import build_orm_database, database_checksums
    build_orm_database(pg_db, "earlier")
    before = database_checksums(pg_db)
    ... run the tool ...
    assert database_checksums(pg_db) == before

States (``ORM_STATES``), each with a few rows in every legacy table and in ``_prisma_migrations``:

- ``earlier``: the legacy tables with the ORM's camelCase columns, plus the ORM's own EMPTY
  ``"PrestamoNew"`` / ``"PagoPrestamoNew"`` (the new loan API's tables, in the ORM's shape).
- ``later``: also ``"CapitalMovement"`` and the ORM's capital columns (``"Junta".base_capital`` ... DOUBLE
  PRECISION NOT NULL DEFAULT 0, ``"Accion"/"Multa".affects_capital``), with no application-written capital
  rows yet (no movements, capital figures 0, no new-style loans).
- ``later_with_capital``: ``later`` after the application has written capital: ``"CapitalMovement"`` rows,
  non-zero ``"Junta"`` capital figures, loans and payments in ``"PrestamoNew"`` / ``"PagoPrestamoNew"``.

The DDL is what Prisma's migrate writes: TEXT ids without default, ``"updatedAt" TIMESTAMP(3) NOT NULL``
without default, ``TIMESTAMP(3)``, money as DOUBLE PRECISION, no CHECK, foreign keys
``ON DELETE RESTRICT ON UPDATE CASCADE`` (``ON DELETE SET NULL`` for the ledger's optional links), and
``_prisma_migrations`` with Prisma's own column set.
"""

from __future__ import annotations

from typing import Any

ORM_STATES = ("earlier", "later", "later_with_capital")

# The ORM's migrations, oldest first: (name, the state that first has it).
_MIGRATIONS = (
    ("20240105120000_init", "earlier"),
    ("20240302090000_multa_status", "earlier"),
    ("20240611170000_loan_api_v2", "earlier"),
    ("20241020081500_capital_tracking", "later"),
)

_INIT = """
CREATE TABLE "_prisma_migrations" (
    "id"                    VARCHAR(36) NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ("id")
);

CREATE TABLE "User" (
    "id" TEXT NOT NULL,
    "email" TEXT,
    "username" TEXT,
    "full_name" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");

CREATE TABLE "Junta" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "fecha_inicio" TIMESTAMP(3) NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "createdById" TEXT NOT NULL,
    CONSTRAINT "Junta_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Prestamo" (
    "id" TEXT NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "description" TEXT,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "juntaId" TEXT NOT NULL,
    "memberId" TEXT NOT NULL,
    CONSTRAINT "Prestamo_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "PagoPrestamo" (
    "id" TEXT NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "date" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "prestamoId" TEXT NOT NULL,
    CONSTRAINT "PagoPrestamo_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Accion" (
    "id" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "juntaId" TEXT NOT NULL,
    "memberId" TEXT NOT NULL,
    CONSTRAINT "Accion_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Multa" (
    "id" TEXT NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "description" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "juntaId" TEXT NOT NULL,
    "memberId" TEXT NOT NULL,
    CONSTRAINT "Multa_pkey" PRIMARY KEY ("id")
);
"""

# The new loan API's live tables, in the ORM's shape (not the migration's shadow tables).
_LOAN_API_V2 = """
CREATE TABLE "PrestamoNew" (
    "id" TEXT NOT NULL,
    "loan_number" INTEGER NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "description" TEXT,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "loan_type" TEXT NOT NULL DEFAULT 'REGULAR',
    "interest_rate" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "capital_at_time" DOUBLE PRECISION NOT NULL,
    "remaining_amount" DOUBLE PRECISION NOT NULL,
    "juntaId" TEXT NOT NULL,
    "memberId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "PrestamoNew_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "PrestamoNew_juntaId_loan_number_key" ON "PrestamoNew"("juntaId", "loan_number");

CREATE TABLE "PagoPrestamoNew" (
    "id" TEXT NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "date" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "prestamoId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "PagoPrestamoNew_pkey" PRIMARY KEY ("id")
);
"""

# The application's capital tracking, in the ORM's shape: its services write these, no trigger does.
_CAPITAL_TRACKING = """
ALTER TABLE "Junta" ADD COLUMN "base_capital" DOUBLE PRECISION NOT NULL DEFAULT 0,
                    ADD COLUMN "current_capital" DOUBLE PRECISION NOT NULL DEFAULT 0,
                    ADD COLUMN "available_capital" DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE "Accion" ADD COLUMN "affects_capital" BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE "Multa" ADD COLUMN "affects_capital" BOOLEAN NOT NULL DEFAULT true;

CREATE TABLE "CapitalMovement" (
    "id" TEXT NOT NULL,
    "juntaId" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "direction" TEXT NOT NULL,
    "amount" DOUBLE PRECISION NOT NULL,
    "description" TEXT,
    "accionId" TEXT,
    "multaId" TEXT,
    "prestamoId" TEXT,
    "pagoId" TEXT,
    "createdById" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "CapitalMovement_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "CapitalMovement_juntaId_createdAt_idx" ON "CapitalMovement"("juntaId", "createdAt");
"""

# Foreign keys (table, column, referenced table[, ON DELETE action]) of each step, written as Prisma writes
# them: "<table>_<column>_fkey" ... ON DELETE RESTRICT ON UPDATE CASCADE unless the relation is optional.
_INIT_FKS = (
    ("Junta", "createdById", "User"),
    ("Prestamo", "juntaId", "Junta"),
    ("Prestamo", "memberId", "User"),
    ("PagoPrestamo", "prestamoId", "Prestamo"),
    ("Accion", "juntaId", "Junta"),
    ("Accion", "memberId", "User"),
    ("Multa", "juntaId", "Junta"),
    ("Multa", "memberId", "User"),
)
_LOAN_API_V2_FKS = (
    ("PrestamoNew", "juntaId", "Junta"),
    ("PrestamoNew", "memberId", "User"),
    ("PagoPrestamoNew", "prestamoId", "PrestamoNew"),
)
_CAPITAL_TRACKING_FKS = (
    ("CapitalMovement", "juntaId", "Junta"),
    ("CapitalMovement", "accionId", "Accion", "SET NULL"),
    ("CapitalMovement", "multaId", "Multa", "SET NULL"),
    ("CapitalMovement", "prestamoId", "PrestamoNew", "SET NULL"),
    ("CapitalMovement", "pagoId", "PagoPrestamoNew", "SET NULL"),
    ("CapitalMovement", "createdById", "User", "SET NULL"),
)


def _foreign_keys(keys: tuple[tuple[str, ...], ...]) -> str:
    """Prisma's ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY statements for ``keys``."""
    return "".join(
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_{column}_fkey" FOREIGN KEY ("{column}")\n'
        f'    REFERENCES "{target}"("id") ON DELETE {action[0] if action else "RESTRICT"} ON UPDATE CASCADE;\n'
        for table, column, target, *action in keys
    )


# A few rows in every legacy table (a float artefact included, as in real data).
_LEGACY_ROWS = """
INSERT INTO "User" ("id", "email", "username", "full_name", "createdAt", "updatedAt")
SELECT 'usr-' || g, 'member' || g || '@example.org', 'member' || g, 'Member ' || g,
       TIMESTAMP '2024-01-05 12:00:00.123' + g * INTERVAL '1 minute', TIMESTAMP '2024-01-06 08:00:00'
  FROM generate_series(1, 6) g;
INSERT INTO "Junta" ("id", "name", "fecha_inicio", "createdAt", "updatedAt", "createdById")
SELECT 'jun-' || g, 'Junta ' || g, TIMESTAMP '2024-01-15', TIMESTAMP '2024-01-10 09:30:00.5',
       TIMESTAMP '2024-01-10 09:30:00.5', 'usr-' || g
  FROM generate_series(1, 2) g;
INSERT INTO "Accion" ("id", "type", "amount", "createdAt", "juntaId", "memberId")
SELECT 'acc-' || g, 'COMPRA', CASE WHEN g = 3 THEN 0.30000000000000004 ELSE 100 END,
       TIMESTAMP '2024-02-01 10:00:00' + g * INTERVAL '1 hour', 'jun-' || (1 + g % 2), 'usr-' || (1 + g % 6)
  FROM generate_series(1, 6) g;
INSERT INTO "Multa" ("id", "amount", "description", "status", "createdAt", "juntaId", "memberId")
SELECT 'mul-' || g, 5.5, 'late', CASE WHEN g = 1 THEN 'PAID' ELSE 'PENDING' END,
       TIMESTAMP '2024-02-10 18:00:00' + g * INTERVAL '1 day', 'jun-' || (1 + g % 2), 'usr-' || g
  FROM generate_series(1, 3) g;
INSERT INTO "Prestamo" ("id", "amount", "description", "status", "createdAt", "updatedAt", "juntaId", "memberId")
SELECT 'pre-' || g, 150, 'legacy loan ' || g, (ARRAY['APPROVED', 'PAID', 'ACTIVE'])[g],
       TIMESTAMP '2024-03-01 11:00:00' + g * INTERVAL '1 day', TIMESTAMP '2024-03-05 11:00:00',
       'jun-' || (1 + g % 2), 'usr-' || g
  FROM generate_series(1, 3) g;
INSERT INTO "PagoPrestamo" ("id", "amount", "date", "prestamoId")
SELECT 'pag-' || g, 25.25, TIMESTAMP '2024-04-01 12:00:00' + g * INTERVAL '1 day', 'pre-' || (1 + g % 3)
  FROM generate_series(1, 4) g;
"""

# What the application's services write once they track capital themselves.
_CAPITAL_ROWS = """
INSERT INTO "PrestamoNew" ("id", "loan_number", "amount", "description", "status", "loan_type", "interest_rate",
                           "capital_at_time", "remaining_amount", "juntaId", "memberId", "createdAt", "updatedAt")
VALUES ('pnw-1', 1, 80, 'new api loan', 'APPROVED', 'REGULAR', 0.02, 400.3, 60, 'jun-1', 'usr-2',
        TIMESTAMP '2024-11-02 10:00:00.250', TIMESTAMP '2024-11-02 10:00:00.250'),
       ('pnw-2', 1, 40, NULL, 'PENDING', 'EMERGENCY', 0, 209.5, 40, 'jun-2', 'usr-3',
        TIMESTAMP '2024-11-03 10:00:00', TIMESTAMP '2024-11-03 10:00:00');
INSERT INTO "PagoPrestamoNew" ("id", "amount", "date", "prestamoId", "createdAt")
VALUES ('pgn-1', 20, TIMESTAMP '2024-11-20 09:00:00', 'pnw-1', TIMESTAMP '2024-11-20 09:00:00');
INSERT INTO "CapitalMovement" ("id", "juntaId", "type", "direction", "amount", "description", "accionId", "multaId",
                               "prestamoId", "pagoId", "createdById", "createdAt")
VALUES ('cmv-1', 'jun-1', 'ACCION', 'INCREASE', 100, 'share', 'acc-2', NULL, NULL, NULL, 'usr-1',
        TIMESTAMP '2024-11-01 08:00:00'),
       ('cmv-2', 'jun-1', 'PRESTAMO', 'DECREASE', 80, 'loan 1', NULL, NULL, 'pnw-1', NULL, 'usr-1',
        TIMESTAMP '2024-11-02 10:00:00.250'),
       ('cmv-3', 'jun-1', 'PAGO', 'INCREASE', 20, 'repayment', NULL, NULL, NULL, 'pgn-1', NULL,
        TIMESTAMP '2024-11-20 09:00:00'),
       ('cmv-4', 'jun-2', 'MULTA', 'INCREASE', 5.5, 'fine', NULL, 'mul-1', NULL, NULL, NULL,
        TIMESTAMP '2024-11-04 07:00:00');
UPDATE "Junta" SET "base_capital" = 400.3, "current_capital" = 340.3, "available_capital" = 340.3
 WHERE "id" = 'jun-1';
UPDATE "Junta" SET "base_capital" = 200, "current_capital" = 209.5, "available_capital" = 169.5
 WHERE "id" = 'jun-2';
UPDATE "Multa" SET "affects_capital" = false WHERE "id" = 'mul-3';
"""


def orm_sql(state: str) -> str:
    """The whole script that builds ``state`` (one of ORM_STATES) in an empty database."""
    if state not in ORM_STATES:
        raise ValueError(f"unknown ORM state {state!r}; one of {', '.join(ORM_STATES)}")
    later = state != "earlier"
    parts = [_INIT, _foreign_keys(_INIT_FKS), _LOAN_API_V2, _foreign_keys(_LOAN_API_V2_FKS)]
    if later:
        parts += [_CAPITAL_TRACKING, _foreign_keys(_CAPITAL_TRACKING_FKS)]
    parts.append(_LEGACY_ROWS)
    if state == "later_with_capital":
        parts.append(_CAPITAL_ROWS)
    rows = []
    for number, (name, first_state) in enumerate(_MIGRATIONS, start=1):
        if first_state == "later" and not later:
            continue
        # Prisma's checksum is the sha256 of the migration file; any 64 hex digits stand in for it here.
        rows.append(
            f"('{number:08d}-0000-4000-8000-{number:012d}', repeat('{number:x}', 64), "
            f"TIMESTAMPTZ '2024-01-05 12:00:00+00' + {number} * INTERVAL '30 days' + INTERVAL '2 seconds', "
            f"'{name}', NULL, NULL, TIMESTAMPTZ '2024-01-05 12:00:00+00' + {number} * INTERVAL '30 days', 1)"
        )
    parts.append(
        'INSERT INTO "_prisma_migrations" ("id", "checksum", "finished_at", "migration_name", "logs", '
        '"rolled_back_at", "started_at", "applied_steps_count") VALUES\n' + ",\n".join(rows) + ";\n"
    )
    return "\n".join(parts)


def build_orm_database(db: Any, state: str) -> list[str]:
    """Build the ORM-shaped database of domain.md §5 in ``db`` (an empty database), in one transaction.

    ``db`` is anything with ``connect()`` returning a psycopg2 connection (``capital_migrate.pgtmp.Database``,
    the ``pg_db`` fixture). ``state`` is one of ``ORM_STATES``. Returns the names of the ORM's migrations
    recorded in ``_prisma_migrations``, oldest first.
    """
    script = orm_sql(state)
    conn = db.connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(script)
            cur.execute('SELECT migration_name FROM "_prisma_migrations" ORDER BY started_at')
            return [name for (name,) in cur.fetchall()]
    finally:
        conn.close()


# Everything user-defined in the database's own schemas, rendered by the catalog's own functions, with OIDs:
# an object dropped and re-created with the same definition still changes the fingerprint.
_CATALOG_FINGERPRINT = """
WITH user_ns AS (
    SELECT oid FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%'
       AND nspname NOT LIKE 'pg_temp%'
),
items AS (
    SELECT 'rel ' || c.oid || ' ' || c.oid::regclass::text || ' ' || c.relkind::text || ' ' || c.relowner
           || ' ' || coalesce(array_to_string(c.relacl, ','), '') || ' ' || c.relhastriggers
           || ' ' || CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) ELSE '' END AS item
      FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM user_ns)
    UNION ALL
    SELECT 'att ' || a.attrelid::regclass::text || ' ' || a.attnum || ' ' || a.attname || ' '
           || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' ' || a.attisdropped || ' '
           || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid AND c.relnamespace IN (SELECT oid FROM user_ns)
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attnum > 0
    UNION ALL
    SELECT 'con ' || co.oid || ' ' || co.conrelid::regclass::text || ' ' || co.conname || ' '
           || pg_get_constraintdef(co.oid) || ' ' || co.convalidated
      FROM pg_constraint co WHERE co.connamespace IN (SELECT oid FROM user_ns)
    UNION ALL
    SELECT 'idx ' || i.indexrelid || ' ' || pg_get_indexdef(i.indexrelid) || ' ' || i.indisvalid
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid AND c.relnamespace IN (SELECT oid FROM user_ns)
    UNION ALL
    SELECT 'trg ' || t.oid || ' ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid AND c.relnamespace IN (SELECT oid FROM user_ns)
     WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'fn ' || p.oid || ' ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc)
      FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM user_ns)
    UNION ALL
    SELECT 'typ ' || t.oid || ' ' || t.oid::regtype::text || ' ' || t.typtype::text
      FROM pg_type t WHERE t.typnamespace IN (SELECT oid FROM user_ns)
    UNION ALL
    SELECT 'ns ' || n.oid || ' ' || n.nspname FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM user_ns)
    UNION ALL
    SELECT 'ext ' || e.extname || ' ' || e.extversion FROM pg_extension e
)
SELECT count(*), md5(string_agg(item, E'\\n' ORDER BY item)) FROM items
"""

_USER_TABLES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
 ORDER BY 1
"""


def database_checksums(db: Any) -> dict[str, str]:
    """A checksum of everything in ``db``: ``{"schema": ..., "<schema>.<table>": ...}``, for before/after.

    ``schema`` fingerprints the catalog of every user schema (relations with OIDs, owners, ACLs; columns with
    types, NOT NULL and defaults; constraints, indexes, triggers, functions, types, extensions); each table's
    entry is its row count and an md5 over all its rows (each row as text, sorted). Equal dictionaries before
    and after a run mean nothing was created, dropped, altered, inserted, updated or deleted.
    """
    conn = db.connect()
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute(_CATALOG_FINGERPRINT)
            items, digest = cur.fetchone()
            out = {"schema": f"{items} objects, md5 {digest}"}
            cur.execute(_USER_TABLES)
            for (table,) in cur.fetchall():
                cur.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
                )
                count, rows_md5 = cur.fetchone()
                out[table] = f"{count} rows, md5 {rows_md5}"
        conn.rollback()
        return out
    finally:
        conn.close()
