"""Choreographed sagas: three services react to each other's events, with no coordinator, and
an observer records each saga in the saga log like an orchestrated one."""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from pysaga import (
    ChoreographyObserver,
    EntryKind,
    Inspector,
    LogEntry,
    SagaLog,
    SagaStatus,
    StepStatus,
)
from pysaga.brokers.memory import MemoryBroker
from pysaga.messaging import HEADER_SERVICE, Broker, Envelope
from pysaga.stores.memory import InMemorySagaLog
from pysaga.stores.sqlite import SQLiteSagaLog

from .conftest import BrokerKit
from .purchase import (
    OrderCreated,
    PaymentCompleted,
    Purchase,
    StockReserved,
    order,
    wait_for,
    wait_history,
    wait_until_ended,
)

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def running(
    purchase: Purchase, broker: Broker, log: SagaLog, **observer: float
) -> AsyncIterator[ChoreographyObserver]:
    """The observer and the three services, on *broker* (the observer first, as it keeps
    every event for itself from the first publish on)."""
    orders, stock, payments = purchase.services(broker)
    async with (
        ChoreographyObserver(purchase.flow, log=log, broker=broker, **observer) as obs,
        orders,
        stock,
        payments,
    ):
        yield obs


def kinds(history: list[LogEntry]) -> Counter[tuple[str, str | None]]:
    return Counter((e.kind.value, e.step) for e in history)


# -- the three outcomes, on every broker ---------------------------------------------------


