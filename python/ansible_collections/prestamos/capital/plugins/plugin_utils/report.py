"""The run report: redaction and rendering, shared by the callback and the CLI.

Plain Python (no Ansible imports) so the callback `prestamos.capital.capital_report` and
`capital-migrate report` render the same report the same way; the CLI imports it by its collection name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote

REPORT_FORMAT = "capital-report/1"
REDACTED = "********"
# Any value under a key like these is a secret, whatever it holds.
SECRET_KEY_RE = re.compile(r"pass(word|wd)|secret|pgpassword", re.IGNORECASE)
# postgres://user:secret@host -> postgres://user:********@host, for URLs nobody told us about (a password
# may hold an unencoded / # ?: libpq reads up to the '@').
URL_PASSWORD_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)([^@\s]+)(@)", re.IGNORECASE)
STAGE_RE = re.compile(r"^(?:[\w.]+ : )?([a-z][a-z0-9_]*) \| (.+)$", re.DOTALL)
STAGE_ORDER = ("preflight", "plan", "backup", "migrate", "verify", "rollback")


def _mapping(value: object) -> Mapping[str, Any]:
    """The value when it is a mapping (report data is whatever the roles handed over), else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    """The value when it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def stage_of_role(role: str | None) -> str | None:
    """The stage a task belongs to: the name of its role when that role is a stage (roles/<stage>), else None.

    The run protocol (roles/run), the connection role and the plays' own tasks are not stages. Callers take the
    role from the event (a callback's task._role.get_name(), ansible-runner's event_data['role']), never from the
    task's name: names may carry a stage prefix for readability, nothing reads it.
    """
    return role if role in STAGE_ORDER else None


def stage_of(task_name: str) -> tuple[str, str] | None:
    """Split `backup | Dump the database` into ("backup", "Dump the database"); None if unprefixed (display only)."""
    match = STAGE_RE.match(task_name.strip())
    if not match:
        return None
    return match.group(1), match.group(2)


def url_password(url: str) -> str | None:
    """The password inside a libpq URL, if any (percent-decoded, as libpq would use it).

    Read with the one URL parser (module_utils/dburl.py); a URL it refuses (an unencoded / or @ in the
    password) still has its likely password redacted: everything between the user's ':' and the last '@'.
    """
    from ansible_collections.prestamos.capital.plugins.module_utils.dburl import (
        DatabaseUrlError,
        parse_database_url,
    )

    with contextlib.suppress(DatabaseUrlError):
        found = parse_database_url(url).password
        if found:
            return found
    credentials = url.split("://", 1)[-1].rpartition("@")[0]
    _user, colon, password = credentials.partition(":")
    return unquote(password) if colon and password else None


def pgpass_passwords(path: str) -> list[str]:
    """Passwords in a pgpass file (the last field of each line, with libpq's escapes undone)."""
    found: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields: list[str] = []
        current = ""
        escaped = False
        for char in line:
            if escaped:
                current += char
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == ":" and len(fields) < 4:
                fields.append(current)
                current = ""
            else:
                current += char
        if len(fields) == 4 and current:
            found.append(current)
    return found


def secret_literals(environ: Mapping[str, str], extra: Iterable[str | None] = ()) -> list[str]:
    """Every secret value we can know of: PGPASSWORD, DATABASE_URL's password, PGPASSFILE's, extras."""
    values: list[str | None] = [environ.get("PGPASSWORD"), *extra]
    if environ.get("DATABASE_URL"):
        values.append(url_password(environ["DATABASE_URL"]))
    if environ.get("PGPASSFILE"):
        values.extend(pgpass_passwords(environ["PGPASSFILE"]))
    # Longest first, so a password that contains another is replaced whole.
    return sorted({v for v in values if isinstance(v, str) and v}, key=len, reverse=True)


def redact_text(text: str, literals: Iterable[str]) -> str:
    """Replace known secret values and URL passwords inside free text."""
    for literal in literals:
        text = text.replace(literal, REDACTED)
    return URL_PASSWORD_RE.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


def redact(value: Any, literals: Iterable[str]) -> Any:
    """A deep copy of `value` with secret-named keys masked and secret literals replaced everywhere."""
    literal_list = list(literals)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            skey = redact_text(str(key), literal_list)
            if SECRET_KEY_RE.search(str(key)) and item not in (None, "", False):
                out[skey] = REDACTED
            else:
                out[skey] = redact(item, literal_list)
        return out
    if isinstance(value, list | tuple):
        return [redact(item, literal_list) for item in value]
    if isinstance(value, str):
        return redact_text(value, literal_list)
    return value


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `extra` into `base` recursively (dicts merge, anything else is replaced)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = json.loads(json.dumps(value, default=str)) if isinstance(value, Mapping) else value
    return base


def write_private(path: str, text: str) -> None:
    """Write a file that only its owner can read, created 0600 (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------- rendering helpers


def _fmt_duration(seconds: Any) -> str:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _money(value: Any) -> str:
    """Exact money as text with thousands separators; never through float."""
    dec = _decimal(value)
    return "-" if dec is None else f"{dec:,.2f}"


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, default=str, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _header in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def checks(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Preflight checks as a list of {name, status, value, detail}, whichever shape the role used."""
    raw = (report.get("data") or {}).get("preflight", {}).get("checks")
    out: list[dict[str, Any]] = []
    if isinstance(raw, Mapping):
        for name, item in raw.items():
            if isinstance(item, Mapping):
                out.append({"name": name, **item})
            else:
                out.append({"name": name, "status": item})
    elif isinstance(raw, list):
        out = [dict(item) for item in raw if isinstance(item, Mapping)]
    for item in out:
        item.setdefault("status", item.get("result", ""))
        item.setdefault("detail", item.get("msg") or item.get("message") or "")
    return out


def capital_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-junta capital before/after as [{junta_id, name, before, after}], from the verify stage data."""
    data = report.get("data") or {}
    verify = data.get("verify") or {}
    raw = verify.get("capital")
    rows: dict[str, dict[str, Any]] = {}

    def absorb(source: Any, field: str) -> None:
        if isinstance(source, Mapping):
            for junta, value in source.items():
                entry = rows.setdefault(str(junta), {"junta_id": str(junta)})
                if isinstance(value, Mapping):
                    entry.update({k: v for k, v in value.items() if k != "junta_id"})
                else:
                    entry[field] = value
        elif isinstance(source, list):
            for item in source:
                if isinstance(item, Mapping) and "junta_id" in item:
                    entry = rows.setdefault(str(item["junta_id"]), {"junta_id": str(item["junta_id"])})
                    for key, value in item.items():
                        if key in ("before", "after", "name"):
                            entry[key] = value
                        elif key not in ("junta_id",):
                            entry.setdefault(field if key in ("capital", "amount", "total") else key, value)

    if isinstance(raw, list | Mapping):
        absorb(raw, "after")
    absorb(verify.get("capital_before") or (data.get("preflight") or {}).get("capital_before"), "before")
    absorb(verify.get("capital_after"), "after")
    return sorted(rows.values(), key=lambda r: (str(r.get("name") or ""), r["junta_id"]))


def _rows_backfilled(report: Mapping[str, Any]) -> tuple[int | None, dict[str, Any]]:
    migrate = (report.get("data") or {}).get("migrate") or {}
    raw = migrate.get("rows_backfilled")
    if isinstance(raw, Mapping):
        total = 0
        for value in raw.values():
            try:
                total += int(value)
            except (TypeError, ValueError):
                pass
        return total, dict(raw)
    try:
        return (int(raw), {}) if raw is not None else (None, {})
    except (TypeError, ValueError):
        return None, {}


def backup_info(report: Mapping[str, Any]) -> dict[str, Any]:
    """{path, sha256, size_bytes} of the run's backup, if the backup stage reported one."""
    backup = (report.get("data") or {}).get("backup") or {}
    manifest = _mapping(backup.get("manifest"))
    return {
        "path": backup.get("path") or backup.get("file") or manifest.get("path"),
        "sha256": backup.get("sha256") or manifest.get("sha256"),
        "size_bytes": backup.get("size_bytes") or backup.get("size") or manifest.get("size_bytes"),
    }


# The outcomes from the least to the most urgent: a fleet's run has its worst database's outcome (and exit code).
OUTCOME_SEVERITY = ("success", "preflight_refused", "lock_held", "drift", "rolled_back", "failed", "rollback_failed")
# A database of the play that no wave reached (an earlier wave failed): unchanged by this run.
NOT_RUN = "not_run"
# What each outcome guarantees about the database afterwards, when the run could not say more itself.
_STATE_KEPT = frozenset({"preflight_refused", "lock_held", "drift", NOT_RUN})


def worst_outcome(outcomes: Iterable[str]) -> str | None:
    """The most urgent of the outcomes (OUTCOME_SEVERITY); databases not run and unknown words do not count."""
    ranked = [o for o in outcomes if o in OUTCOME_SEVERITY]
    return max(ranked, key=OUTCOME_SEVERITY.index) if ranked else None


def _state_before(data: Mapping[str, Any]) -> str | None:
    migrate = _mapping(data.get("migrate"))
    if migrate.get("state_before"):
        return str(migrate["state_before"])
    for check in _list(_mapping(data.get("preflight")).get("checks")):
        if isinstance(check, Mapping) and check.get("name") in ("migration_state", "guide_schema"):
            state = _mapping(check.get("value")).get("state")
            return str(state) if state else None
    return None


def _state_after(outcome: str, before: str | None, data: Mapping[str, Any]) -> str:
    """The state the run left: measured by the migrate stage on success; kept as before when the outcome
    guarantees nothing was changed; not_applied after a completed rollback of a run that started unapplied."""
    migrate = _mapping(data.get("migrate"))
    if outcome == "success":
        return str(migrate.get("state_after") or before or "unknown")
    if outcome in _STATE_KEPT:
        return before or "unknown"
    if outcome == "rolled_back":
        return before if before in ("not_applied", "partial") else "not_applied"
    return "unknown (run capital-migrate status)"


def database_entry(host: str, data: Mapping[str, Any], summary: Mapping[str, Any], wave: int | None,
                   seconds: float | None, failure: str | None) -> dict[str, Any]:
    """One database of a (fleet) run: where it is, its state before and after, outcome, rows, backup, lock retries.

    ``data`` is the host's own capital_report stats, ``summary`` Ansible's per-host counts, ``failure`` the first
    failure message of the host (an unreachable host records no outcome of its own).
    """
    run = _mapping(data.get("run"))
    named = _mapping(_mapping(data.get("databases")).get(host))
    if wave is None and not summary:
        outcome = NOT_RUN
    elif isinstance(run.get("outcome"), str) and run["outcome"] in OUTCOME_SEVERITY:
        outcome = run["outcome"]
    else:
        outcome = "failed" if (summary.get("failures") or summary.get("unreachable") or failure) else "success"
    before = _state_before(data)
    rows, _by_source = _rows_backfilled({"data": data})
    backup = backup_info({"data": data})
    migrate = _mapping(data.get("migrate"))
    return {
        "host": host,
        "server": f"{named['host']}:{named['port']}" if named.get("host") else None,
        "database": named.get("database"),
        "wave": wave,
        "state_before": before,
        "state_after": _state_after(outcome, before, data),
        "outcome": outcome,
        "failed_stage": run.get("failed_stage") if outcome not in ("success", NOT_RUN) else None,
        "cause": (run.get("cause") or failure) if outcome not in ("success", NOT_RUN) else None,
        "rows_backfilled": rows,
        "duration_s": round(seconds, 3) if seconds is not None else None,
        "backup_file": backup["path"],
        "backup_sha256": backup["sha256"],
        "lock_retries": migrate.get("lock_retries"),
    }


def evidence(host: str | None, data: Mapping[str, Any], approval: Mapping[str, Any]) -> dict[str, Any]:
    """What a change record needs of one database's run, measured by the run itself: the preflight checks with
    their values, the backup's sha256 and restore test, the lock retries and the longest lock-taking statement,
    the verification results, and who approved and launched it (when known)."""
    named = _mapping(_mapping(data.get("databases")).get(host)) if host else {}
    backup = _mapping(data.get("backup"))
    migrate = _mapping(data.get("migrate"))
    verify = _mapping(data.get("verify"))
    capital_check = _mapping(verify.get("capital_check"))
    return {
        "host": host,
        "database": named.get("database"),
        "preflight_checks": [{"name": c.get("name"), "status": c.get("status"), "value": c.get("value")}
                             for c in checks({"data": data})],
        "backup": {"file": backup.get("file"), "sha256": backup.get("sha256"), "verified": backup.get("verified"),
                   "restore_test": backup.get("restore_test")} if backup else None,
        "locks": {"lock_retries": migrate.get("lock_retries"),
                  "longest_lock_wait_ms": migrate.get("longest_lock_wait_ms"),
                  "longest_statement": migrate.get("longest_statement")} if migrate else None,
        "verification": {"passed": verify.get("passed"), "failed_checks": verify.get("failed_checks"),
                         "capital_discrepancies": capital_check.get("discrepancy_count"),
                         "juntas_checked": capital_check.get("juntas_checked"),
                         "sql_suite_passed": _mapping(verify.get("sql_suite")).get("passed")} if verify else None,
        "approval": {key: value for key, value in approval.items() if value not in (None, "")},
    }


def render_evidence(report: Mapping[str, Any]) -> list[str]:
    """The evidence section of the Markdown report, one block per database."""
    entries = [e for e in _list(report.get("evidence")) if isinstance(e, Mapping)]
    if not entries:
        return []
    lines = ["## Evidence for the change record", ""]
    for entry in entries:
        if len(entries) > 1:
            lines += [f"### {entry.get('host')} ({entry.get('database') or '?'})", ""]
        approval = _mapping(entry.get("approval"))
        lines.append("- **Approval:** " + (", ".join(f"{k} {v}" for k, v in approval.items()) or "not recorded "
                     "(set capital_change_ticket / capital_approved_by, or run from AWX)"))
        backup = _mapping(entry.get("backup"))
        if backup:
            lines.append(f"- **Backup:** `{backup.get('file')}` sha256 `{backup.get('sha256')}`, verified "
                         f"{backup.get('verified')}, restore test: {_cell(backup.get('restore_test'))}")
        locks = _mapping(entry.get("locks"))
        if locks:
            longest = _mapping(locks.get("longest_statement"))
            wait = locks.get("longest_lock_wait_ms")
            lines.append(f"- **Locks:** {locks.get('lock_retries')} lock retries; longest lock wait "
                         f"{wait if wait is not None else '-'} ms; longest statement {longest.get('seconds', '-')} s "
                         f"({longest.get('file', '?')}:{longest.get('line', '?')}, {longest.get('attempts', '-')} "
                         "attempt(s))")
        verification = _mapping(entry.get("verification"))
        if verification:
            lines.append(f"- **Verification:** passed {verification.get('passed')}, capital discrepancies "
                         f"{verification.get('capital_discrepancies')} over {verification.get('juntas_checked')} "
                         f"juntas, SQL suite passed {verification.get('sql_suite_passed')}, failed checks "
                         f"{_cell(verification.get('failed_checks') or 'none')}")
        checks_ = [c for c in _list(entry.get("preflight_checks")) if isinstance(c, Mapping)]
        if checks_:
            lines += ["", *_table(["preflight check", "result", "value"],
                                  [[c.get("name"), c.get("status"), c.get("value")] for c in checks_])]
        lines.append("")
    return lines


def fleet_totals(databases: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many databases ended in each outcome, and in all."""
    totals: dict[str, int] = {"databases": len(databases)}
    for entry in databases:
        totals[str(entry["outcome"])] = totals.get(str(entry["outcome"]), 0) + 1
    return totals


def render_fleet(report: Mapping[str, Any]) -> list[str]:
    """The fleet section of the Markdown report: the waves, one row per database, the totals."""
    fleet = _mapping(report.get("fleet"))
    databases = [d for d in _list(fleet.get("databases")) if isinstance(d, Mapping)]
    if len(databases) < 2:
        return []
    lines = ["", "## Databases", ""]
    waves = [w for w in _list(fleet.get("waves")) if isinstance(w, Mapping)]
    if waves:
        lines.append("Waves: " + "; ".join(f"{w.get('number')}: {', '.join(map(str, _list(w.get('hosts'))))}"
                                           for w in waves))
        lines.append("")
    lines += _table(
        ["Wave", "Host", "Server", "Database", "Before", "After", "Outcome", "Stage", "Rows", "Duration",
         "Backup", "sha256", "Lock retries"],
        [[d.get("wave") or "-", d.get("host"), d.get("server"), d.get("database"), d.get("state_before"),
          d.get("state_after"), d.get("outcome"), d.get("failed_stage") or "", d.get("rows_backfilled"),
          _fmt_duration(d.get("duration_s")) if d.get("duration_s") is not None else "",
          d.get("backup_file"), d.get("backup_sha256"), d.get("lock_retries")] for d in databases],
    )
    totals = _mapping(fleet.get("totals"))
    lines += ["", "Totals: " + ", ".join(f"{key} {value}" for key, value in totals.items())]
    causes = [d for d in databases if d.get("cause")]
    if causes:
        lines += ["", "Causes:"] + [f"- {d.get('host')}: {d.get('cause')}" for d in causes]
    return lines


OUTCOME_WORDS = {
    "success": "SUCCESS",
    "rolled_back": "FAILED - ROLLED BACK (database as before)",
    "rollback_failed": "ROLLBACK FAILED - NEEDS A HUMAN",
    "preflight_refused": "REFUSED BY PREFLIGHT (nothing changed)",
    "drift": "DRIFT DETECTED",
    "lock_held": "LOCK HELD BY ANOTHER RUN (nothing changed)",
    "failed": "FAILED",
}


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: what a DBA pastes into a change ticket."""
    data: Mapping[str, Any] = report.get("data") or {}
    lines = [
        f"# Capital migration run `{report.get('run_id', '?')}` ({report.get('env') or 'unknown env'})",
        "",
    ]
    outcome = str(report.get("outcome") or "unknown")
    lines += [
        f"- **Outcome:** {OUTCOME_WORDS.get(outcome, outcome.upper())}",
        f"- **Playbook:** `{report.get('playbook', '')}`",
        f"- **Started:** {report.get('started_at', '')} UTC, **finished:** {report.get('finished_at', '')} UTC"
        f" ({_fmt_duration(report.get('duration_s'))})",
    ]
    if report.get("failed_stage"):
        lines.append(f"- **Failed stage:** {report['failed_stage']}")
    if report.get("cause"):
        lines.append(f"- **Cause:** {_cell(report['cause'])}")
    lines += render_fleet(report)
    lines.append("")
    lines += render_evidence(report)

    lines += ["## Stages", ""]
    stage_rows = [
        [
            s.get("name"),
            s.get("started_at"),
            _fmt_duration(s.get("duration_s")),
            s.get("outcome"),
            s.get("tasks"),
        ]
        for s in report.get("stages") or []
    ]
    lines += (
        _table(["stage", "started (UTC)", "duration", "outcome", "tasks"], stage_rows)
        if stage_rows
        else ["No stage ran."]
    )
    lines.append("")

    if report.get("failures"):
        lines += ["## Failures", ""]
        for failure in report["failures"]:
            lines.append(
                f"- **{failure.get('stage') or '-'}** / {failure.get('task')} on {failure.get('host')}: "
                f"{_cell(failure.get('message'))}"
            )
        lines.append("")

    check_list = checks(report)
    if check_list:
        lines += ["## Checks", ""]
        lines += _table(
            ["check", "result", "value", "detail"],
            [[c.get("name"), c.get("status"), c.get("value"), c.get("detail")] for c in check_list],
        )
        lines.append("")

    backup = backup_info(report)
    if backup["path"]:
        lines += ["## Backup", "", f"- File: `{backup['path']}`", f"- sha256: `{backup['sha256'] or '-'}`"]
        if backup["size_bytes"] is not None:
            lines.append(f"- Size: {backup['size_bytes']} bytes")
        lines.append("")

    migrate = data.get("migrate") or {}
    total, per_source = _rows_backfilled(report)
    if migrate:
        lines += ["## Migration", ""]
        for key in ("state_before", "state_after", "changed"):
            if key in migrate:
                lines.append(f"- {key.replace('_', ' ').capitalize()}: {_cell(migrate[key])}")
        if total is not None:
            detail = ", ".join(f"{k}: {v}" for k, v in per_source.items())
            lines.append(f"- Rows backfilled: {total}" + (f" ({detail})" if detail else ""))
        lines.append(f"- Lock retries: {migrate.get('lock_retries', 0)}")
        lines.append("")

    totals = capital_totals(report)
    if totals:
        lines += ["## Capital totals", ""]
        lines += _table(["figure", "recomputed from the legacy rows", "recorded after the migration"],
                        [[name, _money(expected), _money(recorded)] for name, expected, recorded in totals])
        lines.append("")
    capital = capital_rows(report)
    if capital:
        lines += ["## Capital per junta", ""]
        rows = []
        for row in capital:
            before, after = _decimal(row.get("before")), _decimal(row.get("after"))
            change = f"{after - before:,.2f}" if before is not None and after is not None else ""
            rows.append([row.get("name") or "", row["junta_id"], _money(before), _money(after), change])
        lines += _table(["junta", "id", "before", "after", "change"], rows)
        lines.append("")

    preflight = data.get("preflight") or {}
    counts = preflight.get("pre_migration_state") or preflight.get("counts")
    if isinstance(counts, list) and counts and all(isinstance(c, Mapping) for c in counts):
        headers = list(counts[0].keys())
        lines += ["## Pre-migration state (per junta)", ""]
        lines += _table(headers, [[c.get(h) for h in headers] for c in counts])
        lines.append("")

    if report.get("warnings"):
        lines += ["## Warnings", ""]
        lines += [f"- {_cell(w)}" for w in report["warnings"]]
        lines.append("")

    if data:
        lines += [
            "## Stage data",
            "",
            "```json",
            json.dumps(data, indent=2, sort_keys=True, default=str),
            "```",
            "",
        ]
    return "\n".join(lines)


def _stage_note(report: Mapping[str, Any], stage: str) -> str:
    data = _mapping(_mapping(report.get("data")).get(stage))
    if stage == "backup":
        info = backup_info(report)
        if info["path"]:
            sha = str(info["sha256"] or "")[:12]
            return f"{os.path.basename(str(info['path']))}" + (f"  sha256 {sha}..." if sha else "")
    if stage == "migrate" and data:
        total, _per_source = _rows_backfilled(report)
        parts: list[str] = []
        if total is not None:
            parts.append(f"{total:,} rows backfilled")
        if "lock_retries" in data:
            parts.append(f"{data['lock_retries']} lock retries")
        if data.get("state_after"):
            parts.append(f"state {data['state_after']}")
        return ", ".join(parts)
    if stage == "preflight":
        found = checks(report)
        if found:
            tally: dict[str, int] = {}
            for item in found:
                tally[str(item.get("status"))] = tally.get(str(item.get("status")), 0) + 1
            return "checks: " + ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))
    if stage == "verify" and data:
        parts = []
        check = _mapping(data.get("capital_check"))
        if "juntas_checked" in check:
            parts.append(f"{check['juntas_checked']} juntas reconciled")
        if "discrepancy_count" in check:
            parts.append(f"{check['discrepancy_count']} discrepancies")
        suite = _mapping(data.get("sql_suite"))
        if isinstance(suite.get("checks_passed"), list):
            failed = _list(suite.get("checks_failed"))
            parts.append(f"SQL suite {len(suite['checks_passed'])} passed, {len(failed)} failed")
        if isinstance(data.get("failed_checks"), list) and data["failed_checks"]:
            parts.append("failed: " + ", ".join(str(c) for c in data["failed_checks"]))
        return ", ".join(parts)
    if stage == "rollback" and data:
        return ", ".join(f"{k}: {v}" for k, v in data.items() if isinstance(v, str | int | bool))[:80]
    return ""


