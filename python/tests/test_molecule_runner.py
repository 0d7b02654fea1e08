"""scripts/molecule-all.sh decides when the container scenarios run.

Why: a laptop without podman must still pass `make test` (the container scenarios are skipped, saying so),
while CI must never skip them silently. These tests run the real script with a PATH on which no container
engine exists; the scenarios they name are the container ones only, so nothing else runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "molecule-all.sh"


@pytest.fixture
def no_engine_path(tmp_path: Path) -> str:
    """A PATH with every tool of /usr/bin and /bin except the container engines (podman, docker)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for system_dir in (Path("/usr/bin"), Path("/bin")):
        for tool in system_dir.iterdir():
            target = bin_dir / tool.name
            if tool.name in {"podman", "docker"} or target.exists() or target.is_symlink():
                continue
            target.symlink_to(tool)
    assert shutil.which("podman", path=str(bin_dir)) is None
    return str(bin_dir)


def _run(path: str, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root")}
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_missing_podman_skips_container_scenarios_with_a_message(no_engine_path: str) -> None:
    result = _run(no_engine_path, "default", "rollback", "dirty", ci=False)
    assert result.returncode == 0, result.stderr
    skipped = "SKIPPING the container scenarios (default rollback dirty): podman is not installed"
    assert skipped in result.stderr
    assert "apt-get install -y podman runc debootstrap" in result.stderr
    assert "molecule test" not in result.stderr


def test_missing_podman_fails_under_ci(no_engine_path: str) -> None:
    result = _run(no_engine_path, "default", ci=True)
    assert result.returncode == 1
    assert "podman is not installed, and CI never skips the container scenarios" in result.stderr


def test_missing_docker_is_named_when_docker_is_the_driver(no_engine_path: str) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "dirty"],
        env={"PATH": no_engine_path, "CAPITAL_MOLECULE_DRIVER": "docker", "CI": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "docker is not installed" in result.stderr


def test_unknown_scenario_is_refused(no_engine_path: str) -> None:
    result = _run(no_engine_path, "nosuch", ci=False)
    assert result.returncode == 2
    assert "no scenario molecule/nosuch" in result.stderr
