"""The storage every service of the shop uses: its own SQLite file.

Each service owns one database; no service reads another's. Transactions run in a worker
thread (SQLite calls block), one at a time per service.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ("Database", "from_cents", "to_cents")

T = TypeVar("T")
CENT = Decimal("0.01")


class Database:
    """One service's SQLite file. Each transaction runs in a worker thread, one at a time."""

    def __init__(self, path: Path, schema: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(schema)
        self._one_at_a_time = anyio.CapacityLimiter(1)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` in one transaction: all of it is committed, or none."""

        def run() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

        return await anyio.to_thread.run_sync(run, limiter=self._one_at_a_time)

    def query(self, sql: str, *params: object) -> list[Any]:
        """Read rows (for reports, outside any saga)."""
        return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()


def to_cents(amount: Decimal) -> int:
    return int(amount.quantize(CENT) * 100)


def from_cents(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)
