"""A compensation is told why the saga turned back (``ctx.failure``): the failed step's error,
or an operator's abort, locally and in a participant's compensation handler, and again after
a restart or an operator's retry; a step going forward is told nothing."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    EntryKind,
    Envelope,
    Failure,
    HandlerContext,
    Operator,
    Orchestrator,
    Participant,
    Retry,
    Saga,
    SagaStatus,
    StepContext,
)
from pysaga.brokers.memory import MemoryBroker
from pysaga.messaging import HEADER_FAILURE, HEADER_IDEMPOTENCY_KEY, HEADER_STEP, command_id
from pysaga.testing import SagaWorld, virtual_time_backend
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio

ONCE = Retry(attempts=1, backoff=0, jitter=0)


class Order(BaseModel):
    sku: str = "book"
    qty: int = 1


class ReserveStock(BaseModel):
    sku: str
    qty: int


class ReleaseStock(BaseModel):
    sku: str


class ChargeCard(BaseModel):
    qty: int


Seen = list[tuple[str, bool, Failure | None]]
"""What each step or compensation was told: (step, compensating, ctx.failure)."""


def local_shop(
    seen: Seen, *, release_fails: int = 0, reserving: anyio.Event | None = None
) -> Saga[Order]:
    """reserve (undo: release) -> take_stock, which says "out of stock"."""
    saga: Saga[Order] = Saga(f"shop-{uuid.uuid4().hex[:8]}", Order)
    failures = [release_fails]

    @saga.step(retry=ONCE)
    async def reserve(order: Order, ctx: StepContext) -> None:
        seen.append((ctx.step, ctx.compensating, ctx.failure))
        if reserving is not None:  # hang
            reserving.set()
            await anyio.sleep_forever()

    @reserve.compensate(retry=ONCE)
    async def release(order: Order, ctx: StepContext) -> None:
        seen.append((ctx.step, ctx.compensating, ctx.failure))
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("warehouse unreachable")

    @saga.step(retry=ONCE)
    async def take_stock(order: Order, ctx: StepContext) -> None:
        seen.append((ctx.step, ctx.compensating, ctx.failure))
        raise BusinessError("out of stock")

    return saga


async def test_a_local_compensation_is_told_the_failed_step_and_its_error(
    log_factory: LogFactory,
) -> None:
    seen: Seen = []
    saga = local_shop(seen)
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        outcome = await orch.run(saga, Order())
    assert outcome.status is SagaStatus.COMPENSATED
    assert [(step, compensating) for step, compensating, _ in seen] == [
        ("reserve", False),
        ("take_stock", False),
        ("reserve", True),
    ]
    assert seen[0][2] is None
    assert seen[1][2] is None
    told = seen[2][2]
    assert told is not None
    assert told.message == "out of stock"
    assert told.step == "take_stock"
    assert told.type == "BusinessError"
    assert told.business
    assert told == outcome.failure


async def test_a_saga_past_its_deadline_tells_its_compensations() -> None:
    seen: Seen = []
    saga: Saga[Order] = Saga("late-shop", Order, deadline=0.2)

    @saga.step(retry=ONCE)
    async def reserve(order: Order, ctx: StepContext) -> None:
        seen.append((ctx.step, ctx.compensating, ctx.failure))

    @reserve.compensate(retry=ONCE)
    async def release(order: Order, ctx: StepContext) -> None:
        seen.append((ctx.step, ctx.compensating, ctx.failure))

    @saga.step(retry=ONCE)
    async def ship(order: Order) -> None:
        await anyio.sleep_forever()

    async with Orchestrator(sagas=[saga], log="memory://") as orch:
        with anyio.fail_after(10):
            outcome = await orch.run(saga, Order())
    assert outcome.status is SagaStatus.COMPENSATED
    assert [(step, compensating) for step, compensating, _ in seen] == [
        ("reserve", False),
        ("reserve", True),
    ]
    told = seen[1][2]
    assert told is not None
    assert told.type == "DeadlineExceeded"
    assert told == outcome.failure


async def test_an_aborted_saga_tells_its_compensations_the_operators_reason(
    log_factory: LogFactory,
) -> None:
    """The abort cuts the hanging step short; the saga is compensated from the log, and the
    compensation reads who aborted it and why."""
    seen: Seen = []
    reserving = anyio.Event()
    saga = local_shop(seen, reserving=reserving)
    async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
        saga_id = await orch.start(saga, Order())
        with anyio.fail_after(10):
            await reserving.wait()
        await Operator(orch.log).abort(saga_id, reason="customer cancelled", by="bob")
        outcome = await orch.wait(saga_id)
    assert outcome.status is SagaStatus.COMPENSATED
    assert [(step, compensating) for step, compensating, _ in seen] == [
        ("reserve", False),
        ("reserve", True),
    ]
    told = seen[1][2]
    assert told is not None
    assert told.message == "aborted by bob: customer cancelled"
    assert told.type == "OperatorAborted"
    assert told.step is None
    assert not told.business
    assert told.details == {"by": "bob", "reason": "customer cancelled"}


async def test_a_compensation_retried_by_an_operator_is_still_told_why_the_saga_turned_back(
    log_factory: LogFactory,
) -> None:
    """The compensation gave up: the saga's failure still says why it turned back, and the
    compensation's error is kept beside it; once an operator retries it, the compensation is
    told the step's error, and the compensated saga keeps the business reason."""
    seen: Seen = []
    saga = local_shop(seen, release_fails=1)
    async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
        failed = await orch.run(saga, Order())
        assert failed.status is SagaStatus.FAILED
        assert failed.failure is not None
        assert (failed.failure.step, failed.failure.type) == ("take_stock", "BusinessError")
        assert failed.compensation_failure is not None
        assert failed.compensation_failure.type == "ConnectionError"
        record = await orch.get(failed.saga_id)
        assert record.compensation_failure == failed.compensation_failure
        await Operator(orch.log).retry(failed.saga_id, reason="warehouse is back", by="alice")
        outcome = await orch.wait(failed.saga_id)
        record = await orch.get(failed.saga_id)
    assert outcome.status is SagaStatus.COMPENSATED
    assert outcome.failure is not None
    assert outcome.failure.message == "out of stock"
    assert outcome.compensation_failure is None
    assert record.failure is not None
    assert record.failure.message == "out of stock"
    compensations = [failure for _, compensating, failure in seen if compensating]
    assert len(compensations) == 2
    for told in compensations:
        assert told is not None
        assert (told.step, told.type, told.message) == (
            "take_stock",
            "BusinessError",
            "out of stock",
        )


