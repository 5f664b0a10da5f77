"""A saga is driven only on the definition it was started on: a changed definition under the
same name and version is refused (the saga is held for an operator, saying what differs), and
one orchestrator hosts several versions of a saga at once. On every saga log."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    EntryKind,
    LogEntry,
    Orchestrator,
    Saga,
    SagaDefinitionError,
    SagaNotRegisteredError,
    SagaOutcome,
    SagaRecord,
    SagaStatus,
    StepContext,
)
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str = "o-1"
    qty: int = 1


class OrderWithNote(BaseModel):
    order_id: str = "o-1"
    qty: int = 1
    note: str = ""


class Shop:
    """What the steps did, by step name, and a gate the ``charge`` step waits at."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.undone: Counter[str] = Counter()
        self.charging = anyio.Event()
        self.open = anyio.Event()


Build = Callable[[Shop], Saga[BaseModel]]


def original(shop: Shop, *, version: int = 1) -> Saga[BaseModel]:
    """reserve (compensated) -> charge (waits at the gate) -> confirm."""
    saga: Saga[BaseModel] = Saga("order", Order, version=version)

    @saga.step
    async def reserve(order: Order, ctx: StepContext) -> None:
        shop.done[ctx.step] += 1

    @reserve.compensate
    async def release(order: Order, ctx: StepContext) -> None:
        shop.undone[ctx.step] += 1

    @saga.step
    async def charge(order: Order, ctx: StepContext) -> None:
        shop.charging.set()
        await shop.open.wait()
        shop.done[ctx.step] += 1

    @saga.step
    async def confirm(order: Order, ctx: StepContext) -> None:
        shop.done[ctx.step] += 1

    return saga


def _steps(
    saga: Saga[BaseModel], shop: Shop, names: list[str], *, compensate: str | None = None
) -> None:
    for name in names:

        async def step(order: BaseModel, ctx: StepContext) -> None:
            shop.done[ctx.step] += 1

        declared = saga.step(name=name)(step)
        if name == compensate:

            async def undo(order: BaseModel, ctx: StepContext) -> None:
                shop.undone[ctx.step] += 1

            declared.compensate(undo)


def renamed(shop: Shop) -> Saga[BaseModel]:
    saga: Saga[BaseModel] = Saga("order", Order)
    _steps(saga, shop, ["reserve_stock", "charge", "confirm"], compensate="reserve_stock")
    return saga


def reordered(shop: Shop) -> Saga[BaseModel]:
    saga: Saga[BaseModel] = Saga("order", Order)
    _steps(saga, shop, ["charge", "reserve", "confirm"], compensate="reserve")
    return saga


def uncompensated(shop: Shop) -> Saga[BaseModel]:
    saga: Saga[BaseModel] = Saga("order", Order)
    _steps(saga, shop, ["reserve", "charge", "confirm"])
    return saga


def remodelled(shop: Shop) -> Saga[BaseModel]:
    saga: Saga[BaseModel] = Saga("order", OrderWithNote)
    _steps(saga, shop, ["reserve", "charge", "confirm"], compensate="reserve")
    return saga


CHANGES: dict[str, tuple[Build, list[str]]] = {
    "rename": (renamed, ["step 'reserve' is gone", "step 'reserve_stock' is new"]),
    "reorder": (reordered, ["steps reordered: reserve, charge, confirm -> charge, reserve"]),
    "drop-compensation": (uncompensated, ["step 'reserve' lost its compensation"]),
    "data-model": (remodelled, ["the data model changed: field 'note' is new"]),
}


