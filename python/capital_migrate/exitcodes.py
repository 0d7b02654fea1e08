"""Exit codes of `capital-migrate`: one number per thing an operator (or CI) must react to differently."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the process exit status means; docs/cli.md and `--help` print this table."""

    SUCCESS = 0
    FAILURE = 1
    BAD_ARGUMENTS = 2
    PREFLIGHT_REFUSED = 3
    ROLLED_BACK = 4
    ROLLBACK_FAILED = 5
    DRIFT = 6
    LOCK_HELD = 7


DESCRIPTIONS: dict[ExitCode, str] = {
    ExitCode.SUCCESS: "success",
    ExitCode.FAILURE: "other failure (see the message and the run report)",
    ExitCode.BAD_ARGUMENTS: "bad arguments or configuration; nothing was run",
    ExitCode.PREFLIGHT_REFUSED: "preflight refused; the database was not changed",
    ExitCode.ROLLED_BACK: "migration failed and was rolled back; the database is as before",
    ExitCode.ROLLBACK_FAILED: "rollback failed: the database needs a human now",
    ExitCode.DRIFT: "drift: the applied migration differs from the SQL in this checkout",
    ExitCode.LOCK_HELD: "another run holds the migration lock; nothing was changed",
}

# The playbooks' `capital_report.run.outcome` (set_stats) -> exit code.
OUTCOME_CODES: dict[str, ExitCode] = {
    "success": ExitCode.SUCCESS,
    "rolled_back": ExitCode.ROLLED_BACK,
    "rollback_failed": ExitCode.ROLLBACK_FAILED,
    "preflight_refused": ExitCode.PREFLIGHT_REFUSED,
    "drift": ExitCode.DRIFT,
    "lock_held": ExitCode.LOCK_HELD,
    "failed": ExitCode.FAILURE,
}


def table() -> str:
    """The exit-code table as plain text, for `--help` epilogs."""
    return "\n".join(f"  {int(code)}  {DESCRIPTIONS[code]}" for code in ExitCode)
