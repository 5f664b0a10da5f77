"""The demo survives SIGKILL at any moment: run as a real process, killed at several points of
its run, in both styles, the next run on the same data directory ends every order, the books
balance, and no effect happened twice.

The kill points are moments of the run seen from outside, in the files the demo keeps: while
it opens, once it placed its first orders, halfway through placing them, and when a quarter,
half, and all but a few of its orders have settled. One run is killed twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from pysaga import EntryKind

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 60
"""A larger batch than the default, so that the kill points fall inside the run."""


@dataclass(frozen=True)
class Progress:
    """How far a run got, read from its files."""

    opened: bool
    placed: int
    settled: int


def progress(data_dir: Path) -> Progress:
    orders = data_dir / "orders.db"
    if not orders.exists():
        return Progress(opened=False, placed=0, settled=0)
    try:
        with sqlite3.connect(f"file:{orders}?mode=ro", uri=True, timeout=0.1) as conn:
            counts = dict(conn.execute("SELECT status, count(*) FROM orders GROUP BY status"))
    except sqlite3.OperationalError:  # the tables are being created
        return Progress(opened=True, placed=0, settled=0)
    placed = sum(counts.values())
    return Progress(opened=True, placed=placed, settled=placed - counts.get("pending", 0))


KILL_POINTS = {
    "while opening": lambda p: p.opened,
    "first orders placed": lambda p: p.placed >= 1,
    "half the orders placed": lambda p: p.placed >= ORDERS // 2,
    "a quarter settled": lambda p: p.settled >= ORDERS // 4,
    "half settled": lambda p: p.settled >= ORDERS // 2,
    "all but a few settled": lambda p: p.settled >= ORDERS - 3,
}


def demo(style: str, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.ecommerce",
            "--style",
            style,
            "--orders",
            str(ORDERS),
            "--data-dir",
            str(data_dir),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )


def kill_when(style: str, data_dir: Path, point: str) -> bool:
    """Run the demo and SIGKILL it once *point* is reached; return whether it was killed (a
    run may end before an outside observer sees the point)."""
    process = demo(style, data_dir)
    reached = KILL_POINTS[point]
    deadline = time.monotonic() + 60
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if reached(progress(data_dir)):
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
                return process.returncode == -signal.SIGKILL
            time.sleep(0.002)
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def finish(style: str, data_dir: Path) -> str:
    process = demo(style, data_dir)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    return out


def check_nothing_twice(data_dir: Path, style: str) -> None:
    """Every saga in the log ended once, each step's outcome recorded once; each order holds
    at most one reservation and one payment."""
    with sqlite3.connect(data_dir / "sagas.db") as conn:
        sagas = [row[0] for row in conn.execute("SELECT saga_id FROM pysaga_sagas")]
        assert len(sagas) == ORDERS
        entries = conn.execute("SELECT saga_id, kind, step FROM pysaga_history").fetchall()
    ends = Counter(
        saga
        for saga, kind, _ in entries
        if kind in (EntryKind.SAGA_COMPLETED.value, EntryKind.SAGA_COMPENSATED.value)
    )
    assert set(ends) == set(sagas)
    assert set(ends.values()) == {1}, ends
    once = (EntryKind.STEP_SUCCEEDED.value, EntryKind.COMPENSATION_SUCCEEDED.value)
    outcomes = Counter((saga, kind, step) for saga, kind, step in entries if kind in once)
    assert set(outcomes.values()) == {1}, [k for k, n in outcomes.items() if n > 1]
    with sqlite3.connect(data_dir / "payments.db") as conn:
        charged = conn.execute(
            "SELECT order_id, count(*) FROM payments WHERE state = 'charged' GROUP BY order_id"
        ).fetchall()
    assert all(n == 1 for _, n in charged)


@pytest.mark.parametrize("style", ["choreographed", "orchestrated"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_at_any_point_the_next_run_ends_every_order_and_the_books_balance(
    style: str, point: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shop-data"
    assert kill_when(style, data_dir, point), f"the run ended before {point!r}"
    left = progress(data_dir)

    out = finish(style, data_dir)

    if left.placed:  # it says that it goes on with the killed run's batch
        assert "placed by an earlier run" in out, out
    assert f"{ORDERS} orders: " in out
    assert "list_orders(status='pending'): 0 orders" in out
    assert "consistency: OK" in out, out
    check_nothing_twice(data_dir, style)


@pytest.mark.parametrize("style", ["choreographed", "orchestrated"])
def test_killed_twice_the_third_run_still_ends_every_order(style: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "shop-data"
    assert kill_when(style, data_dir, "a quarter settled")
    assert kill_when(style, data_dir, "all but a few settled")

    out = finish(style, data_dir)

    assert "consistency: OK" in out, out
    check_nothing_twice(data_dir, style)
