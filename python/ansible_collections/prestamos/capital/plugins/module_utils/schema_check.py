"""Is this the guide's database? Recognise the application's own ORM-shaped database (domain.md §5).

The migration is written for the guide's schema (domain.md §1: snake_case columns). The application's
production database, as its ORM (Prisma) creates it, has the same table names but camelCase columns, the
ORM's bookkeeping table ``_prisma_migrations`` and, later in its history, its own capital objects
("CapitalMovement", DOUBLE PRECISION capital columns on "Junta", its own "PrestamoNew"). Applying the
migration there cannot work, and its triggers would count every capital write of the application twice.

One detector for every caller: ``migration_state()`` (so the capital_migrate module, preflight and
``capital-migrate status`` agree), the CLI (importing module_utils by their collection name) and the tests.
Plain typed Python without Ansible imports; ``read_facts`` takes any DB-API cursor (psycopg2) and only reads the
catalog; ``judge`` is pure. Only positive evidence of the ORM's shape counts: a database that merely lacks
legacy tables is not foreign (preflight's legacy_tables_present check names what is missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FOREIGN_SCHEMA = "foreign_schema"

# The guide's legacy tables and their columns (domain.md §1), in the guide's order.
GUIDE_COLUMNS: dict[str, tuple[str, ...]] = {
    "User": ("id", "email", "username", "full_name", "created_at"),
    "Junta": ("id", "name", "fecha_inicio", "created_at", "updated_at", "created_by_id"),
    "Prestamo": ("id", "amount", "description", "status", "created_at", "updated_at", "junta_id", "member_id"),
    "PagoPrestamo": ("id", "amount", "date", "prestamo_id"),
    "Accion": ("id", "type", "amount", "created_at", "junta_id", "member_id"),
    "Multa": ("id", "amount", "description", "status", "created_at", "junta_id", "member_id"),
}
# The shadow tables the migration creates (docs/design.md); the ORM's new loan API uses the same names.
SHADOW_COLUMNS: dict[str, tuple[str, ...]] = {
    "PrestamoNew": (
        "id", "original_prestamo_id", "junta_id", "member_id", "amount", "description", "status", "approved",
        "rejected", "paid", "remaining_amount", "loan_number", "capital_at_time", "created_at", "updated_at",
    ),
    "PagoPrestamoNew": ("id", "original_pago_id", "prestamo_id", "amount", "date"),
}
# The "Junta" capital columns: the migration creates them as exact money.
CAPITAL_COLUMNS = ("base_capital", "current_capital", "available_capital")
CAPITAL_TYPE = "numeric(14,2)"
ORM_LEDGER = "CapitalMovement"
ORM_BOOKKEEPING = "_prisma_migrations"

EXPECTED = (
    "the guide's schema (domain.md §1): "
    + "; ".join(f'"{table}"({", ".join(columns)})' for table, columns in GUIDE_COLUMNS.items())
    + f' - snake_case columns, no {ORM_BOOKKEEPING}, no "{ORM_LEDGER}"'
)
# What the one message says the migration expects (EXPECTED, with every column, is in the finding).
EXPECTED_SHORT = (
    'the guide\'s schema (domain.md §1): snake_case columns such as "Prestamo".junta_id, member_id, created_at, '
    f'no {ORM_BOOKKEEPING}, no "{ORM_LEDGER}"'
)
NEXT_STEP = (
    "this migration is written for the guide's schema and the application already manages capital through "
    "its ORM (the migration's triggers would count each of its writes twice), so do not apply it here: point "
    "the tool at the guide's database (capital_db_name, PGDATABASE or DATABASE_URL), or change this database "
    "with the application's own migrations (prisma migrate)"
)


@dataclass(frozen=True)
class SchemaFacts:
    """What the catalog says about the tables that matter (schema public)."""

    # table -> column -> format_type(), for the tables that exist (legacy, shadow, the ORM's ledger).
    columns: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    prisma_present: bool = False
    # Rows of _prisma_migrations (one per ORM migration); None when the table is absent or not readable.
    prisma_migrations: int | None = None


def camel(name: str) -> str:
    """The ORM's spelling of a guide column: created_by_id -> createdById."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _camel_pairs(wanted: tuple[str, ...], have: Mapping[str, str]) -> list[tuple[str, str]]:
    """(ORM column, guide column) for each guide column the table has only in the ORM's camelCase."""
    return [(camel(c), c) for c in wanted if "_" in c and camel(c) in have and c not in have]


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def judge(facts: SchemaFacts) -> dict[str, Any] | None:
    """The foreign_schema finding for these facts, or None when nothing points at the ORM's database.

    ``found`` names every piece of evidence in full (one line per table); ``message`` says the same in a
    few lines, for a terminal and a change ticket.
    """
    found: list[str] = []
    summary: list[str] = []
    legacy: dict[str, list[tuple[str, str]]] = {}
    for table, wanted in GUIDE_COLUMNS.items():
        pairs = _camel_pairs(wanted, facts.columns.get(table, {}))
        if pairs:
            legacy[table] = pairs
            found.append(f'"{table}" has {_quoted([orm for orm, _guide in pairs])} where the guide has '
                         + ", ".join(guide for _orm, guide in pairs))
    if legacy:
        pairs = [pair for table_pairs in legacy.values() for pair in table_pairs]
        orm_names = _unique([orm for orm, _guide in pairs])
        summary.append(f"{_quoted(list(legacy))} have camelCase columns ({_quoted(orm_names)})"
                       f" where the guide has {', '.join(_unique([guide for _orm, guide in pairs]))}")
    shadow = []
    for table, wanted in SHADOW_COLUMNS.items():
        pairs = _camel_pairs(wanted, facts.columns.get(table, {}))
        if pairs:
            shadow.append(table)
            orm_names = [orm for orm, _guide in pairs]
            found.append(f'"{table}" has {_quoted(orm_names)} where the migration\'s shadow table has '
                         + ", ".join(guide for _orm, guide in pairs))
    if shadow:
        summary.append(f"{_quoted(shadow)} exist in the ORM's shape (not the migration's shadow tables)")
    junta = facts.columns.get("Junta", {})
    doubles = [c for c in CAPITAL_COLUMNS if junta.get(c) == "double precision"]
    if doubles:
        found.append(f'"Junta".{", ".join(doubles)} are double precision where the migration creates {CAPITAL_TYPE}')
        summary.append(f'"Junta".{", ".join(doubles)} as double precision (the application\'s own capital figures)')
    if ORM_LEDGER in facts.columns:
        found.append(f'"{ORM_LEDGER}" present (the application\'s own capital ledger)')
        summary.append(f'"{ORM_LEDGER}" (the application\'s own capital ledger)')
    if facts.prisma_present:
        count = "rows unreadable" if facts.prisma_migrations is None else f"{facts.prisma_migrations} migrations"
        found.append(f"{ORM_BOOKKEEPING} present ({count})")
        summary.append(f"{ORM_BOOKKEEPING} ({count}: the ORM's migration history)")
    if not found:
        return None
    message = (
        "This database is not the guide's: it has the shape of the application's own database as its ORM "
        f"(Prisma) creates it. Found: {'; '.join(summary)}. The migration expects {EXPECTED_SHORT}. "
        f"Nothing was changed. What to do: {NEXT_STEP}."
    )
    return {
        "state": FOREIGN_SCHEMA,
        "found": found,
        "expected": EXPECTED,
        "message": message,
        "next_step": NEXT_STEP,
    }


