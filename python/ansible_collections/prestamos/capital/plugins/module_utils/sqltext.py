"""The migration's SQL as text: split like psql, grouped into units, ordered by the main script, checksummed.

``add_capital_tracking.sql`` is the one source of truth for the order of the pieces (its ``\\ir`` lines); the
checksum covers that script and the pieces, in order. Inside a piece, ``BEGIN; ...; COMMIT;`` delimits a
transaction the runner executes (and retries) as one unit; a statement outside such a block runs on its own
in autocommit (CREATE INDEX CONCURRENTLY); ``<query> \\gexec`` runs the query and executes each value it
returns, like psql. A statement preceded by the psql meta-command ``\\set capital_unit batched`` is a *batched*
unit: psql only sets a variable and runs the statement (a procedure that loops and commits per batch); the
runner runs that loop itself, one batch per transaction (backfill.py). The file name's first digit names the
phase: 1x expand, 2x backfill, 3x enforce.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.prestamos.capital.plugins.module_utils import provenance
from ansible_collections.prestamos.capital.plugins.module_utils.errors import MigrationError

MAIN_SCRIPT = "add_capital_tracking.sql"
# Checksums of earlier layouts of the same migration version that create exactly the same objects (a pure
# reorganisation of the files): a database applied with one of them is applied, not drifted.
ACCEPTED_FILE = "accepted_checksums.json"
_IR_LINE = re.compile(r"^\\ir\s+(\S+)\s*$", re.MULTILINE)
# The psql variable whose \set declares the kind of the next unit, and the kinds it may declare.
UNIT_VARIABLE = "capital_unit"
DECLARED_KINDS = frozenset({"batched"})


@dataclass(frozen=True)
class Statement:
    """One statement of a piece; ``gexec`` means: run it and execute every value it returns; ``declared`` is
    the unit kind a ``\\set capital_unit <kind>`` line right before it declared (empty: none)."""

    text: str
    line: int
    gexec: bool = False
    declared: str = ""

    @property
    def bare(self) -> str:
        """The statement without leading comments or whitespace, for classification and messages."""
        lines = [ln for ln in self.text.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        return "\n".join(lines).strip()


@dataclass(frozen=True)
class Unit:
    """What the runner executes as one attempt: a transaction, or one autocommit statement."""

    file: str
    index: int
    kind: str  # "tx" | "auto" | "batched"
    statements: tuple[Statement, ...]

    @property
    def line(self) -> int:
        return self.statements[0].line

    @property
    def summary(self) -> str:
        text = " ".join(s.bare.split("\n")[0] for s in self.statements)
        return text[:120]


def split_statements(text: str) -> list[Statement]:
    """Split SQL like psql does: on ``;`` outside quotes, comments and dollar quotes; ``\\gexec`` ends one too.

    ``\\set capital_unit <kind>`` between two statements declares the kind of the next one. Other psql
    meta-commands are refused: the pieces must run the same through psql and through the module.
    """
    out: list[Statement] = []
    buf: list[str] = []
    start_line = 1
    line = 1
    i = 0
    n = len(text)
    declared = ""  # a kind declared for the next statement, and the line that declared it
    declared_at = 0

    def flush(gexec: bool = False) -> None:
        nonlocal buf, declared
        stmt = Statement("".join(buf), start_line, gexec, declared)
        if stmt.bare:
            out.append(stmt)
            declared = ""
        buf = []

    while i < n:
        c = text[i]
        if not "".join(buf).strip():
            start_line = line
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            i = j
            continue
        if c == "/" and text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            chunk = text[i:j]
            buf.append(chunk)
            line += chunk.count("\n")
            i = j
            continue
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            chunk = text[i : j + 1]
            buf.append(chunk)
            line += chunk.count("\n")
            i = j + 1
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                j = text.find(tag, i + len(tag))
                if j < 0:
                    raise MigrationError(f"unterminated dollar quote {tag} starting at line {line}")
                chunk = text[i : j + len(tag)]
                buf.append(chunk)
                line += chunk.count("\n")
                i = j + len(tag)
                continue
        if c == "\\" and (i == 0 or text[i - 1] == "\n"):
            j = text.find("\n", i)
            j = n if j < 0 else j
            meta = text[i:j].strip()
            words = meta.split()
            if meta == "\\gexec":
                flush(gexec=True)
            elif words[:2] == ["\\set", UNIT_VARIABLE]:
                if Statement("".join(buf), line).bare or declared:
                    raise MigrationError(
                        f"{meta!r} at line {line} must stand between two statements and declare one statement"
                    )
                if len(words) != 3 or words[2] not in DECLARED_KINDS:
                    raise MigrationError(
                        f"{meta!r} at line {line}: declare one of {sorted(DECLARED_KINDS)}"
                    )
                declared, declared_at = words[2], line
            else:
                raise MigrationError(
                    f"psql meta-command {meta!r} at line {line} is not supported in a piece; "
                    f"only \\gexec and \\set {UNIT_VARIABLE} are (put other meta-commands in the main script)"
                )
            i = j
            continue
        if c == ";":
            buf.append(c)
            flush()
            i += 1
            continue
        if c == "\n":
            line += 1
        buf.append(c)
        i += 1
    if "".join(buf).strip():
        flush()
    if declared:
        raise MigrationError(f"\\set {UNIT_VARIABLE} {declared} at line {declared_at} is followed by no statement")
    return out


def parse_units(name: str, text: str) -> list[Unit]:
    """Group a piece's statements into units: BEGIN ... COMMIT blocks, lone autocommit statements, and lone
    statements declared batched."""
    units: list[Unit] = []
    current: list[Statement] | None = None
    for stmt in split_statements(text):
        word = stmt.bare.rstrip(";").strip().upper()
        if stmt.declared and (current is not None or stmt.gexec or word in ("BEGIN", "START TRANSACTION")):
            raise MigrationError(
                f"{name}:{stmt.line}: a {stmt.declared} unit is one statement outside a transaction block, "
                "without \\gexec"
            )
        if word in ("BEGIN", "START TRANSACTION"):
            if current is not None:
                raise MigrationError(f"{name}:{stmt.line}: BEGIN inside a transaction block")
            current = []
        elif word in ("COMMIT", "END"):
            if current is None:
                raise MigrationError(f"{name}:{stmt.line}: COMMIT without BEGIN")
            if current:
                units.append(Unit(name, len(units), "tx", tuple(current)))
            current = None
        elif current is not None:
            if stmt.gexec:
                raise MigrationError(f"{name}:{stmt.line}: \\gexec inside a transaction block")
            current.append(stmt)
        else:
            units.append(Unit(name, len(units), stmt.declared or "auto", (stmt,)))
    if current is not None:
        raise MigrationError(f"{name}: BEGIN without COMMIT at the end of the file")
    return units


def parse_order(main_text: str) -> list[str]:
    """The pieces named by the main script's ``\\ir`` lines, in order."""
    order = _IR_LINE.findall(main_text)
    if not order:
        raise MigrationError(f"{MAIN_SCRIPT} names no piece (no \\ir lines): is it the right file?")
    return order


