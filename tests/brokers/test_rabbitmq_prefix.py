"""The RabbitMQ broker's *prefix*, as a keyword or in the URL (``?prefix=``): every exchange,
queue and reply queue gets it, so two applications on one vhost never see each other's
messages; a prefix RabbitMQ could not use is refused at once."""

from __future__ import annotations

import uuid

import anyio
import pytest

from pysaga import Envelope
from pysaga.brokers import from_url
from pysaga.brokers.rabbitmq import RabbitMQBroker

from .contract import Ping
from .rabbit_tools import Created, RecordingBroker

pytestmark = pytest.mark.anyio


def new_prefix() -> str:
    """A prefix no other test (or test run on the same server) uses."""
    return f"t{uuid.uuid4().hex[:8]}."


def test_the_urls_prefix_names_every_exchange_and_queue() -> None:
    broker = from_url("amqp://app:secret@127.0.0.1:5672/?prefix=shop.&heartbeat=30")
    assert isinstance(broker, RabbitMQBroker)
    assert broker.prefix == "shop."
    assert broker.exchange_name("stock") == "shop.stock"
    assert broker.queue_name("stock", "stock") == "shop.stock"
    assert broker.queue_name("stock", "audit") == "shop.stock.audit"
    # The client library gets the URL without it; its own options stay.
    assert broker.url == "amqp://app:secret@127.0.0.1:5672/?heartbeat=30"
    assert "secret" not in repr(broker)


def test_the_keyword_wins_over_the_url() -> None:
    broker = RabbitMQBroker("amqp://127.0.0.1/?prefix=url.", prefix="keyword.")
    assert broker.prefix == "keyword."
    assert broker.url == "amqp://127.0.0.1/"
    assert RabbitMQBroker("amqp://127.0.0.1/?prefix=url.", prefix="").prefix == ""


def test_no_prefix_leaves_every_name_and_the_url_as_they_were() -> None:
    broker = RabbitMQBroker("amqp://127.0.0.1:5672/%2Fprod?heartbeat=5")
    assert broker.prefix == ""
    assert broker.exchange_name("stock") == "stock"
    assert broker.url == "amqp://127.0.0.1:5672/%2Fprod?heartbeat=5"


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("amqp://127.0.0.1/?prefix=a.&prefix=b.", {}, "prefix= 2 times"),
        ("amqp://127.0.0.1/", {"prefix": "x" * 201}, "at most 200"),
        ("amqp://127.0.0.1/", {"prefix": "shop\n"}, "control character"),
    ],
)
def test_a_prefix_rabbitmq_cannot_use_is_refused_saying_why(
    url: str, options: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        RabbitMQBroker(url, **options)


async def test_two_applications_on_one_vhost_never_see_each_others_messages(
    amqp_url: str,
) -> None:
    """Both use the destination ``stock``: each hears its own message, and only its own."""
    created = Created()
    one, two = new_prefix(), new_prefix()
    heard: dict[str, list[str]] = {one: [], two: []}
    try:
        async with (
            RecordingBroker(f"{amqp_url}?prefix={one}", created) as first,
            RecordingBroker(amqp_url, created, prefix=two) as second,
        ):
            assert (first.prefix, second.prefix) == (one, two)
            for prefix, broker in ((one, first), (two, second)):

                async def handle(envelope: Envelope, prefix: str = prefix) -> None:
                    heard[prefix].append(envelope.id)

                await broker.subscribe("stock", handle)
            await first.publish("stock", Envelope.of(Ping(n=1), id="from-one"))
            await second.publish("stock", Envelope.of(Ping(n=2), id="from-two"))
            with anyio.fail_after(10):
                while not (heard[one] and heard[two]):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # a stray copy would have arrived by now
        assert heard == {one: ["from-one"], two: ["from-two"]}
        assert {f"{one}stock", f"{two}stock"} <= created.queues
    finally:
        await created.delete(amqp_url)
