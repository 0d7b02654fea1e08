"""Helpers shared by the AWX tests: where things are, and the config-as-code loaded once."""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
AWX_DIR = REPO / "awx"
CONFIG_FILE = AWX_DIR / "controller_configuration.yml"
SCHEMA_FILE = AWX_DIR / "schema.json"
# Playbook-level argument specs (validated by the playbook with validate_argument_spec, like a role's).
PLAYBOOK_SPECS = sorted((REPO / "playbooks" / "vars").glob("*argument_spec*.yml"))


class _ConfigLoader(yaml.SafeLoader):
    """Reads `!unsafe` (Ansible's tag, on the templates AWX renders itself) as the plain string it is."""


_ConfigLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


@functools.cache
def controller_config() -> dict[str, Any]:
    """awx/controller_configuration.yml as data (YAML anchors resolved, `!unsafe` strings as strings)."""
    data = yaml.load(CONFIG_FILE.read_text(encoding="utf-8"), Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader
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


# ----------------------------------------------------------------- the awx.awx modules' own argument specs

AWX_COLLECTION = REPO / "collections" / "ansible_collections" / "awx" / "awx"
# Which awx.awx module the infra.controller_configuration dispatch role feeds each list to.
MODULE_OF = {
    "controller_organizations": "organization",
    "controller_execution_environments": "execution_environment",
    "controller_credential_types": "credential_type",
    "controller_credentials": "credential",
    "controller_projects": "project",
    "controller_inventories": "inventory",
    "controller_inventory_sources": "inventory_source",
    "controller_notifications": "notification_template",
    "controller_templates": "job_template",
    "controller_workflows": "workflow_job_template",
    "controller_schedules": "schedule",
}
NODE_MODULE = "workflow_job_template_node"
# Keys the dispatch role reads itself instead of passing them to the module: a workflow's nodes go,
# one by one, to workflow_job_template_node, with `workflow` and `organization` filled in by the role
# (infra.controller_configuration roles/workflow_job_templates/tasks/add_workflows_schema.yml).
ROLE_KEYS = {"controller_workflows": {"simplified_workflow_nodes"}}
ROLE_SUPPLIED_NODE_OPTIONS = {"workflow_job_template", "organization"}

# Run in a separate interpreter so importing the collection touches nothing in the test process. Each
# module builds `argument_spec` in main() and hands it to ControllerAPIModule: replacing that class
# with one that raises captures the real spec (aliases, choices, types, mutual exclusions) without an
# AWX to talk to. DOCUMENTATION gives what the spec leaves open (approval_node's suboptions).
_CAPTURE = r"""
import importlib, json, sys
import yaml
sys.path.insert(0, sys.argv[1])

class Captured(Exception):
    pass

class Capture:
    def __init__(self, argument_spec=None, **rules):
        raise Captured(argument_spec, rules)

out = {}
for name in sys.argv[2:]:
    module = importlib.import_module(f"ansible_collections.awx.awx.plugins.modules.{name}")
    module.ControllerAPIModule = Capture
    try:
        module.main()
    except Captured as captured:
        spec, rules = captured.args
    else:
        raise SystemExit(f"{name}: main() returned without building its module")
    out[name] = {"argument_spec": spec, "rules": rules,
                 "documentation": yaml.safe_load(module.DOCUMENTATION)}
print(json.dumps(out, default=list))
"""


@functools.cache
def awx_module_specs() -> dict[str, dict[str, Any]]:
    """{module: {argument_spec, rules, documentation}} of the awx.awx modules the config is fed to."""
    import subprocess
    import sys

    manifest = AWX_COLLECTION / "MANIFEST.json"
    assert manifest.is_file(), f"awx.awx is not installed in {AWX_COLLECTION}: run `make collections`"
    done = subprocess.run(
        [sys.executable, "-c", _CAPTURE, str(REPO / "collections"), *MODULE_OF.values(), NODE_MODULE],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    specs: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return specs


def _type_problem(value: Any, option: dict[str, Any]) -> str | None:
    kind = option.get("type", "str")
    python = {"str": str, "bool": bool, "int": int, "list": list, "dict": dict}.get(kind)
    if python is None:
        return None
    if kind == "int" and isinstance(value, bool):
        return "is a boolean, the module wants an int"
    if kind == "str" and isinstance(value, int | float) and not isinstance(value, bool):
        return None  # the module converts a number to its string
    if not isinstance(value, python):
        return f"is {type(value).__name__}, the module wants {kind}"
    if kind == "list" and option.get("elements") == "str" and not all(isinstance(v, str) for v in value):
        return "has non-string elements"
    return None


def option_problems(where: str, item: dict[str, Any], module: str, ignore: Collection[str] = ()) -> list[str]:
    """What awx.awx.<module> would refuse (or silently not know) in one item: unknown keys (aliases too:
    the dispatch role reads canonical names), wrong types, values outside choices, missing required
    options, mutually exclusive options given together."""
    spec = awx_module_specs()[module]
    options: dict[str, dict[str, Any]] = spec["argument_spec"]
    problems = []
    for key, value in item.items():
        if key in ignore:
            continue
        if key not in options:
            aliases = {a: k for k, o in options.items() for a in o.get("aliases", [])}
            hint = f" (an alias of {aliases[key]!r}: write that)" if key in aliases else ""
            problems.append(f"{where}: {key!r} is not an option of awx.awx.{module}{hint}")
            continue
        option = options[key]
        wrong = _type_problem(value, option)
        if wrong:
            problems.append(f"{where}.{key} {wrong}")
        if "choices" in option and value not in option["choices"]:
            problems.append(f"{where}.{key}: {value!r} is not one of {option['choices']}")
    for key, option in options.items():
        if option.get("required") and key not in item and key not in ignore:
            problems.append(f"{where}: awx.awx.{module} requires {key!r}")
    for group in spec["rules"].get("mutually_exclusive", []):
        given = [k for k in group if k in item]
        if len(given) > 1:
            problems.append(f"{where}: {given} are mutually exclusive in awx.awx.{module}")
    return problems


def config_problems(config: dict[str, Any]) -> list[str]:
    """Every key of every list checked against its awx.awx module, and every name and link resolved."""
    problems: list[str] = []
    for kind, items in config.items():
        if kind not in MODULE_OF:
            problems.append(f"{kind}: not a list the dispatch role knows ({sorted(MODULE_OF)})")
            continue
        for item in items:
            where = f"{kind}[{item.get('name')!r}]"
            problems += option_problems(where, item, MODULE_OF[kind], ROLE_KEYS.get(kind, set()))
            for node in item.get("simplified_workflow_nodes", []):
                node_where = f"{where}.nodes[{node.get('identifier')!r}]"
                problems += option_problems(node_where, node, NODE_MODULE, ROLE_SUPPLIED_NODE_OPTIONS)
                problems += _approval_problems(node_where, node)
    return problems + _link_problems(config)


def _approval_problems(where: str, node: dict[str, Any]) -> list[str]:
    """approval_node is a bare dict in the spec; its documented suboptions are what the module reads."""
    if "approval_node" not in node:
        if "unified_job_template" not in node:
            return [f"{where}: neither a unified_job_template nor an approval_node"]
        return []
    documented = awx_module_specs()[NODE_MODULE]["documentation"]["options"]["approval_node"]["suboptions"]
    approval = node["approval_node"]
    problems = [f"{where}.approval_node: {k!r} is not one of {sorted(documented)}" for k in approval
                if k not in documented]
    problems += [f"{where}.approval_node.{k} is required" for k, o in documented.items()
                 if o.get("required") and k not in approval]
    return problems


def _link_problems(config: dict[str, Any]) -> list[str]:
    """Names that must resolve within the file, and prompts the launched template must accept."""
    def names(kind: str) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in config.get(f"controller_{kind}", [])}

    templates, workflows = names("templates"), names("workflows")
    notifications, inventories, credentials = names("notifications"), names("inventories"), names("credentials")
    problems: list[str] = []

    def check_names(where: str, wanted: Any, known: dict[str, Any], what: str) -> None:
        for name in [wanted] if isinstance(wanted, str) else wanted or []:
            if name not in known:
                problems.append(f"{where}: no {what} named {name!r} in the file")

    def check_prompts(where: str, prompts: dict[str, Any], target: str) -> None:
        """Values a node or schedule gives at launch are dropped unless the template asks for them."""
        template = templates.get(target) or workflows.get(target)
        if template is None:
            problems.append(f"{where}: no job template or workflow named {target!r} in the file")
            return
        check_names(where, prompts.get("inventory"), inventories, "inventory")
        check_names(where, prompts.get("credentials"), credentials, "credential")
        for key, flag in (("inventory", "ask_inventory_on_launch"), ("credentials", "ask_credential_on_launch"),
                          ("limit", "ask_limit_on_launch")):
            if key in prompts and not template.get(flag):
                problems.append(f"{where}: sets {key}, but {target!r} has no {flag}: AWX would ignore it")
        asked = {q["variable"] for q in (template.get("survey_spec") or {}).get("spec", [])}
        for variable in prompts.get("extra_data") or {}:
            if variable not in asked and not template.get("ask_variables_on_launch"):
                problems.append(f"{where}: extra_data {variable!r} is neither in {target!r}'s survey "
                                "nor allowed by ask_variables_on_launch")

    for kind, items in (("templates", templates), ("workflows", workflows)):
        for name, item in items.items():
            for event in ("started", "success", "error", "approvals"):
                check_names(f"{kind}[{name!r}]", item.get(f"notification_templates_{event}"),
                            notifications, "notification template")
    for name, workflow in workflows.items():
        nodes = {n["identifier"]: n for n in workflow.get("simplified_workflow_nodes", [])}
        if len(nodes) != len(workflow.get("simplified_workflow_nodes", [])):
            problems.append(f"workflow {name!r}: node identifiers are not unique")
        for identifier, node in nodes.items():
            where = f"workflow {name!r} node {identifier!r}"
            for edge in ("success_nodes", "failure_nodes", "always_nodes"):
                for target in node.get(edge, []):
                    if target not in nodes:
                        problems.append(f"{where}: {edge} names no node of the workflow: {target!r}")
            if "unified_job_template" in node:
                check_prompts(where, node, node["unified_job_template"])
    for schedule in config.get("controller_schedules", []):
        check_prompts(f"schedule {schedule['name']!r}", schedule, schedule["unified_job_template"])
    return problems