def read_facts(cursor: Any) -> SchemaFacts:
    """Read the columns of the tables that matter and _prisma_migrations' row count; catalog reads only."""
    tables = [*GUIDE_COLUMNS, *SHADOW_COLUMNS, ORM_LEDGER]
    cursor.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)"
        "  FROM pg_class c"
        "  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)"
        " ORDER BY c.relname, a.attnum",
        (tables,),
    )
    columns: dict[str, dict[str, str]] = {}
    for table, column, type_name in cursor.fetchall():
        columns.setdefault(table, {})[column] = type_name
    cursor.execute(
        f"SELECT to_regclass('public.{ORM_BOOKKEEPING}') IS NOT NULL,"
        f" coalesce(has_table_privilege(to_regclass('public.{ORM_BOOKKEEPING}'), 'SELECT'), false)"
    )
    present, readable = cursor.fetchone()
    count = None
    if present and readable:
        cursor.execute(f"SELECT count(*) FROM public.{ORM_BOOKKEEPING}")
        count = int(cursor.fetchone()[0])
    return SchemaFacts(columns=columns, prisma_present=bool(present), prisma_migrations=count)


def foreign_schema(cursor: Any) -> dict[str, Any] | None:
    """The foreign_schema finding of the database behind ``cursor`` ({state, found, expected, message,
    next_step}), or None when it is (or may become) the guide's database. Read-only."""
    return judge(read_facts(cursor))
