"""The broker contract on Kafka, plus what only Kafka has: topics and their names, record keys
and headers, offsets committed only up to what finished, the shared reply topic, connection
errors, and no loss when connections drop in the middle of a stream."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from pysaga import BrokerUnavailable
from pysaga.brokers import from_url
from pysaga.brokers.kafka import KafkaBroker, topic_name
from pysaga.messaging import Envelope

from ..conftest import require_service
from ..services import KafkaServer, free_port
from .contract import WAIT, BrokerContract, BrokerSetup, Inbox, Ping, ping
from .kafka_tools import KafkaSetup, Proxy, proxied_broker

pytestmark = pytest.mark.anyio


class TestKafkaBroker(BrokerContract):
    @pytest.fixture
    def setup(self, kafka: KafkaSetup) -> BrokerSetup:
        return kafka


class CutSetup(KafkaSetup):
    """A setup whose clients reach their broker only through a proxy that a test can cut."""

    __test__ = False

    def __init__(self, bootstrap: str, proxy: Proxy) -> None:
        super().__init__(KafkaServer(f"kafka://{bootstrap}"))
        self.proxy = proxy

    async def drop_connections(self) -> None:
        self.proxy.cut()


@pytest.fixture(scope="module")
def _proxied() -> Iterator[tuple[str, Proxy] | None]:
    with proxied_broker() as found:
        yield found


@pytest.fixture
async def cut_kafka(_proxied: tuple[str, Proxy] | None) -> AsyncIterator[CutSetup]:
    """A broker of this module's own behind a cuttable proxy (it advertises the proxy, so
    every connection goes through it); the test's topics are deleted when it ends."""
    if _proxied is None:
        require_service(
            "the bundled Kafka-protocol broker (for a second broker behind a proxy)",
            "install the test extra: pip install -e '.[dev]'",
        )
    assert _proxied is not None
    setup = CutSetup(*_proxied)
    try:
        yield setup
    finally:
        await setup.cleanup()


async def read_records(bootstrap: str, topic: str, count: int) -> list[Any]:
    """The first *count* records of *topic*, read by a plain client with no group."""
    client = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=5
    )
    await client.start()
    records: list[Any] = []
    try:
        with anyio.fail_after(WAIT):
            while len(records) < count:
                for batch in (await client.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await client.stop()
    return records


# -- configuration and errors ----------------------------------------------------------------


def test_from_url_reads_servers_and_options() -> None:
    broker = from_url(
        "kafka://k1:9092,k2?fetch_max_wait_ms=5&partitions=8&client_id=shop&idempotence=false",
        linger_ms=2,
        partitions=6,
    )
    assert isinstance(broker, KafkaBroker)
    assert broker.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert broker.fetch_max_wait_ms == 5
    assert broker.partitions == 6, "keyword options win over the URL's"
    assert broker.client_id == "shop"
    assert broker.idempotence is False
    assert broker.linger_ms == 2
    assert broker.system == "kafka"
    defaults = KafkaBroker()
    assert defaults.fetch_max_wait_ms == 100
    assert defaults.partitions == 4


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://k1:9092?fetch_max_wait=5", "unknown Kafka URL option 'fetch_max_wait'"),
        ("kafka://k1:9092?partitions=many", "partitions='many' is not a number"),
        ("kafka://k1:9092?idempotence=perhaps", "must be true or false"),
        ("kafka:///?partitions=1", "names no server"),
        ("kafka://k1:9092?partitions=0", "must be at least 1"),
    ],
)
def test_a_bad_url_is_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaBroker.from_url(url)


def test_topic_names_keep_legal_names_and_make_others_legal_and_distinct() -> None:
    assert topic_name("stock.reserve_v2-eu") == "stock.reserve_v2-eu"
    odd = topic_name("orders/eu west:1")
    assert odd.startswith("orders_eu_west_1-")
    assert odd != topic_name("orders_eu_west_1"), "two destinations never share a topic"
    assert odd != topic_name("orders/eu west:2")
    long = topic_name("x" * 400)
    assert len(long) <= 249
    assert long != topic_name("x" * 401)
    for name in (odd, long, topic_name("."), topic_name("ünïcode")):
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name), name


async def test_nothing_listening_raises_broker_unavailable_naming_the_servers() -> None:
    port = free_port()
    broker = KafkaBroker(f"127.0.0.1:{port}", connect_timeout=5)
    with anyio.fail_after(30), pytest.raises(BrokerUnavailable) as caught:
        async with broker:
            pass
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "check that the brokers are running" in message
    assert "advertise" in message


