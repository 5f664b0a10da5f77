"""The participant inbox contract, on every inbox: what was handled is remembered, the first
record wins, old records can be purged, and a SQLite inbox survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    Envelope,
    HandlerContext,
    Inbox,
    InboxRecord,
    Participant,
    TransactionalInbox,
)
from pysaga.brokers.memory import MemoryBroker
from pysaga.messaging import HEADER_IDEMPOTENCY_KEY
from pysaga.stores import inbox_from_url
from pysaga.stores.memory import InMemoryInbox
from pysaga.stores.postgres_inbox import PostgresInbox
from pysaga.stores.sqlite_inbox import SQLiteInbox

pytestmark = pytest.mark.anyio

InboxFactory = Callable[[], Inbox]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def inbox_factory(request: pytest.FixtureRequest, tmp_path: Path) -> InboxFactory:
    if request.param == "memory":
        shared = InMemoryInbox()
        return lambda: shared
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return lambda: inbox_from_url(url)
    return lambda: SQLiteInbox(tmp_path / "inbox.db")


@pytest.fixture
async def inbox(inbox_factory: InboxFactory) -> AsyncIterator[Inbox]:
    async with inbox_factory() as opened:
        yield opened


def record(text: str, at: float = 1_000.0) -> InboxRecord:
    return InboxRecord(
        reply_type="Reply", schema_version=1, payload=f'{{"t":"{text}"}}', handled_at=at
    )


async def test_remembers_what_was_handled(inbox: Inbox) -> None:
    assert await inbox.get("stock", "m-1") is None
    assert await inbox.put("stock", "m-1", record("a")) == record("a")
    assert await inbox.get("stock", "m-1") == record("a")
    assert await inbox.get("payments", "m-1") is None, "each consumer has its own namespace"


async def test_the_first_record_wins(inbox: Inbox) -> None:
    await inbox.put("stock", "m-1", record("first"))
    assert await inbox.put("stock", "m-1", record("second")) == record("first")
    assert await inbox.get("stock", "m-1") == record("first")


async def test_purge_forgets_old_records(inbox: Inbox) -> None:
    await inbox.put("stock", "old", record("a", at=100.0))
    await inbox.put("stock", "new", record("b", at=200.0))
    assert await inbox.purge(before=150.0) == 1
    assert await inbox.get("stock", "old") is None
    assert await inbox.get("stock", "new") is not None


def test_urls() -> None:
    assert isinstance(inbox_from_url("memory://"), InMemoryInbox)
    assert isinstance(inbox_from_url("sqlite:///x.db"), SQLiteInbox)
    postgres = inbox_from_url("postgresql://app@db.example/shop?schema=stock&pool_size=3")
    assert isinstance(postgres, PostgresInbox)
    assert (postgres.schema, postgres._options.pool_size) == ("stock", 3)
    assert isinstance(postgres, TransactionalInbox)
    assert not isinstance(SQLiteInbox("x.db"), TransactionalInbox)
    with pytest.raises(ValueError, match="unknown scheme 'redis'"):
        inbox_from_url("redis://localhost")


class Reserve(BaseModel):
    sku: str


class Reserved(BaseModel):
    reservation: int


@pytest.fixture(params=["sqlite", "postgres"])
def lasting_inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an inbox that outlives its participant."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'stock-inbox.db'}"


async def test_a_restarted_participant_answers_a_repeat_from_its_inbox(
    lasting_inbox_url: str,
) -> None:
    """The service handles a command, restarts, gets the same command again (an orchestrator
    re-sent it): the handler does not run again, and the reply is the first one."""
    handled: list[str] = []
    replies: list[Envelope] = []
    url = lasting_inbox_url

    def service(broker: MemoryBroker) -> Participant:
        stock = Participant("stock", broker=broker, inbox=url)

        @stock.handles(Reserve)
        async def reserve(cmd: Reserve, ctx: HandlerContext) -> Reserved:
            handled.append(ctx.idempotency_key)
            return Reserved(reservation=len(handled))

        return stock

    arrived = anyio.Event()

    async def on_reply(envelope: Envelope) -> None:
        replies.append(envelope)
        arrived.set()

    async with MemoryBroker() as broker:
        channel = await broker.open_reply_channel(on_reply)
        command = Envelope.of(
            Reserve(sku="book"),
            id="saga-1/reserve",
            correlation_id="saga-1",
            reply_to=channel.destination,
            headers={HEADER_IDEMPOTENCY_KEY: "saga-1/reserve"},
        )
        for _ in range(2):  # two lives of the service
            arrived = anyio.Event()
            async with service(broker):
                await broker.publish("stock", command)
                with anyio.fail_after(5):
                    await arrived.wait()
    assert handled == ["saga-1/reserve"], "handled once across the restart"
    assert [r.parse(Reserved).reservation for r in replies] == [1, 1]
    assert {r.causation_id for r in replies} == {"saga-1/reserve"}
