"""The AWX configuration as code is well formed and points at real things in this repository.

AWX would only find a wrong playbook name or an undeclared survey variable at launch time, in
production; these tests find them at commit time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from awx_support import (
    AWX_DIR,
    REPO,
    SCHEMA_FILE,
    all_surveys,
    by_name,
    controller_config,
    credential_type,
    declared_variables,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_PLAYBOOKS = {"preflight", "backup", "migrate", "verify", "rollback"}


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def test_controller_configuration_validates_against_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(controller_config()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_refuses_a_password_survey() -> None:
    """The schema is not a rubber stamp: a password question is exactly what it must reject."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    config = json.loads(json.dumps(controller_config()))
    config["controller_templates"][0]["survey_spec"]["spec"].append(
        {
            "question_name": "DB password",
            "variable": "capital_db_password",
            "type": "password",
            "required": True,
        }
    )
    assert not jsonschema.Draft202012Validator(schema).is_valid(config)


def test_schema_refuses_a_password_in_a_credential() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    config = json.loads(json.dumps(controller_config()))
    config["controller_credentials"][0]["inputs"]["password"] = "hunter2"
    assert not jsonschema.Draft202012Validator(schema).is_valid(config)


def test_there_is_a_job_template_per_stage_and_each_playbook_exists() -> None:
    templates = by_name("templates")
    stages = {Path(t["playbook"]).stem for t in templates.values()}
    assert stages == TEMPLATE_PLAYBOOKS
    for name, template in templates.items():
        playbook = REPO / template["playbook"]
        assert playbook.is_file(), (
            f"job template {name!r}: playbook {template['playbook']} is not in the repository"
        )
        plays = yaml.safe_load(playbook.read_text(encoding="utf-8"))
        assert isinstance(plays, list) and plays, (
            f"{template['playbook']} is not a playbook (a list of plays)"
        )


def test_every_reference_names_an_object_defined_in_the_file() -> None:
    orgs = set(by_name("organizations"))
    projects, inventories = set(by_name("projects")), set(by_name("inventories"))
    ees, creds, cred_types = (
        set(by_name("execution_environments")),
        set(by_name("credentials")),
        set(by_name("credential_types")),
    )
    for cred in by_name("credentials").values():
        assert cred["credential_type"] in cred_types
        assert cred["organization"] in orgs
    for project in by_name("projects").values():
        assert project.get("default_environment") in ees
    for source in by_name("inventory_sources").values():
        assert source["inventory"] in inventories
        assert source["source_project"] in projects
    for name, template in by_name("templates").items():
        assert template["project"] in projects, name
        assert template["inventory"] in inventories, name
        assert template["execution_environment"] in ees, name
        assert set(template["credentials"]) <= creds, name
        assert template["organization"] in orgs, name


def test_inventory_sources_point_at_inventory_files_in_the_repository() -> None:
    """Waits for inventories/production (issue 5) until it lands."""
    for name, source in by_name("inventory_sources").items():
        path = REPO / source["source_path"]
        assert path.is_file(), f"inventory source {name!r}: {source['source_path']} is not in the repository"


def test_workflow_runs_preflight_then_migrate_and_rolls_back_on_failure() -> None:
    templates = by_name("templates")
    (workflow,) = controller_config()["controller_workflows"]
    nodes = {n["identifier"]: n for n in workflow["simplified_workflow_nodes"]}
    for node in nodes.values():
        assert node["unified_job_template"] in templates
        for edge in ("success_nodes", "failure_nodes", "always_nodes"):
            assert set(node.get(edge, [])) <= set(nodes), f"{node['identifier']}.{edge} names an unknown node"

    def playbook(identifier: str) -> str:
        return templates[nodes[identifier]["unified_job_template"]]["playbook"]

    children = {
        c
        for n in nodes.values()
        for e in ("success_nodes", "failure_nodes", "always_nodes")
        for c in n.get(e, [])
    }
    roots = [i for i in nodes if i not in children]
    assert [playbook(r) for r in roots] == ["playbooks/preflight.yml"]
    (after_preflight,) = nodes[roots[0]]["success_nodes"]
    assert playbook(after_preflight) == "playbooks/migrate.yml"
    assert not nodes[roots[0]].get("failure_nodes"), (
        "a failed preflight changed nothing: nothing to roll back"
    )
    (on_failure,) = nodes[after_preflight]["failure_nodes"]
    assert playbook(on_failure) == "playbooks/rollback.yml"
    assert not nodes[after_preflight].get("success_nodes") and not nodes[after_preflight].get("always_nodes")


def test_every_survey_variable_is_declared_by_an_argument_spec() -> None:
    """Waits for the migrate/verify roles (issues 3, 4) for capital_batch_size and capital_lock_timeout."""
    declared = declared_variables()
    missing = sorted({q["variable"] for _, q in all_surveys()} - set(declared))
    assert not missing, f"survey variables no roles/*/meta/argument_specs.yml declares: {missing}"


