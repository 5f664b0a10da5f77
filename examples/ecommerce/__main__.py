"""The shop demo: place a batch of orders, watch them settle, then check the books.

Run it from the repository's root::

    python -m examples.ecommerce [--style choreographed|orchestrated] [--orders 20] [--seed 7]
                                 [--data-dir shop-data] [--fresh] [--trace]

(``python -m examples.ecommerce serve|place|cancel|query ...`` runs it as separate processes
instead: see ``distributed.py``.)

Every service runs in this one process, on an in-memory broker, each with its own SQLite
file in the data directory (``./shop-data`` unless told), next to the saga log and the read
model. The orders are placed all at once through the application layer, so some of them race
for the last lamps; some run out of stock, some are declined, and a few customers change
their minds and cancel right after placing their order. The demo then prints what became of
each order (from the saga log), what the read model answers, a consistency check across the
services' books, the trace of one rejected order, and the ``pysaga`` commands that look at
the saga log it left. It exits with status 1 if the books do not balance.

The data directory is kept. Run the demo again and it goes on with the same batch: killed
halfway, the next run finishes every order (a finished batch is shown again); ``--fresh``
starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio

from . import distributed
from .app import OrderSettled
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

DATA_DIR = Path("shop-data")
"""Where the demo keeps its files unless told (relative to the current directory)."""

BATCH_FILE = "demo.json"
"""The file in the data directory that says which batch the demo placed there, and how."""

STYLES: dict[str, str] = {
    "choreographed": "no coordinator: each service reacts to the previous one's event, and an "
    "observer records each saga in the saga log",
    "orchestrated": "an orchestrator sends each service its command and waits for the reply, "
    "writing each step to the saga log",
}

DRAWN = {"choreographed": "purchase", "orchestrated": "place_order"}
"""The flow's definition in ``examples/ecommerce/flows.py``, by style."""


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
        choices=tuple(STYLES),
        default="choreographed",
        help="run the place-order saga as events between the services (default) or with an "
        "orchestrator sending them commands",
    )
    parser.add_argument("--orders", type=int, default=20, metavar="N", help="orders to place")
    parser.add_argument("--seed", type=int, default=7, help="makes the batch reproducible")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DATA_DIR,
        metavar="DIR",
        help="where the services, the saga log and the read model keep their files; kept "
        f"after the run (default: ./{DATA_DIR})",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="remove the shop's files from the data directory first, and start over",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print the whole trace of the rejected order, every span of every service",
    )
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    data_dir: Path = args.data_dir
    batch = {"style": args.style, "orders": args.orders, "seed": args.seed}
    if args.fresh:
        _remove_data_files(data_dir)
    placed_before = _batch_of(data_dir)
    if placed_before is None and any((data_dir / name).exists() for name in DATA_FILES):
        parser.exit(
            2,
            f"{parser.prog}: error: {data_dir} holds shop files that no demo batch made; "
            "add --fresh to remove them and start over, or pick another --data-dir\n",
        )
    if placed_before is not None and placed_before != batch:
        options = " ".join(f"--{key} {value}" for key, value in placed_before.items())
        parser.exit(
            2,
            f"{parser.prog}: error: {data_dir} holds the batch of a run with {options}; run "
            "with those to go on with it, add --fresh to start over, or pick another "
            "--data-dir\n",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / BATCH_FILE).write_text(json.dumps(batch) + "\n", encoding="utf-8")
    style = cast("Style", args.style)
    return anyio.run(_demo, data_dir, style, args.orders, args.seed, args.trace)


