"""Starting a saga under an id that exists: refused, or (``on_conflict="use_existing"``) the
existing saga, so a caller can always retry a ``start()`` that met a log outage."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import BaseModel

from pysaga import (
    LogEntry,
    Orchestrator,
    Saga,
    SagaIdTaken,
    SagaRecord,
    SagaStatus,
    StepContext,
    StoreError,
)
from pysaga.stores.memory import InMemorySagaLog
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio


class Payment(BaseModel):
    payment_id: str
    amount: int
    currency: str = "EUR"


def payment_saga(effects: list[str]) -> Saga[Payment]:
    saga: Saga[Payment] = Saga("pay", Payment)

    @saga.step
    async def charge(payment: Payment, ctx: StepContext) -> None:
        effects.append(ctx.idempotency_key)

    return saga


async def test_the_same_saga_again_is_the_existing_one(log_factory: LogFactory) -> None:
    effects: list[str] = []
    saga = payment_saga(effects)
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        first = await orch.run(saga, Payment(payment_id="p-1", amount=10), saga_id="p-1")
        again = await orch.start(
            saga, Payment(payment_id="p-1", amount=10), saga_id="p-1", on_conflict="use_existing"
        )
        outcome = await orch.run(
            saga, {"payment_id": "p-1", "amount": 10}, saga_id="p-1", on_conflict="use_existing"
        )
        history = await orch.history("p-1")
    assert again == "p-1"
    assert first.status is outcome.status is SagaStatus.COMPLETED
    assert effects == ["p-1/charge"], "the step ran once"
    assert [e.kind.value for e in history].count("saga_started") == 1


async def test_other_data_under_the_id_is_refused_naming_the_fields(
    log_factory: LogFactory,
) -> None:
    effects: list[str] = []
    saga = payment_saga(effects)
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        await orch.run(saga, Payment(payment_id="p-1", amount=10), saga_id="p-1")
        before = await orch.get("p-1")
        with pytest.raises(SagaIdTaken) as caught:
            await orch.start(
                saga,
                Payment(payment_id="p-1", amount=12, currency="USD"),
                saga_id="p-1",
                on_conflict="use_existing",
            )
        record = await orch.get("p-1")
    assert caught.value.saga_id == "p-1"
    assert caught.value.differences == (
        "data field 'amount': 10 in the log, 12 asked",
        "data field 'currency': 'EUR' in the log, 'USD' asked",
    )
    assert "amount" in str(caught.value)
    assert record == before, "the existing saga is untouched"
    assert effects == ["p-1/charge"]


async def test_a_taken_id_is_refused_by_default(log_factory: LogFactory) -> None:
    saga = payment_saga([])
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        await orch.run(saga, Payment(payment_id="p-1", amount=10), saga_id="p-1")
        with pytest.raises(SagaIdTaken, match="use_existing") as caught:
            await orch.start(saga, Payment(payment_id="p-1", amount=10), saga_id="p-1")
    assert caught.value.differences == ()


async def test_an_unknown_conflict_policy_is_refused(log_factory: LogFactory) -> None:
    saga = payment_saga([])
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        with pytest.raises(ValueError, match="use_existing"):
            await orch.start(saga, Payment(payment_id="p", amount=1), on_conflict="merge")  # type: ignore[arg-type]


class _LostReply(InMemorySagaLog):
    """A log whose first create lands but reports a failure, as when the connection drops
    after the commit and before its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        await super().create(record, entries)
        if not self.lost:
            self.lost += 1
            raise StoreError("connection lost while committing")


async def test_a_start_that_met_an_outage_can_be_retried_with_the_same_id() -> None:
    """The write landed but the caller saw StoreError: retrying with the same id returns the
    saga, which then runs once (it is this orchestrator's, and nothing drove it yet)."""
    effects: list[str] = []
    saga = payment_saga(effects)
    log = _LostReply()
    async with Orchestrator(sagas=[saga], log=log) as orch:
        with pytest.raises(StoreError):
            await orch.start(saga, Payment(payment_id="p-9", amount=5), saga_id="p-9")
        saga_id = await orch.start(
            saga, Payment(payment_id="p-9", amount=5), saga_id="p-9", on_conflict="use_existing"
        )
        outcome = await orch.wait(saga_id)
    assert outcome.status is SagaStatus.COMPLETED
    assert effects == ["p-9/charge"], "it ran, once"
