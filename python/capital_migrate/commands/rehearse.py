"""`capital-migrate rehearse`: the whole migration on a throwaway PostgreSQL, then a summary; `make demo`.

A rehearsal must never touch a real database: the cluster is started here (pgtmp), the data is generated
(seeded, so reruns are identical) or restored from a dump the operator gives, playbooks/migrate.yml runs
against it with the local inventory, and everything (cluster, backups) is removed afterwards; the report stays.
"""

from __future__ import annotations

import argparse
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
            result = run_stage(ctx, playbook, extravars)
            ctx.env_name = str(extravars["capital_env"])
            loaded["seconds"] = round(time.monotonic() - began, 1)
            if not ctx.json:
                ctx.say("")
            return finish(ctx, "rehearse", result, {"rehearsal": loaded})
    finally:
        shutil.rmtree(backup_dir, ignore_errors=True)
