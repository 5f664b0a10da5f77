"""The shop demo: place a batch of orders, watch them settle, then check the books.

Run it from the repository's root::

    python -m examples.ecommerce [--style choreographed|orchestrated] [--orders 20] [--seed 7]

(``python -m examples.ecommerce serve|place|cancel|query ...`` runs it as separate processes
instead: see ``distributed.py``.)

Every service runs in this one process, on an in-memory broker, each with its own SQLite
file. The orders are placed all at once through the application layer, so some of them race
for the last lamps; some run out of stock, some are declined, and a few customers change
their minds and cancel right after placing their order. The demo then prints what
became of each order (from the saga log), what the read model answers, a consistency check
across the services' books, and the trace of one rejected order. It exits with status 1 if
the books do not balance.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from . import distributed
from .shop import (
    CATALOG,
    CUSTOMERS,
    DATA_FILES,
    Audit,
    Shop,
    audit,
    make_baskets,
    open_shop,
    outcome,
)
from .traces import InMemoryTracing, trace_tree

if TYPE_CHECKING:
    from pysaga import SagaRecord

    from .app import Style

__all__ = ("main",)

CANCEL_EVERY = 8
"""Every eighth order is cancelled by its customer right after it is placed. The cancellation
races the order's charge: it nearly always wins, but when the charge comes first (a busy
machine) the order stays paid, and the table says the cancellation came too late."""

DISTRIBUTED = ("serve", "place", "cancel", "query")
"""The subcommands that run the shop as separate processes."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status (0 when the books balance).

    ``serve``, ``place`` and ``query`` run the shop as separate processes instead (see
    ``distributed.py``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DISTRIBUTED:
        return distributed.main(argv)
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecommerce",
        description="Place a batch of shop orders as sagas, then check that the books balance.",
        epilog="Run it as separate processes on a real broker with 'serve', 'place' and "
        "'query' (see 'python -m examples.ecommerce serve --help').",
    )
    parser.add_argument(
        "--style",
        choices=("choreographed", "orchestrated"),
        default="choreographed",
        help="run the place-order saga as events between the services (default) or with an "
        "orchestrator sending them commands",
    )
    parser.add_argument("--orders", type=int, default=20, metavar="N", help="orders to place")
    parser.add_argument("--seed", type=int, default=7, help="makes the batch reproducible")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the services, the saga log and the read model keep their files (emptied "
        "of them first; default: a temporary directory, removed at the end)",
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
        return anyio.run(_demo, data_dir, args.style, args.orders, args.seed)


async def _demo(data_dir: Path, style: Style, count: int, seed: int) -> int:
    try:
        tracing: InMemoryTracing | None = InMemoryTracing()
    except ImportError:
        tracing = None
    baskets = make_baskets(count, seed=seed)
    async with open_shop(
        data_dir, style=style, tracing=tracing.provider if tracing else None
    ) as shop:
        print(f"Placing {count} orders ({style}, seed {seed})")
        cancelled = set()
        for number, basket in enumerate(baskets, 1):  # each returns at once: sagas overlap
            await shop.app.place_order(basket.customer_id, basket.lines, order_id=basket.order_id)
            if number % CANCEL_EVERY == 0:  # a change of mind, before the payment is taken
                await shop.app.cancel_order(basket.order_id)
                cancelled.add(basket.order_id)
        sagas = await shop.wait_until_settled([b.order_id for b in baskets], progress=_progress)
        print()
        _print_orders(shop, sagas, cancelled)
        _print_queries(shop)
        books = await audit(shop, sagas)
        await _print_consistency(shop, books)
        # A declined order shows the compensation (the stock released) in its trace.
        undone = sorted(sagas, key=lambda o: (outcome(sagas[o]) != "declined", o))
        if tracing is not None and outcome(sagas[undone[0]]) != "completed":
            print(f"\nThe trace of {undone[0]} ({outcome(sagas[undone[0]])}):")
            for line in trace_tree(tracing.spans(), undone[0]):
                print(f"  {line}")
    return 0 if books.ok else 1


def _progress(settled: int, total: int) -> None:
    """Show how many orders have settled, on one line (only on a terminal)."""
    if sys.stdout.isatty():
        print(f"\r  {settled}/{total} orders settled", end="", flush=True)


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


def _print_orders(shop: Shop, sagas: dict[str, SagaRecord], cancelled: set[str]) -> None:
    rows = []
    for view in shop.app.list_orders():
        record = sagas[view.order_id]
        reason = record.failure.message if record.failure else ""
        if view.order_id in cancelled and outcome(record) == "completed":
            reason = "cancelled too late: it was paid already"
        items = ", ".join(f"{q}x {sku}" if q > 1 else sku for sku, q in view.items.items())
        rows.append((view.order_id, view.customer_id, items, view.amount, outcome(record), reason))
    print(_table(("order", "customer", "items", "amount", "outcome", "reason"), rows, {3}))
    counts = Counter(outcome(record) for record in sagas.values())
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    print(f"\n{len(sagas)} orders: {summary}")


def _print_queries(shop: Shop) -> None:
    app = shop.app
    print("\nThe read model answers:")
    first = app.list_orders()[0]
    print(f"  get_order({first.order_id!r}): {first.status}, {first.amount} by {first.customer_id}")
    for status in ("completed", "rejected", "pending"):
        print(f"  list_orders(status={status!r}): {len(app.list_orders(status))} orders")
    levels = ", ".join(f"{sku} {n}" for sku, n in app.stock_levels().items())
    print(f"  stock_levels(): {levels}")


async def _print_consistency(shop: Shop, books: Audit) -> None:
    opening_units = sum(units for _, units in CATALOG.values())
    left = sum((await shop.stock.levels()).values())
    sold = sum((await shop.orders.sold()).values())
    opening_money = sum(CUSTOMERS.values(), Decimal("0.00"))
    balances = sum((await shop.payments.balances()).values(), Decimal("0.00"))
    revenue = sum((await shop.orders.revenue()).values(), Decimal("0.00"))
    pending = (await shop.orders.statuses())["pending"]
    print(
        f"\nconsistency: {'OK' if books.ok else 'FAILED'}:"
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
