"""Inspecting sagas: counts, stuck sagas and one saga's timeline, read from the saga log.

``main()`` runs a few trips of the first tutorial's saga into a SQLite log, then opens the
same file with an ``Inspector``, as a separate admin script would.
"""

from __future__ import annotations

from decimal import Decimal

import anyio
from first_saga import Trip, book_trip

from pysaga import Inspector, Orchestrator, SagaStatus


async def report(log: str) -> None:
    # --8<-- [start:inspect]
    async with Inspector(log) as inspector:
        counts = await inspector.counts()
        print({status.value: n for status, n in counts.items() if n})

        for record in await inspector.stuck(no_progress_for=300):
            print("stuck:", record.saga_id, record.status, record.owner)

        for record in await inspector.list(status=SagaStatus.COMPENSATED, limit=10):
            timeline = await inspector.timeline(record.saga_id)  # .duration: seconds in all
            print(f"{record.name}, {len(timeline.events)} events:")
            for event in timeline.events:
                step = f" {event.step} #{event.attempt}" if event.step else ""
                failure = f" ({event.failure})" if event.failure else ""
                print(f"  {event.kind}{step}{failure}")
    # --8<-- [end:inspect]


async def main(log: str = "sqlite:///trips.db") -> None:
    async with Orchestrator(sagas=[book_trip], log=log) as orch:
        lisbon = Trip(traveller="Ada", destination="Lisbon", nights=3, price=Decimal(640))
        tokyo = Trip(traveller="Ada", destination="Tokyo", nights=9, price=Decimal(3100))
        await orch.run(book_trip, lisbon)
        await orch.run(book_trip, tokyo)
    await report(log)


if __name__ == "__main__":
    anyio.run(main)
