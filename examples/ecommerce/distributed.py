"""The shop as separate processes: each service, the saga's coordinator or observer, and the
projection, on a real broker, with PostgreSQL behind the inboxes and the saga log.

    python -m examples.ecommerce serve PART --broker URL --db URL [--style S]
    python -m examples.ecommerce serve read-model --broker URL --data-dir DIR
    python -m examples.ecommerce serve api --broker URL --data-dir DIR [--port 8000]
    python -m examples.ecommerce place --broker URL [--orders N] [--seed N]
    python -m examples.ecommerce cancel --broker URL ORDER_ID...
    python -m examples.ecommerce query --data-dir DIR [--status S]

``PART`` is one of ``orders``, ``stock``, ``payment``, ``orchestrator`` (orchestrated style),
``observer`` (choreographed style), and ``read-model`` or ``api`` (the read model with the
HTTP front of ``http.py`` on top: its commands go to the shop as messages). Each part is the
same code as in one process (``shop.py``); what changes is where things live:

* **messages** go through the broker (``amqp://...`` or ``kafka://...``);
* **each service's data** is a PostgreSQL schema of its own, named after it
  (``?schema=orders``, ``stock``, ``payments``), and so is its inbox (and outbox: the events
  it publishes), in the same schema. Each message is then handled in one transaction: the
  service's writes (the handlers pass their ``ctx`` on, see ``database.py``), the inbox
  record and the events commit together or not at all, so a message handled again after a
  crash finds its work done or not done, never half;
* the observer's inbox is the schema ``observer``; the saga log, which the orchestrator and
  the observer write, is ``sagas``; the read model stays a SQLite file in ``--data-dir``.

Orders come in on :data:`~.messages.PLACE`: ``place`` (or ``api``) publishes them there, and
the shop's front takes each one, the order service in the choreographed style, the
orchestrator in the orchestrated one. ``query`` reads the read model's file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from pysaga import ChoreographyObserver, ConcurrencyError, Envelope, Orchestrator
from pysaga.brokers import from_url

from .app import PAYMENTS, ShopApp, cancellation, take_order
from .database import open_database
from .flows import PlaceOrder, place_order, purchase
from .messages import PLACE, UPDATES, Order
from .orders import OrderService, order_participant
from .payments import PaymentService, payment_participant
from .read_model import Projection, ReadModel
from .shop import CATALOG, CUSTOMERS, make_baskets
from .stock import StockService, stock_participant

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from pysaga import Broker
    from pysaga.messaging import Handler

    from .app import Style
    from .database import Database

__all__ = (
    "PARTS",
    "PLACE",
    "cancel",
    "connect",
    "main",
    "place",
    "query",
    "serve",
    "with_schema",
)

PARTS = ("orders", "stock", "payment", "orchestrator", "observer", "read-model", "api")
"""What ``serve`` runs, one part per process."""


def with_schema(database: str, schema: str) -> str:
    """*database* (a ``postgresql://`` URL) with ``?schema=`` set to *schema*."""
    parts = urlsplit(database)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))


def connect(broker_url: str, prefix: str) -> Broker:
    """The broker of *broker_url* (not yet entered); *prefix* goes before its names."""
    return from_url(broker_url, prefix=prefix) if prefix else from_url(broker_url)


