"""Shared pytest fixtures: real throwaway PostgreSQL (capital_migrate.pgtmp), never a mock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from capital_migrate.pgtmp import Cluster, Database, temporary_database

# Tests that use any of these (directly or through another fixture) need a real server.
PG_FIXTURES = frozenset({"pg_cluster", "pg_db"})


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here too, so it is known when pytest runs from another rootdir."""
    config.addinivalue_line("markers", "integration: needs a real throwaway PostgreSQL")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a PostgreSQL fixture `integration`, before -m deselects anything."""
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway cluster for the whole session; removed at the end whatever happens."""
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
