"""The broker contract, written once: every adapter's test module subclasses
:class:`BrokerContract` and supplies a :class:`BrokerSetup` through the ``setup`` fixture.

The tests use only the :class:`pysaga.messaging.Broker` protocol, so a test that passes here
passes on every broker pysaga ships.
"""

from __future__ import annotations

import abc
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from pysaga import BrokerClosed
from pysaga.messaging import Broker, DeadLetter, Envelope

pytestmark = pytest.mark.anyio

WAIT = 15.0
"""Seconds a test waits for messages before it fails (brokers on a busy box are slow)."""


class Ping(BaseModel):
    n: int
    text: str = ""


class Other(BaseModel):
    n: int


class BrokerSetup(abc.ABC):
    """How the contract reaches one kind of broker."""

    ordered_by_key = False
    """Whether messages with one correlation id are handled in order (Kafka)."""

    @abc.abstractmethod
    def make(self, **options: Any) -> Broker:
        """A new, not yet entered broker connected to the shared server (a second call gives
        what a second process would open)."""

    def name(self, what: str) -> str:
        """A destination or group name used by this test only."""
        return f"t-{what}-{uuid.uuid4().hex[:10]}"

    async def drop_connections(self) -> None:
        """Make the server drop every client connection (and come back)."""
        pytest.skip(f"{type(self).__name__} has no connection to drop")


