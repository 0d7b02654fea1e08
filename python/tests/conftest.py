"""Shared pytest fixtures: real throwaway PostgreSQL (capital_migrate.pgtmp), never a mock."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from capital_migrate.pgtmp import Cluster, Database, find_bindir, requested_version, temporary_database

# Tests that use any of these (directly or through another fixture) need a real server.
PG_FIXTURES = frozenset({"pg_cluster", "pg_db"})


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here too, so it is known when pytest runs from another rootdir."""
    config.addinivalue_line("markers", "integration: needs a real throwaway PostgreSQL")
    # CAPITAL_PG_VERSION=16 runs the same tests on another major: pgtmp's clusters honour it, and that
    # version's psql/pg_dump/pg_restore go first on PATH for every tool a test starts (a 15 pg_dump refuses 16).
    version = requested_version()
    if version is not None:
        os.environ["PATH"] = f"{find_bindir(version)}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a PostgreSQL fixture `integration`, before -m deselects anything."""
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway cluster for the whole session (major $CAPITAL_PG_VERSION, else the newest found)."""
    with Cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_db(pg_cluster: Cluster) -> Iterator[Database]:
    """A fresh empty database in the session cluster, dropped after the test.

    Gives ``name``, ``env`` (full subprocess environment with the libpq variables), ``dsn`` and
    ``connect()``; ``cluster`` for the rest (crash/restart belong to a private Cluster, not this one).
    """
    with temporary_database(pg_cluster) as db:
        yield db


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--faults", choices=("fast", "full"), default="fast", help="fault-injection matrix size")
