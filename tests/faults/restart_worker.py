"""One orchestrator process of the restart tests (``test_named_restart.py``).

It drives ``restart-order`` sagas (three slow steps, no failures) on a saga log shared with
the test, and journals every step attempt that got to run its effect in an *effects* SQLite
file of its own (by idempotency key, with this process's pid), so the test can tell a step
that ran again after a kill (in doubt: its intent was logged, its outcome not) from one that
ran twice for no reason.

Usage: ``python -m tests.faults.restart_worker '<json config>'``, where the config has

* ``log``: the saga log's URL (``sqlite:///...`` or ``postgresql://...``);
* ``effects``: the effects file;
* ``owner``: the orchestrator's ``owner=`` name, or ``null`` for a random one;
* ``lease``: its ``lease=`` (seconds), or ``null`` for the default;
* ``sagas``: ``[first, count]``: this process starts sagas ``order-<first>`` to
  ``order-<first + count - 1>`` unless the log has them already;
* ``total``: how many sagas the whole test starts (the process waits for all of them).

It prints JSON lines: ``{"ready": ...}`` once its orchestrator runs (with its owner,
incarnation, pid and the time), ``{"started": n}`` once its sagas are in the log, and
``{"done": ...}`` once every one of the ``total`` sagas in the log is finished; then it exits.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from typing import Any

import anyio
from pydantic import BaseModel

from pysaga import ConcurrencyError, Orchestrator, Saga, SagaStatus, StepContext

SAGA_NAME = "restart-order"
STEPS = ("reserve", "charge", "confirm")

EFFECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    step    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid     INTEGER NOT NULL,
    at      REAL NOT NULL
);
"""


class Order(BaseModel):
    """The saga's data: ``delay`` is how long each step takes (seconds)."""

    n: int
    delay: float


def delay_of(n: int) -> float:
    """Steps of saga *n* take 0.3 to 1.2 s: with several hundred started together, many are
    in flight whenever the test kills the process."""
    return 0.3 + (n * 7 % 10) / 10


class Journal:
    """The steps' effects: one row per attempt that ran its effect."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(EFFECTS_SCHEMA)
        self.pid = os.getpid()

    def record(self, ctx: StepContext) -> None:
        self.conn.execute(
            "INSERT INTO journal (key, saga_id, step, attempt, pid, at) VALUES (?,?,?,?,?,?)",
            (ctx.idempotency_key, ctx.saga_id, ctx.step, ctx.attempt, self.pid, time.time()),
        )


def build_saga(journal: Journal) -> Saga[Order]:
    saga: Saga[Order] = Saga(SAGA_NAME, Order, version=1)

    async def act(order: Order, ctx: StepContext) -> None:
        await anyio.sleep(order.delay)
        journal.record(ctx)

    @saga.step
    async def reserve(order: Order, ctx: StepContext) -> None:
        await act(order, ctx)

    @saga.step
    async def charge(order: Order, ctx: StepContext) -> None:
        await act(order, ctx)

    @saga.step
    async def confirm(order: Order, ctx: StepContext) -> None:
        await act(order, ctx)

    return saga


def say(**line: Any) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def run(config: dict[str, Any]) -> None:
    journal = Journal(config["effects"])
    saga = build_saga(journal)
    options: dict[str, Any] = {}
    if config.get("lease") is not None:
        options["lease"] = config["lease"]
    async with Orchestrator(
        sagas=[saga], log=config["log"], owner=config.get("owner"), **options
    ) as orch:
        say(ready=orch.owner, incarnation=orch.incarnation, pid=os.getpid(), at=time.time())
        first, count = config["sagas"]
        started = 0
        for n in range(first, first + count):
            try:
                await orch.start(saga, Order(n=n, delay=delay_of(n)), saga_id=f"order-{n}")
                started += 1
            except ConcurrencyError:
                pass  # started by this orchestrator's previous life
        say(started=started)
        total = config["total"]
        while True:
            counts = await orch.log.counts(name=SAGA_NAME)
            unfinished = counts.get(SagaStatus.RUNNING, 0) + counts.get(SagaStatus.COMPENSATING, 0)
            if sum(counts.values()) >= total and not unfinished:
                break
            await anyio.sleep(0.05)
    say(done=orch.owner, at=time.time())


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    anyio.run(run, json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
