"""Message brokers: ``memory`` ships with the core; ``rabbitmq`` and ``kafka`` are extras.

:func:`from_url` picks one by URL scheme and imports its module only then, so a client library
is loaded only when it is used; a missing extra raises an ImportError naming it.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from ..messaging import Broker
from ._base import DEFAULT_REDELIVERY, BaseBroker, Consumer

__all__ = ("DEFAULT_REDELIVERY", "BaseBroker", "Consumer", "from_url", "resolve")

_SCHEMES = {
    "memory": ("pysaga.brokers.memory", "MemoryBroker"),
    "amqp": ("pysaga.brokers.rabbitmq", "RabbitMQBroker"),
    "amqps": ("pysaga.brokers.rabbitmq", "RabbitMQBroker"),
    "kafka": ("pysaga.brokers.kafka", "KafkaBroker"),
}


def from_url(url: str, **options: Any) -> Broker:
    """Create the broker named by *url* (not yet entered).

    * ``memory://`` — in this process; ``memory://name`` shares queues with every broker of
      that name in the process.
    * ``amqp://user:password@host:5672/vhost`` (or ``amqps://``) — RabbitMQ (extra ``rabbitmq``).
    * ``kafka://host:9092[,host2:9092]`` — Kafka (extra ``kafka``).

    Keyword *options* go to the broker class (``redelivery``, ``concurrency``, ...).

    Raises:
        ValueError: for a scheme pysaga does not know.
        ImportError: when the extra the scheme needs is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    try:
        module_name, class_name = _SCHEMES[scheme]
    except KeyError:
        known = ", ".join(sorted({f"'{s}://'" for s in _SCHEMES}))
        raise ValueError(
            f"broker URL {url!r} has an unknown scheme {scheme!r}; use one of {known}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    broker: Broker = cls.from_url(url, **options)
    return broker


def resolve(broker: str | Broker) -> tuple[Broker, bool]:
    """The broker object that *broker* names, and whether it was created here.

    A URL makes a new broker that its caller owns and must enter; an object is used as it is
    (whoever created it enters it).

    Raises:
        TypeError: *broker* is neither a URL nor a :class:`~pysaga.Broker`.
    """
    if isinstance(broker, str):
        return from_url(broker), True
    if not isinstance(broker, Broker):
        raise TypeError(
            f"broker={broker!r}: pass a broker URL ('memory://name', 'amqp://...', "
            "'kafka://...') or an object implementing pysaga.Broker"
        )
    return broker, False
