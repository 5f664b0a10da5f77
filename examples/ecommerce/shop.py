"""The shop in one process: every service, the saga's coordinator or observer, the projection
and the application layer, on one in-memory broker and the embedded default (SQLite files).

:func:`open_shop` runs it all; :func:`audit` then checks the services' books against each
other and against the read model, which is what the saga pattern promises: whatever happened
to each order, nothing is left half done.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio

from pysaga import ChoreographyObserver, Envelope, Orchestrator, SagaStatus
from pysaga.brokers.memory import MemoryBroker

from .app import ShopApp, Style, take_order
from .database import open_database
from .flows import place_order, purchase
from .messages import UPDATES, OrderLine
from .orders import OrderService, order_participant
from .payments import CANCELLED, PaymentService, payment_participant
from .read_model import Projection, ReadModel
from .stock import StockService, stock_participant

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from pathlib import Path

    from opentelemetry.trace import TracerProvider

    from pysaga import SagaLog, SagaRecord

    from .database import Database

__all__ = (
    "CATALOG",
    "CUSTOMERS",
    "DATA_FILES",
    "LEASE",
    "Audit",
    "Basket",
    "Shop",
    "audit",
    "audit_books",
    "make_baskets",
    "open_shop",
    "outcome",
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
    "dave": Decimal("10.00"),  # little on the account: most of his orders are declined
}

DATA_FILES = ("sagas.db", "orders.db", "stock.db", "payments.db", "read-model.db")
"""The files a shop keeps in its data directory (SQLite adds ``-wal`` and ``-shm`` files)."""


@dataclass(frozen=True)
class Basket:
    """One order to place: who, and what."""

    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...]


def make_baskets(count: int, *, seed: int) -> list[Basket]:
    """*count* reproducible orders of one to three articles each, by random customers."""
    rng = random.Random(seed)
    baskets = []
    for number in range(1, count + 1):
        skus = sorted(rng.sample(sorted(CATALOG), k=rng.choice((1, 1, 2, 3))))
        lines = tuple(
            OrderLine(sku=sku, qty=rng.choice((1, 1, 1, 2, 3)), unit_price=CATALOG[sku][0])
            for sku in skus
        )
        baskets.append(Basket(f"o-{number:04d}", rng.choice(sorted(CUSTOMERS)), lines))
    return baskets


@dataclass
class Shop:
    """Everything :func:`open_shop` runs, for the demo and its checks."""

    app: ShopApp
    orders: OrderService
    stock: StockService
    payments: PaymentService
    read_model: ReadModel
    log: SagaLog
    broker: MemoryBroker

    async def wait_until_settled(
        self,
        order_ids: Sequence[str],
        *,
        progress: Callable[[int, int], object] | None = None,
        within: float = 60.0,
    ) -> dict[str, SagaRecord]:
        """Wait until every order's saga has ended in the saga log and the read model shows
        every order's end; return the sagas' records by order id.

        Raises:
            TimeoutError: not *within* so many seconds.
        """
        ended: dict[str, SagaRecord] = {}
        with anyio.fail_after(within):
            while True:
                for order_id in order_ids:
                    if order_id not in ended:
                        record = await self.log.get(order_id)
                        if record is not None and record.status.is_terminal:
                            ended[order_id] = record
                if progress is not None:
                    progress(len(ended), len(order_ids))
                if len(ended) == len(order_ids) and await self._read_model_caught_up():
                    return ended
                await anyio.sleep(0.02)

    async def _read_model_caught_up(self) -> bool:
        statuses = Counter(view.status for view in self.read_model.orders())
        return (
            statuses == await self.orders.statuses()
            and self.read_model.stock_levels() == await self.stock.levels()
        )


@contextlib.asynccontextmanager
async def open_shop(
    data_dir: Path,
    *,
    style: Style = "choreographed",
    hub: str | None = None,
    tracing: Callable[[str], TracerProvider] | None = None,
) -> AsyncIterator[Shop]:
    """Open the shop in *data_dir*: fill the shelves, open the accounts, start every service.

    Args:
        data_dir: Where each service, the saga log and the read model keep their files.
        style: How the place-order saga runs.
        hub: The name of the in-memory broker to run on (default: a new one); a test passes
            its world's, to inject faults. Each component connects to it on its own, as
            separate processes would.
        tracing: Gives each component its tracer provider, by name (default: the global one).
    """
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    saga_log = f"sqlite:///{(data_dir / 'sagas.db').as_posix()}"
    read_model = ReadModel(data_dir / "read-model.db")

    def traced(name: str) -> TracerProvider | None:
        return None if tracing is None else tracing(name)

    try:
        async with contextlib.AsyncExitStack() as stack:

            async def database(name: str, tables: str) -> Database:
                """The service's own SQLite file."""
                return await stack.enter_async_context(open_database(data_dir / name, tables))

            orders = OrderService(await database("orders.db", OrderService.TABLES))
            stock = StockService(await database("stock.db", StockService.TABLES))
            payments = PaymentService(await database("payments.db", PaymentService.TABLES))
            hub = hub or f"shop-{uuid.uuid4().hex[:8]}"

            async def connect(name: str) -> MemoryBroker:
                """A connection of component *name* to the broker."""
                return await stack.enter_async_context(
                    MemoryBroker(hub, tracer_provider=traced(name))
                )

            broker = await connect("orders")  # the application layer's, in the order service
            # The read side first, so that it hears every update from the first one on.
            await stack.enter_async_context(Projection(read_model, await connect("read-model")))
            reopened = bool(await stock.levels())
            if reopened:  # a shop that ran here before: keep its shelves and accounts
                shelves = await stock.levels()
                await _resync(broker, orders, stock)
            else:
                opening = await stock.restock({s: units for s, (_, units) in CATALOG.items()})
                for level in opening:
                    envelope = Envelope.of(level, id=f"restock-{level.sku}-{level.version}")
                    await broker.publish(UPDATES, envelope)
                shelves = {level.sku: level.on_hand for level in opening}
                await payments.open_accounts(CUSTOMERS)
            # The shop opens once its read side knows the shelves: a first query answers them.
            with anyio.fail_after(10):
                while read_model.stock_levels() != shelves:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            for participant in (
                order_participant(
                    orders, broker=await connect("orders"), tracer_provider=traced("orders")
                ),
                stock_participant(
                    stock, broker=await connect("stock"), tracer_provider=traced("stock")
                ),
                payment_participant(
                    payments, broker=await connect("payments"), tracer_provider=traced("payments")
                ),
            ):
                await stack.enter_async_context(participant)
            orchestrator = None
            if style == "orchestrated":
                orchestrator = Orchestrator(
                    sagas=[place_order],
                    log=saga_log,
                    broker=await connect("orchestrator"),
                    tracer_provider=traced("orchestrator"),
                    # The sagas' one orchestrator is this process: after a crash, the next
                    # run takes over the sagas its lease held within two seconds.
                    lease=LEASE,
                )
                await stack.enter_async_context(orchestrator)
                log = orchestrator.log
            else:
                observer = ChoreographyObserver(
                    purchase,
                    log=saga_log,
                    broker=await connect("observer"),
                    tracer_provider=traced("observer"),
                )
                await stack.enter_async_context(observer)
                log = observer.log
            app = ShopApp(
                broker=broker,
                read_model=read_model,
                orders=orders,
                orchestrator=orchestrator,
            )
            if style == "choreographed":
                await _replay_unfinished(broker, orders, log)
            yield Shop(app, orders, stock, payments, read_model, log, broker)
    finally:
        read_model.close()


