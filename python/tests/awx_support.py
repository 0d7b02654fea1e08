"""Helpers shared by the AWX tests: where things are, and the config-as-code loaded once."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
AWX_DIR = REPO / "awx"
CONFIG_FILE = AWX_DIR / "controller_configuration.yml"
SCHEMA_FILE = AWX_DIR / "schema.json"
# Playbook-level argument specs (validated by the playbook with validate_argument_spec, like a role's).
PLAYBOOK_SPECS = sorted((REPO / "playbooks" / "vars").glob("*argument_spec*.yml"))


@functools.cache
def controller_config() -> dict[str, Any]:
    """awx/controller_configuration.yml as data (YAML anchors resolved)."""
    data = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def by_name(kind: str) -> dict[str, dict[str, Any]]:
    """The objects of one `controller_<kind>` list, keyed by name."""
    return {item["name"]: item for item in controller_config().get(f"controller_{kind}", [])}


def credential_type(name: str = "Prestamos PostgreSQL") -> dict[str, Any]:
    return by_name("credential_types")[name]


def declared_variables() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every variable an argument spec declares -> [(where, its spec)], from roles and playbooks."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        specs = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for entry, spec in (specs.get("argument_specs") or {}).items():
            for name, option in (spec.get("options") or {}).items():
                found.setdefault(name, []).append((f"{path.relative_to(REPO)}:{entry}", option or {}))
    for path in PLAYBOOK_SPECS:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for name, option in (spec.get("argument_spec") or {}).items():
            found.setdefault(name, []).append((str(path.relative_to(REPO)), option or {}))
    return found


def all_surveys() -> list[tuple[str, dict[str, Any]]]:
    """(owner name, survey question) for every question of every job template and workflow."""
    questions: list[tuple[str, dict[str, Any]]] = []
    for kind in ("templates", "workflows"):
        for name, item in by_name(kind).items():
            for question in (item.get("survey_spec") or {}).get("spec", []):
                questions.append((name, question))
    return questions
