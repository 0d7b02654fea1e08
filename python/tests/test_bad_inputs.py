"""Bad inputs (issue 17): every one refused before anything is written, or taken literally and harmless.

The one DATABASE_URL parser and pgpass writer (module_utils/dburl.py) against libpq's rules and passwords
built to break parsers; the run-wide variables walked with wrong values in one ansible-playbook run (a host
per value, `--tags always`: the gate runs before anything connects); and, end to end on a real throwaway
PostgreSQL, the cases of the issue: an unencoded `/` in a URL password, `capital_db_port: 37x69`,
`capital_lock_timeout: 2sec`, the CLI's target against the inventory's, a plain dump with `\\!`, and an
unwritable report directory. docs/reliability.md, "Bad inputs", lists them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from ansible_collections.prestamos.capital.plugins.module_utils import dburl
from ansible_collections.prestamos.capital.plugins.module_utils.inputs import duration_ms, input_errors
from capital_migrate import report as report_mod
from capital_migrate.commands.rehearse import plain_dump_meta_commands
from capital_migrate.connection import DbTarget, pgpass_file
from capital_migrate.exitcodes import ExitCode
from cli_support import base_env, run_cli
from migration_helpers import seed_db
from test_rollback import fingerprint

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
# Passwords built to break parsers: every character a URL, a pgpass file, Jinja or a shell treats specially.
HOSTILE = [
    "Frag/Ment#Two?Three@Four:Five%Six",
    "Brace{{ lookup('pipe', 'id') }}Jinja{% raw %}",
    "Quote'Double\"Back\\slash;$(touch nope)`x`",
    "Uni\u00f1and\u00fa\u20acCode \u65e5\u672c",
]


def _fragments(secret: str) -> list[str]:
    """Every 4-character piece of `secret` made of letters only (what would betray it in a message)."""
    return sorted({secret[i:i + 4] for i in range(len(secret) - 3) if secret[i:i + 4].isalpha()})


def _leaks(text: str, secret: str) -> list[str]:
    return [piece for piece in _fragments(secret) if piece in text]


# ------------------------------------------------------------------------------------ the URL parser


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5433/db?sslmode=require",
         {"user": "u", "password": "p", "host": "h", "port": 5433, "dbname": "db", "sslmode": "require"}),
        ("postgres://h/db", {"host": "h", "dbname": "db"}),
        # libpq takes the credentials up to the first '@' before any '/': '#', '?' and ':' need no encoding.
        ("postgresql://u:a#b?c:d@h/db", {"user": "u", "password": "a#b?c:d", "host": "h", "dbname": "db"}),
        ("postgresql://u:a%2Fb%40c%25d@h/db", {"user": "u", "password": "a/b@c%d", "host": "h", "dbname": "db"}),
        ("postgresql://u%40corp:p+q@h/my%20db", {"user": "u@corp", "password": "p+q", "host": "h", "dbname": "my db"}),
        ("postgresql:///db?host=/var/run/postgresql", {"host": "/var/run/postgresql", "dbname": "db"}),
        ("postgresql://%2Fvar%2Frun%2Fpostgresql:5434/db", {"host": "/var/run/postgresql", "port": 5434,
                                                            "dbname": "db"}),
        ("postgresql://h/db?host=other&port=6000&user=x&password=y%26z&dbname=d2&sslmode=disable",
         {"host": "other", "port": 6000, "user": "x", "password": "y&z", "dbname": "d2", "sslmode": "disable"}),
        ("postgresql://[::1]:5432/db", {"host": "::1", "port": 5432, "dbname": "db"}),
        ("postgresql://h/db?ssl=true", {"host": "h", "dbname": "db", "sslmode": "require"}),
    ],
)
def test_the_url_parser_follows_libpq(url: str, expected: dict[str, Any]) -> None:
    parts = dburl.parse_database_url(url)
    got = {k: v for k, v in vars(parts).items() if v is not None}
    assert got == expected
    assert DbTarget.from_url(url).parts() == parts  # the CLI uses the same parser


@pytest.mark.parametrize("password", HOSTILE)
@pytest.mark.parametrize("encode", ["raw", "encoded"])
def test_a_url_error_holds_nothing_after_the_user_name(password: str, encode: str) -> None:
    text = password if encode == "raw" else quote(password, safe="")
    for url in (f"postgresql://someone:{text}@db.example:5432/prestamos",
                f"postgresql://someone:{text}@db.example:99999/prestamos",
                f"postgresql://someone:{text}@db.example/prestamos?bogus={text}",
                f"mysql://someone:{text}@db.example/prestamos"):
        try:
            parts = dburl.parse_database_url(url)
        except dburl.DatabaseUrlError as exc:
            assert not _leaks(str(exc), password), (url, str(exc))
            assert "db.example" not in str(exc) and "prestamos" not in str(exc)
        else:
            assert parts.password == password  # parsed: then exactly, with libpq's decoding


@pytest.mark.parametrize("password", [*HOSTILE, "a:b\\c", "*:*"])
def test_one_pgpass_writer_for_module_and_cli(password: str, tmp_path: Path) -> None:
    from ansible_collections.prestamos.capital.plugins.modules import capital_pgpass

    assert capital_pgpass.pgpass_line is dburl.pgpass_line
    with pgpass_file(DbTarget(password=password)) as path:
        assert path is not None
        assert path.read_text(encoding="utf-8") == dburl.pgpass_line(password)
        assert report_mod.pgpass_passwords(str(path)) == [password]
    with pytest.raises(ValueError, match="line break"):
        dburl.pgpass_line("two\nlines")


def test_redaction_finds_the_password_of_a_url_it_cannot_parse() -> None:
    password = HOSTILE[0]
    url = f"postgresql://u:{password}@h/db"
    literals = report_mod.secret_literals({"DATABASE_URL": url})
    assert literals == [password]
    assert password not in report_mod.redact_text(f"failed for {url} with {password}", literals)


def test_durations_are_the_ones_postgresql_accepts(pg_db: Any) -> None:
    values = ["2s", "2sec", "500ms", " 1 min ", "1.5s", "0", "500us", "1e3", "2S", "-1", "1d", "25d",
              "2147483647", "2147483648", ".5s", "1h", "abc", "2 s", "", "10 ms"]
    conn = pg_db.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for value in values:
                try:
                    cur.execute("select set_config('lock_timeout', %s, false)", (value,))
                    accepted = True
                except Exception:
                    accepted = False
                assert (duration_ms(value) is not None) == accepted, value
    finally:
        conn.close()


def test_input_errors_name_the_variable_and_the_form() -> None:
    errors = input_errors({"capital_db_port": "37x69", "capital_lock_timeout": "2sec", "capital_batch_size": 0,
                           "capital_backup_dir": "relative/dir", "capital_env": "prod; rm"})
    assert [e.split(":", 1)[0] for e in errors] == ["capital_db_port", "capital_env", "capital_backup_dir",
                                                    "capital_lock_timeout", "capital_batch_size"]
    assert "1-65535" in errors[0] and "2s" in errors[3]
    assert input_errors({}, "postgresql://u:pa/ss@h/db") and not input_errors({}, "postgresql://u:pa?ss@h/db")


def test_a_plain_dump_is_read_like_psql_reads_it() -> None:
    dump = ("\\restrict Abc123\nSET standard_conforming_strings = on;\n"
            "COPY public.\"Junta\" (id, note) FROM stdin;\n1\t\\N\n2\ta\\\\b \\! not run\n\\.\n"
            "select E'a\\'; \\! in a string'; select $f$ \\! quoted $f$; /* /* \\! */ nested */ select 1;\n"
            "\\connect -reuse-previous=on \"dbname='prestamos'\"\n\\unrestrict Abc123\n")
    assert plain_dump_meta_commands(dump) == []
    assert plain_dump_meta_commands("select 1; \\! id\n") == [(1, "\\!")]
    assert plain_dump_meta_commands("COPY t FROM stdin; \\! id\n1\n\\.\n")[0] == (1, "\\!")
    assert plain_dump_meta_commands("\\connect \"host=elsewhere dbname=x\"\n\\o |cat\n") == [
        (1, "\\connect"), (2, "\\o")]


# ------------------------------------------------------------- the run-wide variables, walked (one run)

# Every documented variable: the run-wide spec (roles/run) and every role's own, stage-only variables included (a stage
# role checks its spec only when it starts, after the stages before it have run).
SPECS = [
    *(yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
      ["argument_specs"]["main"].get("options", {})
      for role in ("run", "connection", "preflight", "backup", "migrate", "verify", "rollback")),
]
# Taken literally (libpq receives them as parameters, never through a shell; a reason is recorded as text);
# refused with a control character.
FREE_TEXT = {"capital_db_host", "capital_db_user", "capital_db_name", "capital_rollback_restore_from_database",
             "capital_rollback_reason", "capital_change_ticket", "capital_approved_by"}
# Mappings by design (the notice's headers).
DICT_VALUED = {"capital_notify_headers"}
# Play-level or secret: not a per-host value (the password is walked by the hostile-URL tests below).
NOT_WALKED = {"capital_target_hosts", "capital_db_password"}
EMPTY_MEANS_UNSET = {"capital_db_host", "capital_db_user", "capital_db_name", "capital_db_port", "capital_db_sslmode",
                     "capital_migration_sql_sha256", "capital_rollback_backup_file",
                     "capital_rollback_restore_from_database", "capital_rollback_reason", "capital_notify_url",
                     "capital_change_ticket", "capital_approved_by",
                     "capital_pg_bin_dir"}


def _wrong_values(marker: Path) -> list[Any]:
    return ["", "-1", "99999999999999999999999", "'quoted'", "a;b", f"$(touch {marker})", "two\nlines",
            "\u00f1and\u00fa", [1, 2], {"a": 1}]


def _walk_cases(marker: Path) -> list[tuple[str, Any, bool]]:
    """(variable, value, refused?) for every documented variable of every stage and every wrong value."""
    cases: list[tuple[str, Any, bool]] = []
    names = sorted({name for spec in SPECS for name in spec} - NOT_WALKED)
    for name in names:
        for value in _wrong_values(marker):
            if value == "":
                refused = name not in EMPTY_MEANS_UNSET
            elif name in FREE_TEXT:
                refused = not isinstance(value, str) or "\n" in value
            elif name in DICT_VALUED:  # a mapping is what they take; its entries are sent as they are
                refused = not isinstance(value, dict)
            elif name == "capital_serial":  # wave sizes: [1, 2] is one database, then two at a time
                refused = value != [1, 2]
            elif name == "capital_env":  # becomes part of file names: letters, digits, . - _
                refused = not (isinstance(value, str) and value.isascii() and value.isalnum())
            else:
                refused = True
            cases.append((name, value, refused))
    return cases


def test_every_documented_variable_with_wrong_values_is_refused_before_anything(tmp_path: Path) -> None:
    marker = tmp_path / "shell-ran"
    cases = _walk_cases(marker)
    hosts = {"good": {"ansible_connection": "local"}}
    for index, (name, value, _refused) in enumerate(cases):
        hosts[f"case{index}"] = {"ansible_connection": "local", name: value}
    inventory = tmp_path / "inventory" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    env = {**base_env(), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_FORKS": "25",
           "CAPITAL_REPORT_DIR": str(tmp_path / "reports"), "PGDATABASE": "not_contacted"}
    done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), "preflight.yml", "--tags", "always"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    refusals: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if line.startswith("fatal: [") and "]: FAILED! => " in line:
            host, result = line[len("fatal: ["):].split("]: FAILED! => ", 1)
            refusals[host] = json.loads(result).get("msg", "")
    assert "good" not in refusals, refusals.get("good")
    wrong = []
    for index, (name, value, refused) in enumerate(cases):
        message = refusals.get(f"case{index}")
        if refused and (message is None or name not in message or "Refused before anything ran" not in message):
            wrong.append(f"{name}={value!r} not refused as expected: {message!r}")
        if not refused and message is not None:
            wrong.append(f"{name}={value!r} refused, but it is taken literally: {message!r}")
    assert not wrong, "\n".join(wrong)
    assert len(refusals) == sum(1 for case in cases if case[2])
    assert not marker.exists()
    assert not any(Path(str(value)).exists() for _, value, _ in cases if isinstance(value, str) and value)


# --------------------------------------------------------------------------- end to end, real database


def _playbook(playbook: str, env: dict[str, str], tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [ANSIBLE_PLAYBOOK, "-i", "inventories/local", playbook, "-e", f"capital_backup_dir={tmp_path / 'backups'}",
            "-e", f"capital_report_dir={tmp_path / 'reports'}", *extra]
    run_env = {**env, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(argv, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600, check=False)


def _hostile_role(pg_db: Any, password: str) -> str:
    from psycopg2 import sql

    role = "hostile_" + pg_db.name
    conn = pg_db.connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("create role {} login superuser password {}").format(sql.Identifier(role),
                                                                                    sql.Literal(password)))
    finally:
        conn.close()
    return role


def _everything_written(tmp_path: Path) -> str:
    texts = []
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(texts)


def test_a_url_password_with_an_unencoded_slash_is_refused_without_a_fragment(pg_db: Any, tmp_path: Path) -> None:
    password = HOSTILE[0]
    shape = fingerprint(pg_db)
    url = f"postgresql://hostile:{password}@127.0.0.1:{pg_db.cluster.port}/{pg_db.name}"
    env = {k: v for k, v in pg_db.env.items() if not k.startswith("PG")} | {"DATABASE_URL": url}
    done = _playbook("migrate.yml", env, tmp_path)
    assert done.returncode != 0
    assert "an unencoded / in the password" in done.stdout
    assert not _leaks(done.stdout + done.stderr + _everything_written(tmp_path), password)
    report = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    assert report["data"]["run"]["bad_input"] is True
    assert not (tmp_path / "backups").exists()
    assert fingerprint(pg_db) == shape
    # The CLI says the same, exits 2, and --json holds no fragment either.
    cli = run_cli(["migrate", "--json", "--report-dir", str(tmp_path / "cli-reports")], base_env({"DATABASE_URL": url}))
    assert cli.code == ExitCode.BAD_ARGUMENTS, cli.stderr
    assert "unencoded /" in cli.json()["error"]
    assert not _leaks(cli.stdout + cli.stderr, password)


def test_the_roles_honour_the_urls_query_and_hostile_passwords(pg_db: Any, tmp_path: Path) -> None:
    """`?host=&port=&password=`, a socket directory and a password with # ? : { % ' " and unicode, unencoded
    where libpq allows it: preflight connects with each, and no piece of the password is in any output."""
    password = "Hash#Ques?Colon:Brace{{ x }}Pct%{% y %}Quo'te\"\u00f1and\u00fa"
    seed_db(pg_db, juntas=1)
    role = _hostile_role(pg_db, password)
    port = pg_db.cluster.port
    encoded = quote(password, safe="")
    urls = [
        f"postgresql:///{pg_db.name}?host=127.0.0.1&port={port}&user={role}&password={encoded}",
        f"postgresql://{role}:{password.replace('%', '%25')}@{quote(str(pg_db.cluster.socket_dir), safe='')}:{port}"
        f"/{pg_db.name}",
    ]
    for index, url in enumerate(urls):
        env = {k: v for k, v in pg_db.env.items() if not k.startswith("PG")} | {"DATABASE_URL": url}
        done = _playbook("preflight.yml", env, tmp_path / str(index))
        assert done.returncode == 0, done.stdout[-3000:]
        assert not _leaks(done.stdout + done.stderr + _everything_written(tmp_path / str(index)), password)


def test_a_port_that_is_not_a_number_is_refused_before_anything(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    done = _playbook("migrate.yml", pg_db.env, tmp_path, "-e", "capital_db_port=37x69")
    assert done.returncode != 0
    assert "capital_db_port: expected a port number 1-65535" in done.stdout
    assert not (tmp_path / "backups").exists()
    assert fingerprint(pg_db) == shape


@pytest.mark.parametrize("variable", ["capital_lock_timeout=2sec", "capital_db_port=0", "capital_batch_size=-5",
                                      # stage-only variables, checked up front with their roles' specs
                                      "capital_backup_format=tar", "capital_rollback_mode=undo",
                                      "capital_verify_method=perl"])
def test_the_cli_exits_2_on_a_bad_variable_and_writes_nothing(pg_db: Any, tmp_path: Path, variable: str) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    done = run_cli(["migrate", "--json", "--report-dir", str(tmp_path / "reports"), "-e", variable,
                    "-e", f"capital_backup_dir={tmp_path / 'backups'}"], base_env(pg_db.env))
    assert done.code == ExitCode.BAD_ARGUMENTS, done.stdout[-2000:] + done.stderr[-2000:]
    doc = done.json()  # refused by the CLI itself (-e capital_db_port) or by the playbook's gate
    assert variable.split("=")[0] in str(doc.get("error") or doc.get("cause"))
    assert not (tmp_path / "backups").exists()
    assert fingerprint(pg_db) == shape


def test_the_cli_resolves_the_target_like_the_playbooks(pg_db: Any, tmp_path: Path) -> None:
    """Inventory capital_db_* win over DATABASE_URL and PG* (docs/design.md, Connection) in the CLI too."""
    inventory = tmp_path / "inv"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text((ROOT / "inventories" / "local" / "hosts.yml").read_text())
    (inventory / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump({
        "capital_env": "staging", "capital_db_name": pg_db.name, "capital_db_port": pg_db.cluster.port}))
    env = base_env({**pg_db.env, "PGDATABASE": "some_other_database", "PGPORT": "1"})
    done = run_cli(["status", "-i", str(inventory), "--json", "--report-dir", str(tmp_path / "r")], env)
    assert done.code == 0, done.stderr
    assert done.json()["status"]["database"].endswith(f":{pg_db.cluster.port}/{pg_db.name}")


def test_rehearse_refuses_a_plain_dump_that_runs_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-the-dump"
    dump = tmp_path / "evil.sql"
    dump.write_text(f"SET client_encoding = 'UTF8';\n\\! touch {marker}\nCREATE TABLE t (id int);\n")
    done = run_cli(["rehearse", "--from-dump", str(dump), "--report-dir", str(tmp_path / "r")], base_env())
    assert done.code == ExitCode.BAD_ARGUMENTS
    assert "line 2: \\!" in done.stderr
    assert not marker.exists()


def test_an_unwritable_report_directory_is_refused_before_anything(pg_db: Any, tmp_path: Path) -> None:
    seed_db(pg_db, juntas=1)
    shape = fingerprint(pg_db)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    reports = blocker / "reports"
    done = run_cli(["migrate", "--report-dir", str(reports), "-e", f"capital_backup_dir={tmp_path / 'backups'}"],
                   base_env(pg_db.env))
    assert done.code == ExitCode.BAD_ARGUMENTS
    assert str(reports) in done.stderr
    played = _playbook("migrate.yml", pg_db.env, tmp_path, "-e", f"capital_report_dir={reports}")
    assert played.returncode != 0
    assert f"report directory {reports}" in played.stdout
    assert not (tmp_path / "backups").exists()
    assert fingerprint(pg_db) == shape
