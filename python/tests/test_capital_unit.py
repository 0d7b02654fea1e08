"""Unit tests of the pure capital model (module_utils/capital.py): no database, no Ansible.

Randomised with hypothesis over dirty source rows (float artefacts, negatives, zeros, rejected loans,
rows that do not affect capital); a second, deliberately naive implementation in this file must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

import pytest
from ansible_collections.prestamos.capital.plugins.module_utils.capital import (
    CENT,
    ZERO,
    AccionRow,
    Discrepancy,
    JuntaCapital,
    PagoRow,
    PrestamoRow,
    ShadowFigures,
    compare_shadow,
    expected_capital,
    legacy_shadow_figures,
    money_str,
    pg_float8_to_numeric,
    reconcile,
    signed_type_sums,
    to_cents,
    totals,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# Amounts as the legacy application stores them: plain floats, the classic artefacts, tiny and large
# values, zeros and negatives, and values sitting exactly on (or a hair beside) a half cent.
ARTEFACTS = [
    0.30000000000000004,
    15664.312475053368,
    0.1 + 0.2,
    2.675,
    1.005,
    0.125,
    -0.125,
    0.12499999999999999,
    0.005,
    -0.005,
    0.0,
    -0.0,
    5e-324,
    999999999.995,
    123456789012.345,
    -7.5e-3,
]
amounts = st.one_of(
    st.sampled_from(ARTEFACTS),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**9), max_value=10**9).map(lambda c: c / 100),
    st.integers(min_value=-(10**6), max_value=10**6).map(lambda c: c / 1000),
    st.floats(min_value=-1e11, max_value=1e11, allow_nan=False, allow_infinity=False),
)
statuses = st.sampled_from(["PENDING", "APPROVED", "REJECTED", "PAID", "PARTIAL", "ACTIVE", "rejected", "??"])
junta_ids = st.sampled_from(["j1", "j2", "j3", "j4"])


@dataclass(frozen=True)
class Sources:
    """One random legacy database's capital-relevant rows."""

    acciones: list[AccionRow]
    multas: list[AccionRow]
    prestamos: list[PrestamoRow]
    pagos: list[PagoRow]


@st.composite
def sources(draw: st.DrawFn) -> Sources:
    """Draw rows with unique ids; every payment names one of the drawn loans."""
    acciones = [
        AccionRow(f"a{i}", draw(junta_ids), draw(amounts), draw(st.booleans()))
        for i in range(draw(st.integers(0, 12)))
    ]
    multas = [
        AccionRow(f"m{i}", draw(junta_ids), draw(amounts), draw(st.booleans()))
        for i in range(draw(st.integers(0, 12)))
    ]
    prestamos = [
        PrestamoRow(f"p{i}", draw(junta_ids), draw(amounts), draw(statuses))
        for i in range(draw(st.integers(0, 10)))
    ]
    pagos = []
    if prestamos:
        pagos = [
            PagoRow(f"g{i}", draw(st.sampled_from(prestamos)).id, draw(amounts))
            for i in range(draw(st.integers(0, 15)))
        ]
    return Sources(acciones, multas, prestamos, pagos)


def naive_cents(amount: float) -> Decimal:
    """Independent rounding: '%.15g' text, then whole cents by integer arithmetic, half away from zero."""
    text = "%.15g" % amount  # noqa: UP031 - the C format PostgreSQL's float8_numeric uses, on purpose
    value = Decimal(text)
    sign = -1 if value < 0 else 1
    hundredths = abs(value) * 100
    whole = int(hundredths)  # truncates toward zero
    if hundredths - whole >= Decimal("0.5"):
        whole += 1
    return Decimal(sign * whole) / 100


