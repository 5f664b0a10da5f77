"""``--log`` takes the forms every ``log=`` argument takes, with the same errors; read-only
commands create nothing; ``draw`` draws a choreography (and a choreographed saga's progress)
as it draws a saga.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

from ..docs.test_snippets import sqlite_url
from .test_cli import _build, one_line_error, run


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


class TestForms:
    def test_bare_path(self, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A path ending in .db or .sqlite is the SQLite log in that file, relative to the
        current directory; the same file as its sqlite:/// URL."""
        ids = anyio.run(_build, "sqlite:///trips.db")
        for log in ("trips.db", str(in_tmp / "trips.db"), "sqlite:///trips.db"):
            status, out, err = run(capsys, "--json", "stats", "--log", log)
            assert (status, err) == (0, "")
            assert sum(json.loads(out).values()) == len(ids)
        anyio.run(_build, "sqlite:///other.sqlite")
        status, out, _ = run(capsys, "--json", "list", "--log", "other.sqlite")
        assert (status, len(json.loads(out))) == (0, len(ids))

    def test_not_a_url_nor_a_file(self, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(capsys, 2, "list", "--log", "trips")
        assert "'trips' is neither a URL nor a SQLite file path" in err
        assert "sqlite:///" in err

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("postgresql://u:secret@127.0.0.1:5x432/db", "the port '5x432' is not a number"),
            ("postgresql://127.0.0.1/db?bogus=1", "unknown option 'bogus'"),
            ("postgresql://127.0.0.1/db?pool_size=many", "pool_size must be a whole number"),
            ("sqlite:///sagas.db?busy_timeout=soon", "busy_timeout must be a number"),
            ("sqlite:///sagas.db?mode=ro", "unknown option(s) ['mode']"),
            ("sqlite://", "names no file"),
            ("mysql://127.0.0.1/sagas", "unknown scheme 'mysql'"),
            ("memory://", "a saga log inside one process"),
        ],
    )
    def test_malformed_url_is_a_usage_error(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str], url: str, says: str
    ) -> None:
        """One line and status 2, before anything is opened, for every command."""
        for argv in (["list"], ["show", "x"], ["abort", "x", "--reason", "y"]):
            err = one_line_error(capsys, 2, *argv, "--log", url)
            assert says in err
            assert "secret" not in err
        assert list(in_tmp.iterdir()) == []


