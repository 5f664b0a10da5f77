"""The choreography tests reuse the remote tests' brokers: in memory, RabbitMQ and Kafka."""

from __future__ import annotations

from ..remote.conftest import BrokerKit, kit, suffix

__all__ = ("BrokerKit", "kit", "suffix")
