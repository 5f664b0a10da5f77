"""A participant on a transactional inbox (PostgreSQL): each command is handled in one
transaction with the handler's own writes, and its reply and events leave through an outbox.

The handlers write their effects through ``ctx.transaction`` into a table of the test's
schema (see ``stock.py``), so every test counts what was committed, not what was tried.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
import pytest
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    EntryKind,
    Envelope,
    HandlerContext,
    InboxRecord,
    Orchestrator,
    OutboxMessage,
    Participant,
    Saga,
    SagaStatus,
)
from pysaga.brokers.memory import MemoryBroker
from pysaga.brokers.rabbitmq import RabbitMQBroker
from pysaga.messaging import HEADER_IDEMPOTENCY_KEY, Failed, Refused, command_id
from pysaga.stores.postgres_inbox import PostgresInbox

from ..docs.test_snippets import load, pasted_output
from .stock import EFFECTS, Release, Reserve, Reserved, StockChanged, stock_service

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def db(postgres_url: str, postgres_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the test's schema, with the service's ``effects`` table in it."""
    schema = parse_qs(urlsplit(postgres_url).query)["schema"][0]
    conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": schema})
    await conn.execute(EFFECTS.format(schema=schema))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def name() -> str:
    return f"stock-{uuid.uuid4().hex[:8]}"


def command(
    message: BaseModel, key: str, reply_to: str | None, *, compensation: bool = False
) -> Envelope:
    return Envelope.of(
        message,
        id=command_id(key, compensation=compensation),
        correlation_id=key.split("/")[0],
        reply_to=reply_to,
        headers={HEADER_IDEMPOTENCY_KEY: key},
    )


async def effects(db: asyncpg.Connection[Any], kind: str = "reserve") -> dict[str, int]:
    rows = await db.fetch("SELECT key, count(*) FROM effects WHERE kind = $1 GROUP BY key", kind)
    return {row[0]: row[1] for row in rows}


async def outbox_size(db: asyncpg.Connection[Any]) -> int:
    size: int = await db.fetchval("SELECT count(*) FROM pysaga_outbox")
    return size


async def drained(db: asyncpg.Connection[Any]) -> None:
    """Wait until the outbox is empty."""
    with anyio.fail_after(20):
        while True:
            if not await outbox_size(db):
                return
            await anyio.sleep(0.05)


