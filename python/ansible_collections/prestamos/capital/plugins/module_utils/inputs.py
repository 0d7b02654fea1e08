"""The rules argument specs cannot express, checked once for the whole run before anything connects.

The stage roles' argument specs say each variable's type and choices, but Ansible checks a role's spec
only when that role starts: a `capital_lock_timeout: 2sec` passed preflight and the backup and failed in the
migrate stage, then again in the automatic rollback (issue 17). `input_errors` checks every run-wide
variable an operator can set - ports, ranges, PostgreSQL durations, absolute paths, names that become
file names, the DATABASE_URL - and returns one message per problem, naming the variable and the expected
form. It never repeats a value of `capital_db_password` or of the URL after its user name.

Plain typed Python (no Ansible imports), used by the filter `prestamos.capital.capital_input_errors`
(roles/connection/tasks/validate.yml) and unit-tested without Ansible.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.dburl import DatabaseUrlError, resolve

# PostgreSQL's time units for a setting measured in milliseconds (guc.c, time_unit_conversion_table):
# case-sensitive, optional whitespace between number and unit, no unit means milliseconds, at most INT_MAX ms.
_DURATION_RE = re.compile(r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(us|ms|s|min|h|d)?\s*")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_INT_MAX = 2_147_483_647
# Becomes part of backup and report file names: letters, digits, dot, dash and underscore only.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# PostgreSQL's memory units (guc.c, memory_unit_conversion_table): case-sensitive; no unit means kB for work_mem.
_MEMORY_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(B|kB|MB|GB|TB)?\s*")
_UNIT_KB = {"B": 1 / 1024, "kB": 1.0, "MB": 1024.0, "GB": 1024.0**2, "TB": 1024.0**3}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# A program to run: an absolute path, or a bare name looked up on PATH (never an option, never shell text).
_PROGRAM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]{0,254}")
DURATION_FORM = "a PostgreSQL duration such as 500ms, 2s, 1min or 1h (units us, ms, s, min, h, d)"


def duration_ms(value: Any) -> float | None:
    """Milliseconds of a PostgreSQL time setting (`lock_timeout = '2s'`), or None if PostgreSQL refuses it."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    match = _DURATION_RE.fullmatch(str(value))
    if not match:
        return None
    result = float(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]
    return result if round(result) <= _INT_MAX else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip() if isinstance(value, str) else ""
    return int(text) if re.fullmatch(r"[+-]?\d{1,18}", text) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Rule:
    """One check: `problem(value)` is None when fine, else the expected form to name in the message."""

    problem: Callable[[Any], str | None]


def integer(minimum: int, maximum: int = _INT_MAX) -> Rule:
    def check(value: Any) -> str | None:
        number = _as_int(value)
        return None if number is not None and minimum <= number <= maximum else f"a whole number {minimum}-{maximum}"

    return Rule(check)


def real(minimum: float, maximum: float = 1e9) -> Rule:
    def check(value: Any) -> str | None:
        number = _as_float(value)
        return None if number is not None and minimum <= number <= maximum else f"a number {minimum:g}-{maximum:g}"

    return Rule(check)


def duration(minimum_ms: float) -> Rule:
    def check(value: Any) -> str | None:
        ms = duration_ms(value)
        if ms is not None and ms >= minimum_ms:
            return None
        return DURATION_FORM + (", more than 0" if minimum_ms > 0 else "")

    return Rule(check)