def naive_capital(src: Sources) -> dict[str, tuple[Decimal, Decimal]]:
    """The model written the dumbest way: per junta (base, current) by looping over every row."""
    result: dict[str, tuple[Decimal, Decimal]] = {}
    juntas = {r.junta_id for r in src.acciones} | {r.junta_id for r in src.multas}
    juntas |= {r.junta_id for r in src.prestamos}
    for junta in juntas:
        base = Decimal(0)
        current = Decimal(0)
        for a in src.acciones:
            if a.junta_id == junta and a.affects_capital:
                base += naive_cents(a.amount)
                current += naive_cents(a.amount)
        for m in src.multas:
            if m.junta_id == junta and m.affects_capital:
                current += naive_cents(m.amount)
        for p in src.prestamos:
            if p.junta_id == junta:
                if p.status != "REJECTED":
                    current -= naive_cents(p.amount)
                for g in src.pagos:
                    if g.prestamo_id == p.id:
                        current += naive_cents(g.amount)
        result[junta] = (base, current)
    return result


def signed_total(src: Sources) -> Decimal:
    """Every capital-moving row's cents with its sign, summed over the whole database."""
    total = sum((to_cents(r.amount) for r in src.acciones + src.multas if r.affects_capital), ZERO)
    total -= sum((to_cents(p.amount) for p in src.prestamos if p.status != "REJECTED"), ZERO)
    return total + sum((to_cents(g.amount) for g in src.pagos), ZERO)


def ledger_from(src: Sources) -> dict[str, dict[str, Decimal]]:
    """A correct ledger for the sources (what the migration's backfill must produce)."""
    return signed_type_sums(src.acciones, src.multas, src.prestamos, src.pagos)


def columns_from(src: Sources) -> dict[str, JuntaCapital]:
    """Correct "Junta" columns for the sources."""
    return expected_capital(src.acciones, src.multas, src.prestamos, src.pagos)


# --- the float8 -> numeric cast and rounding ------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "numeric", "cents"),
    [
        (0.30000000000000004, "0.300000000000000", "0.30"),
        (15664.312475053368, "15664.3124750534", "15664.31"),
        # 15 significant digits round this up to 0.125, and 0.125 rounds half away from zero: 0.13.
        (0.12499999999999999, "0.125000000000000", "0.13"),
        (-2.675, "-2.67500000000000", "-2.68"),
        (1.005, "1.00500000000000", "1.01"),
        (5e-324, "4.94065645841247E-324", "0.00"),
        (12345678901.234567, "12345678901.2346", "12345678901.23"),
    ],
)
def test_float8_cast_uses_fifteen_significant_digits(amount: float, numeric: str, cents: str) -> None:
    assert pg_float8_to_numeric(amount) == Decimal(numeric)
    assert to_cents(amount) == Decimal(cents)
    assert to_cents(amount).as_tuple().exponent == -2


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), float("-inf"), 1e12, -1e15, 1e300])
def test_amounts_outside_numeric_14_2_are_refused_with_a_reason(amount: float) -> None:
    with pytest.raises(ValueError, match=r"finite|NUMERIC\(14,2\)"):
        to_cents(amount)


@given(amounts)
def test_cents_agree_with_the_naive_rounding(amount: float) -> None:
    assert to_cents(amount) == naive_cents(amount)


# --- the capital model ----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(sources())
def test_model_agrees_with_a_naive_implementation(src: Sources) -> None:
    got = columns_from(src)
    naive = naive_capital(src)
    assert set(got) == set(naive)
    for junta, (base, current) in naive.items():
        assert got[junta] == JuntaCapital(base, current, current)


@given(sources())
def test_juntas_sum_to_the_total_signed_sum(src: Sources) -> None:
    capital = columns_from(src)
    assert totals(capital)["current_capital"] == signed_total(src)
    assert totals(capital)["available_capital"] == signed_total(src)
    assert totals(capital)["base_capital"] == sum(
        (to_cents(a.amount) for a in src.acciones if a.affects_capital), ZERO
    )


@given(sources(), st.data())
def test_row_order_changes_nothing(src: Sources, data: st.DataObject) -> None:
    reordered = expected_capital(
        data.draw(st.permutations(src.acciones)),
        data.draw(st.permutations(src.multas)),
        data.draw(st.permutations(src.prestamos)),
        data.draw(st.permutations(src.pagos)),
    )
    assert reordered == columns_from(src)


