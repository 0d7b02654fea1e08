"""Fill a baseline prestamos database with realistic, deterministic data (`capital-datagen`).

Why: the migration has to be rehearsed and tested against data shaped like production (domain.md §1),
at production size and far beyond it, and every run must be reproducible from a seed.

Shape (per junta, on average): 25 members (10-40 Users, one of them the creator), 150 share purchases
("Accion", type 'COMPRA'), 31 fines ("Multa", 70% PAID, else PENDING), 39 loans ("Prestamo", drawn as
PENDING 15%, APPROVED 10%, REJECTED 12%, PAID 35%, PARTIAL 10%, ACTIVE 18%; about 6% are cut down or
rejected for lack of capital) and 118 repayments ("PagoPrestamo", at most 12 per loan): about 363 rows per
junta, so `--juntas 1` gives a few hundred rows and `--juntas 2750` about one million (2700 -> 980k rows).
Timestamps run from 2022 to 2026 with millisecond precision.

Each junta is generated chronologically from its own random stream (seeded by `seed` and the junta's
number), so the data is identical for a seed whatever the chunking, and the capital model of domain.md §3
holds in clean data: at every moment a junta's signed sum of shares + fines + payments - non-REJECTED loans
(each rounded to cents) is >= 0, so every loan fits the junta's capital when it is granted (a loan that
would not fit is reduced or rejected), payments never exceed their loan, amounts are positive cents, and
no two capital rows of a junta share a timestamp.

`--dirty` adds each kind of dirt listed in domain.md §1 on a few percent of rows, counted under the keys
of DIRTY_KINDS. The counts are computed from the rows as written, with the same definitions the tests
check in SQL: float artefacts (amount != round(amount::numeric, 2)), zero and negative amounts, loans
whose payments sum (in cents) to more than the loan, juntas whose running balance goes below zero,
extra rows sharing (table, junta, timestamp) with another, and loan statuses outside the known list.

Loading: rows go through COPY in FK order (User, Junta, Prestamo, PagoPrestamo, Accion, Multa), in
chunks of whole juntas. A producer thread builds chunk k+1 while chunk k streams to the server, so the
Python side and the server each keep one core busy; memory is bounded by two chunks, whatever the size.
The tables' keys and indexes are dropped for the load and rebuilt from their catalog definitions after it
(every FK and key then checks every row at once). Everything is one transaction: a failed load leaves the
database as it was.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from capital_migrate.errors import OperatorError
from capital_migrate.exitcodes import ExitCode

# FK order: every table only references tables before it.
TABLES: tuple[str, ...] = ("User", "Junta", "Prestamo", "PagoPrestamo", "Accion", "Multa")

COLUMNS: dict[str, tuple[str, ...]] = {
    "User": ("id", "email", "username", "full_name", "created_at"),
    "Junta": ("id", "name", "fecha_inicio", "created_at", "updated_at", "created_by_id"),
    "Prestamo": (
        "id",
        "amount",
        "description",
        "status",
        "created_at",
        "updated_at",
        "junta_id",
        "member_id",
    ),
    "PagoPrestamo": ("id", "amount", "date", "prestamo_id"),
    "Accion": ("id", "type", "amount", "created_at", "junta_id", "member_id"),
    "Multa": ("id", "amount", "description", "status", "created_at", "junta_id", "member_id"),
}

DIRTY_KINDS: tuple[str, ...] = (
    "float_artefacts",
    "zero_amounts",
    "negative_amounts",
    "overpaid_loans",
    "overdrawn_juntas",
    "identical_timestamps",
    "unknown_status",
)

LOAN_STATUSES: tuple[str, ...] = ("PENDING", "APPROVED", "REJECTED", "PAID", "PARTIAL", "ACTIVE")
UNKNOWN_STATUSES: tuple[str, ...] = ("CANCELLED", "approved", "DEFAULTED", "paid", "Active")

BASELINE_SCHEMA = Path(__file__).resolve().parents[2] / "files" / "sql" / "baseline" / "baseline_schema.sql"

# Rows per COPY chunk (whole juntas are never split): big enough that per-COPY overhead vanishes,
# small enough that two chunks in memory stay in the tens of megabytes.
CHUNK_ROWS = 120_000

_DAY = 86_400_000  # milliseconds
_EPOCH = date(2022, 1, 1)
# Timestamp text from lookup tables (strftime is 10x slower): "YYYY-MM-DD " + "HH:MM:SS." + "mmm".
_DAY_STR = [f"{_EPOCH + timedelta(days=d)} " for d in range(6 * 366)]  # covers 2022-2027
_SEC_STR = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}." for s in range(86_400)]
_MILLI_STR = [f"{m:03d}" for m in range(1000)]

# uuid.UUID(int=x, version=4), as bit masks: the same string, twice as fast.
_UUID_AND = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID_OR = (0x8000 << 48) | (4 << 76)

_FIRST = (
    "Ana", "Luis", "María", "José", "Carmen", "Jorge", "Rosa", "Carlos", "Lucía", "Pedro", "Elena",
    "Miguel", "Sofía", "Juan", "Isabel", "Diego", "Marta", "Raúl", "Paula", "Andrés", "Teresa", "Víctor",
)  # fmt: skip
_LAST = (
    "García", "Rodríguez", "López", "Martínez", "Pérez", "Sánchez", "Ramírez", "Torres", "Flores",
    "Rivera", "Gómez", "Díaz", "Cruz", "Morales", "Ortiz", "Gutiérrez", "Chávez", "Ramos", "Castillo",
    "Vargas", "Mendoza", "Quispe", "Huamán", "Núñez",
)  # fmt: skip
_ASCII = str.maketrans("áéíóúñÁÉÍÓÚÑ", "aeiounAEIOUN")
_PLACES = (
    "San Juan", "Villa El Salvador", "Los Olivos", "Miraflores", "Comas", "Ate", "Chorrillos",
    "Surco", "Independencia", "Carabayllo", "Pachacámac", "Lurín",
)  # fmt: skip
_FINE_REASONS = ("Tardanza", "Inasistencia a reunión", "Pago atrasado de cuota", "Falta de aporte")
_LOAN_REASONS = (
    "Capital de trabajo", "Compra de mercadería", "Gastos de salud", "Útiles escolares",
    "Mejora de vivienda", "Emergencia familiar",
)  # fmt: skip
_STATUS_WEIGHTS = (15, 10, 12, 35, 10, 18)  # percent, LOAN_STATUSES order
_STATUS_TABLE = [s for s, w in zip(LOAN_STATUSES, _STATUS_WEIGHTS, strict=True) for _ in range(w)]
_PLAN_LENGTHS = (1, 2, 3, 4, 6, 6, 8, 10, 12, 12)  # installments
_FINES_PER_MEMBER = (0, 0, 1, 1, 1, 2, 2, 3)
_LOANS_PER_MEMBER = (0, 1, 1, 2, 2, 2, 3)
_FINE_CENTS = (500, 750, 1000, 1500, 2000)
_LOAN_ODD_CENTS = (0, 0, 0, 50, 1234, 9999)
_SHARE_PRICES = (1000, 2000, 2500, 5000, 10000)  # cents


class DatagenError(OperatorError):
    """Bad input for the generator (the database or an option): says what is wrong and what to do."""


@dataclass
class Summary:
    """What a run loaded: rows per table and dirty rows per kind (DIRTY_KINDS keys, zero when clean)."""

    seed: int
    juntas: int
    dirty: bool
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    dirty_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRTY_KINDS, 0))
    loans_reduced: int = 0  # clean-data loans cut down or rejected so they fit the junta's capital
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # copy, keys (rebuild), analyze

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_rows"] = self.total_rows
        data["rows_per_second"] = round(self.rows_per_second)
        return data

    def merge(self, other: Summary) -> None:
        for table, n in other.rows.items():
            self.rows[table] += n
        for kind, n in other.dirty_counts.items():
            self.dirty_counts[kind] += n
        self.loans_reduced += other.loans_reduced


def _ts(ms: int) -> str:
    """COPY text of a timestamp given in milliseconds since 2022-01-01."""
    day, rest = divmod(ms, _DAY)
    sec, milli = divmod(rest, 1000)
    return _DAY_STR[day] + _SEC_STR[sec] + _MILLI_STR[milli]


def _cents(c: int) -> str:
    """COPY text of an exact cents amount; the server parses it to the nearest double, as the app did."""
    if c < 0:
        return f"-{-c // 100}.{-c % 100:02d}"
    return f"{c // 100}.{c % 100:02d}"


class _Chunk:
    """The COPY text of a run of juntas, one list of lines per table, and what it holds."""

    def __init__(self, summary: Summary) -> None:
        self.lines: dict[str, list[str]] = {t: [] for t in TABLES}
        self.summary = summary

    def size(self) -> int:
        return sum(len(v) for v in self.lines.values())


class _JuntaGen:
    """Generates one junta's rows chronologically so the capital model holds (see module docstring)."""

    def __init__(self, seed: int, index: int, dirty: bool, chunk: _Chunk) -> None:
        self.rng = random.Random(f"capital-datagen:{seed}:{index}")  # noqa: S311 - test data, not secrets
        self.index = index
        self.dirty = dirty
        self.lines = chunk.lines
        self.summary = chunk.summary
        self.counts = chunk.summary.dirty_counts
        self.used: set[int] = set()  # capital-row timestamps of this junta (clean data never repeats one)
        self.last: dict[str, int] = {}  # the latest timestamp given to each table
        self.seq = 0  # tie-breaker of the event queue
        self.capital = 0  # signed cents, domain.md §3
        self.events: list[tuple[int, int, str, Any]] = []  # (ms, seq, kind, data), a heap
        self.loans: list[tuple[int, list[int]]] = []  # (loan cents, payment cents) of loans with payments

    def uuid(self) -> str:
        bits = (self.rng.getrandbits(128) & _UUID_AND) | _UUID_OR
        h = f"{bits:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def fresh_ts(self, ms: int) -> int:
        """The first free millisecond at or after ms, reserved for this junta."""
        used = self.used
        while ms in used:
            ms += 1
        used.add(ms)
        return ms

    def stamp(self, table: str, ms: int) -> int:
        """A timestamp for a new row; in dirty mode sometimes the table's previous one (double submit)."""
        if self.dirty and table in self.last and self.rng.random() < 0.01:
            self.counts["identical_timestamps"] += 1
            return self.last[table]
        ms = self.fresh_ts(ms)
        self.last[table] = ms
        return ms

    def push(self, ms: int, kind: str, data: Any) -> None:
        heapq.heappush(self.events, (ms, self.seq, kind, data))
        self.seq += 1

    def amount(self, cents: int) -> tuple[str, int]:
        """COPY text and effective cents of an income amount; in dirty mode, sometimes spoilt."""
        if not self.dirty:
            return _cents(cents), cents
        roll = self.rng.random()
        if roll < 0.004:
            self.counts["zero_amounts"] += 1
            return "0", 0
        if roll < 0.008 and self.capital - cents >= 0:
            # A legacy correction row; only where it cannot overdraw the junta (that is its own kind).
            self.counts["negative_amounts"] += 1
            return _cents(-cents), -cents
        if roll < 0.02:
            self.counts["float_artefacts"] += 1
            return repr(self.artefact(cents)), cents
        return _cents(cents), cents

    def artefact(self, cents: int) -> float:
        """A float that rounds to `cents` but is not it: a sum like 0.1 + 0.2, or an unrounded product."""
        rng = self.rng
        exact = cents / 100
        for _ in range(4):
            part = rng.randint(1, cents - 1)
            value = part / 100 + (cents - part) / 100
            if value != exact:
                return value
        return exact + rng.choice((-1, 1)) * rng.uniform(0.0001, 0.0049)

    def run(self) -> None:
        rng = self.rng
        lines = self.lines
        j = self.index
        start = rng.randrange(150, 515) * _DAY  # fecha_inicio: a date between 2022-05 and 2023-05
        life = rng.randrange(360, 720) * _DAY
        price = rng.choice(_SHARE_PRICES)
        junta_created = start - rng.randrange(0, 10 * _DAY)

        members: list[str] = []
        user_lines = lines["User"]
        for m in range(rng.randint(10, 40)):
            uid = self.uuid()
            members.append(uid)
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            handle = f"{first}.{last}{j * 100 + m}".lower().translate(_ASCII)  # unique: m < 100
            roll = rng.random()
            email = r"\N" if roll < 0.04 else f"{handle}@example.com"
            username = r"\N" if 0.04 <= roll < 0.06 else handle
            full_name = r"\N" if 0.06 <= roll < 0.09 else f"{first} {last}"
            created = junta_created - rng.randrange(_DAY // 24, 120 * _DAY)
            user_lines.append(f"{uid}\t{email}\t{username}\t{full_name}\t{_ts(created)}\n")
        junta_id = self.uuid()
        lines["Junta"].append(
            f"{junta_id}\tJunta {rng.choice(_PLACES)} {j + 1}\t{_ts(start)}\t{_ts(junta_created)}\t"
            f"{_ts(junta_created + rng.randrange(0, life))}\t{members[0]}\n"
        )

        planned: list[tuple[int, str, str]] = []
        rnd = rng.random  # int(rnd() * n) instead of randrange(n): 4x faster, same determinism
        for member in members:
            for _ in range(3 + int(rnd() * 7)):
                planned.append((start + int(rnd() * life), "Accion", member))
            for _ in range(_FINES_PER_MEMBER[int(rnd() * 8)]):
                planned.append((start + 7 * _DAY + int(rnd() * life), "Multa", member))
            for _ in range(_LOANS_PER_MEMBER[int(rnd() * 7)]):
                planned.append((start + 60 * _DAY + int(rnd() * life), "Prestamo", member))
        planned.sort()
        for ms, kind, member in planned:
            self.push(self.stamp(kind, ms), kind, member)
        overdraw_at = rng.randrange(3, 12) if self.dirty and rng.random() < 0.05 else -1

        events = self.events
        accion_lines, multa_lines, pago_lines = lines["Accion"], lines["Multa"], lines["PagoPrestamo"]
        loans_seen = 0
        overdrawn = False
        while events:
            ms, _, kind, data = heapq.heappop(events)
            if kind == "Accion":
                text, c = self.amount(price * (1 + int(rnd() * 5)))
                self.capital += c
                accion_lines.append(f"{self.uuid()}\tCOMPRA\t{text}\t{_ts(ms)}\t{junta_id}\t{data}\n")
            elif kind == "Multa":
                text, c = self.amount(_FINE_CENTS[int(rnd() * 5)] * (1 + int(rnd() * 3)))
                self.capital += c
                status = "PAID" if rnd() < 0.7 else "PENDING"
                multa_lines.append(
                    f"{self.uuid()}\t{text}\t{_FINE_REASONS[int(rnd() * 4)]}\t{status}\t{_ts(ms)}\t"
                    f"{junta_id}\t{data}\n"
                )
            elif kind == "Pago":
                prestamo_id, c, paid = data
                text, c = self.amount(c)
                self.capital += c
                paid.append(c)
                pago_lines.append(f"{self.uuid()}\t{text}\t{_ts(ms)}\t{prestamo_id}\n")
            else:
                self.loan(ms, data, junta_id, price, overdraw=loans_seen == overdraw_at)
                loans_seen += 1
            # Overdrawn, as the tests check it in SQL: the balance after all rows up to a timestamp < 0.
            if self.capital < 0 and (not events or events[0][0] != ms):
                overdrawn = True
        if overdrawn:
            self.counts["overdrawn_juntas"] += 1
        if self.dirty:
            self.counts["overpaid_loans"] += sum(
                1 for cents, paid in self.loans if paid and sum(paid) > cents
            )

    def loan(self, ms: int, member: str, junta_id: str, price: int, *, overdraw: bool) -> None:
        """Decide one loan at its moment against the junta's capital and queue its payments."""
        rng = self.rng
        rnd = rng.random
        status = _STATUS_TABLE[int(rnd() * 100)]
        wanted = price * (4 + int(rnd() * 27)) + _LOAN_ODD_CENTS[int(rnd() * 6)]
        if overdraw:
            status = rng.choice(("ACTIVE", "APPROVED"))
            wanted = max(self.capital, 0) + rng.randint(100, 200_000)
        elif status != "REJECTED" and wanted > self.capital:
            self.summary.loans_reduced += 1
            fits = self.capital - self.capital % 5000  # whole fifties, as a treasurer would lend
            if fits >= 10000:
                wanted = fits
            else:
                status = "REJECTED"
        plan = _PLAN_LENGTHS[int(rnd() * 10)]
        if status == "PAID":
            n_paid = plan
        elif status in ("PARTIAL", "ACTIVE") and plan > 1:
            n_paid = rng.randint(1 if status == "PARTIAL" else 0, plan - 1)
        else:
            n_paid = 0
        cents = wanted
        text = _cents(wanted)
        if self.dirty:
            roll = rng.random()
            # Zero or negative loans only where no payment can make them "overpaid" (its own kind).
            if n_paid == 0 and roll < 0.01:
                self.counts["zero_amounts"] += 1
                text, cents = "0", 0
            elif n_paid == 0 and roll < 0.02:
                self.counts["negative_amounts"] += 1
                text, cents = _cents(-wanted), -wanted
            elif roll < 0.04:
                self.counts["float_artefacts"] += 1
                text = repr(self.artefact(wanted))
            if rng.random() < 0.01:
                self.counts["unknown_status"] += 1
                status = rng.choice(UNKNOWN_STATUSES)
        if status != "REJECTED":
            self.capital -= cents

        prestamo_id = self.uuid()
        installment = wanted // plan
        pay_cents = ([installment] * (plan - 1) + [wanted - installment * (plan - 1)])[:n_paid]
        if self.dirty and n_paid and rng.random() < 0.03:
            pay_cents.append(rng.choice(pay_cents))  # a payment entered twice
        paid: list[int] = []
        self.loans.append((cents, paid))
        at = ms
        for k, c in enumerate(pay_cents):
            if self.dirty and k and rng.random() < 0.01:
                self.counts["identical_timestamps"] += 1  # the time of this loan's previous payment
            else:
                at = self.fresh_ts(at + 27 * _DAY + int(rnd() * 6 * _DAY))
            self.push(at, "Pago", (prestamo_id, c, paid))
        updated = at if pay_cents else ms + int(rnd() * 3 * _DAY)
        description = _LOAN_REASONS[int(rnd() * 6)] if rnd() < 0.8 else r"\N"
        self.lines["Prestamo"].append(
            f"{prestamo_id}\t{text}\t{description}\t{status}\t{_ts(ms)}\t{_ts(updated)}\t{junta_id}\t{member}\n"
        )


def _generate_chunks(seed: int, juntas: int, dirty: bool) -> Iterator[tuple[Summary, dict[str, bytes]]]:
    """Whole juntas in chunks of about CHUNK_ROWS rows: the chunk's summary and COPY text per table."""
    index = 0
    while index < juntas:
        chunk = _Chunk(Summary(seed=seed, juntas=0, dirty=dirty))
        while index < juntas and chunk.size() < CHUNK_ROWS:
            _JuntaGen(seed, index, dirty, chunk).run()
            index += 1
            chunk.summary.juntas += 1
        texts = {}
        for table in TABLES:
            chunk.summary.rows[table] = len(chunk.lines[table])
            texts[table] = "".join(chunk.lines[table]).encode()
            chunk.lines[table] = []
        yield chunk.summary, texts


class _BytesReader:
    """The file-like object copy_expert reads: hands out one table's chunk text a slice at a time."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        start = self.pos
        end = len(self.data) if size < 0 else start + size
        self.pos = min(end, len(self.data))
        return self.data[start:end]


_DONE = object()


def _produce(seed: int, juntas: int, dirty: bool, out: queue.Queue[Any], stop: threading.Event) -> None:
    """Producer thread: generate chunks ahead of the COPY (bounded by the queue), then _DONE or the error."""
    try:
        for item in _generate_chunks(seed, juntas, dirty):
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_DONE)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        out.put(exc)


def _prepare_schema(cur: psycopg2.extensions.cursor) -> None:
    """Create the baseline schema in an empty database; refuse a partial or non-empty one."""
    cur.execute("SELECT " + ", ".join(f"to_regclass('public.\"{t}\"') IS NOT NULL" for t in TABLES))
    present = cur.fetchone() or ()
    if not any(present):
        cur.execute(BASELINE_SCHEMA.read_text(encoding="utf-8"))
        return
    missing = [t for t, ok in zip(TABLES, present, strict=True) if not ok]
    if missing:
        raise DatagenError(
            f"the database holds only part of the baseline schema (missing: {', '.join(missing)}); "
            "load into an empty database or one created from files/sql/baseline/baseline_schema.sql"
        )
    cur.execute(" UNION ALL ".join(f"(SELECT '{t}' FROM \"{t}\" LIMIT 1)" for t in TABLES))
    filled = [row[0] for row in cur.fetchall()]
    if filled:
        raise DatagenError(
            f"baseline tables already hold rows ({', '.join(filled)}); capital-datagen loads into an empty "
            "baseline: use a fresh database"
        )


_KEYS_SQL = """
SELECT c.contype,
       format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname),
       format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,
              pg_get_constraintdef(c.oid))
  FROM pg_constraint c
 WHERE c.conrelid = ANY (%(tables)s::regclass[]) AND c.contype IN ('p', 'u', 'f')