# -- remote compensations ----------------------------------------------------------------------


def remote_shop(seen: Seen, name: str) -> tuple[Saga[Order], Participant, Participant]:
    """reserve_stock @ stock (undo: ReleaseStock) -> charge_card @ payments, which refuses."""
    saga: Saga[Order] = Saga(name, Order)
    saga.remote(
        "reserve_stock",
        service="stock",
        command=ReserveStock,
        compensation=ReleaseStock,
        retry=ONCE,
        timeout=5,
    )
    saga.remote("charge_card", service="payments", command=ChargeCard, retry=ONCE, timeout=5)
    stock = Participant("stock")
    payments = Participant("payments")

    @stock.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> None:
        seen.append((ctx.step or "", False, ctx.failure))

    @stock.compensates(ReleaseStock)
    async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
        seen.append((ctx.step or "", True, ctx.failure))

    @payments.handles(ChargeCard)
    async def charge(cmd: ChargeCard, ctx: HandlerContext) -> None:
        seen.append((ctx.step or "", False, ctx.failure))
        raise BusinessError("card declined", details={"code": 51})

    return saga, stock, payments


async def test_a_remote_compensation_handler_is_told_the_refusal() -> None:
    seen: Seen = []
    broker = f"memory://{uuid.uuid4().hex[:12]}"
    saga, stock, payments = remote_shop(seen, "remote-shop")
    stock.broker = payments.broker = broker
    async with stock, payments, Orchestrator(sagas=[saga], log="memory://", broker=broker) as orch:
        outcome = await orch.run(saga, Order())
    assert outcome.status is SagaStatus.COMPENSATED
    assert [(step, compensating) for step, compensating, _ in seen] == [
        ("reserve_stock", False),
        ("charge_card", False),
        ("reserve_stock", True),
    ]
    assert seen[0][2] is None
    assert seen[1][2] is None
    told = seen[2][2]
    assert told is not None
    assert told.message == "card declined"
    assert told.step == "charge_card"
    assert told.business
    assert told.details == {"code": 51}
    assert told == outcome.failure


