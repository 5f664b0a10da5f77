"""An orchestrator process for the timer tests: starts one ``parcel`` saga whose ``ship`` step
never returns here, prints the saga id, and drives it until the test kills or freezes it.

Usage: ``python -m tests.faults.timer_worker <log url> <ship timeout in seconds>``.
"""

from __future__ import annotations

import logging
import sys

import anyio
from pydantic import BaseModel

from pysaga import Orchestrator, Retry, Saga

LEASE = 1.0


class Parcel(BaseModel):
    parcel_id: str = "p-1"
    labelled: bool = False
    shipped: bool = False


def parcel_saga(*, ship_timeout: float, hang: bool) -> Saga[Parcel]:
    """label -> ship; ``ship`` hangs (in the worker) or returns at once (in the test)."""
    saga = Saga("parcel", Parcel)

    @saga.step()
    async def label(parcel: Parcel) -> Parcel:
        return parcel.model_copy(update={"labelled": True})

    @label.compensate
    async def unlabel(parcel: Parcel) -> None:
        return None

    @saga.step(timeout=ship_timeout, retry=Retry(attempts=1))
    async def ship(parcel: Parcel) -> Parcel:
        if hang:
            await anyio.sleep_forever()
        return parcel.model_copy(update={"shipped": True})

    return saga


async def main(log_url: str, ship_timeout: float) -> None:
    saga = parcel_saga(ship_timeout=ship_timeout, hang=True)
    async with Orchestrator(sagas=[saga], log=log_url, lease=LEASE, owner="worker") as orch:
        saga_id = await orch.start(saga, Parcel())
        print(saga_id, flush=True)
        await orch.wait(saga_id)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    anyio.run(main, sys.argv[1], float(sys.argv[2]))