LEASE = 2.0
"""Seconds an orchestrated saga of the one-process shop stays claimed without a renewal."""


async def _resync(broker: MemoryBroker, orders: OrderService, stock: StockService) -> None:
    """Tell the read model where every order and every article stands now.

    A process killed a moment after a service changed its data may not have delivered the
    update: the in-memory broker lost it. The projection keeps the newest state only, so
    hearing one again changes nothing."""
    for level in await stock.updates():
        envelope = Envelope.of(level, id=f"resync-{level.sku}-{level.version}")
        await broker.publish(UPDATES, envelope)
    for order in await orders.placed():
        update = await orders.create(order)  # taken already: its update, as it is now
        await broker.publish(UPDATES, Envelope.of(update, id=f"resync-{order.order_id}"))


async def _replay_unfinished(broker: MemoryBroker, orders: OrderService, log: SagaLog) -> int:
    """Choreographed: start again the flow of every order whose saga has not ended; return
    how many.

    A process killed mid-flow loses the events the in-memory broker held. Every service
    answers an event it handled before as it did then (the reservation, the payment and the
    order's status are keyed by the order id), and the replayed events carry the ids of the
    first ones: the flow takes the path it took, up to where it stopped, and goes on from
    there; the observer records nothing twice. The pending order is its own outbox."""
    unfinished = []
    for order in await orders.placed():
        record = await log.get(order.order_id)
        if record is None or not record.status.is_terminal:
            unfinished.append(order)
    for order in unfinished:
        await take_order(broker, orders, order)
    return len(unfinished)


