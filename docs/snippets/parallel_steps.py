"""Parallel steps: book a venue, a caterer and a band at once, then sign the contract.

Run it with ``python parallel_steps.py``; it writes its saga log to ``events.db``.
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel

from pysaga import BusinessError, Orchestrator, Saga, SagaOutcome, StepContext


class Supplier:
    """One supplier's booking desk, idempotent by key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.available = True
        self.bookings: dict[str, str] = {}  # idempotency key -> booking reference

    async def book(self, key: str) -> str:
        await note_start()
        if not self.available:
            raise BusinessError(f"the {self.name} is not available that day")
        return self.bookings.setdefault(key, f"{self.name}-{len(self.bookings) + 1}")

    async def cancel(self, key: str) -> None:
        self.bookings.pop(key, None)


venue, caterer, band = Supplier("venue"), Supplier("caterer"), Supplier("band")
in_flight = 0
most_in_flight = 0  # how many suppliers were being asked at the same moment, at most


async def note_start() -> None:
    global in_flight, most_in_flight
    in_flight += 1
    most_in_flight = max(most_in_flight, in_flight)
    await anyio.sleep(0.01)  # the call takes a moment
    in_flight -= 1


# --8<-- [start:group]
class Event(BaseModel):
    event_id: str
    venue: str | None = None  # each parallel step sets its own field
    catering: str | None = None
    music: str | None = None
    signed: bool = False


plan_event = Saga("plan-event", Event, version=1)

with plan_event.parallel("book-suppliers"):

    @plan_event.step
    async def book_venue(event: Event, ctx: StepContext) -> Event:
        return event.model_copy(update={"venue": await venue.book(ctx.idempotency_key)})

    @book_venue.compensate
    async def cancel_venue(event: Event, ctx: StepContext) -> None:
        await venue.cancel(ctx.idempotency_key)

    @plan_event.step
    async def book_catering(event: Event, ctx: StepContext) -> Event:
        return event.model_copy(update={"catering": await caterer.book(ctx.idempotency_key)})

    @book_catering.compensate
    async def cancel_catering(event: Event, ctx: StepContext) -> None:
        await caterer.cancel(ctx.idempotency_key)

    @plan_event.step
    async def book_band(event: Event, ctx: StepContext) -> Event:
        return event.model_copy(update={"music": await band.book(ctx.idempotency_key)})

    @book_band.compensate
    async def cancel_band(event: Event, ctx: StepContext) -> None:
        await band.cancel(ctx.idempotency_key)


@plan_event.step(pivot=True)
async def sign_contract(event: Event) -> Event:
    return event.model_copy(update={"signed": True})
    # --8<-- [end:group]


# --8<-- [start:main]
async def main(log: str = "sqlite:///events.db") -> list[SagaOutcome[Event]]:
    """Plan two events: one where every supplier says yes, one where the band says no."""
    async with Orchestrator(sagas=[plan_event], log=log) as orch:
        party = await orch.run(plan_event, Event(event_id="party"))
        print(f"party: {party.status}, asked {most_in_flight} suppliers at once")
        print(f"  {party.data.venue} | {party.data.catering} | {party.data.music}")

        band.available = False
        gala = await orch.run(plan_event, Event(event_id="gala"))
        print(f"gala: {gala.status} ({gala.failure})")
        record = await orch.get(gala.saga_id)
        for step, state in record.steps.items():
            print(f"  {step}: {state.status}")
    return [party, gala]


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:main]
