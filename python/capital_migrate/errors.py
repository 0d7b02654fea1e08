"""The one exception type for operator errors: a message to print and the exit code to leave with."""

from __future__ import annotations

from capital_migrate.exitcodes import ExitCode


class OperatorError(Exception):
    """Something the operator must fix (bad argument, missing file, refused run).

    `cli.main` prints `message` (no traceback) and exits with `exit_code`; raising it anywhere below
    the CLI is how a command refuses cleanly before it changes anything.
    """

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.BAD_ARGUMENTS) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
