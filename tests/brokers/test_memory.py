"""The broker contract on the in-memory broker, plus its fault-injection hooks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from pysaga.brokers.memory import MemoryBroker
from pysaga.messaging import Envelope

from .contract import BrokerContract, BrokerSetup, Inbox, Ping, ping

pytestmark = pytest.mark.anyio


class MemorySetup(BrokerSetup):
    ordered_by_key = True

    def __init__(self) -> None:
        self._first = MemoryBroker()

    def make(self, **options: Any) -> MemoryBroker:
        broker = self._first.connect()
        if options:
            broker = MemoryBroker(**options)
            broker._hub = self._first._hub
        return broker


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def setup(self) -> BrokerSetup:
        return MemorySetup()


async def test_named_brokers_share_queues() -> None:
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with MemoryBroker("shared-test") as one, MemoryBroker("shared-test") as two:
        await one.subscribe("d", handler)
        await two.publish("d", ping(1))
        assert await got.wait_for(1) == [1]
    async with MemoryBroker() as private:
        await private.publish("d", ping(2))
        assert private.pending("d") == 1
    assert await got.settle(0.05) == [1]


async def test_fault_hooks_drop_duplicate_delay_and_reorder() -> None:
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with MemoryBroker(concurrency=1) as broker:
        broker.faults.drop(lambda dest, env: env is not None and env.parse(Ping).n == 0)
        broker.faults.duplicate(lambda dest, env: env is not None and env.parse(Ping).n == 1)
        broker.faults.reorder(lambda dest, env: env is not None and env.parse(Ping).n == 2)
        broker.faults.delay(
            lambda dest, env: env is not None and env.parse(Ping).n == 4, seconds=0.2
        )
        await broker.subscribe("d", handler)
        for n in range(6):
            await broker.publish("d", ping(n))
        await got.wait_for(6)
        await got.settle()
    assert got.items == [1, 1, 3, 2, 5, 4]
    assert [action for action, _, _ in broker.faults.fired] == [
        "drop",
        "duplicate",
        "reorder",
        "delay",
    ]


async def test_a_reordered_message_is_released_when_nothing_follows() -> None:
    got = Inbox()

    async def handler(envelope: Envelope) -> None:
        got.add(envelope.parse(Ping).n)

    async with MemoryBroker() as broker:
        broker.faults.reorder("Ping", hold=0.05)
        await broker.subscribe("d", handler)
        await broker.publish("d", ping(1))
        with anyio.fail_after(2):
            assert await got.wait_for(1) == [1]
