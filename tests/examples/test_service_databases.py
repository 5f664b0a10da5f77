"""The shop's services run the same code on a SQLite file (one process) and on a PostgreSQL
schema of their own (distributed): an operation that fails leaves nothing behind, and a
charge and a cancellation of one order, run at the same time, never both win."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from examples.ecommerce.database import Database, open_database
from examples.ecommerce.flows import purchase
from examples.ecommerce.messages import (
    Order,
    OrderCreated,
    OrderLine,
    StockReserved,
    StockUpdated,
)
from examples.ecommerce.payments import (
    CANCELLED,
    PaymentDeclined,
    PaymentService,
    TooLateToCancel,
)
from examples.ecommerce.stock import OutOfStock, StockService, stock_participant

from pysaga import Envelope, HandlerContext
from pysaga.brokers.memory import MemoryBroker

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where the service's database lives: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return tmp_path / "service.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def order(order_id: str, *lines: tuple[str, int], customer: str = "alice") -> Order:
    return Order(
        order_id=order_id,
        customer_id=customer,
        lines=tuple(OrderLine(sku=s, qty=q, unit_price=Decimal("5.00")) for s, q in lines),
    )


@pytest.fixture
async def stock(where: str | Path) -> AsyncIterator[StockService]:
    async with open_database(where, StockService.TABLES) as db:
        service = StockService(db)
        await service.restock({"book": 5, "lamp": 1})
        yield service


@pytest.fixture
async def payments(where: str | Path) -> AsyncIterator[PaymentService]:
    async with open_database(where, PaymentService.TABLES) as db:
        service = PaymentService(db)
        await service.open_accounts({"alice": Decimal("1000.00")})
        yield service


async def test_a_reservation_that_cannot_be_held_whole_holds_nothing(stock: StockService) -> None:
    """The book line is taken before the lamp line runs short: the book comes back with the
    transaction, and the order holds nothing."""
    with pytest.raises(OutOfStock, match=r"out of stock: lamp \(1 left, 2 wanted\)"):
        await stock.reserve(order("o-1", ("book", 2), ("lamp", 2)))
    assert await stock.levels() == {"book": 5, "lamp": 1}
    assert not await stock.held()


async def test_reserving_and_releasing_again_has_no_second_effect(stock: StockService) -> None:
    wanted = order("o-1", ("book", 2), ("lamp", 1))
    first = await stock.reserve(wanted)
    assert await stock.reserve(wanted) == first  # the same levels, nothing taken twice
    assert await stock.levels() == {"book": 3, "lamp": 0}
    await stock.release("o-1")
    await stock.release("o-1")
    assert await stock.levels() == {"book": 5, "lamp": 1}
    # A release before the reservation (the compensation overtook its command) bars it.
    await stock.release("o-2")
    with pytest.raises(OutOfStock, match="the reservation was cancelled"):
        await stock.reserve(order("o-2", ("book", 1)))
    assert await stock.levels() == {"book": 5, "lamp": 1}


async def test_a_declined_charge_takes_nothing_and_is_not_remembered(
    payments: PaymentService,
) -> None:
    with pytest.raises(PaymentDeclined, match=r"payment declined: only 1000\.00 left"):
        await payments.charge(order("o-1", ("book", 300)))
    assert await payments.balances() == {"alice": Decimal("1000.00")}
    assert await payments.captured() == {}
    await payments.open_accounts({"alice": Decimal("2000.00")})  # topped up: it goes through
    payment = await payments.charge(order("o-1", ("book", 300)))
    assert await payments.charge(order("o-1", ("book", 300))) == payment  # once only
    assert await payments.balances() == {"alice": Decimal("500.00")}


async def test_a_charge_and_a_cancellation_never_both_win(payments: PaymentService) -> None:
    """Forty orders, each charged and cancelled at the same moment (on PostgreSQL, on two
    connections): for each, exactly one of the two wins, and the money follows."""
    won: dict[str, str] = {}
    declined: list[str] = []

    async def charge(wanted: Order) -> None:
        try:
            await payments.charge(wanted)
        except PaymentDeclined as refusal:
            declined.append(str(refusal))
        else:
            assert won.setdefault(wanted.order_id, "charge") == "charge"

    async def cancel(wanted: Order) -> None:
        try:
            await payments.cancel(wanted.order_id)
        except TooLateToCancel:
            pass
        else:
            assert won.setdefault(wanted.order_id, "cancel") == "cancel"

    for number in range(40):
        wanted = order(f"o-{number}", ("book", 1))
        async with anyio.create_task_group() as tg:
            if number % 2:  # either may start first
                tg.start_soon(charge, wanted)
                tg.start_soon(cancel, wanted)
            else:
                tg.start_soon(cancel, wanted)
                tg.start_soon(charge, wanted)
        assert wanted.order_id in won, wanted.order_id
    assert set(declined) <= {CANCELLED}
    charged = sum(1 for winner in won.values() if winner == "charge")
    assert await payments.captured() == ({"alice": Decimal(5 * charged)} if charged else {})
    assert await payments.balances() == {"alice": Decimal("1000.00") - 5 * charged}


class CrashingOnce(StockService):
    """Crashes once right after its writes, before the message's transaction commits, and
    notes what the others saw of the stock then."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.crashed = False
        self.seen_after_crash: dict[str, int] | None = None

    async def reserve(self, order: Order, ctx: HandlerContext | None = None) -> list[StockUpdated]:
        if self.crashed and self.seen_after_crash is None:
            self.seen_after_crash = await self.levels()  # another connection: committed state
        levels = await super().reserve(order, ctx)
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("the service crashed after its writes")
        return levels


async def test_a_handler_that_fails_after_its_writes_leaves_none_of_them(
    postgres_url: str,
) -> None:
    """On PostgreSQL the service's writes join the transaction the participant handles the
    event in: when the handler fails after writing, the rows go with the inbox record, and
    the event handled again takes the stock once."""
    async with (
        open_database(postgres_url, StockService.TABLES) as db,
        MemoryBroker("shop-joined") as broker,
    ):
        stock = CrashingOnce(db)
        await stock.restock({"book": 5})
        reserved = anyio.Event()

        async def heard(envelope: Envelope) -> None:
            reserved.set()

        await broker.subscribe(purchase.destination(StockReserved), heard, group="test")
        async with stock_participant(stock, broker=broker, inbox=postgres_url):
            wanted = order("o-1", ("book", 2))
            await purchase.start(broker, OrderCreated(order=wanted), saga_id="o-1", source="test")
            with anyio.fail_after(20):
                await reserved.wait()
        assert stock.seen_after_crash == {"book": 5}  # the crashed attempt's writes were undone
        assert await stock.levels() == {"book": 3}
        assert await stock.held() == {"book": 2}
