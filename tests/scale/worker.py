"""One process of the scale-out tests: a participant service or an orchestrator.

Usage::

    python -m tests.scale.worker participant <stock|payment> <suffix> <broker> <database>
    python -m tests.scale.worker orchestrator <suffix> <broker> <database> <plan> <first> <count>

It prints ``ready`` once it serves (an orchestrator after it started its share of the plan's
orders: those not in the saga log yet) and runs until SIGTERM, when it stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys

import anyio

from pysaga import ConcurrencyError, Orchestrator

from .shop import Purchase, participant, purchase_saga


async def serve_until_terminated() -> None:
    """Print ``ready``; return on SIGTERM. SIGUSR1 prints every task's stack to stderr (the
    test asks for it when a run does not finish, to show where it waits)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1) as signals:
        print("ready", flush=True)
        async for signum in signals:
            if signum == signal.SIGTERM:
                return
            for task in asyncio.all_tasks():
                task.print_stack(limit=12, file=sys.stderr)
            sys.stderr.flush()


async def run_participant(kind: str, suffix: str, broker: str, database: str) -> None:
    async with participant(kind, suffix, broker, database, relay_interval=0.5, relay_grace=2.0):
        await serve_until_terminated()


async def run_orchestrator(
    suffix: str, broker: str, database: str, plan_file: str, first: int, count: int
) -> None:
    text = await anyio.Path(plan_file).read_text()
    orders = [Purchase.model_validate(o) for o in json.loads(text)][first : first + count]
    saga = purchase_saga(suffix)
    async with Orchestrator(
        sagas=[saga], log=database, broker=broker, lease=2.0, claim_interval=0.5, drain_timeout=1
    ) as orch:
        for order in orders:
            # one this worker's previous life started is in the log already
            with contextlib.suppress(ConcurrencyError):
                await orch.start(saga, order, saga_id=order.order_id)
        await serve_until_terminated()


def main(argv: list[str]) -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
    if argv[0] == "participant":
        anyio.run(run_participant, *argv[1:5])
    else:
        suffix, broker, database, plan_file, first, count = argv[1:7]
        anyio.run(run_orchestrator, suffix, broker, database, plan_file, int(first), int(count))


if __name__ == "__main__":
    main(sys.argv[1:])
