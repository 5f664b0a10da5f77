"""One generation of the crash-recovery test: a real process that runs sagas until it is killed.

``test_crash_recovery.py`` starts this file with the test's own interpreter, one process per
*generation*, all on the same two SQLite files:

* the **saga log** (``sagas.db``), written by an :class:`~pysaga.Orchestrator`;
* the **effects** database (``effects.db``, its own connection): what the steps and the
  compensations did, kept by idempotency key. A step inserts its key into ``effects`` if it is
  not there yet (one net effect); a compensation deletes it if it is there. Every call that
  gets that far also appends a row to ``journal``, in the same transaction, saying what it
  found (``apply`` / ``apply-repeat`` / ``undo`` / ``undo-nothing``), so the test can tell an
  idempotent repeat from an effect that happened twice. A compensation also notes what it
  found in the saga's data (each step stores its key in a field of it).

The process counts *kill points* as it goes and kills itself with SIGKILL at the one the test
chose (``{"kind": ..., "n": ...}``: the n-th point of that kind, or of any kind):

``before-write`` / ``after-write``
    around every saga-log write (``create`` and ``update``), through :class:`CountingLog`;
``after-effect``
    inside a step, once its effect is committed and before it returns: the saga log holds
    the step's intent but not its outcome;
``after-undo``
    inside a compensation, once the undo is committed and before it returns;
``after-claim``
    right after this orchestrator claimed sagas that a dead one left behind.

Just before it kills itself it prints one JSON line describing the point. Otherwise it starts
every saga of the plan that is not in the log yet (as a client retrying with a stable saga id
would), resumes the others (the orchestrator claims them once their lease runs out), waits
until every saga in the log is terminal, and prints a ``done`` line.

Usage: ``python crash_worker.py '<json config>'`` (see :func:`main`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any, Self

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Retry, Saga, StepContext
from pysaga.stores.sqlite import SQLiteSagaLog

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from types import TracebackType

    from pysaga import LogEntry, SagaRecord, SagaUpdate

SAGA_NAME = "ship-order"
COMPENSATABLE = ("reserve_stock", "hold_payment", "book_courier")
PIVOT = "capture_payment"
RETRIABLE = "send_receipt"
STEPS = (*COMPENSATABLE, PIVOT, RETRIABLE)
"""Every step, in declaration order (``hold_payment`` and ``book_courier`` run in parallel)."""
FIELDS = {
    "reserve_stock": "reservation",
    "hold_payment": "payment",
    "book_courier": "courier",
    PIVOT: "payment",
    RETRIABLE: "receipt",
}
"""The field of the saga's data each step sets (to its idempotency key)."""

KILL_KINDS = ("before-write", "after-write", "after-effect", "after-undo", "after-claim")

EFFECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key     TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step    TEXT NOT NULL,
    owner   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    step    TEXT NOT NULL,
    op      TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner   TEXT NOT NULL,
    seen    TEXT
);
"""


class Order(BaseModel):
    """The saga's data; ``refuse``, ``flaky`` and ``flaky_undo`` script its behaviour."""

    order_id: str
    refuse: str | None = None
    """The step that says no (BusinessError): the saga compensates."""
    flaky: dict[str, int] = {}
    """Step -> how many of its first attempts fail technically (before any effect)."""
    flaky_undo: dict[str, int] = {}
    """Step -> how many of its compensation's first attempts fail technically."""
    reservation: str | None = None
    payment: str | None = None
    courier: str | None = None
    receipt: str | None = None


class Killer:
    """Counts kill points and sends SIGKILL to this process at the chosen one."""

    def __init__(self, spec: dict[str, Any] | None) -> None:
        self.kind: str | None = spec["kind"] if spec else None
        self.n: int = spec["n"] if spec else 0
        self.counts: Counter[str] = Counter()

    def point(self, kind: str, **label: Any) -> None:
        self.counts[kind] += 1
        self.counts["any"] += 1
        if self.kind in (kind, "any") and self.counts[self.kind] == self.n:
            line = {"kill": kind, "spec": [self.kind, self.n], **label}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class CountingLog:
    """A saga log that passes every call to a :class:`SQLiteSagaLog`, with kill points."""

    def __init__(self, inner: SQLiteSagaLog, killer: Killer) -> None:
        self.inner = inner
        self.killer = killer

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def create(self, record: SagaRecord, entries: Sequence[LogEntry]) -> None:
        label = {"op": "create", "saga_id": record.saga_id, "revision": record.revision}
        self.killer.point("before-write", **label)
        await self.inner.create(record, entries)
        self.killer.point("after-write", **label)

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        label = {
            "op": "update",
            "saga_id": saga_id,
            "revision": revision + 1,
            "entries": [e.kind.value for e in update.entries],
        }
        self.killer.point("before-write", **label)
        new_revision = await self.inner.update(saga_id, update, revision=revision, owner=owner)
        self.killer.point("after-write", **label)
        return new_revision

    async def claim(
        self,
        owner: str,
        *,
        incarnation: str | None = None,
        kinds: Collection[tuple[str, int]],
        lease: float,
        now: float,
        limit: int = 100,
        predecessors: bool = False,
        fingerprints: Mapping[tuple[str, int], str] | None = None,
    ) -> list[SagaRecord]:
        claimed = await self.inner.claim(
            owner,
            incarnation=incarnation,
            kinds=kinds,
            lease=lease,
            now=now,
            limit=limit,
            predecessors=predecessors,
            fingerprints=fingerprints,
        )
        if claimed:
            self.killer.point("after-claim", saga_ids=[r.saga_id for r in claimed])
        return claimed

    def __getattr__(self, name: str) -> Any:  # reads and lease upkeep pass straight through
        return getattr(self.inner, name)


