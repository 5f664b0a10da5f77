"""The shop as a whole: its opening state, a batch of orders, and the books checked at the end.

:func:`place_orders` runs every order of a batch as a ``place-order`` saga, all at once, on a
saga log in the shop's data directory. :func:`audit` then checks the services' own records
against each other, which is what the saga pattern promises: whatever happened to each order,
nothing is left half done.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Self

from pysaga import EntryKind, Orchestrator, SagaOutcome, SagaStatus

from .models import Order, OrderLine
from .orders import OrderService
from .payments import PaymentService
from .saga import build_place_order
from .stock import StockService

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = (
    "CATALOG",
    "CUSTOMERS",
    "DATA_FILES",
    "Audit",
    "Receipt",
    "Shop",
    "audit",
    "make_orders",
    "outcome_counts",
    "place_orders",
)

CATALOG: dict[str, tuple[Decimal, int]] = {
    # sku: (unit price, units in stock when the shop opens)
    "book": (Decimal("12.50"), 30),
    "mug": (Decimal("8.00"), 25),
    "poster": (Decimal("5.00"), 25),
    "lamp": (Decimal("49.00"), 2),  # the last two: orders race for them
}

CUSTOMERS: dict[str, Decimal] = {
    # customer: balance when the shop opens
    "alice": Decimal("1000.00"),
    "bob": Decimal("150.00"),
    "carol": Decimal("60.00"),
    "dave": Decimal("10.00"),  # little left on the account: most of his orders are declined
}

DATA_FILES = ("sagas.db", "orders.db", "stock.db", "payments.db")
"""The files a shop keeps in its data directory (SQLite adds ``-wal`` and ``-shm`` files)."""


def make_orders(count: int, *, seed: int) -> list[Order]:
    """*count* reproducible orders of one to three articles each, by random customers."""
    rng = random.Random(seed)
    orders = []
    for number in range(1, count + 1):
        skus = sorted(rng.sample(sorted(CATALOG), k=rng.choice((1, 1, 2, 3))))
        lines = tuple(
            OrderLine(sku=sku, qty=rng.choice((1, 1, 1, 2, 3)), unit_price=CATALOG[sku][0])
            for sku in skus
        )
        customer_id = rng.choice(sorted(CUSTOMERS))
        orders.append(Order(order_id=f"o-{number:03d}", customer_id=customer_id, lines=lines))
    return orders


class Shop:
    """The three services, each with its own database file in *data_dir*.

    Args:
        data_dir: Where the services (and the saga log) keep their files.
        hiccup_rate: The share of payments whose first attempt fails for a technical reason.
        seed: Makes the hiccups reproducible.
    """

    def __init__(self, data_dir: Path, *, hiccup_rate: float = 0.15, seed: int = 0) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.orders = OrderService(data_dir / "orders.db")
        self.stock = StockService(data_dir / "stock.db")
        self.payments = PaymentService(data_dir / "payments.db", hiccup_rate=hiccup_rate, seed=seed)

    @property
    def saga_log(self) -> str:
        """The saga log's URL: the embedded default, SQLite, next to the services' files."""
        return f"sqlite:///{(self.data_dir / 'sagas.db').as_posix()}"

    async def open_for_business(self) -> None:
        """Fill the shelves and open the customers' accounts."""
        await self.stock.restock({sku: units for sku, (_, units) in CATALOG.items()})
        await self.payments.open_accounts(CUSTOMERS)

    def close(self) -> None:
        for service in (self.orders, self.stock, self.payments):
            service.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Receipt:
    """What became of one order: the saga's outcome, and how often the payment was retried."""

    order: Order
    outcome: SagaOutcome[Order]
    payment_retries: int = 0

    @property
    def kind(self) -> str:
        """``completed``, ``out of stock``, ``declined`` or the saga's status otherwise."""
        failure = self.outcome.failure
        if self.outcome.status is SagaStatus.COMPENSATED and failure is not None:
            if failure.step == "reserve_stock":
                return "out of stock"
            if failure.step == "take_payment" and failure.business:
                return "declined"
        return self.outcome.status.value