class TestReadersCreateNothing:
    def test_no_file_no_directory(self, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        for argv in (
            ["list"],
            ["stats"],
            ["show", "x"],
            ["retry", "x", "--reason", "y"],
            ["draw", "tests.cli.test_cli:ORDER", "--saga", "x"],
        ):
            for log in ("missing/sagas.db", "sqlite:///missing/sagas.db"):
                err = one_line_error(capsys, 1, *argv, "--log", log)
                assert "'missing/sagas.db': the file does not exist" in err
                assert str(in_tmp) in err  # relative to where
        assert list(in_tmp.iterdir()) == []

    def test_a_file_that_is_no_log_is_left_alone(
        self, in_tmp: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An empty file (or any SQLite file without pysaga's tables) is not turned into a
        saga log by a reader or an operator."""
        (in_tmp / "empty.db").touch()
        for argv in (["list"], ["abort", "x", "--reason", "y"]):
            err = one_line_error(capsys, 1, *argv, "--log", "empty.db")
            assert "holds no saga log" in err
        assert (in_tmp / "empty.db").stat().st_size == 0
        assert sorted(p.name for p in in_tmp.iterdir()) == ["empty.db"]

    def test_no_postgres_schema(
        self, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A schema without the log's tables is reported, and not created."""
        schema = f"pysaga_absent_{uuid.uuid4().hex[:12]}"
        for argv in (["list"], ["stats"], ["show", "x"], ["resolve", "x", "--reason", "y"]):
            err = one_line_error(capsys, 1, *argv, "--log", f"{postgres_dsn}?schema={schema}")
            assert f"no PostgreSQL saga log in schema {schema!r}" in err

        async def schemas() -> list[str]:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                rows = await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname = $1", schema
                )
            finally:
                await conn.close()
            return [row[0] for row in rows]

        assert anyio.run(schemas) == []

    def test_reading_writes_nothing(self, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """list, show, stats and draw --saga leave the log's file as they found it, and
        leave no journal files behind."""
        ids = anyio.run(_build, "sqlite:///sagas.db")
        before = (in_tmp / "sagas.db").read_bytes()
        saga_id = next(iter(ids.values()))
        for argv in (
            ["list"],
            ["stats"],
            ["show", saga_id],
            ["draw", "tests.cli.test_cli:ORDER", "--saga", saga_id],
        ):
            status, _, err = run(capsys, *argv, "--log", "sagas.db")
            assert (status, err) == (0, "")
        assert (in_tmp / "sagas.db").read_bytes() == before
        assert sorted(p.name for p in in_tmp.iterdir()) == ["sagas.db"]


FLOW = """
import anyio
from pydantic import BaseModel
from pysaga import Choreography, ChoreographyObserver, HandlerContext, Participant, StepEvents
from pysaga.brokers.memory import MemoryBroker

class OrderCreated(BaseModel):
    order_id: str
    qty: int
    amount: int

class StockReserved(BaseModel):
    order_id: str
    qty: int
    amount: int

class StockNotAvailable(BaseModel):
    order_id: str

class PaymentCompleted(BaseModel):
    order_id: str

class PaymentFailed(BaseModel):
    order_id: str
    qty: int

class StockReleased(BaseModel):
    order_id: str

class OrderCompleted(BaseModel):
    order_id: str

class OrderRejected(BaseModel):
    order_id: str

purchase = Choreography(
    "purchase",
    starts=OrderCreated,
    steps={
        "reserve_stock": StepEvents(
            done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
        ),
        "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
    },
    completes=OrderCompleted,
    compensates=OrderRejected,
    deadline=30,
)

BROKER = "memory://BROKER_NAME"
stock = Participant("stock", broker=BROKER, flows=[purchase])
payments = Participant("payments", broker=BROKER, flows=[purchase])
orders = Participant("orders", broker=BROKER, flows=[purchase])
shelf = {"book": 5}

@stock.on(OrderCreated)
async def reserve(event: OrderCreated, ctx: HandlerContext) -> None:
    if shelf["book"] < event.qty:
        await ctx.publish(StockNotAvailable(order_id=event.order_id))
        return
    shelf["book"] -= event.qty
    await ctx.publish(StockReserved(**event.model_dump()))

@stock.on(PaymentFailed)
async def release(event: PaymentFailed, ctx: HandlerContext) -> None:
    shelf["book"] += event.qty
    await ctx.publish(StockReleased(order_id=event.order_id))

@payments.on(StockReserved)
async def charge(event: StockReserved, ctx: HandlerContext) -> None:
    if event.amount > 100:
        await ctx.publish(PaymentFailed(order_id=event.order_id, qty=event.qty))
        return
    await ctx.publish(PaymentCompleted(order_id=event.order_id))

@orders.on(PaymentCompleted)
async def complete(event: PaymentCompleted, ctx: HandlerContext) -> None:
    await ctx.publish(OrderCompleted(order_id=event.order_id))

@orders.on(StockNotAvailable)
async def reject(event: StockNotAvailable, ctx: HandlerContext) -> None:
    await ctx.publish(OrderRejected(order_id=event.order_id))

@orders.on(StockReleased)
async def reject_declined(event: StockReleased, ctx: HandlerContext) -> None:
    await ctx.publish(OrderRejected(order_id=event.order_id))

async def main(log: str) -> dict[str, str]:
    async with (
        ChoreographyObserver(purchase, log=log, broker=BROKER) as observer,
        stock,
        payments,
        orders,
        MemoryBroker("BROKER_NAME") as broker,
    ):
        started = {
            order_id: await purchase.start(
                broker, OrderCreated(order_id=order_id, qty=qty, amount=amount)
            )
            for order_id, qty, amount in [("o-1", 2, 30), ("o-2", 9, 90), ("o-3", 1, 500)]
        }
        with anyio.fail_after(30):
            for saga_id in started.values():
                record = await observer.log.get(saga_id)
                while record is None or not record.status.is_terminal:
                    await anyio.sleep(0.01)
                    record = await observer.log.get(saga_id)
    return started
"""


@dataclass(frozen=True)
class Purchases:
    module: str
    url: str
    ids: dict[str, str]  # saga id by order id


@pytest.fixture
def purchases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Purchases:
    """Three purchases of a choreographed flow (completed, out of stock, payment declined),
    recorded by a real observer in a SQLite log. The flow's module is in the current
    directory, as a user's would be."""
    name = f"cli_flow_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FLOW.replace("BROKER_NAME", name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)
    url = sqlite_url(tmp_path / "purchases.db")
    return Purchases(module=name, url=url, ids=anyio.run(module.main, url))


NODE = re.compile(r'^\s+(e\d+)[\[(]+"([^"]+)"', re.MULTILINE)


class TestDrawChoreography:
    def test_chart(self, purchases: Purchases, capsys: pytest.CaptureFixture[str]) -> None:
        flow = sys.modules[purchases.module].purchase
        target = f"{purchases.module}:purchase"
        status, out, err = run(capsys, "draw", target)
        assert (status, err) == (0, "")
        assert out == flow.to_mermaid()
        drawn = json.loads(run(capsys, "--json", "draw", target)[1])
        assert drawn == {"name": "purchase", "version": 1, "mermaid": flow.to_mermaid()}

    def test_progress(self, purchases: Purchases, capsys: pytest.CaptureFixture[str]) -> None:
        """Each purchase's events are marked: the completed one done throughout, the one
        without stock failed at its first step, the declined one failed at the payment with
        the stock released."""
        chart = sys.modules[purchases.module].purchase.to_mermaid()
        ids = {event: node for node, event in NODE.findall(chart)}
        expected = {
            "o-1": {
                "OrderCreated": "done",
                "StockReserved": "done",
                "PaymentCompleted": "done",
                "OrderCompleted": "done",
            },
            "o-2": {
                "OrderCreated": "done",
                "StockNotAvailable": "failed",
                "PaymentCompleted": "pending",
                "OrderRejected": "compensated",
            },
            "o-3": {
                "OrderCreated": "done",
                "StockReserved": "done",
                "StockReleased": "compensated",
                "PaymentFailed": "failed",
                "OrderRejected": "compensated",
            },
        }
        for order, marks in expected.items():
            saga_id = purchases.ids[order]
            argv = (
                "draw",
                f"{purchases.module}:purchase",
                "--saga",
                saga_id,
                "--log",
                purchases.url,
            )
            drawn = json.loads(run(capsys, "--json", *argv)[1])
            assert drawn["progress"] == {ids[event]: mark for event, mark in marks.items()}
            assert drawn["mermaid"].startswith(chart)
            status, out, err = run(capsys, *argv)
            assert (status, err) == (0, "")
            assert out == drawn["mermaid"]

    def test_the_shops_flow(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The shop example's default, choreographed flow draws."""
        status, out, err = run(capsys, "draw", "examples.ecommerce.flows:purchase")
        assert (status, err) == (0, "")
        assert out.startswith("flowchart LR\n")

    def test_a_saga_of_another_flow(
        self, purchases: Purchases, capsys: pytest.CaptureFixture[str]
    ) -> None:
        saga_id = purchases.ids["o-1"]
        err = one_line_error(
            capsys, 1, "draw", "tests.cli.test_cli:ORDER", "--saga", saga_id,
            "--log", purchases.url,
        )  # fmt: skip
        assert "is a 'purchase' saga, not 'order'" in err