def test_a_missing_client_library_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['aiokafka'] = None\n"
        "try:\n"
        "    import pysaga.brokers.kafka\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'pysaga-core[kafka]'" in result.stdout


async def test_the_producer_is_idempotent_or_the_log_says_why(
    kafka: KafkaSetup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pysaga.brokers.kafka")
    async with kafka.make() as broker:
        assert isinstance(broker, KafkaBroker)
        if not broker.idempotent:
            assert "refused an idempotent producer" in caplog.text
        await broker.publish(kafka.name("idempotent"), ping(1))


# -- topics, keys and headers ----------------------------------------------------------------


async def test_records_are_keyed_by_correlation_id_and_carry_the_headers(
    kafka: KafkaSetup,
) -> None:
    dest = kafka.name("keys")
    async with kafka.make(partitions=3) as broker:
        sent = ping(1, correlation_id="saga-42")
        await broker.publish(dest, sent)
        send = broker._send
        await send(dest, b"raw", key=None, headers={"x-reason": "naïve ✓", "x-n": "7"})
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([dest])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3, "created with the configured partitions"
    first, second = sorted(
        await read_records(kafka.bootstrap, dest, 2), key=lambda r: r.value == b"raw"
    )
    assert first.key == b"saga-42"
    assert Envelope.decode(first.value) == sent
    assert second.key is None
    assert dict(second.headers) == {"x-reason": "naïve ✓".encode(), "x-n": b"7"}


async def test_a_destination_kafka_could_not_name_is_a_topic_of_its_own(kafka: KafkaSetup) -> None:
    dest = kafka.name("odd") + "/eu west:1"
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with kafka.make() as broker:
        await broker.subscribe(dest, handler)
        await broker.publish(dest, ping(3))
        assert await got.wait_for(1) == [3]
    assert topic_name(dest) in kafka.topics


# -- offsets ---------------------------------------------------------------------------------


async def test_offsets_are_committed_only_up_to_the_first_unfinished_message(
    kafka: KafkaSetup,
) -> None:
    """With one partition, messages after one that never finished are handled, but the
    commit stops before it: the next consumer of the group gets it, and those after it,
    again."""
    dest = kafka.name("prefix")
    done = Inbox()
    stuck = Inbox()
    again = Inbox()

    async def first(envelope: Envelope) -> None:
        n = envelope.parse(Ping).n
        if n == 2:
            stuck.add(n)
            await anyio.sleep_forever()
        done.add(n)

    async def second(envelope: Envelope) -> None:
        again.add(envelope.parse(Ping).n)

    async with kafka.make(partitions=1, drain_timeout=0.2) as broker:
        await broker.subscribe(dest, first, concurrency=4)
        for n in range(6):
            await broker.publish(dest, ping(n, correlation_id=f"saga-{n}"))
        await stuck.wait_for(1)
        assert sorted(await done.wait_for(5)) == [0, 1, 3, 4, 5]
    async with kafka.make(partitions=1) as broker:
        await broker.subscribe(dest, second)
        assert sorted(await again.wait_for(4)) == [2, 3, 4, 5]
        assert sorted(await again.settle()) == [2, 3, 4, 5], "0 and 1 were committed"


async def test_a_group_with_more_members_than_partitions_still_starts(kafka: KafkaSetup) -> None:
    """A member the group gives no partition is subscribed all the same (and idle)."""
    dest = kafka.name("idle")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with kafka.make(partitions=1) as one, kafka.make(partitions=1) as two:
        await one.subscribe(dest, handler)
        with anyio.fail_after(WAIT):
            await two.subscribe(dest, handler)
        for n in range(10):
            await two.publish(dest, ping(n, correlation_id=f"saga-{n}"))
        assert sorted(await got.wait_for(10)) == list(range(10))
        assert sorted(await got.settle()) == list(range(10))


async def test_members_joining_and_leaving_in_the_middle_of_a_stream_lose_nothing(
    kafka: KafkaSetup,
) -> None:
    """A second member joins while messages are being handled (the group takes partitions
    away from the first) and leaves again (they come back): each message is handled at least
    once, and one saga's messages still in order within each member."""
    dest = kafka.name("rebalance")
    total = 300
    handled: set[int] = set()
    progress = Inbox()

    async def handler(envelope: Envelope) -> None:
        handled.add(envelope.parse(Ping).n)
        progress.add(1)
        await anyio.sleep(0.003)

    async with kafka.make() as publisher, kafka.make() as first:
        await first.subscribe(dest, handler, concurrency=8)

        async def publish_all() -> None:
            for n in range(total):
                await publisher.publish(dest, ping(n, correlation_id=f"saga-{n % 30}"))
                await anyio.sleep(0.01)  # a stream, still going while the group rebalances

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            await progress.wait_for(30, within=60)
            async with kafka.make() as second:
                await second.subscribe(dest, handler, concurrency=8)
                await progress.wait_for(len(progress.items) + 30, within=60)
        with anyio.fail_after(60):
            while len(handled) < total:
                await progress.wait_for(len(progress.items) + 1, within=60)
    assert handled == set(range(total)), "every message handled at least once"


# -- replies ---------------------------------------------------------------------------------


async def test_a_reply_reaches_only_the_instance_it_is_addressed_to(kafka: KafkaSetup) -> None:
    mine = Inbox()
    theirs = Inbox()

    async def on_mine(envelope: Envelope) -> None:
        mine.add(envelope.parse(Ping).n)

    async def on_theirs(envelope: Envelope) -> None:
        theirs.add(envelope.parse(Ping).n)

    async with kafka.make() as a, kafka.make() as b, kafka.make() as replier:
        channel = await a.open_reply_channel(on_mine)
        await b.open_reply_channel(on_theirs)
        assert isinstance(a, KafkaBroker)
        assert channel.destination == a.reply_address
        assert channel.destination.startswith("pysaga.replies#")
        for n in range(5):
            await replier.reply(channel.destination, ping(n, correlation_id=f"saga-{n}"))
        assert sorted(await mine.wait_for(5)) == list(range(5))
        assert await theirs.settle() == []


# -- losing the connection -------------------------------------------------------------------


async def test_no_message_is_lost_when_connections_drop_in_the_middle_of_a_stream(
    cut_kafka: CutSetup,
) -> None:
    """Every connection is cut twice while 500 messages are being sent and handled: each
    message is handled at least once."""
    dest = cut_kafka.name("stream")
    total = 500
    handled: set[str] = set()
    progress = Inbox()
    sent = [ping(n, correlation_id=f"saga-{n % 50}") for n in range(total)]
    options: dict[str, Any] = {"request_timeout_ms": 10_000}

    async def handler(envelope: Envelope) -> None:
        handled.add(envelope.id)
        progress.add(1)
        await anyio.sleep(0.002)

    async with cut_kafka.make(**options) as publisher, cut_kafka.make(**options) as consumer:
        await consumer.subscribe(dest, handler, concurrency=20)
        confirmed = 0

        async def one(envelope: Envelope, limiter: anyio.Semaphore) -> None:
            nonlocal confirmed
            async with limiter:
                await publisher.publish(dest, envelope)
            confirmed += 1

        async def publish_all() -> None:
            limiter = anyio.Semaphore(50)
            async with anyio.create_task_group() as senders:
                for envelope in sent:
                    senders.start_soon(one, envelope, limiter)
                    await anyio.sleep(0.004)  # a stream, still going when connections drop

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            await progress.wait_for(total // 5, within=60)
            assert cut_kafka.proxy.cut() >= 2
            await progress.wait_for(len(progress.items) + 50, within=60)
            assert cut_kafka.proxy.cut(refuse_for=1.0) >= 2
            assert confirmed < total, "the connections dropped while sends were going on"
        with anyio.fail_after(120):
            while len(handled) < total:
                await progress.wait_for(len(progress.items) + 1, within=120)
    assert handled == {envelope.id for envelope in sent}, "every message handled at least once"


async def test_a_send_during_an_outage_waits_for_the_broker(cut_kafka: CutSetup) -> None:
    dest = cut_kafka.name("outage")
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with cut_kafka.make(request_timeout_ms=10_000) as broker:
        await broker.subscribe(dest, handler)
        await broker.publish(dest, ping(0))
        assert await got.wait_for(1) == [0]
        cut_kafka.proxy.cut(refuse_for=2.0)
        with anyio.fail_after(30):
            await broker.publish(dest, ping(1))
        assert sorted(await got.wait_for(2, within=60)) == [0, 1]


async def test_the_contract_recovery_through_a_cut_proxy(cut_kafka: CutSetup) -> None:
    """The contract's recovery test, with the connections really cut."""
    async with cut_kafka.make() as broker:
        await TestKafkaBroker().test_recovers_after_the_broker_drops_every_connection(
            cut_kafka, broker
        )
