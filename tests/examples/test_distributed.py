"""The shop as separate processes, as its page's "Run it distributed" section runs it: each
service, the observer or orchestrator and the HTTP front with its read model a process of its
own on RabbitMQ or Kafka, each service's data and inbox in a PostgreSQL schema of its own, the
saga log in another. Orders come in over HTTP and from the command line; the stock service is
killed with SIGKILL mid-run and started again while customers cancel; every saga still ends,
and the books balance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from examples.ecommerce.database import Database, open_database
from examples.ecommerce.distributed import with_schema
from examples.ecommerce.orders import OrderService
from examples.ecommerce.payments import PaymentService
from examples.ecommerce.read_model import ReadModel
from examples.ecommerce.shop import audit_books
from examples.ecommerce.stock import StockService

from pysaga import SagaRecord, stores

from ..services import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def database(postgres_database: str) -> str:
    """A database of this test's own (the parts make their schemas in it)."""
    return postgres_database


def shop(*args: str) -> list[str]:
    return [sys.executable, "-m", "examples.ecommerce", *args]


class Parts:
    """The shop's processes, started from the repository's root like the page says."""

    def __init__(self, broker: str, database: str, data_dir: Path, prefix: str, style: str) -> None:
        self.port = free_port()
        self.options = [
            "--port",
            str(self.port),
            "--style",
            style,
            "--broker",
            broker,
            "--db",
            database,
            "--data-dir",
            str(data_dir),
            "--prefix",
            prefix,
        ]
        self.running: dict[str, subprocess.Popen[str]] = {}

    def start(self, part: str) -> None:
        process = subprocess.Popen(
            shop("serve", part, *self.options),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.running[part] = process
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"{part} ready"

    def kill(self, part: str) -> None:
        process = self.running.pop(part)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for part in list(self.running):
            self.kill(part)


@contextmanager
def running(parts: Parts) -> Iterator[Parts]:
    try:
        yield parts
    finally:
        parts.stop_all()


def place(broker: str, count: int, seed: int, prefix: str) -> list[str]:
    placed = subprocess.run(
        shop(
            "place",
            "--broker",
            broker,
            "--prefix",
            prefix,
            "--orders",
            f"{count}",
            "--seed",
            f"{seed}",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = placed.stdout.split()
    assert len(ids) == count
    return ids


async def cancel_over_http(api: httpx.AsyncClient, order_id: str) -> None:
    """Cancel through the HTTP front, once its read model shows the order (pending)."""
    with anyio.fail_after(30):
        while (await api.get(f"/orders/{order_id}")).status_code == 404:  # noqa: ASYNC110
            await anyio.sleep(0.05)
    response = await api.post(f"/orders/{order_id}/cancel")
    assert response.status_code == 202, response.text


def cancel(broker: str, order_ids: list[str], prefix: str) -> None:
    subprocess.run(
        shop("cancel", "--broker", broker, "--prefix", prefix, *order_ids),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )


async def ended(log_url: str, order_ids: list[str], *, at_least: int) -> dict[str, SagaRecord]:
    """Wait until *at_least* of the orders' sagas ended in the saga log; return those."""
    done: dict[str, SagaRecord] = {}
    async with stores.from_url(log_url) as log:
        with anyio.fail_after(90):
            while len(done) < at_least:
                for order_id in order_ids:
                    if order_id not in done:
                        record = await log.get(order_id)
                        if record is not None and record.status.is_terminal:
                            done[order_id] = record
                await anyio.sleep(0.1)
    return done


async def caught_up(read_model: ReadModel, orders: OrderService, stock: StockService) -> bool:
    """The read model says what the services say (it follows them a moment later)."""
    statuses = Counter(view.status for view in read_model.orders())
    return statuses == await orders.statuses() and read_model.stock_levels() == await stock.levels()


@pytest.mark.parametrize("style", ["choreographed", "orchestrated"])
async def test_a_killed_service_comes_back_and_the_books_balance(
    real_broker_url: str, database: str, tmp_path: Path, style: str
) -> None:
    prefix = f"shop-{uuid.uuid4().hex[:8]}."  # this run's own queues or topics
    parts = Parts(real_broker_url, database, tmp_path, prefix, style)
    coordinator = "observer" if style == "choreographed" else "orchestrator"
    log_url = with_schema(database, "sagas")
    with running(parts):
        # The read side (with the HTTP front) first, so that it hears every update; then the
        # services.
        for part in ("api", coordinator, "stock", "payment", "orders"):
            parts.start(part)
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{parts.port}")
        async with api:
            web = f"{prefix}web-1"  # one order through the HTTP front
            body = {"customer_id": "alice", "lines": [{"sku": "poster", "qty": 1}]}
            posted = await api.post("/orders", json={**body, "order_id": web})
            assert posted.status_code == 202, posted.text
            first = [web, *place(real_broker_url, 50, 1, prefix)]
            await ended(log_url, first, at_least=10)
            parts.kill("stock")  # mid-run: SIGKILL, nothing said or flushed
            second = place(real_broker_url, 50, 2, prefix)  # they wait in the stock queues
            cancelled = second[::10]  # their customers change their minds meanwhile
            await cancel_over_http(api, cancelled[0])
            cancel(real_broker_url, cancelled[1:], prefix)
            parts.start("stock")
            sagas = await ended(log_url, first + second, at_least=101)
            assert (await api.get(f"/orders/{web}")).json()["status"] == "completed"
            refused = await api.post(f"/orders/{web}/cancel")
            assert refused.status_code == 409, refused.text
            other = {"customer_id": "bob", "lines": [{"sku": "mug", "qty": 1}], "order_id": web}
            assert (await api.post("/orders", json=other)).status_code == 409  # id taken
            again = await api.post("/orders", json={**body, "order_id": web})  # a retry
            assert again.status_code == 202, again.text

        async with AsyncExitStack() as opened:  # each service's own schema

            async def schema(name: str, tables: str) -> Database:
                return await opened.enter_async_context(
                    open_database(with_schema(database, name), tables)
                )

            orders = OrderService(await schema("orders", OrderService.TABLES))
            stock = StockService(await schema("stock", StockService.TABLES))
            payments = PaymentService(await schema("payments", PaymentService.TABLES))
            read_model = ReadModel(tmp_path / "read-model.db")
            opened.callback(read_model.close)
            with anyio.fail_after(30):  # the read model is eventually consistent
                while not await caught_up(read_model, orders, stock):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            books = await audit_books(orders, stock, payments, read_model, sagas)
            assert books.ok, books
            statuses = await orders.statuses()
            # The cancellations reached the payment service before the charges could: each
            # of those orders was rejected, for that reason unless its stock was short.
            views = [read_model.order(order_id) for order_id in cancelled]
            reasons = Counter(view.reason.split(":")[0] for view in views if view is not None)
            assert reasons.total() == len(cancelled), reasons
            assert set(reasons) <= {"cancelled by the customer", "out of stock"}, reasons
            assert reasons["cancelled by the customer"] > 0
    assert sum(statuses.values()) == 101
    assert statuses["completed"] > 0
    assert statuses["rejected"] > 0
