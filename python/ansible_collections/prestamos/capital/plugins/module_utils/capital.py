"""The capital model of domain.md §3 as pure, typed functions (no Ansible, no database).

The `capital_check` module adapts these to rows read from PostgreSQL; the unit tests drive them with
hypothesis. Money is `Decimal` cents throughout: a float source amount becomes cents exactly once, the way
the migration's SQL does it (`round(amount::numeric, 2)`), and every figure after that is an exact sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
# NUMERIC(14,2) holds at most 999999999999.99; a larger amount cannot enter the ledger at all.
MAX_CENTS = Decimal("999999999999.99")

# Ledger movement types in the order the discrepancy list reports them.
SOURCE_TYPES: tuple[str, ...] = ("ACCION", "MULTA", "PRESTAMO", "PAGO")
# Sign a positive source amount takes in the junta's capital (domain.md §3 table).
TYPE_SIGN: Mapping[str, int] = {"ACCION": 1, "MULTA": 1, "PRESTAMO": -1, "PAGO": 1}
# Loan statuses that do not move capital. Exact match, as the migration's SQL compares them.
NON_CAPITAL_LOAN_STATUSES: frozenset[str] = frozenset({"REJECTED"})

# Field names of the discrepancy list, in report order.
JUNTA_FIELDS: tuple[str, ...] = ("base_capital", "current_capital", "available_capital")

# Per junta, per movement type: the signed sum of cents (PRESTAMO negative for a positive loan).
TypeSums = Mapping[str, Mapping[str, Decimal]]


@dataclass(frozen=True)
class AccionRow:
    """A legacy share purchase ("Accion"); `Multa` rows have the same shape."""

    id: str
    junta_id: str
    amount: float
    affects_capital: bool = True


MultaRow = AccionRow


@dataclass(frozen=True)
class PrestamoRow:
    """A legacy loan ("Prestamo")."""

    id: str
    junta_id: str
    amount: float
    status: str


@dataclass(frozen=True)
class PagoRow:
    """A legacy loan repayment ("PagoPrestamo"); its junta is its loan's junta."""

    id: str
    prestamo_id: str
    amount: float


@dataclass(frozen=True)
class JuntaCapital:
    """The three capital figures of one junta, in exact cents."""

    base_capital: Decimal
    current_capital: Decimal
    available_capital: Decimal

    def field(self, name: str) -> Decimal:
        """Return one figure by its column name (keeps the reconciliation loop table-driven)."""
        value: Decimal = getattr(self, name)
        return value


@dataclass(frozen=True)
class ShadowFigures:
    """Counts and cent sums of one junta's loans and payments (legacy or shadow side)."""

    loan_count: int = 0
    loan_amount: Decimal = ZERO
    payment_count: int = 0
    payment_amount: Decimal = ZERO


@dataclass(frozen=True)
class Discrepancy:
    """One figure that differs: `difference` is actual minus expected, never rounded or tolerated."""

    junta_id: str
    field: str
    expected: Decimal
    actual: Decimal
    # "money" renders with two decimals, "count" as a whole number.
    unit: str = "money"

    @property
    def difference(self) -> Decimal:
        """Actual minus expected (exact)."""
        return self.actual - self.expected

    def as_dict(self) -> dict[str, str]:
        """Render for a module result: money as strings, never floats."""
        render = count_str if self.unit == "count" else money_str
        return {
            "junta_id": self.junta_id,
            "field": self.field,
            "expected": render(self.expected),
            "actual": render(self.actual),
            "difference": render(self.difference),
        }

    def __str__(self) -> str:
        shown = self.as_dict()
        return (
            f"junta {self.junta_id} {self.field}: expected {shown['expected']}, "
            f"found {shown['actual']} (difference {shown['difference']})"
        )


def money_str(value: Decimal) -> str:
    """Format money for results: a string with exactly two decimals (never a float).

    Values here are already exact cents; quantize only pads (5 -> 5.00), it never rounds away a digit
    (an input with more decimals than cents raises instead of being hidden).
    """
    padded = value.quantize(CENT)
    if padded != value:
        raise ValueError(f"{value} is not a whole number of cents")
    return format(padded, "f")


def count_str(value: Decimal) -> str:
    """Format a row count held as Decimal."""
    return str(int(value))