class Effects:
    """The steps' side effects, in their own SQLite file, idempotent by key."""

    def __init__(self, path: str, owner: str, killer: Killer) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(EFFECTS_SCHEMA)
        self.owner = owner
        self.killer = killer

    def _journal(self, ctx: StepContext, op: str, seen: str | None = None) -> None:
        self.conn.execute(
            "INSERT INTO journal (key, saga_id, step, op, attempt, owner, seen) "
            "VALUES (?,?,?,?,?,?,?)",
            (ctx.idempotency_key, ctx.saga_id, ctx.step, op, ctx.attempt, self.owner, seen),
        )

    def apply(self, ctx: StepContext) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO effects (key, saga_id, step, owner) VALUES (?,?,?,?)",
                (ctx.idempotency_key, ctx.saga_id, ctx.step, self.owner),
            )
            self._journal(ctx, "apply" if cur.rowcount == 1 else "apply-repeat")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.killer.point("after-effect", key=ctx.idempotency_key, attempt=ctx.attempt)

    def undo(self, ctx: StepContext, seen: str | None) -> None:
        """Undo the step's effect; *seen* is what the compensation found in the saga's data."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute("DELETE FROM effects WHERE key = ?", (ctx.idempotency_key,))
            self._journal(ctx, "undo" if cur.rowcount == 1 else "undo-nothing", seen)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.killer.point("after-undo", key=ctx.idempotency_key, attempt=ctx.attempt)


def build_saga(effects: Effects) -> Saga[Order]:
    """reserve_stock -> (hold_payment | book_courier) -> capture_payment (pivot) -> send_receipt."""
    saga: Saga[Order] = Saga(SAGA_NAME, Order, version=1)
    quick = Retry(attempts=4, backoff=0.01, max_backoff=0.05)
    undo_retry = Retry(attempts=10, backoff=0.01, max_backoff=0.05)

    async def act(order: Order, ctx: StepContext) -> Order:
        if ctx.attempt <= order.flaky.get(ctx.step, 0):
            raise ConnectionError(f"{ctx.step}: service unreachable (attempt {ctx.attempt})")
        if order.refuse == ctx.step:
            raise BusinessError(f"{ctx.step}: refused for {order.order_id}")
        effects.apply(ctx)
        return order.model_copy(update={FIELDS[ctx.step]: ctx.idempotency_key})

    async def undo(order: Order, ctx: StepContext) -> None:
        if ctx.attempt <= order.flaky_undo.get(ctx.step, 0):
            raise ConnectionError(f"undo {ctx.step}: service unreachable (attempt {ctx.attempt})")
        effects.undo(ctx, getattr(order, FIELDS[ctx.step]))

    @saga.step(retry=quick)
    async def reserve_stock(order: Order, ctx: StepContext) -> Order:
        return await act(order, ctx)

    @reserve_stock.compensate(retry=undo_retry)
    async def release_stock(order: Order, ctx: StepContext) -> None:
        await undo(order, ctx)

    with saga.parallel("prepare"):

        @saga.step(retry=quick)
        async def hold_payment(order: Order, ctx: StepContext) -> Order:
            return await act(order, ctx)

        @hold_payment.compensate(retry=undo_retry)
        async def release_payment(order: Order, ctx: StepContext) -> None:
            await undo(order, ctx)

        @saga.step(retry=quick)
        async def book_courier(order: Order, ctx: StepContext) -> Order:
            return await act(order, ctx)

        @book_courier.compensate(retry=undo_retry)
        async def cancel_courier(order: Order, ctx: StepContext) -> None:
            await undo(order, ctx)

    @saga.step(pivot=True, retry=quick)
    async def capture_payment(order: Order, ctx: StepContext) -> Order:
        return await act(order, ctx)

    @saga.step(retry=Retry(attempts=None, backoff=0.01, max_backoff=0.05))
    async def send_receipt(order: Order, ctx: StepContext) -> Order:
        return await act(order, ctx)

    return saga


async def run(config: dict[str, Any]) -> None:
    owner: str = config["owner"]
    killer = Killer(config.get("kill"))
    effects = Effects(config["effects"], owner, killer)
    saga = build_saga(effects)
    log = CountingLog(SQLiteSagaLog.from_url(config["log"]), killer)
    async with Orchestrator(sagas=[saga], log=log, lease=config["lease"], owner=owner) as orch:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        known = {r.saga_id for r in await log.list(limit=1_000_000)}
        started = 0
        for item in config["plan"]:
            if item["saga_id"] not in known:
                await orch.start(saga, item["data"], saga_id=item["saga_id"])
                started += 1
        while True:
            records = await log.list(limit=1_000_000)
            if all(r.status.is_terminal for r in records):
                break
            await anyio.sleep(0.02)
    done = {"done": owner, "started": started, "sagas": len(records), "points": killer.counts}
    sys.stdout.write(json.dumps(done) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Run one generation. The one argument is a JSON object:

    ``log`` (saga-log URL, ``sqlite:///...``), ``effects`` (effects file path), ``owner`` (this
    orchestrator's name), ``lease`` (seconds), ``kill`` (``null`` or ``{"kind", "n"}``) and
    ``plan`` (``[{"saga_id", "data"}, ...]``: every saga that should exist).
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(run, json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
