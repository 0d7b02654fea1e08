"""The end-of-run notice: one JSON POST to ``capital_notify_url`` when a playbook's run ends.

Plain Python (no Ansible imports), used by the callback ``prestamos.capital.capital_report`` after it wrote
the run report, and tested against a real HTTP receiver. The notice is built from the already redacted
report and holds no connection string: run id, playbook, environment, databases, outcome (the report's word),
failed stage, a one-line cause, durations and where the report is. A receiver that is down, slow or says no
only produces a warning: the run's own outcome and exit code stand. The URL's path and query (a webhook's
token often sits there) and the headers (an Authorization header) never reach a message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from ansible_collections.prestamos.capital.plugins.module_utils.inputs import http_url

NOTICE_FORMAT = "capital-migrate-notice/1"
DEFAULT_TIMEOUT_S = 5.0
_CAUSE_MAX = 500


def receiver_name(url: str) -> str:
    """The URL as messages may show it: scheme, host and port only."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a receiver (None when it can): http(s) with a host, nothing else."""
    return http_url(url)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def report_databases(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The databases the run named (``data.databases``, by inventory host), as a list."""
    data = report.get("data")
    named = data.get("databases") if isinstance(data, Mapping) else None
    if not isinstance(named, Mapping):
        return []
    return [{"inventory_host": str(host), **dict(value)} for host, value in sorted(named.items())
            if isinstance(value, Mapping)]


def build_notice(report: Mapping[str, Any], report_paths: list[str],
                 databases: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The notice for a finished run, from its (redacted) report; ``databases`` default to the report's."""
    cause = report.get("cause")
    one_line = " ".join(str(cause).split())[:_CAUSE_MAX] if cause else None
    stages = _list(report.get("stages"))
    return {
        "format": NOTICE_FORMAT,
        "run_id": report.get("run_id"),
        "playbook": report.get("playbook"),
        "env": report.get("env"),
        "databases": list(databases) if databases is not None else report_databases(report),
        "outcome": report.get("outcome"),
        "failed_stage": report.get("failed_stage"),
        "cause": one_line,
        "started_at": report.get("started_at"),
        "finished_at": report.get("finished_at"),
        "duration_s": report.get("duration_s"),
        "stages": [{"name": s.get("name"), "outcome": s.get("outcome"), "duration_s": s.get("duration_s")}
                   for s in stages if isinstance(s, Mapping)],
        "report": report_paths,
    }


def send(url: str, notice: Mapping[str, Any], headers: Mapping[str, Any] | None = None,
         timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """POST the notice; None when the receiver answered 2xx, else a warning that names only the receiver."""
    problem = url_problem(url)
    if problem is not None:
        return f"capital_notify_url is not {problem}: no notice was sent"
    body = json.dumps(notice, sort_keys=True, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - scheme checked above
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "capital-migrate")
    for name, value in (headers or {}).items():
        request.add_header(str(name), str(value))
    where = receiver_name(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - scheme checked above
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        return f"the notice receiver {where} answered HTTP {exc.code}; the run's outcome stands"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        kind = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "unreachable"
        return f"the notice receiver {where} {kind} ({type(reason).__name__}); the run's outcome stands"
    if not 200 <= status < 300:
        return f"the notice receiver {where} answered HTTP {status}; the run's outcome stands"
    return None
