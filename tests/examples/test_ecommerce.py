"""The shop example runs end to end on the embedded default and always balances its books."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from examples.ecommerce.__main__ import main
from examples.ecommerce.models import Order, OrderLine
from examples.ecommerce.payments import PaymentDeclined, PaymentService
from examples.ecommerce.saga import build_place_order
from examples.ecommerce.shop import (
    Audit,
    Receipt,
    Shop,
    audit,
    make_orders,
    outcome_counts,
    place_orders,
)
from examples.ecommerce.stock import OutOfStock, StockService

from pysaga import ConcurrencyError, Orchestrator, SagaStatus, StepKind, StepStatus
from pysaga.stores import from_url

REPO = Path(__file__).resolve().parents[2]
KINDS = ("completed", "out of stock", "declined")
SUMMARY = re.compile(r"^(\d+) orders in [\d.]+ s: (.*)$", re.MULTILINE)


def summary_counts(output: str) -> Counter[str]:
    """The outcome counts in the summary line: ``20 orders in 0.1 s: 10 completed, ...``."""
    match = SUMMARY.search(output)
    assert match is not None, output
    counts = Counter[str]()
    for part in match.group(2).split(", "):
        number, kind = part.split(" ", 1)
        counts[kind] = int(number)
    assert counts.total() == int(match.group(1))
    return counts


# -- the demo, as a user runs it ---------------------------------------------------------------


def test_the_demo_shows_every_outcome_and_balances_its_books(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Twenty orders: some complete, some run out of stock, some are declined; the books hold.

    With seed 7 each kind is certain, however the concurrent sagas interleave: alice can pay
    for all her orders and one of them asks for 3 of the 2 lamps; dave cannot pay for any of
    his, which ask for articles that never run out; and alice has orders without lamps, one of
    which meets a gateway hiccup.
    """
    status = main(["--orders", "20", "--seed", "7", "--data-dir", str(tmp_path / "shop")])
    out = capsys.readouterr().out

    assert status == 0
    counts = summary_counts(out)
    assert all(counts[kind] > 0 for kind in KINDS), counts
    assert counts.total() == 20
    assert len(re.findall(r"^o-\d{3} ", out, re.MULTILINE)) == 20
    assert re.search(r"^[1-9]\d* payments were retried after a gateway hiccup$", out, re.MULTILINE)
    assert re.search(
        r"^consistency: OK: stock 82 = \d+ left \+ \d+ sold; money 1220\.00 = ", out, re.M
    )
    assert "0 orders pending" in out
    assert "WRONG" not in out


