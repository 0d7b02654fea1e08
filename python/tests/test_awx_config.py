"""The AWX configuration as code is well formed and points at real things in this repository.

AWX would only find a wrong playbook name or an undeclared survey variable at launch time, in
production; these tests find them at commit time.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from awx_support import (
    AWX_DIR,
    CONFIG_FILE,
    REPO,
    SCHEMA_FILE,
    all_surveys,
    awx_module_specs,
    by_name,
    config_problems,
    controller_config,
    credential_type,
    declared_variables,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_PLAYBOOKS = {"preflight", "backup", "migrate", "verify", "rollback"}
MIGRATE_WITH_ROLLBACK = "Prestamos capital - migrate with rollback"
CHANGE_WINDOW = "Prestamos capital - production change window"
FLEET = "Prestamos capital - fleet in waves"
WEBHOOK = "Prestamos capital - change window webhook"


def workflow(name: str) -> dict[str, Any]:
    return by_name("workflows")[name]


def nodes_of(name: str) -> dict[str, dict[str, Any]]:
    return {n["identifier"]: n for n in workflow(name)["simplified_workflow_nodes"]}


def playbook_of(node: dict[str, Any]) -> str | None:
    """The playbook a workflow node runs; None for an approval node."""
    if "approval_node" in node:
        return None
    return str(by_name("templates")[node["unified_job_template"]]["playbook"])


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
    nodes = nodes_of(MIGRATE_WITH_ROLLBACK)
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
    for name, item in by_name("workflows").items():
        asked = {q["variable"] for q in item["survey_spec"]["spec"]}
        assert "capital_confirm_production" in asked, name
        # The environment comes from the survey, or is fixed on every node that runs a playbook (a survey
        # answer would override every node's, and the change window's rehearsal runs on staging).
        for node in item["simplified_workflow_nodes"]:
            if playbook_of(node):
                assert "capital_env" in asked or "capital_env" in node.get("extra_data", {}), (name, node)


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


# ------------------------------------------------------------- against the awx.awx modules (24.6.1), offline


def test_the_awx_awx_argument_specs_are_the_real_ones() -> None:
    """Guards the checks below against passing on an empty spec: these options exist in awx.awx 24.6.1."""
    specs = awx_module_specs()
    assert {"ask_limit_on_launch", "notification_templates_error", "survey_spec", "job_slice_count"} <= set(
        specs["job_template"]["argument_spec"]
    )
    assert "notification_templates_approvals" in specs["workflow_job_template"]["argument_spec"]
    node = specs["workflow_job_template_node"]
    assert ["unified_job_template", "approval_node"] in node["rules"]["mutually_exclusive"]
    assert set(node["documentation"]["options"]["approval_node"]["suboptions"]) >= {"name", "timeout"}
    assert "webhook" in specs["notification_template"]["argument_spec"]["notification_type"]["choices"]
    assert "rrule" in specs["schedule"]["argument_spec"]


def test_every_key_is_an_option_of_its_awx_awx_module_and_every_name_resolves() -> None:
    """What the dispatch role would hand awx.awx: unknown keys, types, choices, required options, approval
    nodes, node links, notification templates, credentials, inventories and the prompts a template accepts."""
    problems = config_problems(controller_config())
    assert not problems, "\n".join(problems)


def _mutate(edit: str) -> dict[str, Any]:
    config = copy.deepcopy(controller_config())
    migrate = next(t for t in config["controller_templates"] if t["playbook"] == "playbooks/migrate.yml")
    window = next(w for w in config["controller_workflows"] if w["name"] == CHANGE_WINDOW)
    approve = next(n for n in window["simplified_workflow_nodes"] if "approval_node" in n)
    if edit == "typo_key":
        migrate["notification_templates_sucess"] = migrate.pop("notification_templates_success")
    elif edit == "alias":
        migrate["ask_limit"] = migrate.pop("ask_limit_on_launch")
    elif edit == "bad_choice":
        migrate["job_type"] = "dry-run"
    elif edit == "wrong_type":
        migrate["allow_simultaneous"] = "no"
    elif edit == "node_typo":
        approve["sucess_nodes"] = approve.pop("success_nodes")
    elif edit == "approval_suboption":
        approve["approval_node"]["timout"] = approve["approval_node"].pop("timeout")
    elif edit == "dangling_link":
        approve["success_nodes"] = ["migrat"]
    elif edit == "unknown_notification":
        window["notification_templates_approvals"] = ["Prestamos capital - chnage window webhook"]
    elif edit == "limit_not_asked":
        migrate.pop("ask_limit_on_launch")
    elif edit == "schedule_typo":
        config["controller_schedules"][0]["rule"] = config["controller_schedules"][0].pop("rrule")
    return config


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("typo_key", "'notification_templates_sucess' is not an option of awx.awx.job_template"),
        ("alias", "an alias of 'ask_limit_on_launch'"),
        ("bad_choice", "'dry-run' is not one of"),
        ("wrong_type", "allow_simultaneous is str"),
        ("node_typo", "'sucess_nodes' is not an option of awx.awx.workflow_job_template_node"),
        ("approval_suboption", "'timout' is not one of"),
        ("dangling_link", "names no node of the workflow: 'migrat'"),
        ("unknown_notification", "no notification template named"),
        ("limit_not_asked", "has no ask_limit_on_launch"),
        ("schedule_typo", "'rule' is not an option of awx.awx.schedule"),
    ],
)
def test_a_mistake_in_a_copy_of_the_config_is_caught(edit: str, expected: str) -> None:
    problems = config_problems(_mutate(edit))
    assert any(expected in p for p in problems), problems


def test_change_window_is_preflight_rehearsal_approval_migrate_and_rollback_on_failure() -> None:
    nodes = nodes_of(CHANGE_WINDOW)
    preflight, rehearsal, approve, migrate, rollback = (
        nodes[i] for i in ("preflight", "rehearsal", "approve", "migrate", "rollback")
    )
    assert set(nodes) == {"preflight", "rehearsal", "approve", "migrate", "rollback"}
    assert playbook_of(preflight) == "playbooks/preflight.yml"
    assert preflight["success_nodes"] == ["rehearsal"] and not preflight.get("failure_nodes")
    # The rehearsal is the migration itself, on staging (restored from a production dump), never production.
    assert playbook_of(rehearsal) == "playbooks/migrate.yml"
    assert rehearsal["inventory"] == "Prestamos staging" and rehearsal["extra_data"]["capital_env"] == "staging"
    assert "Prestamos PostgreSQL staging" in rehearsal["credentials"]
    # Optional: it never blocks by itself; the approver sees it.
    assert rehearsal["always_nodes"] == ["approve"]
    assert approve["approval_node"]["timeout"] > 0
    assert approve["success_nodes"] == ["migrate"] and not approve.get("failure_nodes")
    assert playbook_of(migrate) == "playbooks/migrate.yml"
    assert migrate["failure_nodes"] == ["rollback"] and not migrate.get("success_nodes")
    assert playbook_of(rollback) == "playbooks/rollback.yml"
    for node in (preflight, migrate, rollback):
        assert node["inventory"] == "Prestamos production" and node["extra_data"]["capital_env"] == "production"
    assert "inventory" not in workflow(CHANGE_WINDOW), "a workflow inventory would replace the rehearsal's"


def test_fleet_workflow_pauses_for_approval_after_the_canary_wave() -> None:
    nodes = nodes_of(FLEET)
    assert playbook_of(nodes["preflight"]) == "playbooks/preflight.yml" and "limit" not in nodes["preflight"]
    (canary,) = nodes["preflight"]["success_nodes"]
    (approve,) = nodes[canary]["success_nodes"]
    (rest,) = nodes[approve]["success_nodes"]
    (canary_rollback,) = nodes[canary]["failure_nodes"]
    (rest_rollback,) = nodes[rest]["failure_nodes"]
    assert {playbook_of(nodes[canary]), playbook_of(nodes[rest])} == {"playbooks/migrate.yml"}
    assert {playbook_of(nodes[canary_rollback]), playbook_of(nodes[rest_rollback])} == {"playbooks/rollback.yml"}
    assert nodes[approve]["approval_node"]["timeout"] > 0 and not nodes[approve].get("failure_nodes")
    # The two waves partition the inventory, and each rollback covers exactly its own wave.
    group = nodes[canary]["limit"]
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", group)
    assert nodes[rest]["limit"] == f"all:!{group}"
    assert nodes[canary_rollback]["limit"] == nodes[canary]["limit"]
    assert nodes[rest_rollback]["limit"] == nodes[rest]["limit"]


def test_webhook_reports_migrate_rollback_and_the_workflows_approvals() -> None:
    templates = {Path(t["playbook"]).stem: t for t in by_name("templates").values()}
    for stage in ("migrate", "rollback"):
        for event in ("started", "success", "error"):
            assert WEBHOOK in templates[stage][f"notification_templates_{event}"], (stage, event)
    assert WEBHOOK in templates["verify"]["notification_templates_error"]
    for name in (CHANGE_WINDOW, FLEET):
        for event in ("started", "success", "error", "approvals"):
            assert WEBHOOK in workflow(name)[f"notification_templates_{event}"], (name, event)
    (webhook,) = by_name("notifications").values()
    assert webhook["notification_type"] == "webhook"
    assert re.fullmatch(r"\{\{ *\w+ *\}\}", webhook["notification_configuration"]["password"])


def test_the_schema_refuses_a_literal_webhook_password_or_a_token_in_its_url() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    for key, value in (("password", "hunter2"), ("url", "https://hooks.example.com/x?token=abc")):
        config = copy.deepcopy(controller_config())
        config["controller_notifications"][0]["notification_configuration"][key] = value
        assert not jsonschema.Draft202012Validator(schema).is_valid(config), key


def _rrule(text: str) -> tuple[datetime, dict[str, str]]:
    match = re.fullmatch(r"DTSTART;TZID=UTC:(\d{8}T\d{6}) RRULE:(\S+)", text)
    assert match, f"not DTSTART;TZID=UTC:... RRULE:...: {text}"
    parts = dict(p.split("=", 1) for p in match.group(2).split(";"))
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC), parts


def test_verification_is_scheduled_hourly_for_seven_days_after_the_window() -> None:
    (schedule,) = by_name("schedules").values()
    verify = by_name("templates")[schedule["unified_job_template"]]
    assert verify["playbook"] == "playbooks/verify.yml"
    start, rule = _rrule(schedule["rrule"])
    assert rule["FREQ"] == "HOURLY" and "UNTIL" not in rule
    # AWX caps COUNT at 999; the last run is seven days after the first.
    count, interval = int(rule["COUNT"]), int(rule.get("INTERVAL", "1"))
    assert count <= 999
    assert (start + timedelta(hours=interval * (count - 1))) - start == timedelta(days=7) - timedelta(hours=1)
    assert schedule["extra_data"]["capital_env"] == "production"
    assert schedule["inventory"] == "Prestamos production"


def test_run_notice_credential_injects_the_notify_variables_as_extra_vars_not_env() -> None:
    """ansible-runner records the job's environment in artifacts/<id>/command; AWX's extra_vars injector
    writes a 0400 file and passes `-e @file`. The variables are the run role's."""
    ctype = credential_type("Prestamos run notice")
    fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
    assert all(f.get("secret") for f in fields.values())
    assert set(ctype["injectors"]) == {"extra_vars"}
    injected = ctype["injectors"]["extra_vars"]
    assert set(injected) == {"capital_notify_url", "capital_notify_headers"}
    declared = declared_variables()
    for variable in injected:
        assert any("roles/run/" in where for where, _ in declared.get(variable, [])), variable
    for name, template in by_name("templates").items():
        assert "Prestamos run notice production" in template["credentials"], name


def test_no_credential_in_the_file_gives_a_value_to_a_secret_field() -> None:
    types = by_name("credential_types")
    for name, cred in by_name("credentials").items():
        secret = {f["id"] for f in types[cred["credential_type"]]["inputs"]["fields"] if f.get("secret")}
        assert not secret & set(cred["inputs"]), name
        assert cred.get("update_secrets") is False, f"{name}: a reload would blank the secrets typed into AWX"


def test_loading_the_file_like_the_dispatch_role_leaves_awx_templates_to_awx() -> None:
    """vars_files loads the file as trusted templates: the vault reference (webhook password) renders at load
    time, while the credential types' injectors - AWX's to render at launch - stay untouched (!unsafe);
    without the tag Ansible would fail on an undefined `host` or `url`."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    loader = DataLoader()
    data = loader.load_from_file(str(CONFIG_FILE), trusted_as_template=True)
    rendered = Templar(loader=loader, variables={"capital_awx_webhook_password": "from-the-vault"}).template(data)
    assert rendered["controller_notifications"][0]["notification_configuration"]["password"] == "from-the-vault"
    for ctype in rendered["controller_credential_types"]:
        assert ctype["injectors"] == credential_type(ctype["name"])["injectors"], ctype["name"]