def memory_kb(value: Any) -> float | None:
    """Kilobytes of a PostgreSQL memory setting (`work_mem = '64MB'`), or None if PostgreSQL refuses its form."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    match = _MEMORY_RE.fullmatch(str(value))
    return float(match.group(1)) * _UNIT_KB[match.group(2) or "kB"] if match else None


def memory(minimum_kb: int, maximum_kb: int = _INT_MAX) -> Rule:
    def check(value: Any) -> str | None:
        kb = memory_kb(value)
        if kb is not None and minimum_kb <= kb <= maximum_kb:
            return None
        return f"a PostgreSQL memory size such as 64MB or 1GB (units B, kB, MB, GB, TB), {minimum_kb}kB or more"

    return Rule(check)


def _optional(rule: Callable[[Any], str | None]) -> Rule:
    """The rule, or empty for "not set"."""
    def check(value: Any) -> str | None:
        expected = None if value is None or value == "" else rule(value)
        return None if expected is None else expected + " (or empty)"

    return Rule(check)


def _sha256(value: Any) -> str | None:
    return None if isinstance(value, str) and _SHA256_RE.fullmatch(value) else "a sha256 of 64 lower-case hex digits"


def _program(value: Any) -> str | None:
    if isinstance(value, str) and (_absolute_path(value) is None or _PROGRAM_RE.fullmatch(value)):
        return None
    return "a program: an absolute path, or a name on PATH starting with a letter (letters, digits, '.', '_', '+', '-')"


def _version(value: Any) -> str | None:
    return None if isinstance(value, str | int) and re.fullmatch(r"[1-9]\d{0,5}", str(value)) \
        else "a migration version, a whole number such as 1"


def http_url(value: Any) -> str | None:
    """None for an http(s) URL with a host (and a numeric port, if any), else the expected form."""
    if isinstance(value, str) and value and not _control(value):
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            return "an http:// or https:// URL with a numeric port"
        if parts.scheme in ("http", "https") and parts.hostname:
            return None
    return "an http:// or https:// URL"


def _absolute_path(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith("/") and not _control(value):
        return None
    return "an absolute path (starting with /) without control characters"


def _optional_port(value: Any) -> str | None:
    if value is None or value == "":
        return None
    number = _as_int(value)
    return None if number is not None and 1 <= number <= 65535 else "a port number 1-65535 (or empty)"


def _name(value: Any) -> str | None:
    if isinstance(value, str) and _NAME_RE.fullmatch(value):
        return None
    return "a name of letters, digits, '.', '-' and '_' (at most 63, starting with a letter or digit)"


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool) and not _control(str(value))):
        return None
    return "text without control characters (or empty)"


def _wave_size(item: Any) -> bool:
    """One wave's size as Ansible's serial takes it: a number of hosts (1 or more) or a percentage 1-100%."""
    if isinstance(item, str) and item.strip().endswith("%"):
        number = _as_int(item.strip()[:-1])
        return number is not None and 1 <= number <= 100
    number = _as_int(item)
    return number is not None and number >= 1


def _waves(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if items and all(_wave_size(item) for item in items):
        return None
    return ("wave sizes: a number of databases (1 or more) or a percentage such as 25%, or a list of them "
            "such as [1, \"25%\", \"100%\"] (the last size repeats until every database ran)")


def _control(text: str) -> bool:
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


RULES: dict[str, Rule] = {
    "capital_db_host": Rule(_text),
    "capital_db_port": Rule(_optional_port),
    "capital_db_user": Rule(_text),
    "capital_db_name": Rule(_text),
    "capital_env": Rule(_name),
    "capital_backup_dir": Rule(_absolute_path),
    "capital_report_dir": Rule(_absolute_path),
    "capital_sql_dir": Rule(_absolute_path),
    "capital_pg_bin_dir": _optional(_absolute_path),
    "capital_lock_timeout": duration(1),
    "capital_restore_lock_timeout": duration(1),
    "capital_verify_lock_timeout": duration(1),
    "capital_batch_statement_timeout": duration(0),
    "capital_lock_retries": integer(0, 1000),
    "capital_lock_backoff": real(0, 3600),
    "capital_lock_backoff_max": real(0, 3600),
    "capital_batch_size": integer(1, 10_000_000),
    "capital_backup_jobs": integer(1, 64),
    "capital_backup_compress": integer(0, 9),
    "capital_backup_keep": integer(1, 10_000),
    "capital_backup_lock_wait_timeout": integer(1, 86_400),
    "capital_backup_space_factor": real(0, 100),
    "capital_max_xact_age": integer(0, 86_400 * 365),
    "capital_verify_max_discrepancies": integer(0, 1_000_000),
    "capital_verify_connections": integer(1, 16),
    "capital_preflight_guide_query_max_rows": integer(0, 10**15),
    # Read by one stage only (its role checks the type when it starts; these are checked before anything).
    "capital_backup_free_bytes_override": integer(0, 2**62),
    "capital_preflight_work_mem": memory(64),
    "capital_preflight_connections": integer(1, 16),
    "capital_backfill_connections": integer(1, 16),
    "capital_connections_while_live": integer(0, 16),
    "capital_migration_sql_sha256": _optional(_sha256),
    "capital_migration_version": Rule(_version),
    "capital_verify_sql_file": Rule(_absolute_path),
    "capital_verify_psql": Rule(_program),
    "capital_rollback_backup_file": _optional(_absolute_path),
    "capital_rollback_restore_from_database": Rule(_text),
    "capital_rollback_reason": Rule(_text),
    "capital_notify_url": _optional(http_url),
    "capital_change_ticket": Rule(_text),
    "capital_approved_by": Rule(_text),
    "capital_serial": Rule(_waves),
    "capital_max_fail_percentage": integer(0, 100),
}
# Play keywords of migrate.yml (its waves): Ansible templates them before it reads any host variable, so only
# extra variables reach them; the same names in an inventory would be ignored without a word.
WAVE_DEFAULTS: dict[str, Any] = {"capital_serial": [1, "25%", "100%"], "capital_max_fail_percentage": 0}
_CONNECTION = ("capital_db_host", "capital_db_port", "capital_db_user", "capital_db_name", "capital_db_sslmode")


def input_errors(values: Mapping[str, Any], database_url: str = "",
                 environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per variable that breaks its rule, then the connection's (DATABASE_URL, PGPORT...)."""
    errors: list[str] = []
    for name, rule in RULES.items():
        if name not in values or values[name] is None:
            continue
        expected = rule.problem(values[name])
        if expected is not None:
            errors.append(f"{name}: expected {expected}; got {_show(values[name])}")
    if not any(e.split(":", 1)[0] in _CONNECTION for e in errors):
        # The password is left out: it cannot be wrong in form, and must not reach any message.
        try:
            resolve({k: values.get(k) for k in _CONNECTION}, database_url or None, environ or {})
        except DatabaseUrlError as exc:
            errors.append(str(exc))
    return errors


