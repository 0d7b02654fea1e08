"""The end-of-run notice (plugin_utils/notify.py) against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.prestamos.capital.plugins.plugin_utils.notify import (
    NOTICE_FORMAT,
    build_notice,
    send,
    url_problem,
)
from notify_support import closed_port_url, receiver

REPORT: dict[str, Any] = {
    "run_id": "abc123", "playbook": "migrate.yml", "env": "staging", "outcome": "rolled_back",
    "failed_stage": "migrate", "cause": "lock_timeout on \"Junta\"\n  after 3 retries",
    "started_at": "2026-12-02T10:00:00Z", "finished_at": "2026-12-02T10:01:00Z", "duration_s": 60.0,
    "stages": [{"name": "preflight", "outcome": "ok", "duration_s": 3.2, "tasks": 12},
               {"name": "migrate", "outcome": "failed", "duration_s": 40.1, "tasks": 5}],
    "data": {"run": {"outcome": "rolled_back"}}, "failures": [{"message": "x"}], "hosts": {},
}


def test_the_notice_carries_the_run_and_nothing_else() -> None:
    notice = build_notice(REPORT, ["/r/x.json", "/r/x.md"], [{"host": "db1", "database": "prestamos"}])
    assert notice == {
        "format": NOTICE_FORMAT, "run_id": "abc123", "playbook": "migrate.yml", "env": "staging",
        "databases": [{"host": "db1", "database": "prestamos"}], "outcome": "rolled_back",
        "failed_stage": "migrate", "cause": 'lock_timeout on "Junta" after 3 retries',
        "started_at": "2026-12-02T10:00:00Z", "finished_at": "2026-12-02T10:01:00Z", "duration_s": 60.0,
        "stages": [{"name": "preflight", "outcome": "ok", "duration_s": 3.2},
                   {"name": "migrate", "outcome": "failed", "duration_s": 40.1}],
        "report": ["/r/x.json", "/r/x.md"],
    }


def test_a_receiver_that_answers_gets_one_json_post_with_the_headers() -> None:
    notice = build_notice(REPORT, [])
    with receiver(status=204) as hook:
        warning = send(hook.url, notice, {"Authorization": "Bearer s3cr3t-QXZJ"})
    assert warning is None
    assert hook.notices() == [notice]
    assert hook.received[0]["headers"]["Authorization"] == "Bearer s3cr3t-QXZJ"
    assert hook.received[0]["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize("case", ["http_500", "down", "slow"])
def test_a_receiver_that_fails_only_warns_naming_the_host_not_the_token(case: str) -> None:
    headers = {"Authorization": "Bearer s3cr3t-QXZJ"}
    if case == "down":
        warning = send(closed_port_url(), build_notice(REPORT, []), headers, timeout=2)
        expected = "unreachable"
    else:
        with receiver(status=500 if case == "http_500" else 204, delay_s=2.0 if case == "slow" else 0) as hook:
            warning = send(hook.url, build_notice(REPORT, []), headers, timeout=0.5)
        expected = "HTTP 500" if case == "http_500" else "timed out"
    assert warning is not None and expected in warning, warning
    assert "http://127.0.0.1:" in warning and "outcome stands" in warning
    assert "T0KEN" not in warning and "s3cr3t" not in warning


@pytest.mark.parametrize("url", ["", "ftp://x/y", "file:///etc/passwd", "http://", "http://h:port/x", 5])
def test_only_http_urls_are_receivers(url: Any) -> None:
    assert url_problem(url) is not None
    assert send(url, {}) is not None