class Inbox:
    """Collects what a handler received and lets a test wait for it."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = anyio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int, within: float = WAIT) -> list[Any]:
        with anyio.fail_after(within):
            while len(self.items) < count:
                await self._changed.wait()
        return self.items

    async def settle(self, quiet: float = 0.3) -> list[Any]:
        """Wait until nothing new arrived for *quiet* seconds (to see extra deliveries)."""
        while True:
            before = len(self.items)
            await anyio.sleep(quiet)
            if len(self.items) == before:
                return self.items


def ping(n: int, **kw: Any) -> Envelope:
    return Envelope.of(Ping(n=n), **kw)


class BrokerContract:
    """The tests every broker adapter must pass."""

    @pytest.fixture
    async def broker(self, setup: BrokerSetup) -> AsyncIterator[Broker]:
        async with setup.make() as broker:
            yield broker

    async def test_round_trip_keeps_every_field(self, setup: BrokerSetup, broker: Broker) -> None:
        dest = setup.name("round-trip")
        got = Inbox()

        async def handler(envelope: Envelope) -> None:
            got.add(envelope)

        await broker.subscribe(dest, handler)
        sent = ping(
            7,
            correlation_id="saga-1",
            causation_id="cmd-0",
            reply_to="somewhere",
            headers={"x-tenant": "acme", "traceparent-like": "00-abc"},
        )
        await broker.publish(dest, sent)
        [received] = await got.wait_for(1)
        assert received == sent
        assert received.parse(Ping) == Ping(n=7)

    async def test_own_group_keeps_messages_published_before_anyone_subscribed(
        self, setup: BrokerSetup, broker: Broker
    ) -> None:
        dest = setup.name("early")
        for n in range(3):
            await broker.publish(dest, ping(n))
        got = Inbox()

        async def handler(envelope: Envelope) -> None:
            got.add(envelope.parse(Ping).n)

        await broker.subscribe(dest, handler)
        assert sorted(await got.wait_for(3)) == [0, 1, 2]

    async def test_competing_consumers_share_the_work(self, setup: BrokerSetup) -> None:
        dest = setup.name("compete")
        counts: Counter[int] = Counter()
        by_consumer: Counter[str] = Counter()
        done = Inbox()

        def handler_for(name: str) -> Any:
            async def handler(envelope: Envelope) -> None:
                counts[envelope.parse(Ping).n] += 1
                by_consumer[name] += 1
                await anyio.sleep(0.002)  # long enough for the other consumer to take some
                done.add(name)

            return handler

        async with setup.make() as one, setup.make() as two:
            await one.subscribe(dest, handler_for("one"))
            await two.subscribe(dest, handler_for("two"))
            for n in range(60):
                await one.publish(dest, ping(n, correlation_id=f"saga-{n}"))
            await done.wait_for(60)
            await done.settle()
        assert counts == Counter(range(60)), "each message is handled once per group"
        assert by_consumer["one"] > 0, by_consumer
        assert by_consumer["two"] > 0, by_consumer

    async def test_fan_out_reaches_every_group(self, setup: BrokerSetup, broker: Broker) -> None:
        dest = setup.name("fan-out")
        got = {"a": Inbox(), "b": Inbox()}
        for group, inbox in got.items():

            async def handler(envelope: Envelope, inbox: Inbox = inbox) -> None:
                inbox.add(envelope.parse(Ping).n)

            await broker.subscribe(dest, handler, group=f"{dest}-{group}")
        for n in range(10):
            await broker.publish(dest, ping(n))
        for inbox in got.values():
            assert sorted(await inbox.wait_for(10)) == list(range(10))
            assert sorted(await inbox.settle()) == list(range(10))

    async def test_a_failing_handler_gets_the_message_again(
        self, setup: BrokerSetup, broker: Broker
    ) -> None:
        dest = setup.name("redeliver")
        attempts: Counter[int] = Counter()
        done = Inbox()
        dead = Inbox()

        async def handler(envelope: Envelope) -> None:
            n = envelope.parse(Ping).n
            attempts[n] += 1
            if attempts[n] < 3:
                raise RuntimeError(f"flaky {n}")
            done.add(n)

        async def on_dead(letter: DeadLetter) -> None:
            dead.add(letter)

        await broker.subscribe(dest, handler)
        await broker.subscribe_dead_letters(dest, on_dead)
        await broker.publish(dest, ping(1))
        assert await done.wait_for(1) == [1]
        assert attempts[1] == 3
        assert await dead.settle() == []

    async def test_dead_letter_after_the_redelivery_limit(self, setup: BrokerSetup) -> None:
        from pysaga import Retry

        dest = setup.name("limit")
        attempts: Counter[int] = Counter()
        handled = Inbox()
        dead = Inbox()

        async def handler(envelope: Envelope) -> None:
            n = envelope.parse(Ping).n
            attempts[n] += 1
            if n == 0:
                raise ValueError("no stock table for warehouse 9")
            handled.add(n)

        async def on_dead(letter: DeadLetter) -> None:
            dead.add(letter)

        async with setup.make(redelivery=Retry(attempts=3, backoff=0.01, jitter=0)) as broker:
            await broker.subscribe(dest, handler)
            await broker.subscribe_dead_letters(dest, on_dead)
            sent = ping(0, correlation_id="saga-dead")
            await broker.publish(dest, sent)
            await broker.publish(dest, ping(1))
            [letter] = await dead.wait_for(1)
            assert await handled.wait_for(1) == [1], "the consumer goes on after a dead letter"
        assert attempts[0] == 3
        assert letter.deliveries == 3
        assert "ValueError: no stock table for warehouse 9" in letter.reason
        assert letter.destination == dest
        assert letter.envelope == sent, "the original message is kept, unchanged"

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"{not json", "not a pysaga message envelope"),
            (Envelope.of(Other(n=1)).encode(), "is of type 'Other', not 'Ping'"),
            (
                Envelope.model_construct(
                    id="m-1", type="Ping", payload={"n": "many"}, headers={}
                ).encode(),
                "does not fit Ping",
            ),
        ],
        ids=["malformed", "unknown-type", "bad-payload"],
    )
    async def test_undecodable_messages_are_dead_lettered_at_once(
        self, setup: BrokerSetup, broker: Broker, body: bytes, reason: str
    ) -> None:
        dest = setup.name("poison")
        calls = Counter[str]()
        handled = Inbox()
        dead = Inbox()

        async def handler(envelope: Envelope) -> None:
            calls[envelope.id] += 1
            handled.add(envelope.parse(Ping).n)

        async def on_dead(letter: DeadLetter) -> None:
            dead.add(letter)

        await broker.subscribe(dest, handler)
        await broker.subscribe_dead_letters(dest, on_dead)
        await _publish_raw(broker, dest, body)
        await broker.publish(dest, ping(5))
        [letter] = await dead.wait_for(1)
        assert await handled.wait_for(1) == [5], "the consumer keeps running"
        assert reason in letter.reason
        assert letter.body == body
        assert letter.deliveries <= 1, "no redelivery for what can never be read"
        assert all(count == 1 for count in calls.values())

    async def test_messages_of_one_saga_keep_their_order(
        self, setup: BrokerSetup, broker: Broker
    ) -> None:
        if not setup.ordered_by_key:
            pytest.skip("this broker does not promise per-saga order")
        dest = setup.name("order")
        seen: dict[str, list[int]] = {}
        done = Inbox()

        async def handler(envelope: Envelope) -> None:
            assert envelope.correlation_id is not None
            await anyio.sleep(0.001 * (envelope.parse(Ping).n % 3))
            seen.setdefault(envelope.correlation_id, []).append(envelope.parse(Ping).n)
            done.add(1)

        await broker.subscribe(dest, handler, concurrency=16)
        for n in range(100):
            await broker.publish(dest, ping(n, correlation_id=f"saga-{n % 5}"))
        await done.wait_for(100)
        for saga, numbers in seen.items():
            assert numbers == sorted(numbers), f"{saga} out of order"

    async def test_close_lets_handlers_in_flight_finish(self, setup: BrokerSetup) -> None:
        dest = setup.name("close")
        started = Inbox()
        finished = Inbox()
        again = Inbox()

        async def slow(envelope: Envelope) -> None:
            started.add(envelope.id)
            await anyio.sleep(0.5)
            finished.add(envelope.id)

        async with setup.make() as broker:
            await broker.subscribe(dest, slow)
            await broker.publish(dest, ping(1))
            await started.wait_for(1)
        assert finished.items == started.items, "close waited for the handler"

        async def later(envelope: Envelope) -> None:
            again.add(envelope.id)

        async with setup.make() as broker:
            await broker.subscribe(dest, later)
            await broker.publish(dest, ping(2))
            await again.wait_for(1)
            assert await again.settle() == [again.items[0]], "the finished message was acked"

    async def test_a_message_not_acked_before_a_crash_is_delivered_again(
        self, setup: BrokerSetup
    ) -> None:
        dest = setup.name("crash")
        started = Inbox()
        handled = Inbox()

        async def hangs(envelope: Envelope) -> None:
            started.add(envelope.id)
            await anyio.sleep_forever()

        async def works(envelope: Envelope) -> None:
            handled.add(envelope.parse(Ping).n)

        first = setup.make(drain_timeout=0.1)
        async with first:
            await first.subscribe(dest, hangs)
            await first.publish(dest, ping(3))
            await started.wait_for(1)
        # The first consumer went away without acknowledging: the message is still there.
        async with setup.make() as second:
            await second.subscribe(dest, works)
            assert await handled.wait_for(1) == [3]

    async def test_reply_channel(self, setup: BrokerSetup, broker: Broker) -> None:
        got = Inbox()

        async def on_reply(envelope: Envelope) -> None:
            got.add(envelope)

        channel = await broker.open_reply_channel(on_reply)
        address = channel.destination
        async with setup.make() as other:
            sent = ping(9, correlation_id="saga-r")
            await other.reply(address, sent)
        [received] = await got.wait_for(1)
        assert received.id == sent.id
        assert received.parse(Ping).n == 9

    async def test_recovers_after_the_broker_drops_every_connection(
        self, setup: BrokerSetup, broker: Broker
    ) -> None:
        dest = setup.name("recover")
        got = Inbox()

        async def handler(envelope: Envelope) -> None:
            got.add(envelope.parse(Ping).n)

        await broker.subscribe(dest, handler)
        for n in range(20):
            await broker.publish(dest, ping(n, correlation_id=f"s{n}"))
        await got.wait_for(20)
        await setup.drop_connections()
        for n in range(20, 40):
            await broker.publish(dest, ping(n, correlation_id=f"s{n}"))
        await got.wait_for(40, within=60)
        assert set(got.items) == set(range(40)), "nothing lost"

    async def test_using_a_closed_broker_says_so(self, setup: BrokerSetup) -> None:
        broker = setup.make()
        with pytest.raises(BrokerClosed, match="async with broker"):
            await broker.publish(setup.name("closed"), ping(1))


async def _publish_raw(broker: Broker, destination: str, body: bytes) -> None:
    """Send bytes that need not be an envelope (what a misbehaving producer would send)."""
    send = broker._send  # type: ignore[attr-defined]
    await send(destination, body, key=None, headers={})