def _batch_of(data_dir: Path) -> dict[str, object] | None:
    """The batch an earlier run placed in *data_dir*, or ``None``."""
    try:
        found = json.loads((data_dir / BATCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


async def _demo(data_dir: Path, style: Style, count: int, seed: int, full_trace: bool) -> int:
    try:
        tracing: InMemoryTracing | None = InMemoryTracing()
    except ImportError:
        tracing = None
    baskets = make_baskets(count, seed=seed)
    other = next(name for name in STYLES if name != style)
    print(f"Style: {style} ({STYLES[style]}).")
    print(f"  The other style: python -m examples.ecommerce --style {other} --fresh")
    async with open_shop(
        data_dir, style=style, tracing=tracing.provider if tracing else None
    ) as shop:
        known = {order.order_id for order in await shop.orders.placed()}
        if style == "orchestrated":
            known |= {b.order_id for b in baskets if await shop.log.get(b.order_id) is not None}
        fresh = [basket for basket in baskets if basket.order_id not in known]
        cancelled = {b.order_id for n, b in enumerate(baskets, 1) if n % CANCEL_EVERY == 0}
        if not known:
            print(f"Placing {count} orders (seed {seed}); the shop keeps its files in {data_dir}")
        elif fresh:
            print(
                f"Going on with the batch in {data_dir}: {len(known)} of its {count} orders "
                f"were placed by an earlier run; placing the other {len(fresh)}"
            )
        else:
            print(
                f"The {count} orders of this batch were placed by an earlier run in {data_dir}; "
                "finishing what it left and showing them (--fresh starts over)"
            )
        for number, basket in enumerate(baskets, 1):  # each returns at once: sagas overlap
            if basket.order_id in known and basket.order_id not in cancelled:
                continue
            if basket.order_id not in known:
                await shop.app.place_order(
                    basket.customer_id, basket.lines, order_id=basket.order_id
                )
            if number % CANCEL_EVERY == 0:  # a change of mind, before the payment is taken
                # Asked again after a crash: the same cancellation, dropped if seen.
                with contextlib.suppress(OrderSettled):
                    await shop.app.cancel_order(basket.order_id)
        sagas = await shop.wait_until_settled([b.order_id for b in baskets], progress=_progress)
        if sys.stdout.isatty():
            print()
        print()
        _print_orders(shop, sagas, cancelled)
        _print_queries(shop)
        books = await audit(shop, sagas)
        await _print_consistency(shop, books)
        # A declined order shows the compensation (the stock released) in its trace.
        undone = sorted(sagas, key=lambda o: (outcome(sagas[o]) != "declined", o))
        shown = undone[0]
        if tracing is not None and outcome(sagas[shown]) != "completed":
            lines = trace_tree(tracing.spans(), shown, full=full_trace)
            if lines:
                print(f"\nThe trace of {shown} ({outcome(sagas[shown])}):")
                for line in lines:
                    print(f"  {line}")
                if not full_trace:
                    print("  (the saga's path only: --trace prints every span)")
        _print_commands(data_dir, style, shown)
    return 0 if books.ok else 1


def _print_commands(data_dir: Path, style: Style, saga_id: str) -> None:
    """The ``pysaga`` commands that look at what the demo left in *data_dir*."""
    log = shlex.quote(f"sqlite:///{(data_dir / 'sagas.db').as_posix()}")
    here = Path(sys.executable).parent / "pysaga"
    pysaga = "pysaga"
    if here.exists() and shutil.which("pysaga") != str(here):
        pysaga = shlex.quote(_relative(here))
    print(f"\nThe saga log stays in {data_dir}. Look at it with the pysaga command:")
    print(f"  {pysaga} list --log {log}")
    print(f"  {pysaga} show --log {log} {saga_id}")
    print(f"  {pysaga} draw examples.ecommerce.flows:{DRAWN[style]}")


def _relative(path: Path) -> str:
    """*path* from the current directory if it is below it, else as it is."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
    if counts["failed"]:
        print(
            f"{counts['failed']} failed: an operator must look at them (pysaga list --status "
            "failed). The observer marks a choreographed saga failed when its flow passes its "
            "deadline unfinished: an event was lost, or the shop was down that long (killed, "
            "and run again later than the deadline)."
        )


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
    for name in (*DATA_FILES, BATCH_FILE):
        for suffix in ("", "-wal", "-shm"):
            (data_dir / f"{name}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
