"""Retries, timeouts and deadlines: shipping a parcel.

Run it with ``python retries.py``; it writes its saga log to ``shipping.db``.
"""

from __future__ import annotations

from collections import Counter

import anyio
from pydantic import BaseModel

from pysaga import EntryKind, Orchestrator, Retry, Saga, SagaOutcome, StepContext


class Parcel(BaseModel):
    parcel_id: str
    courier: str | None = None
    label: str | None = None


class CourierAPI:
    """A courier's booking API that drops the first few calls."""

    def __init__(self) -> None:
        self.unreachable_for = 0  # how many calls fail before it answers again
        self.calls = 0
        self.bookings: dict[str, str] = {}

    async def book(self, key: str) -> str:
        self.calls += 1
        if self.unreachable_for > 0:
            self.unreachable_for -= 1
            raise ConnectionError("courier API unreachable")
        return self.bookings.setdefault(key, f"courier-{len(self.bookings) + 1}")

    async def release(self, key: str) -> None:
        self.bookings.pop(key, None)


class LabelPrinter:
    """A label printer that sometimes hangs."""

    def __init__(self) -> None:
        self.stuck = False
        self.printed: set[str] = set()

    async def print_label(self, key: str) -> str:
        if self.stuck:
            await anyio.sleep_forever()
        self.printed.add(key)
        return f"label-{key}"

    async def void(self, key: str) -> None:
        self.printed.discard(key)


courier = CourierAPI()
printer = LabelPrinter()
warehouse_delay = 0.0  # seconds the warehouse takes to pick a parcel

# --8<-- [start:policies]
ship = Saga("ship-parcel", Parcel, version=1)


@ship.step(retry=Retry(attempts=5, backoff=0.01, retry_on=(ConnectionError,)), timeout=2.0)
async def book_courier(parcel: Parcel, ctx: StepContext) -> Parcel:
    booking = await courier.book(ctx.idempotency_key)
    return parcel.model_copy(update={"courier": booking})


@book_courier.compensate(retry=Retry(attempts=None, backoff=0.01, max_backoff=1.0))
async def release_courier(parcel: Parcel, ctx: StepContext) -> None:
    await courier.release(ctx.idempotency_key)


@ship.step(retry=Retry(attempts=2, backoff=0.01), timeout=0.05)
async def print_label(parcel: Parcel, ctx: StepContext) -> Parcel:
    label = await printer.print_label(ctx.idempotency_key)
    return parcel.model_copy(update={"label": label})


@print_label.compensate
async def void_label(parcel: Parcel, ctx: StepContext) -> None:
    await printer.void(ctx.idempotency_key)


@ship.step(pivot=True)
async def hand_over(parcel: Parcel) -> None:
    """The parcel leaves the building: from here on, the saga only goes forward."""
    # --8<-- [end:policies]


# --8<-- [start:deadline]
express = Saga("express-parcel", Parcel, version=1, deadline=0.5)  # 0.5 s to reach the pivot


@express.step
async def pick_from_shelf(parcel: Parcel) -> None:
    await anyio.sleep(warehouse_delay)


@pick_from_shelf.compensate
async def put_back_on_shelf(parcel: Parcel) -> None:
    pass


@express.step(pivot=True)
async def dispatch(parcel: Parcel) -> None:
    pass
    # --8<-- [end:deadline]


# --8<-- [start:main]
async def main(log: str = "sqlite:///shipping.db") -> dict[str, SagaOutcome[Parcel]]:
    """Ship three parcels, each meeting a different kind of trouble."""
    global warehouse_delay
    async with Orchestrator(sagas=[ship, express], log=log) as orch:
        courier.unreachable_for = 2  # two dropped calls, then the courier answers
        flaky = await orch.run(ship, Parcel(parcel_id="p-1"))

        printer.stuck = True  # every attempt to print times out
        stuck = await orch.run(ship, Parcel(parcel_id="p-2"))
        printer.stuck = False

        warehouse_delay = 60.0  # far longer than the express deadline
        late = await orch.run(express, Parcel(parcel_id="p-3"))
        warehouse_delay = 0.0

        outcomes = {"flaky courier": flaky, "stuck printer": stuck, "slow warehouse": late}
        for what, outcome in outcomes.items():
            print(f"{what}: {outcome.status} {outcome.failure or ''}".rstrip())
            record = await orch.get(outcome.saga_id)
            history = await orch.history(outcome.saga_id)
            tries = Counter(e.step for e in history if e.kind is EntryKind.STEP_STARTED)
            for step, state in record.steps.items():
                print(f"  {step}: {state.status} after {tries[step]} attempt(s)")
    return outcomes


if __name__ == "__main__":
    anyio.run(main)
    # --8<-- [end:main]