class Listener:
    """Collects what arrives on a reply channel or a destination, and waits for it."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []
        self._changed = anyio.Event()

    async def __call__(self, envelope: Envelope) -> None:
        self.received.append(envelope)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> list[Envelope]:
        """Wait until *count* messages arrived."""
        return await self.wait_until(lambda received: len(received) >= count)

    async def wait_until(self, done: Callable[[list[Envelope]], bool]) -> list[Envelope]:
        """Wait until what arrived satisfies *done*."""
        with anyio.fail_after(20):
            while not done(self.received):
                await self._changed.wait()
        return self.received


async def test_a_command_delivered_twice_is_applied_once(
    postgres_url: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """Handled, then delivered again: answered from the inbox with the same reply; the
    effect, its events and the reply were committed together, and the outbox is empty."""
    replies, events = Listener(), Listener()
    async with MemoryBroker() as broker:
        channel = await broker.open_reply_channel(replies)
        await broker.subscribe("stock-events", events)
        stock, calls = stock_service(name, broker, postgres_url)
        async with stock:
            message = command(Reserve(sku="book", events=3), "s-1/reserve", channel.destination)
            for n in (1, 2):
                await broker.publish(name, message)
                await replies.wait_for(n)
            await events.wait_for(3)
        assert calls == ["s-1/reserve"], "the handler ran once"
        assert await effects(db) == {"s-1/reserve": 1}
        assert [r.parse(Reserved).reservation for r in replies.received] == ["r-s-1/reserve"] * 2
        assert {r.causation_id for r in replies.received} == {"s-1/reserve"}
        assert [e.parse(StockChanged).n for e in events.received] == [0, 1, 2], "in order"
        assert {(e.correlation_id, e.causation_id) for e in events.received} == {
            ("s-1", "s-1/reserve")
        }
        assert await outbox_size(db) == 0
        recorded = await db.fetchval(
            "SELECT reply_type FROM pysaga_inbox WHERE consumer = $1 AND message_id = $2",
            name,
            "s-1/reserve",
        )
        assert recorded == "Reserved"


async def test_two_copies_of_the_service_handle_one_command_once(
    postgres_url: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """Two participants of one service (as two processes would be) get the same command at
    the same moment: one handles it, the other waits for its transaction and then answers
    from the record it committed (or leaves the answer to the reply the first is sending)."""
    replies = Listener()
    async with MemoryBroker() as broker:
        channel = await broker.open_reply_channel(replies)
        first, first_calls = stock_service(name, broker, postgres_url)
        second, second_calls = stock_service(name, broker, postgres_url)
        async with first, second:
            for n in range(5):
                message = command(
                    Reserve(sku="book", hold=0.05), f"s-{n}/reserve", channel.destination
                )
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first.handle_message, message)
                    tg.start_soon(second.handle_message, message)
            keys = {f"s-{n}/reserve" for n in range(5)}
            await replies.wait_until(lambda got: {r.causation_id for r in got} == keys)
    assert sorted(first_calls + second_calls) == [f"s-{n}/reserve" for n in range(5)]
    assert await effects(db) == {f"s-{n}/reserve": 1 for n in range(5)}
    by_command: dict[str | None, set[str]] = {}
    for reply in replies.received:
        by_command.setdefault(reply.causation_id, set()).add(reply.parse(Reserved).reservation)
    assert by_command == {f"s-{n}/reserve": {f"r-s-{n}/reserve"} for n in range(5)}
    assert await outbox_size(db) == 0


async def test_a_refusal_undoes_the_handlers_writes_and_is_recorded(
    postgres_url: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """The handler wrote, published, then refused: its write and its event are gone, the
    refusal is recorded and sent, and a repeat is refused from the inbox."""
    replies, events = Listener(), Listener()
    async with MemoryBroker() as broker:
        channel = await broker.open_reply_channel(replies)
        await broker.subscribe("stock-events", events)
        stock, calls = stock_service(name, broker, postgres_url)
        async with stock:
            message = command(Reserve(sku="book", refuse=True), "s-1/reserve", channel.destination)
            await stock.handle_message(message)
            await stock.handle_message(message)
            await replies.wait_for(2)
            record = await stock._inbox.get(name, "s-1/reserve")
    assert calls == ["s-1/reserve"]
    assert await effects(db) == {}
    assert [r.parse(Refused).reason for r in replies.received] == ["no book left"] * 2
    assert record is not None
    assert record.reply_type == "pysaga.refused"
    assert events.received == []
    assert broker.pending("stock-events") == 0
    assert await outbox_size(db) == 0


async def test_a_technical_failure_rolls_back_everything_and_replies_failed(
    postgres_url: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """The handler wrote, published, then failed: nothing is committed or recorded, the
    failure is sent, and the command sent again is handled afresh."""
    replies, events = Listener(), Listener()
    async with MemoryBroker() as broker:
        channel = await broker.open_reply_channel(replies)
        await broker.subscribe("stock-events", events)
        stock, calls = stock_service(name, broker, postgres_url)
        async with stock:
            failing = command(Reserve(sku="book", fail=True), "s-1/reserve", channel.destination)
            await stock.handle_message(failing)
            await replies.wait_for(1)
            assert await stock._inbox.get(name, "s-1/reserve") is None
            assert await effects(db) == {}
            assert events.received == []
            retried = command(Reserve(sku="book"), "s-1/reserve", channel.destination)
            await stock.handle_message(retried)
            await replies.wait_for(2)
            await events.wait_for(1)
    assert calls == ["s-1/reserve", "s-1/reserve"]
    failed = replies.received[0].parse(Failed)
    assert (failed.error_type, failed.message) == ("RuntimeError", "the shelf scanner is offline")
    assert replies.received[1].parse(Reserved).reservation == "r-s-1/reserve"
    assert await effects(db) == {"s-1/reserve": 1}
    assert len(events.received) == 1
    assert await outbox_size(db) == 0


async def test_a_compensation_and_its_command_on_two_copies_never_leave_the_effect(
    postgres_url: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """A step's command reaches one copy of the service and its compensation another, at
    the same moment, in either order: the command is either undone or refused, never left
    in place."""
    keys = [f"s-{n}/reserve" for n in range(40)]
    async with MemoryBroker() as broker:
        first, _ = stock_service(name, broker, postgres_url)
        second, _ = stock_service(name, broker, postgres_url)
        async with first, second:
            async with anyio.create_task_group() as tg:
                for n, key in enumerate(keys):
                    cmd = command(Reserve(sku="book", hold=0.01 * (n % 3)), key, None)
                    undo = command(Release(sku="book"), key, None, compensation=True)
                    a, b = (first, second) if n % 2 else (second, first)
                    if n % 4 < 2:
                        tg.start_soon(a.handle_message, cmd)
                        tg.start_soon(b.handle_message, undo)
                    else:
                        tg.start_soon(b.handle_message, undo)
                        tg.start_soon(a.handle_message, cmd)
            outcomes = {key: await first._inbox.get(name, key) for key in keys}
    assert await effects(db) == {}, "no command's effect is left in place"
    assert await effects(db, "release") == dict.fromkeys(keys, 1)
    kinds = {record.reply_type for record in outcomes.values() if record is not None}
    assert kinds <= {"Reserved", "pysaga.refused"}
    assert None not in outcomes.values()


async def test_the_relay_sends_what_a_crash_left_in_the_outbox(
    postgres_url: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """Messages committed to the outbox but never sent (the process died first) are sent
    by the relay of the next participant to start, once each, even with two copies
    relaying the same outbox; the outbox is empty afterwards."""
    events = Listener()
    async with MemoryBroker() as broker:
        await broker.subscribe(f"{name}-events", events)
        async with PostgresInbox.from_url(postgres_url) as inbox:
            async with inbox.transaction(name) as tx:
                assert await tx.claim("m-1") is None
                left = [
                    OutboxMessage(
                        f"{name}-events", Envelope.of(StockChanged(sku="book", n=n)).encode()
                    )
                    for n in range(150)
                ]
                reply = InboxRecord("Reserved", 1, '{"reservation": "r-1"}', time.time())
                ids = await tx.finish("m-1", reply, left)
            assert len(ids) == 150
        first, _ = stock_service(name, broker, postgres_url, relay_grace=0.0)
        second, _ = stock_service(name, broker, postgres_url, relay_grace=0.0)
        async with first, second:
            await events.wait_for(150)
            await drained(db)
            await anyio.sleep(0.3)  # a second copy of any of them would have arrived by now
    assert sorted(e.parse(StockChanged).n for e in events.received) == list(range(150))


async def test_the_relay_outlives_a_lost_connection(
    postgres_url: str, postgres_dsn: str, db: asyncpg.Connection[Any], name: str
) -> None:
    """The server drops every connection of the inbox: the relay logs it and sends what the
    outbox holds in a later round; the participant keeps handling commands."""
    schema = parse_qs(urlsplit(postgres_url).query)["schema"][0]
    replies, events = Listener(), Listener()
    async with MemoryBroker() as broker:
        channel = await broker.open_reply_channel(replies)
        await broker.subscribe(f"{name}-events", events)
        stock, _ = stock_service(
            name,
            broker,
            postgres_url,
            events=f"{name}-events",
            relay_grace=0.0,
            relay_interval=0.05,
        )
        async with stock:
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1",
                f"pysaga inbox {schema}",
            )
            await anyio.sleep(0.2)  # some relay rounds meet the dead connections
            await db.execute(
                "INSERT INTO pysaga_outbox (consumer, message_id, destination, is_reply, envelope)"
                " VALUES ($1, 'm-1', $2, false, $3)",
                name,
                f"{name}-events",
                Envelope.of(StockChanged(sku="book", n=7)).encode(),
            )
            await events.wait_for(1)
            message = command(Reserve(sku="book", events=0), "s-1/reserve", channel.destination)
            await broker.publish(name, message)
            await replies.wait_for(1)
    assert events.received[0].parse(StockChanged).n == 7
    assert replies.received[0].parse(Reserved).reservation == "r-s-1/reserve"


def test_a_participant_checks_its_relay_options() -> None:
    with pytest.raises(ValueError, match="relay_interval must be positive"):
        Participant("stock", relay_interval=0)
    with pytest.raises(ValueError, match="relay_grace must not be negative"):
        Participant("stock", relay_grace=-1)


class Order(BaseModel):
    sku: str
    reservation: str | None = None


async def test_a_reply_committed_before_a_crash_reaches_the_saga_once(
    postgres_url: str, db: asyncpg.Connection[Any], amqp_url: str, name: str, tmp_path: Path
) -> None:
    """A service process commits a command's effect and reply, and is killed (SIGKILL)
    before it sends the reply. The next process sends it from the outbox (its relay, or the
    broker's redelivery of the unacknowledged command, whichever comes first): the saga's
    step succeeds once, and the effect is there once."""
    saga = Saga(f"reserve-{name}", Order)
    saga.remote("reserve", service=name, command=Reserve, reply=Reserved, timeout=120)

    async def start(mode: str) -> anyio.abc.Process:
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "tests.participants.outbox_worker",
                amqp_url,
                postgres_url,
                name,
                mode,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        )
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive()
        assert line == b"ready\n"
        return process

    events = Listener()
    async with (
        RabbitMQBroker(amqp_url) as broker,
        Orchestrator(sagas=[saga], log=f"sqlite:///{tmp_path / 'sagas.db'}", broker=broker) as orch,
    ):
        await broker.subscribe(f"{name}-events", events)
        crashing = await start("crash")
        try:
            saga_id = await orch.start(saga, Order(sku="book"))
            with anyio.fail_after(30):
                await crashing.wait()
        finally:
            if crashing.returncode is None:
                crashing.send_signal(signal.SIGKILL)
                await crashing.wait()
        key = f"{saga_id}/reserve"
        assert crashing.returncode == -signal.SIGKILL
        assert await effects(db) == {key: 1}, "committed before the crash"
        assert await outbox_size(db) == 2, "its event and reply are still in the outbox"

        serving = await start("serve")
        try:
            with anyio.fail_after(60):
                outcome = await orch.wait(saga_id)
            await events.wait_for(1)
            await drained(db)
        finally:
            serving.send_signal(signal.SIGKILL)
            await serving.wait()
        history = await orch.history(saga_id)
    assert outcome.status is SagaStatus.COMPLETED
    assert outcome.data.reservation == f"r-{key}"
    assert [(e.kind, e.attempt) for e in history if e.step == "reserve"] == [
        (EntryKind.STEP_STARTED, 1),
        (EntryKind.STEP_SUCCEEDED, 1),
    ], "one command, one reply taken"
    assert {e.id for e in events.received} == {f"{key}#event-1"}
    assert await effects(db) == {key: 1}
    assert await outbox_size(db) == 0


async def test_without_a_transactional_inbox_events_follow_a_successful_handler(
    name: str,
) -> None:
    """On a plain inbox, ``ctx.transaction`` is None and events are published once the
    handler returned, in order; a refusal or a failure publishes none."""
    replies, events = Listener(), Listener()
    seen: list[object] = []
    service = Participant(name, inbox="memory://")

    @service.handles(Reserve)
    async def reserve(cmd: Reserve, ctx: HandlerContext) -> Reserved:
        seen.append(ctx.transaction)
        for n in range(cmd.events):
            await ctx.publish("stock-events", StockChanged(sku=cmd.sku, n=n))
        if cmd.refuse:
            raise BusinessError("no")
        if cmd.fail:
            raise RuntimeError("down")
        return Reserved(reservation="r")

    async with MemoryBroker() as broker:
        service.broker = broker
        channel = await broker.open_reply_channel(replies)
        await broker.subscribe("stock-events", events)
        async with service:
            for n, cmd in enumerate(
                [
                    Reserve(sku="a", refuse=True, events=2),
                    Reserve(sku="b", fail=True, events=2),
                    Reserve(sku="c", events=3),
                ]
            ):
                await service.handle_message(command(cmd, f"s-{n}/reserve", channel.destination))
            await replies.wait_for(3)
            await events.wait_for(3)
            with pytest.raises(TypeError, match="pydantic model"):
                await HandlerContext(name, "m", None, "k", None, {}).publish("x", {"a": 1})  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="destination name"):
                await HandlerContext(name, "m", None, "k", None, {}).publish(
                    "", Reserved(reservation="r")
                )
    assert seen == [None, None, None]
    assert [r.type for r in replies.received] == ["pysaga.refused", "pysaga.failed", "Reserved"]
    assert [(e.parse(StockChanged).sku, e.parse(StockChanged).n) for e in events.received] == [
        ("c", 0),
        ("c", 1),
        ("c", 2),
    ]
    assert [e.id for e in events.received] == [f"s-2/reserve#event-{n}" for n in (1, 2, 3)]


class TestTheGuide:
    """docs/guides/outbox.md: its program (docs/snippets/outbox.py) needs PostgreSQL, so it
    runs here."""

    async def test_output_is_the_one_on_the_page(
        self,
        postgres_url: str,
        postgres_dsn: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Each order ends as the page shows; every reserve command came twice and was
        applied once; the outbox is empty."""
        schema = parse_qs(urlsplit(postgres_url).query)["schema"][0]
        outbox = load("outbox", monkeypatch)
        levels = await outbox.main(postgres_dsn, schema)
        assert pasted_output("outbox") == capsys.readouterr().out
        assert levels == [3, 2, 3]
