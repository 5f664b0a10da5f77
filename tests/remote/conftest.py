"""Every remote-saga test runs on each broker: in memory, RabbitMQ and Kafka."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pysaga.brokers import from_url
from pysaga.messaging import Broker


@dataclass(frozen=True)
class BrokerKit:
    """How a test reaches one broker: its URL (for another process) and new connections."""

    kind: str
    url: str

    def make(self, **options: Any) -> Broker:
        return from_url(self.url, **options)


@pytest.fixture(params=["memory", "rabbitmq", "kafka"])
def kit(request: pytest.FixtureRequest) -> BrokerKit:
    if request.param == "memory":
        return BrokerKit("memory", f"memory://{uuid.uuid4().hex[:12]}")
    if request.param == "rabbitmq":
        return BrokerKit("rabbitmq", request.getfixturevalue("amqp_url"))
    server = request.getfixturevalue("kafka_server")
    return BrokerKit(
        "kafka",
        f"{server.url}?fetch_max_wait_ms=5&session_timeout_ms=2000&heartbeat_interval_ms=300",
    )


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]
