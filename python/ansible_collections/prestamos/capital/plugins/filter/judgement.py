"""Filters of the preflight and verify roles: the judgement of each step, on the controller.

The rules are plain typed functions in module_utils/judgement.py, unit-tested without Ansible. A filter
rather than a module: the judgement needs no database and no target, only results the roles already hold,
and a module task would cost a module start-up per step (AnsiballZ, python) for a few comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.prestamos.capital.plugins.module_utils.judgement import PREFLIGHT_STEPS, VERIFY_STEPS


def _plain(value: Any) -> Any:
    """A plain copy of what the role handed over (Ansible gives lazily templated containers)."""
    if isinstance(value, Mapping):
        return {key: _plain(value[key]) for key in value}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _judge(role: str, steps: Mapping[str, Callable[..., Mapping[str, Any]]], inputs: Any,
           step: str) -> dict[str, Any]:
    if step not in steps:
        raise AnsibleFilterError(f"{role} has no step {step!r}; its steps: {', '.join(steps)}")
    if not isinstance(inputs, Mapping):
        raise AnsibleFilterError(f"{role} step {step}: the input must be a dict of named inputs")
    try:
        return dict(steps[step](**_plain(inputs)))
    except (TypeError, KeyError, ValueError) as exc:  # a role handing the wrong inputs: name the step
        raise AnsibleFilterError(f"{role} step {step}: {exc}") from exc


def capital_preflight_judge(inputs: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The judgement of one preflight step (module_utils/judgement.py PREFLIGHT_STEPS) over its named inputs."""
    return _judge("preflight", PREFLIGHT_STEPS, inputs, step)


def capital_verify_judge(inputs: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The judgement of one verify step (module_utils/judgement.py VERIFY_STEPS) over its named inputs."""
    return _judge("verify", VERIFY_STEPS, inputs, step)


class FilterModule:
    """prestamos.capital.capital_preflight_judge and prestamos.capital.capital_verify_judge."""

    def filters(self) -> dict[str, Any]:
        return {"capital_preflight_judge": capital_preflight_judge, "capital_verify_judge": capital_verify_judge}