def capital_totals(report: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """[(figure, recomputed from the legacy rows, recorded in the database)] from the verify stage."""
    verify = (report.get("data") or {}).get("verify") or {}
    check = _mapping(verify.get("capital_check"))
    expected = _mapping(check.get("totals"))
    recorded = _mapping(check.get("totals_recorded"))
    names = [n for n in ("base_capital", "current_capital", "available_capital") if n in expected or n in recorded]
    return [(name, expected.get(name), recorded.get(name)) for name in names]


def render_text(report: Mapping[str, Any], title: str = "capital-migrate") -> str:
    """The terminal summary: outcome first, one line per stage, capital totals, where the report is."""
    outcome = str(report.get("outcome") or "unknown")
    lines = [
        f"{title}  env={report.get('env') or '?'}  run={report.get('run_id') or '?'}",
        f"RESULT: {OUTCOME_WORDS.get(outcome, outcome.upper())}   ({_fmt_duration(report.get('duration_s'))})",
    ]
    if report.get("failed_stage") or report.get("cause"):
        lines.append(
            f"  failed stage: {report.get('failed_stage') or '-'}   cause: {report.get('cause') or '-'}"
        )
    databases = [d for d in _list(_mapping(report.get("fleet")).get("databases")) if isinstance(d, Mapping)]
    if len(databases) > 1:
        lines.append("")
        lines.append(f"  {'wave':<5}{'database':<28}{'before':<13}{'after':<13}outcome")
        for entry in databases:
            where = f"{entry.get('host')} ({entry.get('database') or '?'})"
            lines.append(f"  {entry.get('wave') or '-'!s:<5}{where:<28}{entry.get('state_before') or '-'!s:<13}"
                         f"{str(entry.get('state_after') or '-')[:12]:<13}{entry.get('outcome')}")
        counts = _mapping(_mapping(report.get("fleet")).get("totals"))
        lines.append("  totals: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    stages = report.get("stages") or []
    if stages:
        lines.append("")
        lines.append(f"  {'stage':<11}{'duration':>9}  {'outcome':<8} detail")
        for stage in stages:
            name = str(stage.get("name"))
            lines.append(
                f"  {name:<11}{_fmt_duration(stage.get('duration_s')):>9}  {stage.get('outcome', ''):<8} "
                f"{_stage_note(report, name)}".rstrip()
            )
    capital = capital_rows(report)
    if capital:
        before = [d for d in (_decimal(r.get("before")) for r in capital) if d is not None]
        after = [d for d in (_decimal(r.get("after")) for r in capital) if d is not None]
        lines.append("")
        text = f"  capital, {len(capital)} juntas:"
        if before:
            text += f"  before {sum(before, Decimal(0)):,.2f}"
        if after:
            text += f"  after {sum(after, Decimal(0)):,.2f}"
        changed = sum(
            1
            for r in capital
            if _decimal(r.get("before")) is not None
            and _decimal(r.get("after")) is not None
            and _decimal(r.get("before")) != _decimal(r.get("after"))
        )
        if before and after:
            text += f"  ({changed} juntas differ)"
        lines.append(text)
    totals = capital_totals(report)
    if totals:
        lines.append("")
        lines.append("  capital (all juntas)   recomputed from legacy rows   recorded after migration")
        for name, expected, recorded in totals:
            mark = "" if _decimal(expected) == _decimal(recorded) else "   <-- MISMATCH"
            lines.append(f"  {name:<22}{_money(expected):>28}{_money(recorded):>27}{mark}")
    failures = report.get("failures") or []
    if failures:
        lines.append("")
        lines.append("  failures:")
        for failure in failures[:5]:
            lines.append(
                f"    - [{failure.get('stage') or '-'}] {failure.get('task')}: {_cell(failure.get('message'))[:200]}"
            )
        if len(failures) > 5:
            lines.append(f"    ... {len(failures) - 5} more in the report")
    warnings = report.get("warnings") or []
    if warnings:
        lines.append("")
        lines.append(f"  warnings ({len(warnings)}):")
        lines += [f"    - {_cell(w)[:200]}" for w in warnings[:5]]
    return "\n".join(lines)
