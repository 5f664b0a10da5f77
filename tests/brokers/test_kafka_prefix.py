"""The Kafka broker's *prefix*: every topic, consumer group and the replies topic get it, so
two applications on one cluster never meet; a prefix Kafka could not use is refused at once."""

from __future__ import annotations

import uuid

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pysaga import Retry
from pysaga.brokers import from_url
from pysaga.brokers.kafka import KafkaBroker
from pysaga.messaging import DeadLetter, Envelope

from .contract import WAIT, Inbox, Ping, ping
from .kafka_tools import KafkaSetup

pytestmark = pytest.mark.anyio


def new_prefix() -> str:
    """A prefix no other test (or test run on the same cluster) uses."""
    return f"t{uuid.uuid4().hex[:8]}."


def make(kafka: KafkaSetup, prefix: str, **options: object) -> KafkaBroker:
    broker = kafka.make(prefix=prefix, **options)
    assert isinstance(broker, KafkaBroker)
    return broker


async def committed(bootstrap: str, group_id: str, topic: str) -> int | None:
    """The offset *group_id* committed on partition 0 of *topic* (None: nothing)."""
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await client.start()
    try:
        offset: int | None = await client.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await client.stop()


# -- configuration ---------------------------------------------------------------------------


def test_the_prefix_goes_before_topics_groups_and_the_replies_topic() -> None:
    broker = KafkaBroker(prefix="shop.")
    assert broker.prefix == "shop."
    assert broker.topic_for("stock") == "shop.stock"
    assert broker.topic_for(broker.dead_letter_destination("stock")) == "shop.stock.dead-letter"
    assert broker.group_id("stock") == "shop.stock"
    assert broker.replies_topic == "shop.pysaga.replies"
    assert broker.reply_address.startswith("shop.pysaga.replies#")
    assert broker.client_id == "pysaga", "the client id is not a name that clashes"
    explicit = KafkaBroker(prefix="shop.", replies_topic="answers")
    assert explicit.replies_topic == "shop.answers", "an explicit replies topic gets it too"
    odd = broker.topic_for("orders/eu west")
    assert odd.startswith("shop.orders_eu_west-"), "the destination is made legal, not the prefix"


def test_no_prefix_leaves_every_name_as_it_was() -> None:
    broker = KafkaBroker()
    assert broker.prefix == ""
    assert broker.topic_for("stock") == "stock"
    assert broker.group_id("stock") == "stock"
    assert broker.replies_topic == "pysaga.replies"


def test_the_prefix_comes_from_the_url_and_the_keyword_wins() -> None:
    from_query = from_url("kafka://k1:9092?prefix=shop.&fetch_max_wait_ms=5")
    assert isinstance(from_query, KafkaBroker)
    assert from_query.prefix == "shop."
    assert from_query.replies_topic == "shop.pysaga.replies"
    both = from_url("kafka://k1:9092?prefix=shop.", prefix="billing-")
    assert isinstance(both, KafkaBroker)
    assert both.prefix == "billing-", "keyword options win over the URL's"
    assert both.replies_topic == "billing-pysaga.replies"
    keyword = KafkaBroker.from_url("kafka://k1:9092", prefix="a_b.")
    assert keyword.topic_for("x") == "a_b.x"


@pytest.mark.parametrize("prefix", ["shop/", "shop:", "my shop.", "bücher.", "shop#", "a*"])
def test_a_prefix_kafka_cannot_put_in_a_topic_name_is_refused_saying_what_is_allowed(
    prefix: str,
) -> None:
    with pytest.raises(ValueError, match=r"use only letters, digits, '\.', '_' and '-'") as caught:
        KafkaBroker(prefix=prefix)
    assert repr(prefix) in str(caught.value)


def test_an_illegal_prefix_in_the_url_is_refused_too() -> None:
    with pytest.raises(ValueError, match="Kafka does not allow in a topic name"):
        from_url("kafka://k1:9092?prefix=shop%2F")


def test_a_prefix_too_long_for_a_topic_name_is_refused() -> None:
    assert KafkaBroker(prefix="p" * 237).topic_for("x" * 300).startswith("p" * 237)
    with pytest.raises(ValueError, match="at most 237"):
        KafkaBroker(prefix="p" * 238)


# -- on the cluster --------------------------------------------------------------------------


async def test_two_prefixes_on_one_destination_do_not_see_each_others_messages(
    kafka: KafkaSetup,
) -> None:
    dest = kafka.name("shared")
    prefix_a, prefix_b = new_prefix(), new_prefix()
    got_a, got_b = Inbox(), Inbox()

    async def on_a(envelope: Envelope) -> None:
        got_a.add(envelope.parse(Ping).n)

    async def on_b(envelope: Envelope) -> None:
        got_b.add(envelope.parse(Ping).n)

    async with make(kafka, prefix_a) as a, make(kafka, prefix_b) as b:
        await a.subscribe(dest, on_a)
        await b.subscribe(dest, on_b)
        for n in range(3):
            await a.publish(dest, ping(n, correlation_id=f"saga-{n}"))
        for n in range(10, 12):
            await b.publish(dest, ping(n, correlation_id=f"saga-{n}"))
        assert sorted(await got_a.wait_for(3)) == [0, 1, 2]
        assert sorted(await got_b.wait_for(2)) == [10, 11]
        assert sorted(await got_a.settle()) == [0, 1, 2]
        assert sorted(await got_b.settle()) == [10, 11]
    assert {prefix_a + dest, prefix_b + dest} <= kafka.topics
    assert dest not in kafka.topics, "no unprefixed topic was made"