def pg_float8_to_numeric(amount: float) -> Decimal:
    """Convert a float the way PostgreSQL's `float8::numeric` cast does.

    PostgreSQL (checked on 12-17; `float8_numeric` in numeric.c) prints the double with
    `%.15g` (DBL_DIG significant digits) and parses that text, so 0.30000000000000004 becomes 0.3 and
    15664.312475053368 becomes 15664.3124750534. This is NOT the shortest round-trip repr that float8
    *output* uses since PostgreSQL 12; `test_float8_cast_matches_server` pins it against a live server.
    """
    if not math.isfinite(amount):
        raise ValueError(f"amount {amount!r} is not a finite number; fix the source row before migrating")
    return Decimal(format(amount, ".15g"))


def to_cents(amount: float) -> Decimal:
    """Round a source amount to cents once: float8 -> numeric, then half away from zero (SQL round).

    Amounts beyond NUMERIC(14,2) are refused rather than summed: the migration cannot store them either,
    and refusing keeps every later Decimal sum far inside the default 28-digit precision (exact).
    """
    numeric = pg_float8_to_numeric(amount)
    # Compare before quantize too: quantize itself fails beyond the context's 28 digits.
    if abs(numeric) > MAX_CENTS or abs(cents := numeric.quantize(CENT, rounding=ROUND_HALF_UP)) > MAX_CENTS:
        raise ValueError(f"amount {amount!r} does not fit NUMERIC(14,2) (at most {MAX_CENTS})")
    return cents


def _add(sums: dict[str, dict[str, Decimal]], junta_id: str, kind: str, cents: Decimal) -> None:
    per_type = sums.setdefault(junta_id, {})
    per_type[kind] = per_type.get(kind, ZERO) + TYPE_SIGN[kind] * cents


def signed_type_sums(
    acciones: Iterable[AccionRow],
    multas: Iterable[MultaRow],
    prestamos: Iterable[PrestamoRow],
    pagos: Iterable[PagoRow],
) -> dict[str, dict[str, Decimal]]:
    """Recompute each junta's signed cents per movement type from raw source rows.

    Each iterable is read once, in argument order, so rows can be streamed; only the loan -> junta map is
    kept, because a payment names its loan, not its junta. A junta appears once any of its rows is seen,
    even when the row moves no capital (a rejected loan), so callers can count juntas with data.
    """
    sums: dict[str, dict[str, Decimal]] = {}
    for kind, rows in (("ACCION", acciones), ("MULTA", multas)):
        for row in rows:
            sums.setdefault(row.junta_id, {})
            if row.affects_capital:
                _add(sums, row.junta_id, kind, to_cents(row.amount))
    loan_junta: dict[str, str] = {}
    for loan in prestamos:
        loan_junta[loan.id] = loan.junta_id
        sums.setdefault(loan.junta_id, {})
        if loan.status not in NON_CAPITAL_LOAN_STATUSES:
            _add(sums, loan.junta_id, "PRESTAMO", to_cents(loan.amount))
    for pago in pagos:
        try:
            junta_id = loan_junta[pago.prestamo_id]
        except KeyError:
            raise ValueError(
                f"payment {pago.id} names loan {pago.prestamo_id}, which is not among the loans given"
            ) from None
        _add(sums, junta_id, "PAGO", to_cents(pago.amount))
    return sums


def capital_from_type_sums(type_sums: TypeSums) -> dict[str, JuntaCapital]:
    """Derive the three Junta figures from signed per-type sums (shared by the SQL and Python paths)."""
    result: dict[str, JuntaCapital] = {}
    for junta_id, per_type in type_sums.items():
        base = per_type.get("ACCION", ZERO)
        current = sum((per_type.get(kind, ZERO) for kind in SOURCE_TYPES), ZERO)
        # In this model nothing is reserved, so what can be lent now is the balance (domain.md §3).
        result[junta_id] = JuntaCapital(base_capital=base, current_capital=current, available_capital=current)
    return result


def expected_capital(
    acciones: Iterable[AccionRow],
    multas: Iterable[MultaRow],
    prestamos: Iterable[PrestamoRow],
    pagos: Iterable[PagoRow],
) -> dict[str, JuntaCapital]:
    """Each junta's base/current/available capital, recomputed from raw source rows."""
    return capital_from_type_sums(signed_type_sums(acciones, multas, prestamos, pagos))


def totals(capital: Mapping[str, JuntaCapital]) -> dict[str, Decimal]:
    """Sum each figure over all juntas (exact)."""
    return {name: sum((figures.field(name) for figures in capital.values()), ZERO) for name in JUNTA_FIELDS}


