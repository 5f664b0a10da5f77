"""The payment service: customer accounts, and payments taken from them.

Like every service of the shop, it is idempotent by a key the caller passes (see the
package's docstring for why that is what a saga needs from its participants).
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import TYPE_CHECKING

from .database import Database, from_cents, to_cents

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ("GatewayUnavailable", "PaymentDeclined", "PaymentService")


class PaymentDeclined(Exception):
    """The payment is refused: the customer's account cannot cover the order."""


class GatewayUnavailable(ConnectionError):
    """A technical failure: the payment gateway could not be reached. Worth a retry."""


class PaymentService:
    """Customer accounts, and payments taken from them (amounts kept in cents).

    A payment is recorded under the caller's key: ``captured`` until it is ``refunded``.

    Args:
        path: The service's database file.
        hiccup_rate: The share of payments whose first attempt fails with
            :class:`GatewayUnavailable` before reaching the account, to show a retry.
        seed: Makes the hiccups reproducible.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS accounts (
            customer_id   TEXT PRIMARY KEY,
            balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0)
        );
        CREATE TABLE IF NOT EXISTS payments (
            id           INTEGER PRIMARY KEY,
            key          TEXT NOT NULL UNIQUE,
            order_id     TEXT NOT NULL,
            customer_id  TEXT NOT NULL,
            amount_cents INTEGER NOT NULL,
            state        TEXT NOT NULL  -- 'captured', 'refunded', or 'void' (refunded unpaid)
        );
    """

    def __init__(self, path: Path, *, hiccup_rate: float = 0.0, seed: int = 0) -> None:
        self.db = Database(path, self.SCHEMA)
        self._hiccup_rate = hiccup_rate
        self._seed = seed
        self._hiccuped: set[str] = set()

    async def open_accounts(self, balances: Mapping[str, Decimal]) -> None:
        """Open (or reset) customer accounts with these balances."""
        await self.db.transaction(
            lambda conn: conn.executemany(
                "INSERT INTO accounts (customer_id, balance_cents) VALUES (?, ?) "
                "ON CONFLICT (customer_id) DO UPDATE SET balance_cents = excluded.balance_cents",
                [(customer_id, to_cents(balance)) for customer_id, balance in balances.items()],
            )
        )

    async def charge(self, order_id: str, customer_id: str, amount: Decimal, *, key: str) -> str:
        """Take *amount* from the customer's account; return the payment's id.

        Raises:
            PaymentDeclined: the balance does not cover the amount.
            GatewayUnavailable: a technical hiccup; nothing was charged, try again.
        """
        if self._hiccup(key):
            raise GatewayUnavailable("payment gateway did not answer; nothing was charged")
        cents = to_cents(amount)

        def charge(conn: sqlite3.Connection) -> str:
            found = conn.execute("SELECT id, state FROM payments WHERE key = ?", (key,)).fetchone()
            if found is not None:
                payment, state = found
                if state != "captured":  # refunded before it was taken: never take it now
                    raise PaymentDeclined("payment declined: it was cancelled")
                return f"pay-{payment:04d}"  # charged before: same payment, no second charge
            row = conn.execute(
                "SELECT balance_cents FROM accounts WHERE customer_id = ?", (customer_id,)
            ).fetchone()
            balance = row[0] if row else 0
            if balance < cents:
                left = from_cents(balance)
                raise PaymentDeclined(f"payment declined: only {left} on the account")
            conn.execute(
                "UPDATE accounts SET balance_cents = balance_cents - ? WHERE customer_id = ?",
                (cents, customer_id),
            )
            cursor = conn.execute(
                "INSERT INTO payments (key, order_id, customer_id, amount_cents, state) "
                "VALUES (?, ?, ?, ?, 'captured')",
                (key, order_id, customer_id, cents),
            )
            return f"pay-{cursor.lastrowid:04d}"

        return await self.db.transaction(charge)

    async def refund(self, order_id: str, customer_id: str, *, key: str) -> None:
        """Give back the payment taken under *key*.

        Safe to call twice, and safe to call when nothing was charged: it then leaves a
        ``void`` marker, so that a late charge under the same key is refused.
        """

        def refund(conn: sqlite3.Connection) -> None:
            found = conn.execute(
                "SELECT amount_cents, state FROM payments WHERE key = ?", (key,)
            ).fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO payments (key, order_id, customer_id, amount_cents, state) "
                    "VALUES (?, ?, ?, 0, 'void')",
                    (key, order_id, customer_id),
                )
                return
            cents, state = found
            if state != "captured":
                return
            conn.execute(
                "UPDATE accounts SET balance_cents = balance_cents + ? WHERE customer_id = ?",
                (cents, customer_id),
            )
            conn.execute("UPDATE payments SET state = 'refunded' WHERE key = ?", (key,))

        await self.db.transaction(refund)

    def _hiccup(self, key: str) -> bool:
        """Whether this call fails: at most once per key, for a reproducible share of keys."""
        if key in self._hiccuped:
            return False
        if random.Random(f"{self._seed}/{key}").random() >= self._hiccup_rate:
            return False
        self._hiccuped.add(key)
        return True

    def balances(self) -> dict[str, Decimal]:
        """Each customer's balance."""
        rows = self.db.query("SELECT customer_id, balance_cents FROM accounts ORDER BY 1")
        return {customer: from_cents(cents) for customer, cents in rows}

    def captured(self) -> dict[str, Decimal]:
        """Money taken and kept (not refunded), by customer."""
        rows = self.db.query(
            "SELECT customer_id, sum(amount_cents) FROM payments WHERE state = 'captured' "
            "GROUP BY customer_id"
        )
        return {customer: from_cents(cents) for customer, cents in rows}