def outcome(record: SagaRecord) -> str:
    """How an order ended, from its saga's record: ``completed``, ``out of stock``,
    ``declined``, ``cancelled`` (by the customer, before the charge), or the saga's status
    otherwise. The same in both styles: a choreographed saga is recorded with the same
    statuses, step names and reasons as an orchestrated one."""
    failure = record.failure
    if record.status is SagaStatus.COMPENSATED and failure is not None:
        if failure.step == "reserve_stock":
            return "out of stock"
        if failure.step == "charge_payment":
            return "cancelled" if failure.message == CANCELLED else "declined"
    return record.status.value


@dataclass
class Audit:
    """The shop's books, checked against each other: the problems found, by area."""

    stock: list[str] = field(default_factory=list)
    money: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.stock or self.money or self.pending)


async def audit(shop: Shop, sagas: dict[str, SagaRecord]) -> Audit:
    """Check the books of *shop* (see :func:`audit_books`)."""
    return await audit_books(shop.orders, shop.stock, shop.payments, shop.read_model, sagas)


async def audit_books(
    orders: OrderService,
    stock: StockService,
    payments: PaymentService,
    read_model: ReadModel,
    sagas: dict[str, SagaRecord],
) -> Audit:
    """Check that nothing was lost, made up, or left half done, wherever the services ran
    (in one process, or each in its own: the distributed run's test opens their databases).

    * stock is conserved: for every article, units at opening = units on the shelf + units in
      completed orders, and exactly those units are still held by reservations;
    * money is conserved: for every customer, balance at opening = balance now + completed
      orders, and exactly that much was taken by the payment service;
    * nothing is pending: no order is pending, every saga ended, a saga completed exactly when
      its order did, and the read model says what the services say.
    """
    found = Audit()
    on_shelf, held, sold = await stock.levels(), await stock.held(), await orders.sold()
    for sku, (_, units) in CATALOG.items():
        if units != on_shelf[sku] + sold[sku]:
            found.stock.append(
                f"{sku}: {units} at opening, {on_shelf[sku]} left + {sold[sku]} sold"
            )
        if held[sku] != sold[sku]:
            found.stock.append(f"{sku}: {held[sku]} units held, but {sold[sku]} sold")

    balances, taken, spent = (
        await payments.balances(),
        await payments.captured(),
        await orders.revenue(),
    )
    for customer, opening in CUSTOMERS.items():
        paid = spent.get(customer, Decimal("0.00"))
        if opening != balances[customer] + paid:
            found.money.append(f"{customer}: {opening} at opening, {balances[customer]} + {paid}")
        if taken.get(customer, Decimal("0.00")) != paid:
            found.money.append(f"{customer}: {taken.get(customer)} taken, orders worth {paid}")

    statuses = await orders.statuses()
    if statuses["pending"]:
        found.pending.append(f"{statuses['pending']} orders are still pending")
    unfinished = [order_id for order_id, r in sagas.items() if not r.status.is_terminal]
    if unfinished:
        found.pending.append(f"sagas not ended: {sorted(unfinished)}")
    completed = {o for o, r in sagas.items() if r.status is SagaStatus.COMPLETED}
    if completed != await orders.by_status("completed"):
        found.pending.append("completed sagas and completed orders differ")
    views = {view.order_id: view.status for view in read_model.orders()}
    if views != {o: s for s in statuses for o in await orders.by_status(s)}:
        found.pending.append("the read model's orders differ from the order service's")
    if read_model.stock_levels() != on_shelf:
        found.pending.append("the read model's stock levels differ from the stock service's")
    return found