@given(sources())
def test_every_figure_is_whole_cents(src: Sources) -> None:
    for figures in columns_from(src).values():
        for value in (figures.base_capital, figures.current_capital, figures.available_capital):
            assert value == value.quantize(CENT)


def test_rows_that_move_no_capital_move_nothing() -> None:
    src = Sources(
        acciones=[AccionRow("a1", "j1", 100.0, affects_capital=False), AccionRow("a2", "j1", 0.004)],
        multas=[AccionRow("m1", "j1", 5.0, affects_capital=False)],
        prestamos=[PrestamoRow("p1", "j1", 50.0, "REJECTED")],
        pagos=[PagoRow("g1", "p1", 0.0)],
    )
    assert columns_from(src) == {"j1": JuntaCapital(ZERO, ZERO, ZERO)}


def test_negative_amounts_move_capital_the_other_way() -> None:
    src = Sources(
        acciones=[AccionRow("a1", "j1", 100.0), AccionRow("a2", "j1", -0.30000000000000004)],
        multas=[AccionRow("m1", "j1", -5.005)],
        prestamos=[PrestamoRow("p1", "j1", -20.0, "APPROVED"), PrestamoRow("p2", "j2", 10.0, "PENDING")],
        pagos=[PagoRow("g1", "p2", -1.0)],
    )
    got = columns_from(src)
    # 100 - 0.30 - 5.01 + 20 (a negative loan gives capital back) = 114.69
    assert got["j1"] == JuntaCapital(Decimal("99.70"), Decimal("114.69"), Decimal("114.69"))
    assert got["j2"] == JuntaCapital(ZERO, Decimal("-11.00"), Decimal("-11.00"))


def test_a_payment_for_an_unknown_loan_is_an_error_naming_both() -> None:
    with pytest.raises(ValueError, match="payment g9 names loan p9"):
        expected_capital([], [], [], [PagoRow("g9", "p9", 1.0)])


# --- reconciliation ------------------------------------------------------------------------------------


@given(sources())
def test_correct_figures_reconcile_with_no_discrepancy(src: Sources) -> None:
    capital = columns_from(src)
    calculated = {junta: figures.available_capital for junta, figures in capital.items()}
    assert reconcile(ledger_from(src), capital, ledger_from(src), calculated) == []


@given(
    sources().filter(lambda s: bool(s.acciones or s.multas or s.prestamos)),
    st.sampled_from(["base_capital", "current_capital", "available_capital"]),
    st.sampled_from([Decimal("0.01"), Decimal("-0.01")]),
    st.data(),
)
def test_a_one_cent_change_in_a_junta_column_is_reported(
    src: Sources, column: str, delta: Decimal, data: st.DataObject
) -> None:
    capital = columns_from(src)
    junta = data.draw(st.sampled_from(sorted(capital)))
    corrupted = dict(capital)
    corrupted[junta] = replace(capital[junta], **{column: capital[junta].field(column) + delta})
    found = reconcile(ledger_from(src), corrupted, ledger_from(src))
    right = capital[junta].field(column)
    assert found == [Discrepancy(junta, column, right, right + delta)]
    assert found[0].difference == delta
    assert found[0].as_dict()["difference"] == money_str(delta)


@given(sources().filter(lambda s: bool(s.acciones)), st.data())
def test_a_one_cent_change_in_the_ledger_is_reported_per_type_and_balance(
    src: Sources, data: st.DataObject
) -> None:
    ledger = {junta: dict(per_type) for junta, per_type in ledger_from(src).items()}
    junta = data.draw(st.sampled_from(sorted(ledger)))
    kind = data.draw(st.sampled_from(["ACCION", "MULTA", "PRESTAMO", "PAGO"]))
    before = ledger[junta].get(kind, ZERO)
    ledger[junta][kind] = before + Decimal("0.01")
    found = reconcile(ledger_from(src), columns_from(src), ledger)
    fields = [(d.junta_id, d.field, d.difference) for d in found]
    assert fields == [(junta, f"ledger.{kind}", Decimal("0.01")), (junta, "ledger.balance", Decimal("0.01"))]