async def _stopped_mid_saga(log_factory: LogFactory, shop: Shop) -> tuple[str, str]:
    """Start an order on the original definition and stop its orchestrator while ``charge``
    runs (after ``reserve`` succeeded). Returns the saga id and the original fingerprint."""
    saga = original(shop)
    async with Orchestrator(sagas=[saga], log=log_factory(), drain_timeout=0) as first:
        saga_id = await first.start(saga, Order())
        with anyio.fail_after(5):
            await shop.charging.wait()
    return saga_id, saga.fingerprint


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_changed_definition_is_held_not_driven(
    log_factory: LogFactory, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rename, reorder, a removed compensation or a changed data model under the same name
    and version: the saga in flight is held for an operator, nothing runs, nothing is
    compensated, and one line says which steps differ. Bringing the original definition
    back (as version 1, the changed one as version 2) finishes it, with no step run twice."""
    shop = Shop()
    saga_id, started_on = await _stopped_mid_saga(log_factory, shop)
    assert shop.done == Counter({"reserve": 1})
    build, expected = CHANGES[change]
    changed = build(shop)
    assert changed.fingerprint != started_on
    caplog.set_level(logging.ERROR, logger="pysaga.orchestrator")

    async with Orchestrator(
        sagas=[changed], log=log_factory(), lease=0.2, claim_interval=0.02, drain_timeout=0
    ) as second:
        record = await second.get(saga_id)
        assert record.status is SagaStatus.RUNNING
        assert record.fingerprint == started_on
        assert record.held is not None
        for line in expected:
            assert line in record.held
        assert changed.fingerprint in record.held
        history = await second.history(saga_id)
        assert history[-1].kind is EntryKind.SAGA_HELD
        assert history[-1].failure is not None
        assert history[-1].failure.message == record.held
        await anyio.sleep(0.15)  # several claim rounds: still untouched
        again = await second.get(saga_id)
        assert (again.revision, again.owner, again.held) == (
            record.revision,
            record.owner,
            record.held,
        )
        assert second.log is not None
        held = await second.log.list(held=True)
        assert [r.saga_id for r in held] == [saga_id]
    assert shop.done == Counter({"reserve": 1})
    assert shop.undone == Counter()
    lines = [r for r in caplog.records if "held for an operator" in r.getMessage()]
    assert len(lines) == 1
    assert expected[0] in lines[0].getMessage()

    # The safe move: the original definition back as version 1, the change as version 2.
    restored, renumbered = original(shop), build(shop)
    renumbered.version = 2
    shop.open.set()
    async with Orchestrator(sagas=[restored, renumbered], log=log_factory()) as third:
        outcome = await third.wait(saga_id)
        assert outcome.status is SagaStatus.COMPLETED
        record = await third.get(saga_id)
        assert record.held is None
        assert record.fingerprint == restored.fingerprint == started_on
    assert shop.done == Counter({"reserve": 1, "charge": 1, "confirm": 1})
    assert shop.undone == Counter()


async def test_several_versions_in_one_orchestrator(log_factory: LogFactory) -> None:
    """A saga started by name starts on the newest version; one given as an object starts on
    that version; a saga in flight on version 1 finishes on version 1."""
    shop = Shop()
    saga_id, _ = await _stopped_mid_saga(log_factory, shop)
    v1 = original(shop)
    v2: Saga[BaseModel] = Saga("order", Order, version=2)
    _steps(v2, shop, ["reserve_v2", "charge_v2"], compensate="reserve_v2")
    shop.open.set()
    async with Orchestrator(sagas=[v2, v1], log=log_factory()) as orch:
        assert (await orch.wait(saga_id)).status is SagaStatus.COMPLETED
        by_name: SagaOutcome[Any] = await orch.run("order", {"order_id": "o-2"})
        assert by_name.status is SagaStatus.COMPLETED
        newest = await orch.get(by_name.saga_id)
        assert (newest.version, newest.fingerprint) == (2, v2.fingerprint)
        explicit = await orch.run(v1, Order(order_id="o-3"))
        old = await orch.get(explicit.saga_id)
        assert (old.version, old.fingerprint) == (1, v1.fingerprint)
        assert "order v1" in repr(orch)
        assert "order v2" in repr(orch)
        v3: Saga[BaseModel] = Saga("order", Order, version=3)
        _steps(v3, shop, ["x"])
        with pytest.raises(SagaNotRegisteredError, match="it runs version 1, 2"):
            await orch.start(v3, Order())
        with pytest.raises(SagaNotRegisteredError, match="no saga named 'nope'"):
            await orch.start("nope", {})
        versions = await orch.log.versions(name="order")
        counted = {(v.version, v.fingerprint): v.counts for v in versions}
        assert counted[1, v1.fingerprint] == {SagaStatus.COMPLETED: 2}
        assert counted[2, v2.fingerprint] == {SagaStatus.COMPLETED: 1}
        assert all(v.definition is not None for v in versions)
    assert shop.done == Counter(
        {"reserve": 2, "charge": 2, "confirm": 2, "reserve_v2": 1, "charge_v2": 1}
    )


def test_two_definitions_under_one_name_and_version_are_refused() -> None:
    """Hosting a changed definition beside the original under the same version is refused
    with the fix: give the changed one the next version."""
    shop = Shop()
    with pytest.raises(SagaDefinitionError, match="version=2"):
        Orchestrator(sagas=[original(shop), renamed(shop)], log="memory://")


async def test_a_record_without_fingerprint_is_driven_as_before(log_factory: LogFactory) -> None:
    """A saga recorded before fingerprints existed is claimed and driven by an orchestrator
    hosting its name and version, unchecked, as before."""
    shop = Shop()
    shop.open.set()
    now = time.time()
    async with log_factory() as log:
        await log.create(
            SagaRecord(
                saga_id="legacy",
                name="order",
                version=1,
                status=SagaStatus.RUNNING,
                data=Order().model_dump_json(),
                owner="gone",
                lease_expires_at=0.0,
                created_at=now,
                updated_at=now,
            ),
            [LogEntry(EntryKind.SAGA_STARTED, at=now, owner="gone")],
        )
    async with Orchestrator(sagas=[original(shop)], log=log_factory()) as orch:
        outcome = await orch.wait("legacy")
        assert outcome.status is SagaStatus.COMPLETED
        assert (await orch.get("legacy")).fingerprint is None
    assert shop.done == Counter({"reserve": 1, "charge": 1, "confirm": 1})


async def test_a_live_orchestrator_keeps_its_sagas(log_factory: LogFactory) -> None:
    """While the orchestrator that hosts a saga's definition still holds its lease, another
    one with a changed definition neither holds nor touches it (a rolling deploy)."""
    shop = Shop()
    saga = original(shop)
    async with Orchestrator(sagas=[saga], log=log_factory(), lease=5, drain_timeout=0) as old:
        saga_id = await old.start(saga, Order())
        with anyio.fail_after(5):
            await shop.charging.wait()
        before = await old.get(saga_id)
        async with Orchestrator(sagas=[renamed(shop)], log=log_factory(), lease=5) as new:
            after = await new.get(saga_id)
            assert (after.held, after.revision, after.owner) == (None, before.revision, old.owner)
        shop.open.set()
        assert (await old.wait(saga_id)).status is SagaStatus.COMPLETED


async def test_an_unknown_fingerprint_is_held_and_visible(log_factory: LogFactory) -> None:
    """A saga whose fingerprint matches no definition the log knows (its outline was never
    recorded) is left as it is, held, and says so: nothing of it runs."""
    shop = Shop()
    now = time.time()
    async with log_factory() as log:
        await log.create(
            SagaRecord(
                saga_id="stranger",
                name="order",
                version=1,
                status=SagaStatus.COMPENSATING,
                data=Order().model_dump_json(),
                owner="gone",
                created_at=now,
                updated_at=now,
                fingerprint="0123456789abcdef",
            ),
            [LogEntry(EntryKind.SAGA_STARTED, at=now, owner="gone")],
        )
    async with Orchestrator(sagas=[original(shop)], log=log_factory()) as orch:
        record = await orch.get("stranger")
        assert record.status is SagaStatus.COMPENSATING
        assert (record.owner, record.steps, record.revision) == ("gone", {}, 1)
        assert record.held is not None
        assert "is not recorded in this log" in record.held
        (found,) = [v for v in await orch.log.versions() if v.fingerprint == "0123456789abcdef"]
        assert (found.held, found.definition) == (1, None)
    assert shop.done == Counter()
    assert shop.undone == Counter()
