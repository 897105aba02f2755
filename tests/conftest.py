"""Shared fixtures: databases (SQLite always, PostgreSQL when reachable) and engines.

PostgreSQL tests are skipped on a laptop without a server, but never in CI:
``PAYCHAOS_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns a missing server
into a failure.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from engine.adapters.database import Database, normalize_url
from engine.domain.ports import FixedClock, SeededIds
from engine.service.engine import PaymentEngine

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

POSTGRES_URL = normalize_url(
    os.environ.get("PAYCHAOS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
REQUIRE_POSTGRES = os.environ.get("PAYCHAOS_REQUIRE_POSTGRES") == "1"


def _admin_engine() -> sa.Engine:
    return sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session's own on the PostgreSQL server."""
    name = f"paychaos_test_{os.getpid()}"
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        admin.dispose()
        message = f"PostgreSQL unreachable at {POSTGRES_URL}: {type(exc).__name__}"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{message} (PAYCHAOS_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def fresh_postgres(url: str) -> Database:
    reset = sa.create_engine(url, poolclass=sa.NullPool)
    with reset.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    reset.dispose()
    return Database(url, migrate=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A freshly migrated database: in-memory SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        db = Database("sqlite://", migrate=True)
    else:
        db = fresh_postgres(request.getfixturevalue("postgres_url"))
    yield db
    db.dispose()


@pytest.fixture
def sqlite_database() -> Iterator[Database]:
    db = Database("sqlite://", migrate=True)
    yield db
    db.dispose()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[Database]:
    db = fresh_postgres(postgres_url)
    yield db
    db.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


EngineFactory = Callable[[Database], PaymentEngine]


@pytest.fixture
def make_engine(clock: FixedClock) -> EngineFactory:
    def make(db: Database, seed: int = 1) -> PaymentEngine:
        return PaymentEngine(db, clock, SeededIds(random.Random(seed)))

    return make


@pytest.fixture
def engine(database: Database, make_engine: EngineFactory) -> PaymentEngine:
    return make_engine(database)
