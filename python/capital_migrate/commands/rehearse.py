"""`capital-migrate rehearse`: the whole migration on a throwaway PostgreSQL, then a summary; `make demo`.

A rehearsal must never touch a real database: the cluster is started here (pgtmp), the data is generated
(seeded, so reruns are identical) or restored from a dump the operator gives, playbooks/migrate.yml runs
against it with the local inventory, and everything (cluster, backups) is removed afterwards; the report stays.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from capital_migrate.commands._common import Context, build_context, finish, playbook_path, run_stage
from capital_migrate.connection import DbTarget
from capital_migrate.errors import OperatorError
from capital_migrate.exitcodes import ExitCode

DATABASE = "prestamos_rehearsal"
_ROLE_RE = re.compile(r"(?:OWNER TO|GRANT [^;]+? TO)\s+(\"[^\"]+\"|[A-Za-z_][\w$]*)\s*;", re.IGNORECASE)
_PUBLIC = {"public", "current_user", "session_user", "current_role"}


def _dump_kind(path: Path) -> str:
    """custom (pg_dump -Fc), directory (-Fd), tar (-Ft) or plain SQL, from the file itself."""
    if path.is_dir():
        if (path / "toc.dat").is_file():
            return "directory"
        raise OperatorError(f"--from-dump {path}: a directory, but not a pg_dump -Fd dump (no toc.dat)")
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PGDMP"):
        return "custom"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return "plain"


def _roles_in_plain_dump(path: Path) -> set[str]:
    """Roles a plain dump assigns ownership or grants to; they must exist before psql replays it."""
    roles: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            for match in _ROLE_RE.finditer(line):
                name = match.group(1).strip('"')
                if name.lower() not in _PUBLIC:
                    roles.add(name)
    return roles


# The psql meta-commands pg_dump writes into a plain dump; anything else (\\! runs a shell, \\o |cmd and
# \\g |cmd pipe to one, \\i reads other files, \\setenv, \\copy ...) is refused before psql sees the file.
_ALLOWED_META = (
    re.compile(r"\\(?:un)?restrict\s+[A-Za-z0-9]+\s*"),
    # \connect to a database of this throwaway cluster only: no host, port or other connection keyword.
    re.compile(r"""\\c(?:onnect)?(?:\s+-reuse-previous=on)?\s+(?:"dbname='(?:[^'\\]|\\.)*'"|[A-Za-z_][\w$]*)\s*"""),
)
_COPY_FROM_STDIN = re.compile(r"\s*COPY\s.*\sFROM\s+stdin\s*;\s*", re.IGNORECASE | re.DOTALL)
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


def plain_dump_meta_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every psql meta-command in a plain SQL dump that pg_dump does not write.

    Follows psql's lexer where it matters: a backslash outside quotes, comments and COPY data starts a
    meta-command, wherever it is on the line. Strings, identifiers, dollar quotes and nested comments are
    skipped; a `COPY ... FROM stdin;` alone on its line starts data up to the `\\.` line. Where this reader
    and psql could disagree, it errs towards reporting a command (the dump is refused, nothing runs).
    """
    found: list[tuple[int, str]] = []
    lines = text.split("\n")
    state = ""  # "", "'", "e'", '"', "/*", or the open dollar-quote tag
    depth = 0  # of nested /* comments */
    pending = False  # part of a statement seen, its ';' not yet
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        starts_statement = state == "" and not pending
        i = 0
        while i < len(line):
            ch = line[i]
            step = 1
            if state in ("'", "e'"):
                if state == "e'" and ch == "\\":
                    step = 2
                elif ch == "'" and line[i + 1:i + 2] == "'":
                    step = 2
                elif ch == "'":
                    state = ""
            elif state == '"':
                state = "" if ch == '"' else state
            elif state == "/*":
                if line.startswith("/*", i) or line.startswith("*/", i):
                    depth += 1 if line[i] == "/" else -1
                    state, step = ("" if depth == 0 else "/*"), 2
            elif state:  # inside $tag$ ... $tag$
                if line.startswith(state, i):
                    state, step = "", len(state)
            elif line.startswith("--", i):
                break
            elif line.startswith("/*", i):
                state, depth, step = "/*", 1, 2
            elif ch == "\\":
                command = line[i:].rstrip()
                if not (i == 0 and not pending and any(p.fullmatch(command) for p in _ALLOWED_META)):
                    found.append((index, command.split()[0]))
                break  # a meta-command takes the rest of the line
            elif ch == "'":
                prefix = line[max(i - 2, 0):i]
                escaped = prefix[-1:] in ("e", "E") and not _IDENT_CHAR.fullmatch(prefix[:-1] or " ")
                state = "e'" if escaped else "'"
            elif ch == '"':
                state = '"'
            elif ch == "$" and not (i > 0 and _IDENT_CHAR.fullmatch(line[i - 1])):
                tag = _DOLLAR_TAG.match(line, i)
                if tag:
                    state, step = tag.group(0), len(tag.group(0))
            elif ch == ";":
                pending = False
                if starts_statement and not line[i + 1:].strip() and _COPY_FROM_STDIN.fullmatch(line):
                    while index < len(lines) and lines[index] != "\\.":
                        index += 1  # COPY data: psql sends it to the server as it is
                    index += 1
                    break
            elif not ch.isspace():
                pending = True
            i += step
    return found


