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
    """Raised from an extension point (``Migrator.before_batch``, ``after_piece``) by a test that stops a run at
    a chosen point, like a killed process would."""
