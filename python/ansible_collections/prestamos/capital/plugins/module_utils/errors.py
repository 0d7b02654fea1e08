"""The errors of the migration and the reverse migration (plain Python, no Ansible imports)."""

from __future__ import annotations

from typing import Any


class MigrationError(Exception):
    """An operator-facing failure: ``msg`` says what and what to do; ``details`` go into the result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class Interrupted(Exception):
    """A run stopped from outside at a chosen point, like a killed process: the tests' StoppingMigrator
    (python/tests/migration_helpers.py) raises it; nothing in the collection does. It lives here only because
    test modules import it from ``module_utils.migration``."""