async def place_orders(shop: Shop, orders: Sequence[Order]) -> tuple[list[Receipt], int]:
    """Run every order as a ``place-order`` saga, all at the same time.

    Returns:
        A receipt per order, in the orders' order, and the number of sagas the log still holds
        as unfinished afterwards (zero, unless something went wrong).
    """
    place_order = build_place_order(shop.orders, shop.stock, shop.payments)
    async with Orchestrator(sagas=[place_order], log=shop.saga_log) as orchestrator:
        # start() records the saga and returns at once, so all the orders run concurrently.
        # The order id doubles as the saga id: placing the same order twice is refused.
        for order in orders:
            await orchestrator.start(place_order, order, saga_id=order.order_id)
        receipts = []
        for order in orders:
            outcome = await orchestrator.wait(order.order_id)
            # The saga's history tells how many attempts the payment took.
            history = await orchestrator.history(order.order_id)
            attempts = sum(
                1 for e in history if e.kind is EntryKind.STEP_STARTED and e.step == "take_payment"
            )
            receipts.append(Receipt(order, outcome, payment_retries=max(0, attempts - 1)))
        unfinished = [
            record
            for status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
            for record in await orchestrator.log.list(status=status)
        ]
    return receipts, len(unfinished)


@dataclass
class Audit:
    """The shop's books, checked against each other: the problems found, by area."""

    stock: list[str] = field(default_factory=list)
    money: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.stock or self.money or self.pending)


def audit(shop: Shop, receipts: Sequence[Receipt], unfinished_sagas: int) -> Audit:
    """Check that nothing was lost, made up, or left half done.

    * stock is conserved: for every article, units at opening = units on the shelf + units in
      confirmed orders, and exactly those units are still held by reservations;
    * money is conserved: for every customer, balance at opening = balance now + confirmed
      orders, and exactly that much was captured by the payment service;
    * nothing is pending: no order is pending, every saga has ended, a saga completed exactly
      when its order was confirmed, and each confirmed order got one confirmation message.
    """
    found = Audit()

    on_shelf, held, sold = shop.stock.levels(), shop.stock.held(), shop.orders.sold()
    for sku, (_, units) in CATALOG.items():
        if units != on_shelf[sku] + sold[sku]:
            found.stock.append(
                f"{sku}: {units} at opening, but {on_shelf[sku]} on the shelf + {sold[sku]} sold"
            )
        if held[sku] != sold[sku]:
            found.stock.append(f"{sku}: {held[sku]} units held, but {sold[sku]} sold")

    balances, captured, spent = (
        shop.payments.balances(),
        shop.payments.captured(),
        shop.orders.revenue(),
    )
    for customer, balance in CUSTOMERS.items():
        paid = spent.get(customer, Decimal("0.00"))
        if balance != balances[customer] + paid:
            found.money.append(
                f"{customer}: {balance} at opening, but {balances[customer]} left + {paid} spent"
            )
        if captured.get(customer, Decimal("0.00")) != paid:
            found.money.append(
                f"{customer}: {captured.get(customer)} captured, but orders worth {paid}"
            )

    pending = shop.orders.statuses()["pending"]
    if pending:
        found.pending.append(f"{pending} orders are still pending")
    if unfinished_sagas:
        found.pending.append(f"{unfinished_sagas} sagas are unfinished")
    completed = {r.order.order_id for r in receipts if r.outcome.status is SagaStatus.COMPLETED}
    confirmed = shop.orders.confirmed()
    if completed != confirmed:
        found.pending.append(
            f"sagas and orders disagree about {sorted(completed ^ confirmed)}: completed "
            "sagas must be exactly the confirmed orders"
        )
    if shop.orders.confirmations() != Counter(dict.fromkeys(confirmed, 1)):
        found.pending.append("confirmed orders and confirmation messages do not match 1 for 1")
    return found


def outcome_counts(receipts: Sequence[Receipt]) -> Counter[str]:
    """How many orders ended each way."""
    return Counter(receipt.kind for receipt in receipts)
