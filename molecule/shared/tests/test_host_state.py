"""Host state a migration run must leave behind, checked with pytest-testinfra.

Why: the playbook's own verify stage checks the database; these tests check what an operator relies on
outside it: a private, intact backup (mode 0600 in a 0700 directory, sha256 equal to its manifest's) on the
database host, and run reports on the controller that exist and never hold the password.

Run by molecule/shared/verify_*.yml with `--hosts=<podman|docker|local>://<host>`; the inputs come from the
environment (never the command line, the password least of all):
CAPITAL_MOLECULE_BACKUP_DIR, CAPITAL_MOLECULE_REPORT_DIR, CAPITAL_MOLECULE_SECRET,
CAPITAL_MOLECULE_EXPECT_OUTCOME (the outcome the last migrate report must record).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

BACKUP_DIR = os.environ.get("CAPITAL_MOLECULE_BACKUP_DIR", "")
REPORT_DIR = Path(os.environ.get("CAPITAL_MOLECULE_REPORT_DIR", "/nonexistent"))
SECRET = os.environ.get("CAPITAL_MOLECULE_SECRET", "")
EXPECT_OUTCOME = os.environ.get("CAPITAL_MOLECULE_EXPECT_OUTCOME", "success")


def _manifests(host: Any, pattern: str = "*.dump.manifest.json") -> list[dict[str, Any]]:
    """Every manifest matching ``pattern`` in the backup directory (default: the dumps'), parsed, with its own
    path added."""
    found = host.run("find %s -maxdepth 1 -name %s -type f", BACKUP_DIR, pattern)
    assert found.rc == 0, f"cannot list {BACKUP_DIR}: {found.stderr}"
    manifests = []
    for path in sorted(found.stdout.split()):
        data = json.loads(host.file(path).content_string)
        data["_path"] = path
        manifests.append(data)
    return manifests


def _migrate_reports() -> list[dict[str, Any]]:
    """The JSON run reports of migrate.yml runs, oldest first (file names start with a UTC stamp)."""
    reports = []
    for path in sorted(REPORT_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("data", {}).get("run", {}).get("playbook") == "migrate":
            reports.append(data)
    return reports


def test_inputs_are_set() -> None:
    assert BACKUP_DIR, "CAPITAL_MOLECULE_BACKUP_DIR is not set"
    assert len(SECRET) >= 8, "CAPITAL_MOLECULE_SECRET (the rehearsal password) is not set"


def test_backup_dir_is_private(host: Any) -> None:
    backup_dir = host.file(BACKUP_DIR)
    assert backup_dir.is_directory
    assert backup_dir.mode == 0o700


def test_every_dump_is_private_and_matches_its_manifest(host: Any) -> None:
    manifests = _manifests(host)
    assert manifests, f"no dump manifest in {BACKUP_DIR}"
    for manifest in manifests:
        dump = host.file(f"{BACKUP_DIR}/{manifest['file']}")
        assert dump.exists, f"{manifest['_path']} names {manifest['file']}, which is missing"
        assert host.file(manifest["_path"]).mode == 0o600
        if manifest["format"] == "custom":
            assert dump.is_file
            assert dump.mode == 0o600
            assert dump.sha256sum == manifest["sha256"]
            assert dump.size == int(manifest["size"])
        else:
            # A directory dump's sha256 is that of its files' sorted sha256sum lines (backup role).
            assert dump.mode == 0o700
            listing = host.check_output("cd %s && sha256sum -- * | LC_ALL=C sort -k2 | sha256sum", dump.path)
            assert listing.split()[0] == manifest["sha256"]


def test_every_rollback_export_is_private_and_matches_its_manifest(host: Any) -> None:
    """The rows a reverse migration dropped (the rollback scenario's automatic rollback exports them)."""
    for manifest in _manifests(host, "rollback-export-*.manifest.json"):
        export = host.file(f"{BACKUP_DIR}/{manifest['file']}")
        assert export.is_file, f"{manifest['_path']} names {manifest['file']}, which is missing"
        assert export.mode == 0o600 and host.file(manifest["_path"]).mode == 0o600
        assert export.sha256sum == manifest["sha256"]


def test_no_password_in_manifests(host: Any) -> None:
    for manifest in _manifests(host, "*.manifest.json"):
        leaked = SECRET in host.file(manifest["_path"]).content_string
        assert not leaked, f"the rehearsal password appears in {manifest['_path']}"


def test_migrate_report_exists_with_expected_outcome() -> None:
    reports = _migrate_reports()
    assert reports, f"no migrate run report in {REPORT_DIR}"
    assert reports[-1]["outcome"] == EXPECT_OUTCOME


@pytest.mark.parametrize("suffix", ["json", "md"])
def test_reports_are_private_and_hold_no_password(suffix: str) -> None:
    paths = sorted(REPORT_DIR.glob(f"*.{suffix}"))
    assert paths, f"no .{suffix} report in {REPORT_DIR}"
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is not mode 0600"
        leaked = SECRET in path.read_text()
        assert not leaked, f"the rehearsal password appears in {path}"