def sql_checksum(texts_in_order: Iterable[str]) -> str:
    """sha256 over the texts in order, each followed by a NUL byte (so moving text between files counts).

    Trailing whitespace is not part of the checksum: Ansible's file lookup strips it, a file read from disk
    keeps it, and both must agree on whether a database has drifted.
    """
    digest = hashlib.sha256()
    for text in texts_in_order:
        digest.update(text.rstrip().encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def load_sql_dir(path: str | Path) -> dict[str, str]:
    """The main script and every piece it includes, read from a directory (tests, CLI)."""
    root = Path(path)
    main = (root / MAIN_SCRIPT).read_text(encoding="utf-8")
    files = {MAIN_SCRIPT: main}
    for name in parse_order(main):
        files[name] = (root / name).read_text(encoding="utf-8")
    for extra in (provenance.INVENTORY_FILE, ACCEPTED_FILE):
        if (root / extra).is_file():
            files[extra] = (root / extra).read_text(encoding="utf-8")
    return files


def accepted_checksums(files: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """Migration version -> the checksums of its earlier equivalent layouts (``accepted_checksums.json``)."""
    text = files.get(ACCEPTED_FILE)
    if not text:
        return {}
    try:
        doc = json.loads(text)
        return {str(version): frozenset(str(s) for s in shas) for version, shas in doc["accepted"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MigrationError(f"{ACCEPTED_FILE} is not valid: {exc}") from None


def phase_of(name: str) -> str:
    """The phase a piece belongs to, from the first digit of its name."""
    first = Path(name).name[:1]
    phases = {"1": "expand", "2": "backfill", "3": "enforce"}
    if first not in phases:
        raise MigrationError(f"piece {name!r} must start with 1 (expand), 2 (backfill) or 3 (enforce)")
    return phases[first]