def wave_keyword_errors(values: Mapping[str, Any], extra_var_names: frozenset[str] | None) -> list[str]:
    """A wave setting that reached the host's variables other than as an extra variable: refused, because the
    play ran with the default instead (WAVE_DEFAULTS). ``extra_var_names`` None means unknown: nothing refused."""
    if extra_var_names is None:
        return []
    errors = []
    for name, default in WAVE_DEFAULTS.items():
        if name in values and name not in extra_var_names and values[name] != default:
            errors.append(
                f"{name} is set in the inventory ({_show(values[name])}), where Ansible cannot see it: it splits "
                f"the play into waves before it reads host variables, so this run would use {default!r}. Pass it "
                f"as an extra variable (-e, capital-migrate --serial/--max-fail-percentage, an AWX job template's "
                f"extra_vars) and remove it from the inventory")
    return errors


def _show(value: Any) -> str:
    """A value for a message: short, one line, its type when it is not text."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}" if not isinstance(value, int | float) or isinstance(value, bool) \
            else repr(value)
    text = value if len(value) <= 60 else value[:57] + "..."
    return repr(text)


def report_dir_problem(path: str) -> str | None:
    """Why reports cannot be written under `path` (None when they can): checked before the run starts."""
    if not path:
        return None
    target = os.path.abspath(os.path.expanduser(path))
    probe = target
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"report directory {target}: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == target else f"cannot be created ({probe} is not writable)"
        return f"report directory {target} {what} by this user"
    return None
