"""execution-environment.yml produces a valid ansible-builder build context with the project's pins.

Building the image needs a registry and the internet; `ansible-builder create` (what `build` runs
first) and the build's own introspection script are what can run here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from awx_support import REPO
from bindep.depends import Depends
from capital_migrate.pgtmp import find_bindir

EE_FILE = REPO / "execution-environment.yml"
BIN = Path(sys.executable).parent
# The newest PostgreSQL major the project supports as a server; the EE's pg_dump must be at least this.
NEWEST_SUPPORTED_SERVER = 18


def project_pins() -> dict[str, str]:
    """name -> version from requirements.txt (the project's single pin file)."""
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip()):
            pins[match.group(1).lower()] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run `ansible-builder create` in a scratch directory and return the context directory."""
    builder = shutil.which("ansible-builder", path=str(BIN))
    if builder is None:
        pytest.fail(
            "ansible-builder is not installed in the venv: it is pinned in requirements.txt; run make setup"
        )
    work = tmp_path_factory.mktemp("ee")
    result = subprocess.run(
        [
            builder,
            "create",
            "-f",
            str(EE_FILE),
            "-c",
            str(work / "context"),
            "--output-filename",
            "Containerfile",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return work / "context"


def test_containerfile_installs_the_pinned_ansible_core_and_runner(build_context: Path) -> None:
    text = (build_context / "Containerfile").read_text(encoding="utf-8")
    pins = project_pins()
    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="([^"]*)"', text, re.M)
    assert refs is not None
    assert sorted(refs.group(1).split()) == sorted(
        [f"ansible-core=={pins['ansible-core']}", f"ansible-runner=={pins['ansible-runner']}"]
    )
    # ansible-core 2.19 needs Python >= 3.11 on the controller.
    assert re.search(r'^ARG PYCMD="/usr/bin/python3\.(1[1-9])"', text, re.M)
    for stage in ("base", "galaxy", "builder", "final"):
        assert re.search(rf"^FROM \S+ AS {stage}$", text, re.M), stage
    # The PGDG repository is added before bindep installs the client in the final stage.
    assert text.index("pgdg-redhat-repo") < text.index("install-from-bindep")


def test_context_carries_the_project_python_pins(build_context: Path) -> None:
    wanted = (build_context / "_build" / "requirements.txt").read_text(encoding="utf-8")
    pins = project_pins()
    assert f"psycopg2-binary=={pins['psycopg2-binary']}" in wanted.split()


def test_context_carries_the_project_collections(build_context: Path) -> None:
    in_context = yaml.safe_load((build_context / "_build" / "requirements.yml").read_text(encoding="utf-8"))
    project = yaml.safe_load((REPO / "collections" / "requirements.yml").read_text(encoding="utf-8"))
    assert in_context == project
    assert "community.postgresql" in {c["name"] for c in in_context["collections"]}


def _client_packages(bindep_text: str, platform: str) -> list[str]:
    deps = Depends(bindep_text)
    return [rule[0] for rule in deps.active_rules(["default", f"platform:{platform}"])]


def test_bindep_installs_postgresql_client_at_least_the_newest_supported_server(build_context: Path) -> None:
    text = (build_context / "_build" / "bindep.txt").read_text(encoding="utf-8")
    rpm = [p for p in _client_packages(text, "rpm") if p.startswith("postgresql")]
    dpkg = [p for p in _client_packages(text, "dpkg") if p.startswith("postgresql")]
    assert rpm and dpkg
    majors = {int(m) for p in rpm + dpkg for m in re.findall(r"(\d+)$", p)}
    assert len(majors) == 1, f"rpm and dpkg lines disagree on the client major: {rpm} {dpkg}"
    (major,) = majors
    local_server = max((int(m) for m in re.findall(r"/(\d+)/bin$", str(find_bindir()))), default=0)
    assert major >= max(NEWEST_SUPPORTED_SERVER, local_server)
    # The PATH the final image sets points at that client.
    containerfile = (build_context / "Containerfile").read_text(encoding="utf-8")
    assert f"/usr/pgsql-{major}/bin" in containerfile


def test_build_introspection_keeps_our_pins_and_drops_collection_test_tools(
    build_context: Path, tmp_path: Path
) -> None:
    """Run the build's own introspect.py over the project's collections, as the builder stage does."""
    collections = REPO / "collections"
    if not (collections / "ansible_collections" / "community" / "postgresql").is_dir():
        pytest.fail("collections are not installed: run make setup")
    build = build_context / "_build"
    pip_out, bindep_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    result = subprocess.run(
        [
            sys.executable,
            str(build / "scripts" / "introspect.py"),
            "introspect",
            f"--user-pip={build / 'requirements.txt'}",
            f"--exclude-pip-reqs={build / 'exclude-requirements.txt'}",
            f"--user-bindep={build / 'bindep.txt'}",
            f"--write-pip={pip_out}",
            f"--write-bindep={bindep_out}",
            str(collections),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = {
        re.split(r"[<>=\s#]", line.strip(), maxsplit=1)[0].lower()
        for line in pip_out.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    assert "psycopg2-binary" in names
    assert not names & {"pytest", "pytest-mock"}, names
    assert f"psycopg2-binary=={project_pins()['psycopg2-binary']}" in pip_out.read_text(encoding="utf-8")