def test_a_second_run_in_the_same_data_dir_starts_afresh(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--data-dir is emptied of the shop's files first: re-placing the same orders works."""
    args = ["--orders", "12", "--seed", "3", "--data-dir", str(tmp_path)]
    for _ in range(2):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert summary_counts(out).total() == 12
        assert "consistency: OK:" in out
    assert {"sagas.db", "orders.db", "stock.db", "payments.db"} <= {
        p.name for p in tmp_path.iterdir()
    }


def test_the_demo_exits_non_zero_when_the_books_do_not_balance(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed consistency check is reported, problem by problem, and fails the command."""
    monkeypatch.setattr(
        "examples.ecommerce.__main__.audit",
        lambda *args: Audit(money=["alice: 1000.00 at opening, but 990.00 left + 0.00 spent"]),
    )
    assert main(["--orders", "3", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "consistency: FAILED:" in out
    assert "revenue (WRONG)" in out
    assert "  wrong: alice: 1000.00 at opening" in out


@pytest.mark.slow
def test_python_dash_m_runs_the_demo_in_a_temporary_directory() -> None:
    """``python -m examples.ecommerce`` works from the repository root and cleans up after it."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.ecommerce", "--orders", "15", "--seed", "11"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    counts = summary_counts(done.stdout)
    assert counts.total() == 15
    assert "consistency: OK:" in done.stdout
    log = re.search(r"on the saga log sqlite:///(\S+)", done.stdout)
    assert log is not None
    assert not Path(log.group(1)).parent.exists()  # the temporary directory is gone


# -- many concurrent orders, and a crash in the middle ------------------------------------------


@pytest.mark.anyio
async def test_hundreds_of_concurrent_orders_keep_the_books_balanced(tmp_path: Path) -> None:
    """300 concurrent random orders racing for stock and money: every invariant holds."""
    orders = make_orders(300, seed=2024)
    with Shop(tmp_path, seed=2024, hiccup_rate=0.3) as shop:
        await shop.open_for_business()
        receipts, unfinished = await place_orders(shop, orders)
        books = audit(shop, receipts, unfinished)

        assert books.ok, books
        assert unfinished == 0
        assert [r.order.order_id for r in receipts] == [o.order_id for o in orders]
        counts = outcome_counts(receipts)
        assert set(counts) <= set(KINDS), counts  # nothing FAILED
        assert counts["out of stock"] > 0  # 208 lamps wanted, 2 in stock
        assert shop.orders.statuses()["pending"] == 0
        assert all(units >= 0 for units in shop.stock.levels().values())
        assert all(balance >= 0 for balance in shop.payments.balances().values())


@pytest.mark.anyio
async def test_a_batch_cut_short_is_finished_by_the_next_orchestrator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator stops dead just after the 8th charge, before its saga hears of it; the
    next orchestrator finishes every order, re-running the steps in doubt with the same keys,
    and nothing is charged, sold or confirmed twice."""
    orders = make_orders(40, seed=5)
    with Shop(tmp_path, seed=5) as shop:
        await shop.open_for_business()
        place_order = build_place_order(shop.orders, shop.stock, shop.payments)

        charged: list[str] = []
        charge = shop.payments.charge

        async def charge_then_stop(order_id: str, *args: Any, **kwargs: Any) -> str:
            payment_id = await charge(order_id, *args, **kwargs)
            charged.append(order_id)
            if len(charged) == 8:
                crash.cancel()
                await anyio.sleep_forever()  # the process dies here
            return payment_id

        monkeypatch.setattr(shop.payments, "charge", charge_then_stop)
        with anyio.CancelScope() as crash:
            async with Orchestrator(sagas=[place_order], log=shop.saga_log) as first:
                for order in orders:
                    await first.start(place_order, order, saga_id=order.order_id)
                for order in orders:
                    await first.wait(order.order_id)
        assert crash.cancelled_caught
        monkeypatch.undo()

        # charged[7] is the one that stopped; charges already in flight in other sagas may
        # have finished after it, so it is not necessarily the last one in the list.
        in_doubt = charged[7]
        async with from_url(shop.saga_log) as log:
            record = await log.get(in_doubt)
            cut_short = await log.list(status=SagaStatus.RUNNING)
        assert record is not None
        assert record.steps["take_payment"].status is StepStatus.STARTED  # charged, not recorded
        assert len(cut_short) > 1

        receipts = []
        async with Orchestrator(sagas=[place_order], log=shop.saga_log) as second:
            for order in orders:  # the client retries every order; those recorded are refused
                with contextlib.suppress(ConcurrencyError):
                    await second.start(place_order, order, saga_id=order.order_id)
            for order in orders:
                receipts.append(Receipt(order, await second.wait(order.order_id)))
            unfinished = len(await second.log.list(status=SagaStatus.RUNNING)) + len(
                await second.log.list(status=SagaStatus.COMPENSATING)
            )

        books = audit(shop, receipts, unfinished)
        assert books.ok, books
        assert all(r.outcome.status.is_terminal for r in receipts)
        resumed = next(r for r in receipts if r.order.order_id == in_doubt)
        assert resumed.outcome.status is SagaStatus.COMPLETED
        assert resumed.outcome.data.payment_id is not None
        payments = shop.payments.db.query(
            "SELECT count(*) FROM payments WHERE order_id = ?", in_doubt
        )
        assert payments == [(1,)]


# -- the saga and the services -------------------------------------------------------------------


def test_complete_order_is_the_pivot_and_payment_is_refundable(tmp_path: Path) -> None:
    """Everything up to the payment can be undone; confirming the order cannot."""
    with Shop(tmp_path) as shop:
        saga = build_place_order(shop.orders, shop.stock, shop.payments)
    kinds = {step.name: (step.kind, step.compensation is not None) for step in saga.steps}
    assert kinds == {
        "create_order": (StepKind.COMPENSATABLE, True),
        "reserve_stock": (StepKind.COMPENSATABLE, True),
        "take_payment": (StepKind.COMPENSATABLE, True),
        "complete_order": (StepKind.PIVOT, False),
        "send_confirmation": (StepKind.RETRIABLE, False),
    }


LAMPS = (OrderLine(sku="lamp", qty=2, unit_price=Decimal("49.00")),)


@pytest.mark.anyio
async def test_stock_reservations_are_idempotent_by_key(tmp_path: Path) -> None:
    """A repeated reserve or release changes nothing; a release first blocks a late reserve."""
    stock = StockService(tmp_path / "stock.db")
    try:
        await stock.restock({"lamp": 3})
        await stock.reserve("o-1", LAMPS, key="o-1/reserve_stock")
        await stock.reserve("o-1", LAMPS, key="o-1/reserve_stock")
        assert stock.levels() == {"lamp": 1}
        with pytest.raises(OutOfStock, match=r"lamp \(1 left, 2 wanted\)"):
            await stock.reserve("o-2", LAMPS, key="o-2/reserve_stock")
        await stock.release("o-1", key="o-1/reserve_stock")
        await stock.release("o-1", key="o-1/reserve_stock")
        assert stock.levels() == {"lamp": 3}

        await stock.release("o-3", key="o-3/reserve_stock")  # compensating a step in doubt
        await stock.reserve("o-3", LAMPS, key="o-3/reserve_stock")  # arrives late: ignored
        assert stock.levels() == {"lamp": 3}
        assert stock.held() == Counter()
    finally:
        stock.db.close()


@pytest.mark.anyio
async def test_payments_are_idempotent_by_key(tmp_path: Path) -> None:
    """A repeated charge returns the same payment and takes the money once; so does a refund."""
    payments = PaymentService(tmp_path / "payments.db")
    try:
        await payments.open_accounts({"bob": Decimal("100.00")})
        first = await payments.charge("o-1", "bob", Decimal("60.00"), key="o-1/take_payment")
        again = await payments.charge("o-1", "bob", Decimal("60.00"), key="o-1/take_payment")
        assert first == again
        assert payments.balances() == {"bob": Decimal("40.00")}
        with pytest.raises(PaymentDeclined, match="only 40.00 on the account"):
            await payments.charge("o-2", "bob", Decimal("60.00"), key="o-2/take_payment")
        await payments.refund("o-1", "bob", key="o-1/take_payment")
        await payments.refund("o-1", "bob", key="o-1/take_payment")
        assert payments.balances() == {"bob": Decimal("100.00")}

        await payments.refund("o-3", "bob", key="o-3/take_payment")  # nothing was charged
        with pytest.raises(PaymentDeclined):  # and a late charge is refused
            await payments.charge("o-3", "bob", Decimal("10.00"), key="o-3/take_payment")
        assert payments.balances() == {"bob": Decimal("100.00")}
        assert payments.captured() == {}
    finally:
        payments.db.close()


def test_orders_are_reproducible_from_the_seed() -> None:
    """The same seed gives the same batch; amounts are exact decimals."""
    assert make_orders(10, seed=1) == make_orders(10, seed=1)
    assert make_orders(10, seed=1) != make_orders(10, seed=2)
    order = Order(
        order_id="o-1",
        customer_id="alice",
        lines=(
            OrderLine(sku="book", qty=3, unit_price=Decimal("0.10")),
            OrderLine(sku="mug", qty=1, unit_price=Decimal("0.20")),
        ),
    )
    assert order.amount == Decimal("0.50")
    assert order.describe_items() == "3x book, mug"
    assert Order.model_validate_json(order.model_dump_json()) == order
