"""A participant's rules that do not depend on the broker, driven through handle_message."""

from __future__ import annotations

import anyio
import pytest
from pydantic import BaseModel

from pysaga import BusinessError, Envelope, HandlerContext, Participant, SagaDefinitionError
from pysaga.brokers.memory import MemoryBroker
from pysaga.messaging import HEADER_IDEMPOTENCY_KEY, Refused, command_id

pytestmark = pytest.mark.anyio


class Reserve(BaseModel):
    sku: str


class Release(BaseModel):
    sku: str


class Reserved(BaseModel):
    n: int


def command(message: BaseModel, key: str, *, compensation: bool = False) -> Envelope:
    return Envelope.of(
        message,
        id=command_id(key, compensation=compensation),
        correlation_id=key.split("/")[0],
        reply_to="nowhere",
        headers={HEADER_IDEMPOTENCY_KEY: key},
    )


async def test_a_compensation_waits_for_its_command_then_undoes_it() -> None:
    """The command is still being handled when its compensation arrives: the compensation
    waits, then undoes the effect; it never runs first and bars an effect that then stays."""
    stock = {"book": 5}
    gate = anyio.Event()
    started = anyio.Event()
    service = Participant("stock")

    @service.handles(Reserve)
    async def reserve(cmd: Reserve, ctx: HandlerContext) -> Reserved:
        started.set()
        await gate.wait()
        stock[cmd.sku] -= 1
        return Reserved(n=stock[cmd.sku])

    @service.compensates(Release)
    async def release(cmd: Release, ctx: HandlerContext) -> None:
        if stock[cmd.sku] < 5:
            stock[cmd.sku] += 1

    async with MemoryBroker() as broker:
        service.broker = broker
        async with service, anyio.create_task_group() as tg:
            tg.start_soon(service.handle_message, command(Reserve(sku="book"), "s-1/reserve"))
            await started.wait()
            tg.start_soon(
                service.handle_message,
                command(Release(sku="book"), "s-1/reserve", compensation=True),
            )
            await anyio.sleep(0.05)
            assert stock == {"book": 5}, "the compensation did not run while the command did"
            gate.set()
    assert stock == {"book": 5}, "reserved, then released"


async def test_a_command_after_its_compensation_is_refused_and_not_handled() -> None:
    handled: list[str] = []
    service = Participant("stock")

    @service.handles(Reserve)
    async def reserve(cmd: Reserve) -> Reserved:
        handled.append(cmd.sku)
        return Reserved(n=1)

    @service.compensates(Release)
    async def release(cmd: Release) -> None:
        pass

    async with MemoryBroker() as broker:
        service.broker = broker
        async with service:
            await service.handle_message(
                command(Release(sku="book"), "s-2/reserve", compensation=True)
            )
            await service.handle_message(command(Reserve(sku="book"), "s-2/reserve"))
            record = await service._inbox.get("stock", command_id("s-2/reserve"))
    assert handled == []
    assert record is not None
    assert record.reply_type == "pysaga.refused"
    assert Refused.model_validate_json(record.payload).reason.startswith("the step was compensated")


def test_declaration_mistakes_are_refused_at_once() -> None:
    service = Participant("stock")
    with pytest.raises(SagaDefinitionError, match="must be an 'async def'"):
        service.handles(Reserve)(lambda cmd: None)  # type: ignore[arg-type,return-value]

    @service.handles(Reserve)
    async def reserve(cmd: Reserve) -> None: ...

    with pytest.raises(SagaDefinitionError, match="already handles it"):

        @service.handles(Reserve)
        async def again(cmd: Reserve) -> None: ...

    with pytest.raises(SagaDefinitionError, match="returns its reply"):

        @service.handles(Release)
        async def wrong(cmd: Release) -> int:
            return 1

    with pytest.raises(SagaDefinitionError, match="pydantic model class"):
        service.handles(dict)  # type: ignore[type-var]


async def test_a_participant_without_a_broker_or_handlers_says_what_is_missing() -> None:
    with pytest.raises(SagaDefinitionError, match="handles no command"):
        async with Participant("idle", broker="memory://"):
            pass
    lonely = Participant("lonely")

    @lonely.handles(Reserve)
    async def reserve(cmd: Reserve) -> None:
        raise BusinessError("never")

    with pytest.raises(ValueError, match="has no broker"):
        async with lonely:
            pass