class TestAfterARestart:
    @pytest.fixture
    def anyio_backend(self) -> tuple[str, dict[str, Any]]:
        return virtual_time_backend()

    async def test_a_resumed_saga_tells_its_compensations_why(self) -> None:
        """The orchestrator dies right after writing the remote step's compensation intent;
        the one that resumes the saga tells the remote compensation (through its command) and
        the local one before it why the saga turned back."""
        seen: Seen = []
        saga: Saga[Order] = Saga("resumed-shop", Order)

        @saga.step(retry=ONCE)
        async def hold(order: Order, ctx: StepContext) -> None:
            seen.append((ctx.step, ctx.compensating, ctx.failure))

        @hold.compensate(retry=ONCE)
        async def unhold(order: Order, ctx: StepContext) -> None:
            seen.append((ctx.step, ctx.compensating, ctx.failure))

        saga.remote(
            "reserve_stock",
            service="stock",
            command=ReserveStock,
            compensation=ReleaseStock,
            retry=ONCE,
            timeout=5,
        )

        @saga.step(retry=ONCE)
        async def charge(order: Order, ctx: StepContext) -> None:
            seen.append((ctx.step, ctx.compensating, ctx.failure))
            raise BusinessError("card declined")

        stock = Participant("stock")

        @stock.handles(ReserveStock)
        async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> None:
            seen.append((ctx.step or "", False, ctx.failure))

        @stock.compensates(ReleaseStock)
        async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
            seen.append((ctx.step or "", True, ctx.failure))

        async with SagaWorld() as world:
            await world.start_participant(stock)
            world.crash_after(EntryKind.COMPENSATION_STARTED, step="reserve_stock")
            first = await world.start_orchestrator(saga)
            saga_id = await first.start(saga, Order())
            await world.wait_for_crash()
            assert [(step, compensating) for step, compensating, _ in seen] == [
                ("hold", False),
                ("reserve_stock", False),
                ("charge", False),
            ]
            await world.restart_orchestrator()
            record = await world.wait_for(saga_id, status=SagaStatus.COMPENSATED)
        assert [(step, compensating) for step, compensating, _ in seen[3:]] == [
            ("reserve_stock", True),
            ("hold", True),
        ]
        assert all(failure is None for _, _, failure in seen[:3])
        for _, _, told in seen[3:]:
            assert told is not None
            assert (told.step, told.message, told.business) == ("charge", "card declined", True)
            assert told == record.failure


# -- the participant's side --------------------------------------------------------------------


def sent(message: BaseModel, key: str, *, compensation: bool, failure: str | None) -> Envelope:
    headers = {HEADER_IDEMPOTENCY_KEY: key, HEADER_STEP: key.split("/")[1]}
    if failure is not None:
        headers[HEADER_FAILURE] = failure
    return Envelope.of(
        message,
        id=command_id(key, compensation=compensation),
        correlation_id=key.split("/")[0],
        reply_to=None,
        headers=headers,
    )


async def told_by(envelopes: list[Envelope]) -> list[tuple[str, Failure | None]]:
    """What the stock service's handlers read in ctx.failure, for each envelope handled."""
    told: list[tuple[str, Failure | None]] = []
    service = Participant("stock")

    @service.handles(ReserveStock)
    async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> None:
        told.append(("reserve", ctx.failure))

    @service.compensates(ReleaseStock)
    async def release(cmd: ReleaseStock, ctx: HandlerContext) -> None:
        told.append(("release", ctx.failure))

    async with MemoryBroker() as broker:
        service.broker = broker
        async with service:
            for envelope in envelopes:
                await service.handle_message(envelope)
    return told


async def test_the_header_is_read_only_in_a_compensation_handler() -> None:
    why = Failure("charge_card", "BusinessError", "card declined", business=True)
    header = json.dumps(why.to_json())
    told = await told_by(
        [
            sent(
                ReserveStock(sku="book", qty=1),
                "s-1/reserve_stock",
                compensation=False,
                failure=header,
            ),
            sent(ReleaseStock(sku="book"), "s-2/reserve_stock", compensation=True, failure=header),
            sent(ReleaseStock(sku="book"), "s-3/reserve_stock", compensation=True, failure=None),
        ]
    )
    assert told == [("reserve", None), ("release", why), ("release", None)]


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        "[" * 100_000,  # too deep to read
        "[1, 2]",
        json.dumps({"step": None, "type": "X"}),  # no message
        json.dumps({"step": 3, "type": "X", "message": "m"}),
        json.dumps({"step": None, "type": "X", "message": "m", "business": "yes"}),
    ],
)
async def test_an_unreadable_header_gives_none_and_one_warning(
    header: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pysaga.participant")
    told = await told_by(
        [sent(ReleaseStock(sku="book"), "s-4/reserve_stock", compensation=True, failure=header)]
    )
    assert told == [("release", None)]
    warnings = [r for r in caplog.records if HEADER_FAILURE in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