def reconcile(
    expected_sums: TypeSums,
    junta_columns: Mapping[str, JuntaCapital],
    ledger_sums: TypeSums,
    calculated_available: Mapping[str, Decimal] | None = None,
) -> list[Discrepancy]:
    """Compare recomputed figures with the "Junta" columns and the ledger, to the cent.

    Reported fields: `base_capital`/`current_capital`/`available_capital` (the "Junta" columns),
    `ledger.<TYPE>` (the ledger's signed sum per movement type), `ledger.balance`, and
    `calculate_available_capital` when the function's results are given. A junta missing on one side
    counts as all zeros there, so a junta with movements but no row (or the reverse) is reported too.
    Equality is exact: a difference of 0.01 is a discrepancy.
    """
    expected = capital_from_type_sums(expected_sums)
    juntas = set(expected) | set(junta_columns) | set(ledger_sums)
    if calculated_available is not None:
        juntas |= set(calculated_available)
    zero_capital = JuntaCapital(ZERO, ZERO, ZERO)
    found: list[Discrepancy] = []
    for junta_id in sorted(juntas):
        want = expected.get(junta_id, zero_capital)
        have = junta_columns.get(junta_id, zero_capital)
        for name in JUNTA_FIELDS:
            if want.field(name) != have.field(name):
                found.append(Discrepancy(junta_id, name, want.field(name), have.field(name)))
        want_types = expected_sums.get(junta_id, {})
        have_types = ledger_sums.get(junta_id, {})
        for kind in sorted(set(SOURCE_TYPES) | set(have_types), key=_type_order):
            want_cents = want_types.get(kind, ZERO)
            have_cents = have_types.get(kind, ZERO)
            if want_cents != have_cents:
                found.append(Discrepancy(junta_id, f"ledger.{kind}", want_cents, have_cents))
        ledger_balance = sum(have_types.values(), ZERO)
        if ledger_balance != want.current_capital:
            found.append(Discrepancy(junta_id, "ledger.balance", want.current_capital, ledger_balance))
        if calculated_available is not None:
            got = calculated_available.get(junta_id, ZERO)
            if got != want.available_capital:
                found.append(
                    Discrepancy(junta_id, "calculate_available_capital", want.available_capital, got)
                )
    return found


def _type_order(kind: str) -> tuple[int, str]:
    """Known types in model order, unknown ones (a type the model lacks) after them."""
    return (SOURCE_TYPES.index(kind) if kind in SOURCE_TYPES else len(SOURCE_TYPES), kind)


def legacy_shadow_figures(
    prestamos: Iterable[PrestamoRow], pagos: Iterable[PagoRow]
) -> dict[str, ShadowFigures]:
    """What the shadow tables must hold per junta: every legacy loan and payment, amounts in cents.

    Rejected loans are included: the shadow tables mirror the legacy rows, capital or not.
    """
    loans: dict[str, list[Decimal]] = {}
    payments: dict[str, list[Decimal]] = {}
    loan_junta: dict[str, str] = {}
    for loan in prestamos:
        loan_junta[loan.id] = loan.junta_id
        loans.setdefault(loan.junta_id, []).append(to_cents(loan.amount))
    for pago in pagos:
        junta_id = loan_junta[pago.prestamo_id]
        payments.setdefault(junta_id, []).append(to_cents(pago.amount))
    return {
        junta_id: ShadowFigures(
            loan_count=len(loans.get(junta_id, [])),
            loan_amount=sum(loans.get(junta_id, []), ZERO),
            payment_count=len(payments.get(junta_id, [])),
            payment_amount=sum(payments.get(junta_id, []), ZERO),
        )
        for junta_id in sorted(set(loans) | set(payments))
    }


SHADOW_FIELDS: tuple[str, ...] = ("loan_count", "loan_amount", "payment_count", "payment_amount")


def compare_shadow(
    legacy: Mapping[str, ShadowFigures], shadow: Mapping[str, ShadowFigures]
) -> list[Discrepancy]:
    """Compare legacy and shadow counts and sums per junta (`shadow.<field>`, expected = legacy)."""
    empty = ShadowFigures()
    found: list[Discrepancy] = []
    for junta_id in sorted(set(legacy) | set(shadow)):
        want = legacy.get(junta_id, empty)
        have = shadow.get(junta_id, empty)
        for name in SHADOW_FIELDS:
            want_value = Decimal(getattr(want, name))
            have_value = Decimal(getattr(have, name))
            if want_value != have_value:
                unit = "count" if name.endswith("_count") else "money"
                found.append(Discrepancy(junta_id, f"shadow.{name}", want_value, have_value, unit))
    return found