async def serve(
    part: str,
    broker_url: str,
    database: str,
    data_dir: Path | None,
    style: Style,
    prefix: str = "",
    port: int = 8000,
) -> None:
    """Run *part* until cancelled (``api``: until its server is stopped); print
    ``<part> ready`` once it consumes its messages (``api``: and serves HTTP on *port*)."""
    async with contextlib.AsyncExitStack() as stack:
        broker: Broker = await stack.enter_async_context(connect(broker_url, prefix))

        async def own_schema(service: str, tables: str) -> tuple[Database, str]:
            """The service's schema: its tables, and the URL of its inbox there."""
            url = with_schema(database, service)
            return await stack.enter_async_context(open_database(url, tables)), url

        if part in ("read-model", "api"):
            assert data_dir is not None
            await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
            read_model = ReadModel(data_dir / "read-model.db")
            stack.callback(read_model.close)
            await stack.enter_async_context(Projection(read_model, broker))
            if part == "api":  # the HTTP front, on the read model it answers queries from
                await _serve_http(ShopApp(broker=broker, read_model=read_model), port)
                return
        elif part == "orders":
            db, inbox = await own_schema("orders", OrderService.TABLES)
            orders = OrderService(db)
            await stack.enter_async_context(order_participant(orders, broker=broker, inbox=inbox))
            if style == "choreographed":  # the order service is the front: it takes orders

                async def take(envelope: Envelope) -> None:
                    await take_order(broker, orders, envelope.parse(Order))

                for order in await orders.pending():  # taken, maybe not announced: a crash
                    await take_order(broker, orders, order)
                await stack.enter_async_context(_subscribed(broker, take))
        elif part == "stock":
            db, inbox = await own_schema("stock", StockService.TABLES)
            stock = StockService(db)
            if not await stock.levels():  # the first start: fill the shelves
                for level in await stock.restock({sku: n for sku, (_, n) in CATALOG.items()}):
                    envelope = Envelope.of(level, id=f"restock-{level.sku}-{level.version}")
                    await broker.publish(UPDATES, envelope)
            await stack.enter_async_context(stock_participant(stock, broker=broker, inbox=inbox))
        elif part == "payment":
            db, inbox = await own_schema("payments", PaymentService.TABLES)
            payments = PaymentService(db)
            if not await payments.balances():  # the first start: open the accounts
                await payments.open_accounts(CUSTOMERS)
            await stack.enter_async_context(
                payment_participant(payments, broker=broker, inbox=inbox)
            )
        elif part == "orchestrator":  # the front of the orchestrated style
            orchestrator = await stack.enter_async_context(
                Orchestrator(sagas=[place_order], log=with_schema(database, "sagas"), broker=broker)
            )

            async def start(envelope: Envelope) -> None:
                order = envelope.parse(Order)
                with contextlib.suppress(ConcurrencyError):  # started before: a redelivery
                    await orchestrator.start(
                        place_order, PlaceOrder(order=order), saga_id=order.order_id
                    )

            await stack.enter_async_context(_subscribed(broker, start))
        elif part == "observer":
            await stack.enter_async_context(
                ChoreographyObserver(
                    purchase,
                    log=with_schema(database, "sagas"),
                    broker=broker,
                    inbox=with_schema(database, "observer"),
                )
            )
        else:
            raise ValueError(f"unknown part {part!r}; use one of {', '.join(PARTS)}")
        print(f"{part} ready", flush=True)
        await anyio.sleep_forever()


