"""The collection's plugins are documented: ansible-doc renders each, and its README lists exactly them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "python" / "ansible_collections" / "prestamos" / "capital"
ANSIBLE_DOC = ROOT / ".venv" / "bin" / "ansible-doc"


def plugins() -> set[tuple[str, str]]:
    """(type, name) of every plugin in the collection, read from its files."""
    found: set[tuple[str, str]] = set()
    for kind in ("modules", "callback"):
        for path in (COLLECTION / "plugins" / kind).glob("*.py"):
            if not path.name.startswith("_"):
                found.add((kind.rstrip("s") if kind == "modules" else kind, path.stem))
    for path in (COLLECTION / "plugins" / "filter").glob("*.py"):
        found |= {("filter", name) for name in re.findall(r'"(capital_\w+)":', path.read_text())}
    return found


def test_the_readme_lists_exactly_the_collections_plugins() -> None:
    listed = set(re.findall(r"^\| (module|filter|callback) \| `(\w+)` \|", (COLLECTION / "README.md").read_text(),
                            re.MULTILINE))
    assert listed == plugins()


@pytest.mark.parametrize(("kind", "name"), sorted(plugins()))
def test_ansible_doc_renders_the_plugin(kind: str, name: str) -> None:
    done = subprocess.run([str(ANSIBLE_DOC), "-t", kind, f"prestamos.capital.{name}"], capture_output=True,
                          text=True, check=False, cwd=ROOT,
                          env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert done.returncode == 0 and "[ERROR]" not in done.stderr, done.stderr
    assert f"prestamos.capital.{name}" in done.stdout