async def test_purchase_completes(kit: BrokerKit, suffix: str) -> None:
    purchase = Purchase(suffix)
    log = InMemorySagaLog()
    async with kit.make() as broker, running(purchase, broker, log):
        saga_id = await purchase.flow.start(broker, order(1), source="orders")
        await wait_until_ended(log, saga_id)
        history = await wait_history(log, saga_id, 4)  # every event heard
        record = await log.get(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert record.name == purchase.flow.name
    assert record.failure is None
    assert json.loads(record.data) == order(1).model_dump()
    assert record.steps["reserve_stock"].status is StepStatus.SUCCEEDED
    assert record.steps["charge_payment"].status is StepStatus.SUCCEEDED
    assert kinds(history) == Counter(
        {
            ("saga_started", None): 1,
            ("step_succeeded", "reserve_stock"): 1,
            ("step_succeeded", "charge_payment"): 1,
            ("saga_completed", None): 1,
        }
    )
    by_kind = {e.kind: e.owner for e in history}
    assert by_kind[EntryKind.SAGA_STARTED] == "orders"
    assert by_kind[EntryKind.STEP_SUCCEEDED] in {f"stock-{suffix}", f"payments-{suffix}"}
    ledger = purchase.ledger
    assert ledger.count("reserve", saga_id) == ledger.count("charge", saga_id) == 1
    assert ledger.orders[saga_id] == "completed"


async def test_declined_payment_releases_the_stock_and_ends_compensated(
    kit: BrokerKit, suffix: str
) -> None:
    purchase = Purchase(suffix)
    log = InMemorySagaLog()
    async with kit.make() as broker, running(purchase, broker, log):
        saga_id = await purchase.flow.start(broker, order(2, amount=10_000))
        await wait_until_ended(log, saga_id)
        history = await wait_history(log, saga_id, 6)  # every event heard
        record = await log.get(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["reserve_stock"].status is StepStatus.COMPENSATED
    assert record.steps["charge_payment"].status is StepStatus.FAILED
    assert record.failure is not None
    assert record.failure.business
    assert record.failure.type == "PaymentFailed"
    assert "card declined" in record.failure.message
    assert kinds(history) == Counter(
        {
            ("saga_started", None): 1,
            ("step_succeeded", "reserve_stock"): 1,
            ("step_failed", "charge_payment"): 1,
            ("saga_compensating", None): 1,
            ("compensation_succeeded", "reserve_stock"): 1,
            ("saga_compensated", None): 1,
        }
    )
    ledger = purchase.ledger
    assert ledger.count("reserve", saga_id) == ledger.count("release", saga_id) == 1
    assert ledger.count("charge", saga_id) == 0
    assert ledger.stock == 1_000, "the stock was released"


async def test_no_stock_ends_compensated_without_reserving(suffix: str) -> None:
    purchase = Purchase(suffix)
    log = InMemorySagaLog()
    async with MemoryBroker() as broker, running(purchase, broker, log):
        saga_id = await purchase.flow.start(broker, order(3, qty=5_000))
        await wait_until_ended(log, saga_id)
        history = await wait_history(log, saga_id, 4)  # every event heard
        record = await log.get(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["reserve_stock"].status is StepStatus.FAILED
    assert "charge_payment" not in record.steps
    assert record.failure is not None
    assert record.failure.type == "StockNotAvailable"
    assert record.failure.step == "reserve_stock"
    assert ("step_failed", "reserve_stock") in kinds(history)
    assert purchase.ledger.count("reserve", saga_id) == 0
    assert purchase.ledger.stock == 1_000


# -- the log: the same statuses as orchestrated sagas, and the tools that read it ----------


async def test_statuses_move_as_an_orchestrated_sagas_do(suffix: str) -> None:
    """RUNNING while in flight, COMPENSATING once a failure event is heard, then an end."""
    purchase = Purchase(suffix)
    ledger = purchase.ledger
    ledger.charge_gate, ledger.reject_gate = anyio.Event(), anyio.Event()
    log = InMemorySagaLog()
    async with MemoryBroker() as broker, running(purchase, broker, log):
        saga_id = await purchase.flow.start(broker, order(4, amount=10_000))
        history = await wait_history(log, saga_id, 2)  # started, stock reserved
        record = await log.get(saga_id)
        assert record is not None
        assert record.status is SagaStatus.RUNNING
        assert record.steps["reserve_stock"].status is StepStatus.SUCCEEDED
        assert record.deadline_at == pytest.approx(record.created_at + purchase.flow.deadline)
        ledger.charge_gate.set()  # payments declines: the saga turns back
        record = await wait_for(log, saga_id, SagaStatus.COMPENSATING)
        assert record.failure is not None
        assert record.failure.type == "PaymentFailed"
        history = await wait_history(log, saga_id, 5)  # ... and the stock is released
        assert history[-1].kind is EntryKind.COMPENSATION_SUCCEEDED
        assert (await log.get(saga_id)).status is SagaStatus.COMPENSATING  # type: ignore[union-attr]
        ledger.reject_gate.set()  # the order service rejects the order: the end
        record = await wait_for(log, saga_id, SagaStatus.COMPENSATED)
    assert record.status.is_terminal


async def test_inspector_and_the_command_line_show_choreographed_sagas(
    suffix: str, tmp_path: Path
) -> None:
    purchase = Purchase(suffix)
    path = tmp_path / "sagas.db"
    async with SQLiteSagaLog(path) as log, MemoryBroker() as broker:
        async with running(purchase, broker, log):
            done = await purchase.flow.start(broker, order(5))
            undone = await purchase.flow.start(broker, order(6, amount=10_000))
            await wait_until_ended(log, done)
            await wait_until_ended(log, undone)
            await wait_history(log, undone, 6)
        inspector = Inspector(log)
        listed = {r.saga_id: r.status for r in await inspector.list(name=purchase.flow.name)}
        assert listed == {done: SagaStatus.COMPLETED, undone: SagaStatus.COMPENSATED}
        counts = await inspector.counts(name=purchase.flow.name)
        assert counts[SagaStatus.COMPLETED] == counts[SagaStatus.COMPENSATED] == 1
        # One event per entry, in the order the observer heard them (events of different
        # types travel apart, so that may differ from the order they were published in).
        timeline = await inspector.timeline(undone)
        assert {e.kind for e in timeline.events} == {
            EntryKind.SAGA_STARTED,
            EntryKind.STEP_SUCCEEDED,
            EntryKind.STEP_FAILED,
            EntryKind.SAGA_COMPENSATING,
            EntryKind.COMPENSATION_SUCCEEDED,
            EntryKind.SAGA_COMPENSATED,
        }
    shown = await anyio.run_process(
        [sys.executable, "-m", "pysaga", "--json", "list", "--log", f"sqlite:///{path}"]
    )
    rows = json.loads(shown.stdout)
    assert {r["saga_id"]: r["status"] for r in rows} == {done: "completed", undone: "compensated"}


# -- faults: duplicates, reordering, a lost event ------------------------------------------


async def test_duplicated_and_reordered_events_have_no_second_effect(suffix: str) -> None:
    purchase = Purchase(suffix)
    log = InMemorySagaLog()
    async with MemoryBroker() as broker:
        faults = broker.faults
        faults.duplicate(OrderCreated, times=10, copies=2)
        faults.duplicate(StockReserved, times=10, copies=1)
        faults.reorder(PaymentCompleted, times=4, hold=0.05)
        faults.duplicate(None, times=20, copies=1)
        async with running(purchase, broker, log):
            ids = [await purchase.flow.start(broker, order(n)) for n in range(3)]
            ids.append(await purchase.flow.start(broker, order(9, amount=10_000)))
            ids.append(await purchase.flow.start(broker, order(10, qty=9_999)))
            records = [await wait_until_ended(log, saga_id) for saga_id in ids]
            histories = [await wait_history(log, saga_id, 3) for saga_id in ids]
            await wait_history(log, ids[3], 6)
            # a start published again (a retried request) is the same event
            await purchase.flow.start(broker, order(0), saga_id=ids[0])
            await anyio.sleep(0.2)
        assert any(action == "duplicate" for action, _, _ in faults.fired)
        assert any(action == "reorder" for action, _, _ in faults.fired)
    assert [r.status for r in records] == [SagaStatus.COMPLETED] * 3 + [SagaStatus.COMPENSATED] * 2
    ledger = purchase.ledger
    assert ledger.repeated() == [], "no effect happened twice"
    assert ledger.stock == 1_000 - 3
    for saga_id, history in zip(ids, histories, strict=True):
        final = await log.history(saga_id)
        assert len(final) == len(set((e.kind, e.step) for e in final)), "one entry per event"
        assert len(final) >= len(history)
    assert len(await log.history(ids[0])) == 4


async def test_a_lost_event_ends_in_the_deadline_mark_not_silence(suffix: str) -> None:
    purchase = Purchase(suffix, deadline=0.3)
    log = InMemorySagaLog()
    async with MemoryBroker() as broker:
        # PaymentCompleted never reaches anyone: the order service nor the observer
        broker.faults.drop(PaymentCompleted, times=2)
        async with running(purchase, broker, log, check_interval=3600) as observer:
            saga_id = await purchase.flow.start(broker, order(1))
            await wait_history(log, saga_id, 2)
            await anyio.sleep(0.4)
            # past its deadline and unfinished: the inspector reports it as stuck
            stuck = await Inspector(log).stuck(no_progress_for=3600)
            assert [r.saga_id for r in stuck] == [saga_id]
            assert await observer.mark_overdue() == [saga_id]
            assert await observer.mark_overdue() == [], "marked once"
            record = await log.get(saga_id)
            assert record is not None
            assert record.status is SagaStatus.FAILED
            assert record.failure is not None
            assert record.failure.type == "DeadlineExceeded"
            assert "StockReserved (step 'reserve_stock')" in record.failure.message
            assert f"from payments-{suffix}" not in record.failure.message
            assert f"from stock-{suffix}" in record.failure.message
            assert record.failure.details["last_event"] == "StockReserved (step 'reserve_stock')"
            history = await log.history(saga_id)
            assert history[-1].kind is EntryKind.SAGA_FAILED
            failed = await Inspector(log).list(status=SagaStatus.FAILED)
            assert [r.saga_id for r in failed] == [saga_id]
            # a late event is added to the history; the mark stays
            late = Envelope.of(
                PaymentCompleted(order_id="o-1"),
                correlation_id=saga_id,
                headers={HEADER_SERVICE: "payments"},
            )
            await broker.publish(purchase.flow.destination(PaymentCompleted), late)
            # ... and so is the OrderCompleted the order service now publishes
            history = await wait_history(log, saga_id, len(history) + 2)
    assert {(e.kind, e.step) for e in history[-2:]} == {
        (EntryKind.STEP_SUCCEEDED, "charge_payment"),
        (EntryKind.SAGA_COMPLETED, None),
    }
    record = await log.get(saga_id)
    assert record is not None
    assert record.status is SagaStatus.FAILED
    assert record.steps["charge_payment"].status is StepStatus.SUCCEEDED


async def test_the_observer_marks_overdue_sagas_by_itself(suffix: str) -> None:
    purchase = Purchase(suffix, deadline=0.2)
    log = InMemorySagaLog()
    async with MemoryBroker() as broker:
        broker.faults.drop(StockReserved, times=3)  # payments and the observer never hear it
        async with running(purchase, broker, log, check_interval=0.05):
            saga_id = await purchase.flow.start(broker, order(1))
            record = await wait_for(log, saga_id, SagaStatus.FAILED)
    assert record.failure is not None
    assert "the last event heard was OrderCreated" in record.failure.message


# -- several observers ---------------------------------------------------------------------


async def test_several_observers_share_the_events_without_corrupting_a_record(
    suffix: str, tmp_path: Path
) -> None:
    purchase = Purchase(suffix)
    async with SQLiteSagaLog(tmp_path / "sagas.db") as log, MemoryBroker() as broker:
        broker.faults.duplicate(None, times=40, copies=1)
        orders, stock, payments = purchase.services(broker)
        observers = [ChoreographyObserver(purchase.flow, log=log, broker=broker) for _ in range(3)]
        async with observers[0], observers[1], observers[2], orders, stock, payments:
            ids = []
            for n in range(24):
                event = order(
                    n, amount=10_000 if n % 3 == 0 else 100, qty=5_000 if n % 4 == 1 else 1
                )
                ids.append(await purchase.flow.start(broker, event))
            records = {saga_id: await wait_until_ended(log, saga_id) for saga_id in ids}
            for n, saga_id in enumerate(ids):
                await wait_history(log, saga_id, 6 if n % 3 == 0 and n % 4 != 1 else 4)
            await anyio.sleep(0.1)
            for n, saga_id in enumerate(ids):
                history = await log.history(saga_id)
                record = await log.get(saga_id)
                assert record is not None
                pairs = [(e.kind, e.step) for e in history]
                assert len(pairs) == len(set(pairs)), f"order {n}: {pairs}"
                if n % 4 == 1:
                    expected = SagaStatus.COMPENSATED
                    assert len(history) == 4
                elif n % 3 == 0:
                    expected = SagaStatus.COMPENSATED
                    assert len(history) == 6
                else:
                    expected = SagaStatus.COMPLETED
                    assert len(history) == 4
                assert records[saga_id].status is expected
    assert purchase.ledger.repeated() == []
    assert purchase.ledger.stock == 1_000 - sum(1 for n in range(24) if n % 3 != 0 and n % 4 != 1)


async def test_events_heard_out_of_order_are_told_in_the_order_they_happened(
    suffix: str,
) -> None:
    """The refusal and the end it led to reach the observer last-first (a slow consumer, a
    redelivery): the history keeps each event's own time, and the timeline, the inspector and
    the command line tell the story in that order."""
    from .purchase import OrderRejected, PaymentFailed, StockReleased

    purchase = Purchase(suffix)
    flow = purchase.flow
    log = InMemorySagaLog()
    saga_id = f"late-{suffix}"
    first = order(5, amount=10_000)
    sent = [
        (first, "orders"),
        (
            StockReserved(
                order_id=first.order_id, sku=first.sku, qty=first.qty, amount=first.amount
            ),
            "stock",
        ),
        (
            PaymentFailed(
                order_id=first.order_id, sku=first.sku, qty=first.qty, reason="card declined"
            ),
            "payments",
        ),
        (StockReleased(order_id=first.order_id), "stock"),
        (OrderRejected(order_id=first.order_id, reason="card declined"), "orders"),
    ]
    envelopes = []
    for event, source in sent:
        envelopes.append(
            Envelope.of(event, correlation_id=saga_id, headers={HEADER_SERVICE: source})
        )
        await anyio.sleep(0.01)  # each a little later than the one before
    heard = [envelopes[i] for i in (0, 1, 4, 3, 2)]  # the end first, the refusal last
    async with MemoryBroker() as broker, ChoreographyObserver(flow, log=log, broker=broker):
        for envelope in heard:
            await broker.publish(
                flow.destination(sent[envelopes.index(envelope)][0].__class__), envelope
            )
            await wait_history(log, saga_id, 1)
            await anyio.sleep(0.02)
        await wait_history(log, saga_id, 6)
        async with Inspector(log) as inspector:
            timeline = await inspector.timeline(saga_id)
    order_told = [(event.kind.value, event.step) for event in timeline.events]
    assert order_told.index(("step_failed", "charge_payment")) < order_told.index(
        ("saga_compensated", None)
    )
    assert order_told.index(("step_failed", "charge_payment")) < order_told.index(
        ("compensation_succeeded", "reserve_stock")
    )
    assert [event.at for event in timeline.events] == sorted(event.at for event in timeline.events)
    record = timeline.record
    assert record.status is SagaStatus.COMPENSATED
    assert record.failure is not None
    assert record.failure.type == "PaymentFailed"  # the step's refusal, not the ending event