async def _serve_http(app: ShopApp, port: int) -> None:
    """Serve *app* over HTTP on the loopback interface until the server is stopped (Ctrl-C
    or SIGTERM); print ``api ready`` once it listens."""
    import uvicorn  # the "examples" extra

    from .http import create_app

    config = uvicorn.Config(create_app(app), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(30):
            while not server.started:  # noqa: ASYNC110 (the server says so by this flag only)
                await anyio.sleep(0.01)
        print("api ready", flush=True)


@contextlib.asynccontextmanager
async def _subscribed(broker: Broker, handler: Handler) -> AsyncIterator[None]:
    subscription = await broker.subscribe(PLACE, handler)
    try:
        yield
    finally:
        await subscription.close()


async def place(broker_url: str, count: int, seed: int, prefix: str = "") -> list[str]:
    """Send *count* orders (reproducible baskets of *seed*) to the front; print their ids.

    The ids are new on every run (a random prefix), so runs can follow each other."""
    run = secrets.token_hex(3)
    async with connect(broker_url, prefix) as broker:
        ids = []
        for basket in make_baskets(count, seed=seed):
            order = Order(
                order_id=f"{run}-{basket.order_id}",
                customer_id=basket.customer_id,
                lines=basket.lines,
            )
            await broker.publish(PLACE, Envelope.of(order, id=f"{order.order_id}#place"))
            ids.append(order.order_id)
            print(order.order_id, flush=True)
    return ids


async def cancel(broker_url: str, order_ids: Sequence[str], prefix: str = "") -> None:
    """Ask the payment service to cancel each order, as ``ShopApp.cancel_order`` does: an
    order not paid yet is then declined there and its saga compensates; a paid one stays
    paid. ``query`` tells which, once the sagas have ended."""
    async with connect(broker_url, prefix) as broker:
        for order_id in order_ids:
            await broker.publish(PAYMENTS, cancellation(order_id))
            print(f"{order_id} cancel requested", flush=True)


def query(data_dir: Path, status: str | None) -> None:
    """Print what the read model answers: orders (by status), and stock levels."""
    read_model = ReadModel(data_dir / "read-model.db")
    try:
        views = read_model.orders(status)
        counts = Counter(view.status for view in read_model.orders())
        print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no orders yet")
        for view in views:
            reason = f" ({view.reason})" if view.reason else ""
            line = f"{view.order_id}  {view.customer_id:<6} {view.amount:>8}  {view.status}"
            print(f"  {line}{reason}")
        levels = ", ".join(f"{sku} {n}" for sku, n in read_model.stock_levels().items())
        print(f"stock: {levels}")
    finally:
        read_model.close()


PREFIX = (
    "put before every name on the broker (RabbitMQ: exchanges and queues; Kafka: topics and "
    "consumer groups), so that several shops share one broker"
)


def main(argv: Sequence[str]) -> int:
    """Run ``serve``, ``place`` or ``query``; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecommerce",
        description="Run the shop as separate processes on a real broker.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="run one part of the shop until stopped")
    serving.add_argument("part", choices=PARTS)
    serving.add_argument("--broker", required=True, help="an amqp:// or kafka:// URL")
    serving.add_argument(
        "--db",
        help="a postgresql:// URL; each part uses its own schema in it (not for read-model)",
    )
    serving.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="(read-model, api) where the read model's SQLite file is",
    )
    serving.add_argument(
        "--port", type=int, default=8000, help="(api) the HTTP port on 127.0.0.1 (default: 8000)"
    )
    serving.add_argument(
        "--style",
        choices=("choreographed", "orchestrated"),
        default="choreographed",
        help="(orders) take the orders (choreographed, default) or leave them to the "
        "orchestrator (orchestrated)",
    )
    serving.add_argument("--prefix", default="", help=PREFIX)
    placing = commands.add_parser("place", help="send orders to the shop; print their ids")
    placing.add_argument("--broker", required=True, help="an amqp:// or kafka:// URL")
    placing.add_argument("--orders", type=int, default=20, metavar="N", help="orders to place")
    placing.add_argument("--seed", type=int, default=7, help="picks the baskets")
    placing.add_argument("--prefix", default="", help=PREFIX)
    cancelling = commands.add_parser("cancel", help="ask for orders to be cancelled")
    cancelling.add_argument("order_ids", nargs="+", metavar="ORDER_ID", help="orders to cancel")
    cancelling.add_argument("--broker", required=True, help="an amqp:// or kafka:// URL")
    cancelling.add_argument("--prefix", default="", help=PREFIX)
    querying = commands.add_parser("query", help="ask the read model")
    querying.add_argument(
        "--data-dir", type=Path, required=True, metavar="DIR", help="the read model's directory"
    )
    querying.add_argument(
        "--status", choices=("pending", "completed", "rejected"), help="list these orders"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.db is None and args.part not in ("read-model", "api"):
            parser.error(f"serve {args.part} needs --db (a postgresql:// URL)")
        if args.data_dir is None and args.part in ("read-model", "api"):
            parser.error(f"serve {args.part} needs --data-dir (where its read model's file is)")
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(
                serve,
                args.part,
                args.broker,
                args.db or "",
                args.data_dir,
                args.style,
                args.prefix,
                args.port,
            )
    elif args.command == "place" and args.orders < 1:
        parser.error("--orders must be at least 1")
    else:
        try:
            if args.command == "place":
                anyio.run(place, args.broker, args.orders, args.seed, args.prefix)
            elif args.command == "cancel":
                anyio.run(cancel, args.broker, args.order_ids, args.prefix)
            else:
                query(args.data_dir, args.status)
        except BrokenPipeError:  # the reader stopped reading (``| head``): no error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
