"""The trio column of the supported-backends table (docs/guides/backends.md), proved under trio:

* the SQLite and in-memory saga logs, the in-memory broker and the in-memory and SQLite
  inboxes run a saga, remote steps included, as they do on asyncio;
* the adapters whose client library runs on asyncio only (the RabbitMQ and Kafka brokers,
  the PostgreSQL saga log and inbox) refuse at once with an ``UnsupportedBackend`` that names
  the adapter, the running backend and what to use instead, before touching the network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anyio.lowlevel
import pytest
from pydantic import BaseModel

from pysaga import HandlerContext, Orchestrator, Participant, Saga, SagaStatus
from pysaga._backends import current_backend
from pysaga.brokers.kafka import KafkaBroker
from pysaga.brokers.rabbitmq import RabbitMQBroker
from pysaga.errors import PysagaError, UnsupportedBackend
from pysaga.stores.postgres import PostgresSagaLog
from pysaga.stores.postgres_inbox import PostgresInbox

from ..conftest import REQUIRE_SERVICES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    if importlib.util.find_spec("trio") is None:
        message = "trio is not installed; the dev extra installs it: pip install -e '.[dev]'"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (PYSAGA_REQUIRE_SERVICES=1 turns this skip into a failure)")
        pytest.skip(message)
    return "trio"


class Trip(BaseModel):
    nights: int
    booked: bool = False
    room: str | None = None


class BookRoom(BaseModel):
    nights: int


class RoomBooked(BaseModel):
    room: str


local = Saga("trio-local", Trip)


@local.step
async def book(trip: Trip) -> Trip:
    await anyio.lowlevel.checkpoint()  # a real suspension, on trio's scheduler
    return trip.model_copy(update={"booked": True})


remote = Saga("trio-remote", Trip)
remote.remote("book_room", service="trio-hotel", command=BookRoom, reply=RoomBooked, pivot=True)


async def test_the_running_backend_is_trio() -> None:
    assert current_backend() == "trio"


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_saga_runs_on_each_embedded_log(kind: str, tmp_path: Path) -> None:
    log = f"sqlite:///{tmp_path / 'sagas.db'}" if kind == "sqlite" else "memory://"
    async with Orchestrator(sagas=[local], log=log) as orch:
        outcome = await orch.run(local, Trip(nights=2))
    assert outcome.status is SagaStatus.COMPLETED
    assert outcome.data.booked


@pytest.mark.parametrize("inbox", ["memory", "sqlite"])
async def test_remote_steps_run_on_the_memory_broker_with_each_embedded_inbox(
    inbox: str, tmp_path: Path
) -> None:
    hub = f"memory://trio-{inbox}"
    url = f"sqlite:///{tmp_path / 'inbox.db'}" if inbox == "sqlite" else "memory://"
    hotel = Participant("trio-hotel", broker=hub, inbox=url)
    calls = 0

    @hotel.handles(BookRoom)
    async def book_room(cmd: BookRoom, ctx: HandlerContext) -> RoomBooked:
        nonlocal calls
        calls += 1
        return RoomBooked(room=f"R{cmd.nights}")

    log = f"sqlite:///{tmp_path / 'sagas.db'}"
    async with hotel, Orchestrator(sagas=[remote], log=log, broker=hub) as orch:
        outcome = await orch.run(remote, Trip(nights=3))
    assert outcome.status is SagaStatus.COMPLETED
    assert outcome.data.room == "R3"
    assert calls == 1


@pytest.mark.parametrize(
    ("adapter", "named", "instead"),
    [
        (lambda: RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/"), "RabbitMQ", "memory://"),
        (lambda: KafkaBroker("kafka://127.0.0.1:1"), "Kafka", "memory://"),
        (
            lambda: PostgresSagaLog("postgresql://postgres@127.0.0.1:1/test"),
            "PostgreSQL saga log",
            "sqlite:///",
        ),
        (
            lambda: PostgresInbox("postgresql://postgres@127.0.0.1:1/test"),
            "PostgreSQL inbox",
            "sqlite:///",
        ),
    ],
    ids=["rabbitmq", "kafka", "postgres-log", "postgres-inbox"],
)
async def test_an_asyncio_only_adapter_refuses_trio_saying_what_to_use(
    adapter: object, named: str, instead: str
) -> None:
    """Port 1 has no server: the refusal comes before any connection is tried."""
    make = adapter
    assert callable(make)
    with pytest.raises(UnsupportedBackend) as caught:
        async with make():
            pass
    message = str(caught.value)
    assert named in message
    assert "runs on trio" in message
    assert instead in message
    assert isinstance(caught.value, PysagaError)
