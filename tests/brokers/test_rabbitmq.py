"""The broker contract on RabbitMQ, plus what only RabbitMQ has: its topology, message
properties, publisher confirms, connection errors and recovery from dropped connections."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import aio_pika
import anyio
import pytest

from pysaga import BrokerUnavailable
from pysaga.brokers import from_url
from pysaga.brokers.rabbitmq import RabbitMQBroker
from pysaga.messaging import DeadLetter, Envelope

from ..services import free_port
from .contract import WAIT, BrokerContract, BrokerSetup, Inbox, Ping, ping
from .rabbit_tools import Proxy, RabbitSetup, close_connections, raw_channel

pytestmark = pytest.mark.anyio


@pytest.fixture
async def rabbit(amqp_url: str) -> AsyncIterator[RabbitSetup]:
    """A setup whose exchanges and queues are deleted when the test ends."""
    setup = RabbitSetup(amqp_url)
    try:
        yield setup
    finally:
        await setup.cleanup()


class TestRabbitMQBroker(BrokerContract):
    @pytest.fixture
    def setup(self, rabbit: RabbitSetup) -> BrokerSetup:
        return rabbit


# -- configuration and errors ----------------------------------------------------------------


def test_from_url_builds_a_rabbitmq_broker_with_options() -> None:
    broker = from_url("amqp://app:secret@127.0.0.1:5672/shop", prefetch=7, prefix="shop.")
    assert isinstance(broker, RabbitMQBroker)
    assert broker.prefetch == 7
    assert broker.exchange_name("stock") == "shop.stock"
    assert broker.queue_name("stock", "stock") == "shop.stock"
    assert broker.queue_name("stock", "audit") == "shop.stock.audit"
    assert "secret" not in repr(broker)
    assert isinstance(from_url("amqps://app:secret@127.0.0.1/"), RabbitMQBroker)


def test_a_url_that_is_not_amqp_is_refused_without_showing_the_password() -> None:
    with pytest.raises(ValueError, match="amqp://") as caught:
        RabbitMQBroker("http://app:secret@127.0.0.1:5672/")
    assert "secret" not in str(caught.value)


async def test_nothing_listening_raises_broker_unavailable_naming_the_url() -> None:
    port = free_port()
    broker = RabbitMQBroker(f"amqp://app:secret@127.0.0.1:{port}/")
    with pytest.raises(BrokerUnavailable) as caught:
        async with broker:
            pass
    message = str(caught.value)
    assert f"amqp://app:***@127.0.0.1:{port}/" in message
    assert "secret" not in message
    assert "check that RabbitMQ is running" in message


async def test_wrong_password_says_to_check_the_login(amqp_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(amqp_url)
    url = f"amqp://{parts.username}:not-the-password@{parts.hostname}:{parts.port or 5672}/"
    with pytest.raises(BrokerUnavailable, match="check the user name and password") as caught:
        async with RabbitMQBroker(url):
            pass
    assert "not-the-password" not in str(caught.value)


async def test_a_vhost_that_does_not_exist_is_named(amqp_url: str) -> None:
    url = amqp_url.rstrip("/") + "/no-such-vhost"
    with pytest.raises(BrokerUnavailable, match="vhost 'no-such-vhost'"):
        async with RabbitMQBroker(url):
            pass


def test_a_missing_client_library_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['aio_pika'] = None\n"
        "try:\n"
        "    import pysaga.brokers.rabbitmq\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'pysaga-core[rabbitmq]'" in result.stdout


# -- topology and message properties --------------------------------------------------------


async def test_publishing_declares_a_durable_queue_that_keeps_persistent_messages(
    rabbit: RabbitSetup,
) -> None:
    dest = rabbit.name("props")
    sent = ping(1, correlation_id="saga-42")
    async with rabbit.make() as broker:
        await broker.publish(dest, sent)
        dead = broker.dead_letter_destination(dest)
    async with raw_channel(rabbit.url) as channel:
        queue = await channel.declare_queue(dest, passive=True)
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        # The queue exists with these settings (a declare with others would be refused).
        await channel.declare_queue(dest, durable=True, arguments={"x-dead-letter-exchange": dead})
        await channel.declare_queue(dead, durable=True)
    assert message.body == sent.encode()
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == sent.id
    assert message.type == "Ping"
    assert message.correlation_id == "saga-42"
    assert message.routing_key == "saga-42"
    assert message.content_type == "application/json"
    assert message.timestamp is not None


async def test_each_group_has_its_own_queue_named_after_destination_and_group(
    rabbit: RabbitSetup,
) -> None:
    dest = rabbit.name("groups")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with rabbit.make() as broker:
        await broker.subscribe(dest, handler, group="audit")
        async with raw_channel(rabbit.url) as channel:
            await channel.declare_queue(f"{dest}.audit", passive=True)
        await broker.publish(dest, ping(3))
        assert await got.wait_for(1) == [3]


async def test_a_message_rabbitmq_itself_rejects_reaches_the_dead_letter_destination(
    rabbit: RabbitSetup,
) -> None:
    dest = rabbit.name("reject")
    dead = Inbox()

    async def on_dead(letter: DeadLetter) -> None:
        dead.add(letter)

    async with rabbit.make() as broker:
        await broker.subscribe_dead_letters(dest, on_dead)
        sent = ping(5)
        await broker.publish(dest, sent)
        async with raw_channel(rabbit.url) as channel:
            queue = await channel.declare_queue(dest, passive=True)
            message = await queue.get(timeout=5)
            assert message is not None
            await message.reject(requeue=False)
        [letter] = await dead.wait_for(1)
    assert letter.envelope == sent
    assert letter.reason == "(no reason recorded)"


async def test_sends_wait_for_their_confirms_concurrently(rabbit: RabbitSetup) -> None:
    """Concurrent sends are in flight together: none holds the channel while it waits."""
    dest = rabbit.name("pipelined")
    most = 0
    async with rabbit.make() as broker:
        await broker.publish(dest, ping(0))  # declares, so the rest only publish
        link = broker._link
        assert link is not None

        async def watch() -> None:
            nonlocal most
            while True:
                pending = link.publisher_raw.confirmations  # type: ignore[attr-defined]
                most = max(most, len(pending))
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as senders:
                for n in range(200):
                    senders.start_soon(broker.publish, dest, ping(n))
            tg.cancel_scope.cancel()
    assert most > 1


async def test_prefetch_above_concurrency_still_handles_at_most_concurrency(
    rabbit: RabbitSetup,
) -> None:
    dest = rabbit.name("prefetch")
    running = 0
    most = 0
    done = Inbox()

    async def handler(envelope: Envelope) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.01)
        running -= 1
        done.add(envelope.parse(Ping).n)

    async with rabbit.make(prefetch=20) as broker:
        for n in range(30):
            await broker.publish(dest, ping(n))
        await broker.subscribe(dest, handler, concurrency=3)
        assert sorted(await done.wait_for(30)) == list(range(30))
    assert 1 <= most <= 3


# -- losing the connection -------------------------------------------------------------------


async def test_no_message_is_lost_when_connections_drop_in_the_middle_of_a_stream(
    rabbit: RabbitSetup,
) -> None:
    """Sends waiting for their confirms and messages being handled when every connection
    drops are sent and delivered again: each message is handled at least once."""
    dest = rabbit.name("stream")
    handled: set[str] = set()
    progress = Inbox()
    sent: list[Envelope] = []
    dropped = anyio.Event()

    async def handler(envelope: Envelope) -> None:
        handled.add(envelope.id)
        progress.add(1)
        await anyio.sleep(0.002)

    async with rabbit.make() as publisher, rabbit.make() as consumer:
        await consumer.subscribe(dest, handler, concurrency=20)

        async def one(envelope: Envelope, limiter: anyio.Semaphore) -> None:
            async with limiter:
                await publisher.publish(dest, envelope)

        async def stream() -> None:
            """Send one message every few milliseconds until 200 more went after the drop:
            the drop always lands in the middle of the stream, however slow the box."""
            limiter = anyio.Semaphore(50)
            after = 0
            async with anyio.create_task_group() as senders:
                while after < 200:
                    envelope = ping(len(sent), correlation_id=f"saga-{len(sent)}")
                    sent.append(envelope)
                    senders.start_soon(one, envelope, limiter)
                    after += dropped.is_set()
                    await anyio.sleep(0.004)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            await progress.wait_for(100, within=60)
            assert await close_connections(rabbit.marker) >= 2
            dropped.set()
        with anyio.fail_after(120):
            while len(handled) < len(sent):
                await progress.wait_for(len(progress.items) + 1, within=120)
    assert len(sent) >= 300
    assert handled == {envelope.id for envelope in sent}, "every message handled at least once"


async def test_a_reply_address_works_again_after_a_reconnect(rabbit: RabbitSetup) -> None:
    got = Inbox()

    async def on_reply(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with rabbit.make() as requester:
        channel = await requester.open_reply_channel(on_reply)
        address = channel.destination
        await rabbit.drop_connections()
        async with rabbit.make(connection_name="pysaga-test-replier") as replier:
            # Replies sent before the reply queue is back are dropped: ask until one arrives.
            with anyio.fail_after(WAIT * 2):
                while not got.items:
                    await replier.reply(address, ping(1))
                    with anyio.move_on_after(0.5):
                        await got.wait_for(1)
    assert got.items[0] == 1


async def test_a_subscription_declares_its_queue_again_when_it_is_deleted(
    rabbit: RabbitSetup,
) -> None:
    dest = rabbit.name("deleted")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with rabbit.make() as broker:
        await broker.subscribe(dest, handler)
        async with raw_channel(rabbit.url) as channel:
            await channel.queue_delete(dest)
        # What is sent while the queue is gone is lost with it: send until one arrives.
        with anyio.fail_after(WAIT * 2):
            n = 0
            while not got.items:
                n += 1
                await broker.publish(dest, ping(n))
                with anyio.move_on_after(0.5):
                    await got.wait_for(1)


async def test_a_publish_waits_for_the_broker_to_come_back(rabbit: RabbitSetup) -> None:
    """A send made while the connection is down is confirmed once it is back."""
    dest = rabbit.name("waits")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with rabbit.make() as broker:
        await broker.subscribe(dest, handler)
        await broker.publish(dest, ping(0))
        await got.wait_for(1)

        async def drop_again_and_again() -> None:
            for _ in range(3):
                await close_connections(rabbit.marker)

        async with anyio.create_task_group() as tg:
            tg.start_soon(drop_again_and_again)
            for n in range(1, 30):
                await broker.publish(dest, ping(n))
                await anyio.sleep(0.05)
        assert set(await got.wait_for(30, within=60)) == set(range(30))


async def test_a_send_fails_when_rabbitmq_stays_away_and_works_once_it_is_back(
    rabbit: RabbitSetup,
) -> None:
    dest = rabbit.name("away")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with Proxy(rabbit.url).running() as proxy:
        through_proxy = RabbitSetup(proxy.url)
        through_proxy.created = rabbit.created
        async with through_proxy.make(publish_timeout=1.0, reconnect_interval=0.1) as broker:
            await broker.subscribe(dest, handler)
            await broker.publish(dest, ping(1))
            assert await got.wait_for(1) == [1]
            proxy.cut()
            with pytest.raises(BrokerUnavailable, match="did not confirm") as caught:
                await broker.publish(dest, ping(2))
            assert "***" in str(caught.value)
            await proxy.restore()
            await broker.publish(dest, ping(3))
            await got.wait_for(2)
    assert {1, 3} <= set(got.items)


async def test_subscriptions_and_sends_ride_out_an_outage(rabbit: RabbitSetup) -> None:
    """While RabbitMQ is unreachable a send waits; once it is back, everything arrives."""
    dest = rabbit.name("outage")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with Proxy(rabbit.url).running() as proxy:
        through_proxy = RabbitSetup(proxy.url)
        through_proxy.created = rabbit.created
        async with through_proxy.make(reconnect_interval=0.1) as broker:
            await broker.subscribe(dest, handler, concurrency=4)
            for n in range(5):
                await broker.publish(dest, ping(n))
            await got.wait_for(5)
            proxy.cut()
            async with anyio.create_task_group() as tg:
                for n in range(5, 10):
                    tg.start_soon(broker.publish, dest, ping(n))
                await anyio.sleep(1.0)  # several attempts to reconnect fail meanwhile
                await proxy.restore()
            assert set(await got.wait_for(10, within=60)) == set(range(10))