def test_juntas_missing_on_either_side_count_as_zero() -> None:
    expected = {"j1": {"ACCION": Decimal("10.00")}}
    columns = {"j2": JuntaCapital(Decimal("1.00"), Decimal("1.00"), Decimal("1.00"))}
    ledger = {"j1": {"ACCION": Decimal("10.00")}, "j3": {"CORRECTION": Decimal("0.50")}}
    found = {(d.junta_id, d.field): d.as_dict() for d in reconcile(expected, columns, ledger)}
    assert found[("j1", "base_capital")] == {
        "junta_id": "j1",
        "field": "base_capital",
        "expected": "10.00",
        "actual": "0.00",
        "difference": "-10.00",
    }
    assert ("j2", "current_capital") in found
    assert found[("j3", "ledger.CORRECTION")]["actual"] == "0.50"
    assert found[("j3", "ledger.balance")]["actual"] == "0.50"


def test_calculate_available_capital_results_are_checked_when_given() -> None:
    src = Sources([AccionRow("a1", "j1", 3.0)], [], [], [])
    found = reconcile(ledger_from(src), columns_from(src), ledger_from(src), {"j1": Decimal("2.99")})
    assert [str(d) for d in found] == [
        "junta j1 calculate_available_capital: expected 3.00, found 2.99 (difference -0.01)"
    ]


def test_money_is_rendered_as_strings_with_two_decimals() -> None:
    assert money_str(Decimal("5")) == "5.00"
    assert money_str(Decimal("-0.10")) == "-0.10"
    with pytest.raises(ValueError, match="not a whole number of cents"):
        money_str(Decimal("0.005"))


# --- shadow tables ------------------------------------------------------------------------------------


@given(sources())
def test_shadow_figures_count_every_legacy_loan_and_payment(src: Sources) -> None:
    figures = legacy_shadow_figures(src.prestamos, src.pagos)
    assert sum(f.loan_count for f in figures.values()) == len(src.prestamos)
    assert sum(f.payment_count for f in figures.values()) == len(src.pagos)
    assert sum((f.loan_amount for f in figures.values()), ZERO) == sum(
        (to_cents(p.amount) for p in src.prestamos), ZERO
    )
    assert compare_shadow(figures, figures) == []


@given(sources().filter(lambda s: bool(s.pagos)), st.data())
def test_a_missing_shadow_payment_is_reported(src: Sources, data: st.DataObject) -> None:
    dropped = data.draw(st.sampled_from(src.pagos))
    legacy = legacy_shadow_figures(src.prestamos, src.pagos)
    shadow = legacy_shadow_figures(src.prestamos, [g for g in src.pagos if g is not dropped])
    found = compare_shadow(legacy, shadow)
    junta = next(p.junta_id for p in src.prestamos if p.id == dropped.prestamo_id)
    assert found[0].as_dict() | {"difference": None} == {
        "junta_id": junta,
        "field": "shadow.payment_count",
        "expected": str(legacy[junta].payment_count),
        "actual": str(legacy[junta].payment_count - 1),
        "difference": None,
    }
    if to_cents(dropped.amount) != ZERO:
        assert found[1].field == "shadow.payment_amount"
        assert found[1].difference == -to_cents(dropped.amount)
    else:
        assert len(found) == 1


def test_shadow_rows_for_an_unknown_junta_are_reported() -> None:
    found = compare_shadow({}, {"jx": ShadowFigures(loan_count=1, loan_amount=Decimal("2.00"))})
    assert [d.as_dict() for d in found] == [
        {"junta_id": "jx", "field": "shadow.loan_count", "expected": "0", "actual": "1", "difference": "1"},
        {
            "junta_id": "jx",
            "field": "shadow.loan_amount",
            "expected": "0.00",
            "actual": "2.00",
            "difference": "2.00",
        },
    ]
