"""`capital-migrate`: the operator's front door to the capital-tracking migration playbooks.

`main(argv) -> int` parses, dispatches to one function per subcommand and turns an OperatorError into
its message and exit code; every other exception is a bug and exits 1 with the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from capital_migrate import __version__
from capital_migrate.commands.rehearse import run_rehearse
from capital_migrate.commands.report_cmd import run_report
from capital_migrate.commands.stages import run_stage_command
from capital_migrate.commands.status import run_status
from capital_migrate.errors import OperatorError
from capital_migrate.exitcodes import DESCRIPTIONS, ExitCode, table
from capital_migrate.report import redact_text

Handler = Callable[[argparse.Namespace], int]

EPILOG = f"""\
exit codes:
{table()}

secrets: no option takes a password. The connection comes from --database-url (prompted, not echoed),
--database-url-env VAR, DATABASE_URL, or the libpq environment (PGHOST, PGUSER, PGPASSFILE, ...);
the password reaches the tools through a 0600 pgpass file, never argv or ansible-runner's files.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises OperatorError (exit 2) instead of exiting, so --json can report it too."""

    def error(self, message: str) -> NoReturn:
        raise OperatorError(f"{self.prog}: {message} (see {self.prog} --help)", ExitCode.BAD_ARGUMENTS)


def _common(parser: argparse.ArgumentParser, db: bool = True, run: bool = True) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-i", "--inventory", metavar="PATH", help="inventory directory (default: inventories/local)")
    where.add_argument("--env", choices=("local", "dev", "staging", "production"),
                       help="use inventories/ENV")
    if db:
        url = parser.add_mutually_exclusive_group()
        url.add_argument("--database-url", action="store_true",
                         help="prompt for the database URL (not echoed); the URL is never an argument")
        url.add_argument("--database-url-env", metavar="VAR",
                         help="read the database URL from environment variable VAR")
    if run:
        parser.add_argument("-e", "--extra-vars", action="append", metavar="KEY=VALUE|@FILE",
                            help="extra variable for the playbook (repeatable); secrets are refused")
        parser.add_argument("--vault-password-file", metavar="FILE",
                            help="ansible-vault password file for the inventory's vault.yml")
        parser.add_argument("--keep-artifacts", action="store_true",
                            help="keep ansible-runner's private data dir (scrubbed of env and command files)")
        parser.add_argument("--confirm-production", action="store_true",
                            help="confirm a run on an environment that requires it (production)")
    parser.add_argument("--report-dir", metavar="DIR", help="where run reports are written/read "
                        "(default: the inventory's capital_report_dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout "
                        "(schema: python/capital_migrate/schemas/output.schema.json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no live view (for CI); summary only")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; `--help` of the top level prints the exit-code table."""
    parser = _Parser(
        prog="capital-migrate",
        description="Run the prestamos capital-tracking PostgreSQL migration safely, through Ansible.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    helps = {
        "preflight": "read-only checks; changes nothing (exit 3 when a check fails)",
        "plan": "what the migration would do (objects, rows, batches), without doing it",
        "backup": "take and verify a backup (pg_dump -Fc, sha256 manifest)",
        "migrate": "preflight -> backup -> migrate -> verify; rolls back by itself on failure",
        "verify": "reconcile the migrated database against the legacy tables",
        "rollback": "reverse the migration (keeps every legacy row), or restore the backup",
    }
    commands: dict[str, Handler] = {}
    for name, text in helps.items():
        cmd = sub.add_parser(name, help=text, description=text, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(cmd)
        if name == "migrate":
            cmd.add_argument("--serial", metavar="SIZES",
                             help="waves over a fleet (one inventory host per database): sizes separated by "
                             "commas, numbers or percentages (default 1,25%%,100%%: one canary, then a quarter, "
                             "then the rest)")
            cmd.add_argument("--max-fail-percentage", metavar="PCT", type=int,
                             help="percentage of a wave's databases that may fail before the later waves are "
                             "stopped (default 0)")
        if name == "rollback":
            cmd.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                             help="list every object the reverse migration would drop and every row count it "
                             "would export and discard; change nothing (ansible-playbook --check)")
        commands[name] = run_stage_command

    status = sub.add_parser("status", help="applied / partial / not_applied / drifted, and the last run",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(status, run=False)
    commands["status"] = run_status

    rehearse = sub.add_parser(
        "rehearse",
        help="the full migration on a throwaway PostgreSQL with generated data or a dump (make demo)",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(rehearse, db=False)
    rehearse.add_argument("--juntas", type=int, default=40, help="juntas to generate (default 40)")
    rehearse.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    rehearse.add_argument("--dirty", action="store_true", help="generate the dirty data of real databases")
    rehearse.add_argument("--from-dump", metavar="FILE",
                          help="restore this dump instead (pg_dump -Fc/-Fd/-Ft via pg_restore, plain via psql)")
    commands["rehearse"] = run_rehearse

    report = sub.add_parser("report", help="render a past run's report", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(report, db=False, run=False)
    report.add_argument("run", nargs="?", default="latest",
                        help="report JSON path, run id, or 'latest' (default)")
    report.add_argument("--format", choices=("text", "markdown"), default="text")
    commands["report"] = run_report

    parser.set_defaults(_commands=commands)
    return parser


def _error_document(argv: Sequence[str], error: OperatorError) -> dict[str, object]:
    command = next((a for a in argv if not a.startswith("-")), None)
    return {
        "format": "capital-migrate-output/1",
        "command": command,
        "exit_code": int(error.exit_code),
        "exit_meaning": DESCRIPTIONS[error.exit_code],
        "outcome": None,
        "error": error.message,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (see `capital-migrate --help`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in args_list
    try:
        args = build_parser().parse_args(args_list)
        handler: Handler = args._commands[args.command]
        return handler(args)
    except OperatorError as error:
        # A URL typed on the command line by mistake must not be echoed back with its password.
        error.message = redact_text(error.message, [])
        if want_json:
            sys.stdout.write(json.dumps(_error_document(args_list, error), indent=2, sort_keys=True) + "\n")
        print(f"capital-migrate: error: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    except KeyboardInterrupt:
        print("capital-migrate: interrupted", file=sys.stderr)
        return int(ExitCode.FAILURE)


if __name__ == "__main__":
    sys.exit(main())
