"""A saga whose steps are commands to two participant services, on every broker."""

from __future__ import annotations

import pytest

from pysaga import Orchestrator, SagaStatus

from .conftest import BrokerKit
from .shop import ShopSetup, order

pytestmark = pytest.mark.anyio


async def run_orders(kit: BrokerKit, shop: ShopSetup, orders: list[object]) -> list[object]:
    async with kit.make() as broker:
        stock, payments = shop.participants(broker)
        async with (
            stock,
            payments,
            Orchestrator(sagas=[shop.saga], log="memory://", broker=broker) as orch,
        ):
            return [await orch.run(shop.saga, o) for o in orders]  # type: ignore[arg-type]


async def test_success(kit: BrokerKit, suffix: str) -> None:
    shop = ShopSetup(suffix)
    [outcome] = await run_orders(kit, shop, [order(1)])
    assert outcome.status is SagaStatus.COMPLETED  # type: ignore[attr-defined]
    assert outcome.data.reservation_id == "r-o-1"  # type: ignore[attr-defined]
    assert outcome.data.payment_id == "p-o-1"  # type: ignore[attr-defined]
    assert outcome.data.confirmed  # type: ignore[attr-defined]
    assert shop.ledger.stock == 999
    assert not shop.ledger.repeated()


async def test_business_refusal_compensates(kit: BrokerKit, suffix: str) -> None:
    shop = ShopSetup(suffix)
    [outcome] = await run_orders(kit, shop, [order(2, amount=500)])
    assert outcome.status is SagaStatus.COMPENSATED  # type: ignore[attr-defined]
    assert outcome.failure.business  # type: ignore[attr-defined]
    assert "card declined for 500" in outcome.failure.message  # type: ignore[attr-defined]
    assert shop.ledger.stock == 1_000, "the reservation was released"
    assert ("release", f"{outcome.saga_id}/reserve") in shop.ledger.effects  # type: ignore[attr-defined]
    assert not shop.ledger.repeated()


async def test_technical_failure_is_retried_then_succeeds(kit: BrokerKit, suffix: str) -> None:
    shop = ShopSetup(suffix)
    shop.ledger.fail_charges = 2
    [outcome] = await run_orders(kit, shop, [order(3)])
    assert outcome.status is SagaStatus.COMPLETED  # type: ignore[attr-defined]
    assert shop.ledger.charge_failures["o-3"] == 2
    assert not shop.ledger.repeated()


async def test_technical_failure_past_the_retries_compensates(kit: BrokerKit, suffix: str) -> None:
    shop = ShopSetup(suffix)
    shop.ledger.fail_charges = 99
    [outcome] = await run_orders(kit, shop, [order(4)])
    assert outcome.status is SagaStatus.COMPENSATED  # type: ignore[attr-defined]
    assert outcome.failure.type == "RemoteStepError"  # type: ignore[attr-defined]
    assert "card processor unreachable" in outcome.failure.message  # type: ignore[attr-defined]
    assert shop.ledger.charge_failures["o-4"] == 3, "three attempts, as the retry policy says"
    assert shop.ledger.stock == 1_000
    assert not shop.ledger.repeated()


async def test_many_sagas_at_once(kit: BrokerKit, suffix: str) -> None:
    import anyio

    shop = ShopSetup(suffix)
    outcomes: list[object] = []
    async with kit.make() as broker:
        stock, payments = shop.participants(broker)
        async with (
            stock,
            payments,
            Orchestrator(sagas=[shop.saga], log="memory://", broker=broker) as orch,
            anyio.create_task_group() as tg,
        ):
            for n in range(40):

                async def one(n: int = n) -> None:
                    amount = 500 if n % 4 == 0 else 10
                    outcomes.append(await orch.run(shop.saga, order(n, amount=amount)))

                tg.start_soon(one)
    statuses = sorted(o.status.value for o in outcomes)  # type: ignore[attr-defined]
    assert statuses.count("completed") == 30
    assert statuses.count("compensated") == 10
    assert shop.ledger.stock == 1_000 - 30
    assert not shop.ledger.repeated()


async def test_services_stop_promptly_when_cancelled(kit: BrokerKit, suffix: str) -> None:
    """Participants and an orchestrator run with serve() in a task group; cancelling the group
    stops them all (each closes its consumer and its own broker connection) without hanging."""
    import anyio

    shop = ShopSetup(suffix)
    stock, payments = shop.participants(kit.url)
    orch = Orchestrator(sagas=[shop.saga], log="memory://", broker=kit.url)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as services:
            await services.start(stock.serve)
            await services.start(payments.serve)
            await services.start(orch.serve)
            outcome = await orch.run(shop.saga, order(1))
            services.cancel_scope.cancel()
    assert outcome.status is SagaStatus.COMPLETED
