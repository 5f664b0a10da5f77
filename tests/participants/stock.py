"""The stock service of the outbox tests: its handlers write their effects through
``ctx.transaction`` into a table of the test's schema, so a test can count them.

Each handler run appends a row to ``effects`` (kind, idempotency key, message id); a
compensation deletes the ``reserve`` rows of its key. A row counts only if its transaction
committed, so the table shows what the service *did*, not what it tried.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, HandlerContext, Participant

EFFECTS = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.effects (
    kind       text NOT NULL,
    key        text NOT NULL,
    message_id text NOT NULL
);
"""


class Reserve(BaseModel):
    sku: str
    qty: int = 1
    refuse: bool = False
    """Write the effect, then refuse (the write must be rolled back)."""
    fail: bool = False
    """Write the effect, then fail technically (everything must be rolled back)."""
    events: int = 1
    """How many events to publish."""
    hold: float = 0.0
    """Seconds to wait after writing, before returning (to overlap with another copy)."""


class Release(BaseModel):
    sku: str


class Reserved(BaseModel):
    reservation: str


class StockChanged(BaseModel):
    sku: str
    n: int


def stock_service(
    name: str, broker: Any, inbox: str, *, events: str = "stock-events", **options: Any
) -> tuple[Participant, list[str]]:
    """The service, and the list of message ids its reserve handler was called with."""
    stock = Participant(name, broker=broker, inbox=inbox, **options)
    calls: list[str] = []

    @stock.handles(Reserve)
    async def reserve(cmd: Reserve, ctx: HandlerContext) -> Reserved:
        calls.append(ctx.message_id)
        async with ctx.transaction.transaction():  # a savepoint: handlers may nest
            await ctx.transaction.execute(
                "INSERT INTO effects VALUES ('reserve', $1, $2)",
                ctx.idempotency_key,
                ctx.message_id,
            )
        for n in range(cmd.events):
            await ctx.publish(events, StockChanged(sku=cmd.sku, n=n))
        if cmd.hold:
            await anyio.sleep(cmd.hold)
        if cmd.refuse:
            raise BusinessError(f"no {cmd.sku} left")
        if cmd.fail:
            raise RuntimeError("the shelf scanner is offline")
        return Reserved(reservation=f"r-{ctx.idempotency_key}")

    @stock.compensates(Release)
    async def release(cmd: Release, ctx: HandlerContext) -> None:
        await ctx.transaction.execute(
            "DELETE FROM effects WHERE kind = 'reserve' AND key = $1", ctx.idempotency_key
        )
        await ctx.transaction.execute(
            "INSERT INTO effects VALUES ('release', $1, $2)", ctx.idempotency_key, ctx.message_id
        )

    return stock, calls
