"""Print, as JSON, the value of some variables as each role of each playbook sees them, templated.

Run by test_run_protocol.py with the project's ansible.cfg: argv = inventory, comma-separated variable names,
playbook paths. Ansible's own loader and variable manager (what ansible-playbook uses); no task is executed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ansible import context
from ansible.module_utils.common.collections import ImmutableDict

context.CLIARGS = ImmutableDict(tags=(), skip_tags=(), check=False, diff=False, verbosity=0)

from ansible.inventory.manager import InventoryManager  # noqa: E402 - after CLIARGS, as ansible-playbook does
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.playbook import Playbook  # noqa: E402
from ansible.playbook.block import Block  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from ansible.template import Templar  # noqa: E402
from ansible.vars.manager import VariableManager  # noqa: E402


def tasks(items: list[Any]) -> list[Any]:
    """Every task of a compiled play, blocks, rescues and always sections flattened."""
    found: list[Any] = []
    for item in items:
        if isinstance(item, Block):
            found += tasks(item.block + item.rescue + item.always)
        else:
            found.append(item)
    return found


def main() -> None:
    init_plugin_loader()
    names = sys.argv[2].split(",")
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[sys.argv[1]])
    manager = VariableManager(loader=loader, inventory=inventory)
    host = inventory.get_hosts()[0]
    seen: dict[str, dict[str, Any]] = {}
    for path in sys.argv[3:]:
        book = Playbook.load(path, variable_manager=manager, loader=loader)
        for play in book.get_plays():
            for task in tasks(play.compile()):
                role = task._role.get_name() if task._role else None
                key = f"{Path(path).stem}:{role}"
                if role and key not in seen:
                    variables = manager.get_vars(play=play, host=host, task=task)
                    templar = Templar(loader=loader, variables=variables)
                    seen[key] = {name: templar.template(variables[name]) if name in variables else None
                                 for name in names}
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