_SURVEY_TYPES = {
    "str": {"text", "textarea", "multiplechoice"},
    "int": {"integer"},
    "float": {"float"},
    "bool": {"multiplechoice"},
    "list": {"multiselect"},
}


@pytest.mark.parametrize("owner_question", all_surveys(), ids=lambda oq: f"{oq[0]}:{oq[1]['variable']}")
def test_survey_question_matches_the_declared_type(owner_question: tuple[str, dict[str, Any]]) -> None:
    """A survey answer must pass the argument spec of every role or playbook that declares it."""
    _owner, question = owner_question
    for where, spec in declared_variables().get(question["variable"], []):
        spec_type = spec.get("type", "str")
        assert question["type"] in _SURVEY_TYPES.get(spec_type, set()), (
            f"{question['variable']}: survey type {question['type']} cannot give type {spec_type} ({where})"
        )
        if spec_type == "bool":
            # Surveys have no boolean: the answer arrives as a string the argument spec accepts as bool.
            assert set(question["choices"]) <= {"true", "false", "yes", "no"}
        if spec.get("choices") and question.get("choices"):
            assert set(question["choices"]) <= {str(c) for c in spec["choices"]}, where


def test_no_survey_asks_for_a_secret_or_overrides_the_confirmation_guard() -> None:
    for owner, question in all_surveys():
        assert question["type"] != "password", owner
        assert not re.search(r"password|passwd|secret|token", question["variable"]), owner
        # The inventory decides whether an environment needs confirmation; a survey answer would win over it.
        assert question["variable"] != "capital_require_confirmation", owner


def test_optional_survey_questions_have_no_default() -> None:
    """AWX sends a survey default as an extra var, which would override the inventory's value."""
    for owner, question in all_surveys():
        if not question["required"]:
            assert "default" not in question, f"{owner}: {question['variable']}"


def test_production_confirmation_is_asked_where_production_changes() -> None:
    templates = by_name("templates")
    for name, template in templates.items():
        asked = {q["variable"] for q in template["survey_spec"]["spec"]}
        assert "capital_env" in asked, name
        if Path(template["playbook"]).stem in {"migrate", "rollback"}:
            assert "capital_confirm_production" in asked, name
    (workflow,) = controller_config()["controller_workflows"]
    assert {"capital_env", "capital_confirm_production"} <= {
        q["variable"] for q in workflow["survey_spec"]["spec"]
    }


def test_credential_type_injects_libpq_env_and_a_pgpass_file_not_pgpassword() -> None:
    ctype = credential_type()
    fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
    assert fields["password"].get("secret") is True
    assert all(not f.get("secret") for i, f in fields.items() if i != "password")
    env = ctype["injectors"]["env"]
    assert set(env) == {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "PGPASSFILE"}
    # ansible-runner records the whole environment in artifacts/<id>/command: no password in env.
    assert "password" not in " ".join(env.values())
    assert env["PGPASSFILE"] == "{{ tower.filename }}"
    assert "{{" in ctype["injectors"]["file"]["template"]


def render_injectors(inputs: dict[str, str], filename: str) -> tuple[dict[str, str], str]:
    """Render the credential type's injectors as AWX does (sandboxed Jinja, `tower.filename`)."""
    ctype = credential_type()
    jinja = ImmutableSandboxedEnvironment()
    values = {f["id"]: inputs.get(f["id"], f.get("default", "")) for f in ctype["inputs"]["fields"]}
    file_text = jinja.from_string(ctype["injectors"]["file"]["template"]).render(**values)
    env = {
        k: jinja.from_string(v).render(tower={"filename": filename}, **values)
        for k, v in ctype["injectors"]["env"].items()
    }
    return env, file_text


def test_pgpass_template_escapes_colon_and_backslash() -> None:
    env, text = render_injectors(
        {"host": "db", "port": "5432", "database": "d", "username": "u:x", "password": r"p:a\ss"},
        "/runner/env/tmp1",
    )
    assert text == r"*:*:*:u\:x:p\:a\\ss"
    assert env["PGPASSFILE"] == "/runner/env/tmp1"
    assert env["PGUSER"] == "u:x"


def test_awx_inventory_examples_keep_backups_off_the_ephemeral_container() -> None:
    """Under AWX inventory_dir is inside the job's private data dir, deleted with the job."""
    examples = sorted((AWX_DIR / "inventories").glob("*/group_vars/all/main.yml"))
    assert len(examples) >= 2
    for path in examples:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for key in ("capital_backup_dir", "capital_report_dir"):
            assert Path(data[key]).is_absolute() and "{{" not in data[key], f"{path}: {key}"
