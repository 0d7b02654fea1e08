"""Real system fixtures shared by tests: a login role with a chosen password, a tmpfs of a chosen size, and
the password built to break parsers that the secret scans look for."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql


def hostile_password(prefix: str = "Pw") -> str:
    """A password holding every character that breaks a parser (``/ # ? @ : %``, ``{{ {%``, quotes, a
    backslash, unicode) and a random tail of letters data and logs hardly hold (hex would: uuids, digests)."""
    tail = "".join(secrets.choice("QXZJKVW") for _ in range(10))
    return f"{prefix}/#?@:%{{{{ x }}}}{{% y %}}'\"\\é漢-{tail}"


def fragments(password: str) -> set[bytes]:
    """Every 4-character piece of the password, as UTF-8 and as JSON writes it (escaped, ASCII or not)."""
    pieces = {password[i:i + 4] for i in range(len(password) - 3)}
    return {form.encode() for piece in pieces
            for form in (piece, json.dumps(piece)[1:-1], json.dumps(piece, ensure_ascii=False)[1:-1])}


@contextmanager
def login_role(db: Any, role: str, password: str) -> Iterator[str]:
    """A superuser login role with ``password`` in ``db``'s cluster; everything it owns goes with it."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
        conn.commit()
    finally:
        conn.close()
    try:
        yield role
    finally:
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
                cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            conn.commit()
        finally:
            conn.close()


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "64m") mounted 0700 at ``mount`` (created); unmounted whatever happens.

    Skips the test when not root (mounting needs it; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
