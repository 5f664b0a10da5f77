"""The shop demo: place a batch of orders as sagas, then check the books.

Run it from the repository's root::

    python -m examples.ecommerce [--orders 20] [--seed 7] [--data-dir DIR]

Every order runs as a ``place-order`` saga on the embedded default (a SQLite saga log), all at
the same time, so some of them race for the last lamps. Some run out of stock, some are
declined, a few payments hit a gateway hiccup and are retried. Then the demo prints what
became of each order, the stock and the accounts, and checks that the books balance. It exits
with status 1 if they do not.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import anyio

from pysaga import SagaStatus

from .shop import (
    CATALOG,
    CUSTOMERS,
    DATA_FILES,
    Audit,
    Receipt,
    Shop,
    audit,
    make_orders,
    outcome_counts,
    place_orders,
)

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status (0 when the books balance)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecommerce",
        description="Place a batch of shop orders as sagas, then check that the books balance.",
    )
    parser.add_argument("--orders", type=int, default=20, metavar="N", help="orders to place")
    parser.add_argument("--seed", type=int, default=7, help="makes the batch reproducible")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the services and the saga log keep their files (emptied of them first; "
        "default: a temporary directory, removed at the end)",
    )
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")

    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pysaga-shop-")))
        else:
            data_dir = args.data_dir
            _remove_data_files(data_dir)
        return anyio.run(_demo, data_dir, args.orders, args.seed)


async def _demo(data_dir: Path, count: int, seed: int) -> int:
    orders = make_orders(count, seed=seed)
    with Shop(data_dir, seed=seed) as shop:
        await shop.open_for_business()
        print(f"Placing {count} orders (seed {seed}) on the saga log {shop.saga_log}\n")
        started = time.perf_counter()
        receipts, unfinished = await place_orders(shop, orders)
        elapsed = time.perf_counter() - started

        _print_receipts(receipts)
        counts = outcome_counts(receipts)
        retried = sum(1 for r in receipts if r.payment_retries)
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
        print(f"\n{count} orders in {elapsed:.2f} s: {summary}")
        print(f"{retried} payments were retried after a gateway hiccup\n")
        _print_books(shop)
        books = audit(shop, receipts, unfinished)
        _print_consistency(shop, books)
    return 0 if books.ok else 1


# -- printing ----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    """Lay out *rows* under *headers*; the columns in *numeric* are right-aligned."""
    cells = [list(headers), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _reason(receipt: Receipt) -> str:
    outcome = receipt.outcome
    if outcome.status is SagaStatus.COMPLETED:
        if receipt.payment_retries:
            return f"paid at attempt {receipt.payment_retries + 1}, after a gateway hiccup"
        return ""
    if outcome.failure is None:
        return ""
    return outcome.failure.message if outcome.failure.business else str(outcome.failure)


def _print_receipts(receipts: Sequence[Receipt]) -> None:
    rows = [
        (
            r.order.order_id,
            r.order.customer_id,
            r.order.describe_items(),
            r.order.amount,
            r.outcome.status.value,
            _reason(r),
        )
        for r in receipts
    ]
    headers = ("order", "customer", "items", "amount", "status", "reason")
    print(_table(headers, rows, numeric={3}))


def _print_books(shop: Shop) -> None:
    left, sold = shop.stock.levels(), shop.orders.sold()
    stock_rows = [(sku, units, sold[sku], left[sku]) for sku, (_, units) in CATALOG.items()]
    print(_table(("article", "opening", "sold", "left"), stock_rows, numeric={1, 2, 3}))
    print()
    balances, spent = shop.payments.balances(), shop.orders.revenue()
    account_rows = [
        (customer, opening, spent.get(customer, Decimal("0.00")), balances[customer])
        for customer, opening in CUSTOMERS.items()
    ]
    print(_table(("customer", "opening", "spent", "balance"), account_rows, numeric={1, 2, 3}))
    print()


def _print_consistency(shop: Shop, books: Audit) -> None:
    opening_units = sum(units for _, units in CATALOG.values())
    left, sold = sum(shop.stock.levels().values()), sum(shop.orders.sold().values())
    opening_money = sum(CUSTOMERS.values(), Decimal("0.00"))
    balances = sum(shop.payments.balances().values(), Decimal("0.00"))
    revenue = sum(shop.orders.revenue().values(), Decimal("0.00"))
    pending = shop.orders.statuses()["pending"]
    print(
        f"consistency: {'OK' if books.ok else 'FAILED'}:"
        f" stock {opening_units} = {left} left + {sold} sold{_wrong(books.stock)};"
        f" money {opening_money} = {balances} in accounts + {revenue} revenue"
        f"{_wrong(books.money)};"
        f" {pending} orders pending{_wrong(books.pending)}"
    )
    for problem in books.stock + books.money + books.pending:
        print(f"  wrong: {problem}")


def _wrong(problems: list[str]) -> str:
    return " (WRONG)" if problems else ""


def _remove_data_files(data_dir: Path) -> None:
    """Start afresh: remove the shop's own files from *data_dir*, and only those."""
    for name in DATA_FILES:
        for suffix in ("", "-wal", "-shm"):
            (data_dir / f"{name}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