async def test_a_prefixed_group_gets_its_messages_beside_another_prefixs_group_of_that_name(
    kafka: KafkaSetup,
) -> None:
    """B's group ``audit`` is up and joined when A's group ``audit`` starts: A's message goes
    to A's group only, and each group commits under its own prefixed id."""
    dest = kafka.name("groups")
    prefix_a, prefix_b = new_prefix(), new_prefix()
    got_a, got_b = Inbox(), Inbox()

    async def on_a(envelope: Envelope) -> None:
        got_a.add(envelope.parse(Ping).n)

    async def on_b(envelope: Envelope) -> None:
        got_b.add(envelope.parse(Ping).n)

    async with make(kafka, prefix_b, partitions=1) as b:
        await b.subscribe(dest, on_b, group="audit")
        async with make(kafka, prefix_a, partitions=1) as a:
            await a.subscribe(dest, on_a, group="audit")
            await a.publish(dest, ping(1, correlation_id="saga-a"))
            assert await got_a.wait_for(1) == [1]
            await b.publish(dest, ping(2, correlation_id="saga-b"))
            assert await got_b.wait_for(1) == [2]
            assert await got_a.settle() == [1]
            assert await got_b.settle() == [2]
    topic_a, topic_b = prefix_a + dest, prefix_b + dest
    assert await committed(kafka.bootstrap, prefix_a + "audit", topic_a) == 1
    assert await committed(kafka.bootstrap, prefix_b + "audit", topic_b) == 1
    assert await committed(kafka.bootstrap, "audit", topic_a) is None, "no unprefixed group"
    assert await committed(kafka.bootstrap, prefix_b + "audit", topic_a) is None


async def test_a_prefixed_request_gets_its_reply_on_the_prefixed_replies_topic(
    kafka: KafkaSetup,
) -> None:
    """A requester and a responder of one application (two broker objects, as two processes
    would have) share a prefix; another application's service of the same name, under its own
    prefix, never sees the request."""
    dest = kafka.name("ask")
    prefix, other = new_prefix(), new_prefix()
    replies = Inbox()
    strangers = Inbox()

    async def on_reply(envelope: Envelope) -> None:
        replies.add(envelope.parse(Ping).n)

    async with (
        make(kafka, prefix) as requester,
        make(kafka, prefix) as responder,
        make(kafka, other) as stranger,
    ):
        kafka.topics.add(requester.replies_topic)

        async def respond(envelope: Envelope) -> None:
            assert envelope.reply_to is not None
            answer = Envelope.of(
                Ping(n=envelope.parse(Ping).n * 10), correlation_id=envelope.correlation_id
            )
            await responder.reply(envelope.reply_to, answer)

        async def intercept(envelope: Envelope) -> None:
            strangers.add(envelope.parse(Ping).n)

        await responder.subscribe(dest, respond)
        await stranger.subscribe(dest, intercept)
        channel = await requester.open_reply_channel(on_reply)
        assert channel.destination.startswith(f"{prefix}pysaga.replies#")
        for n in range(1, 4):
            await requester.publish(
                dest, ping(n, correlation_id=f"saga-{n}", reply_to=channel.destination)
            )
        assert sorted(await replies.wait_for(3)) == [10, 20, 30]
        assert await strangers.settle() == []
        # A reply address names its topic whole: a replier with another prefix reaches it.
        await stranger.reply(channel.destination, ping(99, correlation_id="saga-x"))
        assert 99 in await replies.wait_for(4)
    assert "pysaga.replies" not in kafka.topics


async def test_dead_letters_go_to_the_prefixed_dead_letter_topic(kafka: KafkaSetup) -> None:
    dest = kafka.name("dead")
    prefix, other = new_prefix(), new_prefix()
    dead: Inbox = Inbox()
    dead_elsewhere: Inbox = Inbox()

    async def failing(envelope: Envelope) -> None:
        raise RuntimeError(f"cannot handle {envelope.parse(Ping).n}")

    async def on_dead(letter: DeadLetter) -> None:
        dead.add(letter)

    async def on_dead_elsewhere(letter: DeadLetter) -> None:
        dead_elsewhere.add(letter)

    retry = Retry(attempts=1)
    async with (
        make(kafka, prefix, redelivery=retry) as broker,
        make(kafka, other, redelivery=retry) as elsewhere,
    ):
        await broker.subscribe(dest, failing)
        await broker.subscribe_dead_letters(dest, on_dead)
        await elsewhere.subscribe_dead_letters(dest, on_dead_elsewhere)
        await broker.publish(dest, ping(5, correlation_id="saga-dead"))
        with anyio.fail_after(WAIT):
            [letter] = await dead.wait_for(1)
        assert letter.destination == dest
        assert "cannot handle 5" in letter.reason
        assert await dead_elsewhere.settle() == []
    assert f"{prefix}{dest}.dead-letter" in kafka.topics
    assert f"{dest}.dead-letter" not in kafka.topics