UNION ALL
SELECT 'i', format('DROP INDEX %%s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
  FROM pg_index i
 WHERE i.indrelid = ANY (%(tables)s::regclass[])
   AND NOT EXISTS (SELECT FROM pg_constraint c
                    WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                      AND c.contype IN ('p', 'u', 'x'))
"""


def _drop_keys(cur: psycopg2.extensions.cursor) -> list[str]:
    """Drop the baseline tables' keys and indexes for the load; return the statements that restore them.

    Why: a row-by-row FK check and random-UUID index inserts cost the server ~10 us a row; building the
    indexes and validating each FK once after the load (PostgreSQL's "populating a database" advice, and
    what pg_restore does) is several times faster. The restored objects are the ones read from the catalog,
    names and definitions unchanged, and they check every row. All inside the load's transaction.
    """
    cur.execute(_KEYS_SQL, {"tables": [f'"{t}"' for t in TABLES]})
    keys = cur.fetchall()
    order = {"f": 0, "p": 1, "u": 1, "i": 1}  # drop FKs before the keys they reference; restore reversed
    keys.sort(key=lambda k: (order[k[0]], k[1]))
    for _, drop, _ in keys:
        cur.execute(drop)
    cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
    return [add for _, _, add in reversed(keys)]


def generate(conn: psycopg2.extensions.connection, seed: int, juntas: int, dirty: bool = False) -> Summary:
    """Load `juntas` juntas of seed-determined data into conn's database and commit; see the module doc.

    Creates the baseline schema when the database has none. One transaction: on any error it is rolled
    back and the database is unchanged.
    """
    if seed < 0:
        raise DatagenError(f"--seed must be >= 0, got {seed}")
    if juntas < 1:
        raise DatagenError(f"--juntas must be >= 1, got {juntas}")
    summary = Summary(seed=seed, juntas=0, dirty=dirty)
    began = time.monotonic()
    chunks: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(seed, juntas, dirty, chunks, stop), name="capital-datagen", daemon=True
    )
    try:
        conn.set_client_encoding("UTF8")
        with conn.cursor() as cur:
            _prepare_schema(cur)
            restore = _drop_keys(cur)
            producer.start()
            while (item := chunks.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                part, texts = item
                for table in TABLES:
                    if texts[table]:
                        columns = ", ".join(f'"{c}"' for c in COLUMNS[table])
                        cur.copy_expert(
                            f'COPY "{table}" ({columns}) FROM STDIN', _BytesReader(texts[table]), size=1 << 20
                        )
                summary.merge(part)
                summary.juntas += part.juntas
            mark = time.monotonic()
            summary.phase_seconds["copy"] = round(mark - began, 3)
            for statement in restore:
                cur.execute(statement)
            summary.phase_seconds["keys"] = round(time.monotonic() - mark, 3)
            mark = time.monotonic()
            # Planner statistics, as a live database would have them (autovacuum may not run in tests).
            cur.execute('ANALYZE "User", "Junta", "Prestamo", "PagoPrestamo", "Accion", "Multa"')
            summary.phase_seconds["analyze"] = round(time.monotonic() - mark, 3)
        conn.commit()
    except BaseException:
        stop.set()
        conn.rollback()
        raise
    finally:
        if producer.is_alive():
            stop.set()
            producer.join(timeout=5)
    summary.seconds = time.monotonic() - began
    return summary


def table_checksums(conn: psycopg2.extensions.connection) -> dict[str, str]:
    """md5 of each baseline table's baseline columns, rows ordered by id (computed by the server).

    Only the columns of domain.md §1 count, so a migrated database (extra columns) can be compared with
    its baseline: equal checksums mean the legacy data is unchanged.
    """
    result: dict[str, str] = {}
    with conn.cursor() as cur:
        for table in TABLES:
            columns = ", ".join(f't."{c}"' for c in COLUMNS[table])
            cur.execute(
                f"SELECT md5(coalesce(string_agg(ROW({columns})::text, E'\\n'"
                f' ORDER BY t.id COLLATE "C"), \'\')) FROM "{table}" t'
            )
            row = cur.fetchone()
            assert row is not None
            result[table] = row[0]
    return result


def _print_summary(summary: Summary) -> None:
    print(f"capital-datagen: seed {summary.seed}, {summary.juntas} juntas, dirty={summary.dirty}")
    for table in TABLES:
        print(f"  {table:<14}{summary.rows[table]:>12,}")
    print(
        f"  {'total':<14}{summary.total_rows:>12,} rows in {summary.seconds:.1f} s "
        f"({summary.rows_per_second:,.0f} rows/s)"
    )
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.phase_seconds.items())
    print(f"  phases: {phases}")
    print(f"  loans reduced or rejected to fit capital: {summary.loans_reduced:,}")
    if summary.dirty:
        for kind in DIRTY_KINDS:
            print(f"  dirty {kind:<22}{summary.dirty_counts[kind]:>8,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="capital-datagen",
        description="Fill an empty baseline prestamos database with deterministic, realistic data.",
        epilog="Connection: --dsn, else the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, "
        "PGPASSFILE...). About 363 rows per junta: --juntas 2750 gives ~1M rows.",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (>= 0); same seed, same data")
    parser.add_argument("--juntas", type=int, default=10, help="number of juntas (>= 1)")
    parser.add_argument("--dirty", action="store_true", help="add every kind of dirty data of domain.md §1")
    parser.add_argument(
        "--dsn", default=None, help="libpq connection string (keep passwords out of it: use PGPASSFILE)"
    )
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary here as JSON")
    args = parser.parse_args(argv)

    if args.summary_json is not None and not args.summary_json.parent.is_dir():
        print(
            f"capital-datagen: error: directory of --summary-json does not exist: {args.summary_json.parent}",
            file=sys.stderr,
        )
        return int(ExitCode.BAD_ARGUMENTS)
    if args.seed < 0 or args.juntas < 1:
        print("capital-datagen: error: --seed must be >= 0 and --juntas >= 1", file=sys.stderr)
        return int(ExitCode.BAD_ARGUMENTS)
    try:
        conn = psycopg2.connect(args.dsn or "", application_name="capital-datagen")
    except psycopg2.Error as exc:
        print(
            f"capital-datagen: error: cannot connect to PostgreSQL: {str(exc).strip()}\n"
            "Set --dsn or the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE).",
            file=sys.stderr,
        )
        return int(ExitCode.BAD_ARGUMENTS)
    try:
        summary = generate(conn, args.seed, args.juntas, dirty=args.dirty)
    except DatagenError as exc:
        print(f"capital-datagen: error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except psycopg2.Error as exc:
        print(
            f"capital-datagen: error: loading failed, nothing was written: {str(exc).strip()}",
            file=sys.stderr,
        )
        return int(ExitCode.FAILURE)
    finally:
        conn.close()
    _print_summary(summary)
    if args.summary_json is not None:
        tmp = args.summary_json.with_name(args.summary_json.name + ".tmp")
        tmp.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
