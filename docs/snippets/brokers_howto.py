"""The brokers guide's examples: choosing a broker, reading dead letters, injecting faults.

``main()`` runs on the in-memory broker: a stock service that cannot read one message and
keeps failing on another, and a dead-letter reader that reports both.
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel

from pysaga import DeadLetter, Envelope, Retry
from pysaga.brokers import from_url
from pysaga.brokers.memory import MemoryBroker


class ReserveStock(BaseModel):
    sku: str
    qty: int


def choose() -> object:
    # --8<-- [start:choose]
    from pysaga.brokers import from_url

    broker = from_url("amqp://guest:guest@localhost:5672/")
    # --8<-- [end:choose]
    return broker


def rabbitmq() -> object:
    # --8<-- [start:rabbitmq]
    from pysaga.brokers.rabbitmq import RabbitMQBroker

    broker = RabbitMQBroker("amqp://guest:guest@localhost:5672/", prefix="shop.", prefetch=200)
    # --8<-- [end:rabbitmq]
    return broker


def kafka() -> object:
    # --8<-- [start:kafka]
    from pysaga.brokers.kafka import KafkaBroker

    broker = KafkaBroker("localhost:9092", client_id="shop", partitions=8)
    # --8<-- [end:kafka]
    return broker


def faulty() -> MemoryBroker:
    # --8<-- [start:faults]
    broker = MemoryBroker()
    broker.faults.duplicate(ReserveStock, times=10)  # deliver each of the next 10 twice
    broker.faults.delay("CardCharged", seconds=2.0)  # a reply that comes too late
    broker.faults.reorder(times=3)  # each of the next 3 is overtaken by the one after it
    # --8<-- [end:faults]
    return broker


# --8<-- [start:dead-letters]
async def on_dead_letter(letter: DeadLetter) -> None:
    print(f"{letter.destination}, {letter.deliveries} deliveries: {letter.reason}")
    if letter.envelope is not None:  # None when the body was not even an envelope
        ...  # fix the cause, then publish letter.envelope again to replay it


# --8<-- [end:dead-letters]


async def main() -> list[str]:
    handled: list[str] = []
    done = anyio.Event()
    letters: list[DeadLetter] = []

    async def reserve(message: Envelope) -> None:
        command = message.parse(ReserveStock)  # a payload that does not fit: DecodeError
        if command.sku == "ghost":
            raise LookupError("no such product: ghost")
        handled.append(command.sku)

    async def record(letter: DeadLetter) -> None:  # a second reader, for the test
        letters.append(letter)
        if len(letters) == 2:
            done.set()

    async with from_url("memory://", redelivery=Retry(attempts=3, backoff=0.01)) as broker:
        # --8<-- [start:subscribe-dead-letters]
        await broker.subscribe_dead_letters("stock", on_dead_letter)
        # --8<-- [end:subscribe-dead-letters]
        await broker.subscribe_dead_letters("stock", record, group="audit")
        await broker.subscribe("stock", reserve)
        await broker.publish("stock", Envelope.of(ReserveStock(sku="book", qty=1)))
        await broker.publish("stock", Envelope.of(ReserveStock(sku="ghost", qty=1)))
        await broker.publish("stock", Envelope(id="m-3", type="ReserveStock", payload={"qty": 1}))
        with anyio.fail_after(10):
            await done.wait()
    return handled


if __name__ == "__main__":
    anyio.run(main)