def refuse_meta_commands(path: Path) -> None:
    """Refuse a plain dump psql would run anything but SQL from (raises OperatorError, exit 2)."""
    if _dump_kind(path) != "plain":
        return
    refused = plain_dump_meta_commands(path.read_text(encoding="utf-8", errors="replace"))
    if refused:
        where = ", ".join(f"line {n}: {c}" for n, c in refused[:5])
        raise OperatorError(f"--from-dump {path}: refused, the plain dump holds psql meta-commands pg_dump does "
                            f"not write ({where}); psql would run them as you (\\! runs a shell). Use a "
                            "pg_dump -Fc dump, or remove them")


def _run_tool(argv: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise OperatorError(f"{what} failed (exit {done.returncode}):\n{tail}", ExitCode.FAILURE)


def restore_dump(cluster: Any, path: Path, env: dict[str, str]) -> str:
    """Load the operator's dump into the rehearsal database, failing on the first error."""
    from psycopg2 import sql

    kind = _dump_kind(path)
    if kind == "plain":
        refuse_meta_commands(path)
        with cluster.connect("postgres") as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                for role in sorted(_roles_in_plain_dump(path)):
                    cur.execute("select 1 from pg_roles where rolname = %s", (role,))
                    if cur.fetchone() is None:
                        cur.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
        _run_tool(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE, "-f", str(path)], env,
                  f"restoring the plain SQL dump {path} with psql")
    else:
        # Owners and grants of the source database do not exist here and do not matter for a rehearsal.
        _run_tool(["pg_restore", "--exit-on-error", "--no-owner", "--no-privileges", "-d", DATABASE, str(path)],
                  env, f"restoring the {kind}-format dump {path} with pg_restore")
    return kind


def _load_data(ctx: Context, cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    env = {**_clean_env(), **cluster.env(DATABASE)}
    if args.from_dump:
        path = Path(args.from_dump)
        kind = restore_dump(cluster, path, env)
        return {"source": "dump", "dump": str(path), "dump_format": kind}
    from capital_migrate import datagen

    with cluster.connect(DATABASE) as conn:
        summary = datagen.generate(conn, seed=args.seed, juntas=args.juntas, dirty=args.dirty)
    info = summary.to_dict() if hasattr(summary, "to_dict") else {}
    return {"source": "generated", "juntas": args.juntas, "seed": args.seed, "dirty": bool(args.dirty),
            "rows": info.get("total_rows", getattr(summary, "total_rows", None))}


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}


def run_rehearse(args: argparse.Namespace) -> int:
    """Start a cluster, load data, run migrate.yml against it, print the summary, tear everything down."""
    if args.from_dump and not Path(args.from_dump).exists():
        raise OperatorError(f"--from-dump {args.from_dump}: no such file")
    if args.from_dump:
        refuse_meta_commands(Path(args.from_dump))  # before any cluster starts
    if args.juntas < 1:
        raise OperatorError("--juntas must be at least 1")
    ctx = build_context(args, need_db=False)
    playbook = playbook_path(ctx, "migrate")
    from capital_migrate.pgtmp import Cluster, PgTmpError

    began = time.monotonic()
    backup_dir = Path(tempfile.mkdtemp(prefix="capital-rehearsal-backups-"))
    try:
        try:
            cluster_cm = Cluster()
        except PgTmpError as exc:
            raise OperatorError(f"cannot start a throwaway PostgreSQL: {exc}", ExitCode.FAILURE) from None
        with cluster_cm as cluster:
            cluster.create_database(DATABASE)
            ctx.say(f"rehearsal: throwaway PostgreSQL on 127.0.0.1:{cluster.port} ready; loading data ...")
            loaded = _load_data(ctx, cluster, args)
            ctx.say("rehearsal: data loaded (" + ", ".join(f"{k}={v}" for k, v in loaded.items()) + ")")
            ctx.target = DbTarget(host=cluster.host, port=cluster.port, user=cluster.user, dbname=DATABASE,
                                  password=cluster.password)
            extravars = {"capital_env": ctx.extravars.get("capital_env", "rehearsal"),
                         "capital_backup_dir": str(backup_dir)}
            # The playbooks run this server's own psql/pg_dump/pg_restore (the runner inherits PATH).
            os.environ["PATH"] = cluster.env()["PATH"]
            result = run_stage(ctx, playbook, extravars)
            ctx.env_name = str(extravars["capital_env"])
            loaded["seconds"] = round(time.monotonic() - began, 1)
            if not ctx.json:
                ctx.say("")
            return finish(ctx, "rehearse", result, {"rehearsal": loaded})
    finally:
        shutil.rmtree(backup_dir, ignore_errors=True)
