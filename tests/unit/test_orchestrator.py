"""The orchestrator drives every status transition, on every saga log that needs no server."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel, ValidationError

from pysaga import (
    BusinessError,
    EntryKind,
    LogEntry,
    Orchestrator,
    Retry,
    Saga,
    SagaNotFoundError,
    SagaNotRegisteredError,
    SagaRecord,
    SagaStatus,
    StepContext,
    StepError,
    StepStatus,
)
from pysaga.models import OBSERVER_PREFIX
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio

FAST = Retry(attempts=3, backoff=0, jitter=0)


class Trip(BaseModel):
    trip_id: str = "t-1"
    nights: int = 1
    flight: str | None = None
    hotel: str | None = None
    paid: bool = False


class Ledger:
    """Effects by idempotency key: +1 for a step, -1 for its compensation."""

    def __init__(self) -> None:
        self.effects: Counter[str] = Counter()
        self.calls: list[str] = []

    def apply(self, key: str) -> None:
        self.calls.append(f"do {key}")
        self.effects[key] = 1

    def undo(self, key: str) -> None:
        self.calls.append(f"undo {key}")
        self.effects[key] = 0


def trip_saga(ledger: Ledger, **behaviour: Any) -> Saga[Trip]:
    """flight -> hotel -> pay (pivot) -> confirm; behaviour injects failures."""
    saga: Saga[Trip] = Saga("book-trip", Trip, deadline=behaviour.get("deadline"))
    fail_hotel = behaviour.get("fail_hotel", 0)
    undo_fails = behaviour.get("undo_fails", 0)
    confirm_fails = behaviour.get("confirm_fails", 0)
    counters: Counter[str] = Counter()

    @saga.step(retry=FAST)
    async def flight(trip: Trip, ctx: StepContext) -> Trip:
        ledger.apply(ctx.idempotency_key)
        return trip.model_copy(update={"flight": "F-1"})

    @flight.compensate(retry=Retry(attempts=3, backoff=0, jitter=0))
    async def cancel_flight(trip: Trip, ctx: StepContext) -> None:
        counters["undo"] += 1
        if counters["undo"] <= undo_fails:
            raise ConnectionError("airline unreachable")
        ledger.undo(ctx.idempotency_key)

    @saga.step(retry=FAST, timeout=behaviour.get("hotel_timeout"))
    async def hotel(trip: Trip, ctx: StepContext) -> Trip:
        counters["hotel"] += 1
        if behaviour.get("hotel_sleeps"):
            await anyio.sleep(behaviour["hotel_sleeps"])
        if trip.nights > 10:
            raise BusinessError("no room for that long", details={"nights": trip.nights})
        if counters["hotel"] <= fail_hotel:
            raise ConnectionError("hotel API down")
        ledger.apply(ctx.idempotency_key)
        return trip.model_copy(update={"hotel": "H-1"})

    @hotel.compensate
    async def cancel_hotel(trip: Trip, ctx: StepContext) -> None:
        ledger.undo(ctx.idempotency_key)

    @saga.step(pivot=True)
    async def pay(trip: Trip, ctx: StepContext) -> Trip:
        ledger.apply(ctx.idempotency_key)
        return trip.model_copy(update={"paid": True})

    @saga.step(retry=Retry(attempts=behaviour.get("confirm_attempts"), backoff=0, jitter=0))
    async def confirm(trip: Trip, ctx: StepContext) -> None:
        counters["confirm"] += 1
        if counters["confirm"] <= confirm_fails:
            raise ConnectionError("mail server down")
        ledger.apply(ctx.idempotency_key)

    return saga


async def kinds(orch: Orchestrator, saga_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind.value, e.step) for e in await orch.history(saga_id)]


class TestForward:
    async def test_completes(self, log_factory: LogFactory) -> None:
        """All steps succeed: COMPLETED, data threaded through, intent before outcome."""
        ledger = Ledger()
        saga = trip_saga(ledger)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPLETED
            assert outcome.ok
            assert outcome.data == Trip(flight="F-1", hotel="H-1", paid=True)
            assert outcome.failure is None
            assert await kinds(orch, outcome.saga_id) == [
                ("saga_started", None),
                ("step_started", "flight"),
                ("step_succeeded", "flight"),
                ("step_started", "hotel"),
                ("step_succeeded", "hotel"),
                ("step_started", "pay"),
                ("step_succeeded", "pay"),
                ("step_started", "confirm"),
                ("step_succeeded", "confirm"),
                ("saga_completed", None),
            ]
            record = await orch.get(outcome.saga_id)
            assert record.status is SagaStatus.COMPLETED
            assert Trip.model_validate_json(record.data) == outcome.data
            assert {s.status for s in record.steps.values()} == {StepStatus.SUCCEEDED}
        sid = outcome.saga_id
        assert ledger.effects == {f"{sid}/{s}": 1 for s in ("flight", "hotel", "pay", "confirm")}

    async def test_technical_failure_is_retried(self, log_factory: LogFactory) -> None:
        """A failing step is retried with the same idempotency key and a new attempt number."""
        ledger = Ledger()
        saga = trip_saga(ledger, fail_hotel=2)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPLETED
            history = await orch.history(outcome.saga_id)
            hotel = [(e.kind, e.attempt) for e in history if e.step == "hotel"]
            assert hotel == [
                (EntryKind.STEP_STARTED, 1),
                (EntryKind.STEP_FAILED, 1),
                (EntryKind.STEP_STARTED, 2),
                (EntryKind.STEP_FAILED, 2),
                (EntryKind.STEP_STARTED, 3),
                (EntryKind.STEP_SUCCEEDED, 3),
            ]
            failed = [e for e in history if e.kind is EntryKind.STEP_FAILED]
            assert failed[0].failure is not None
            assert failed[0].failure.type == "ConnectionError"
            record = await orch.get(outcome.saga_id)
            assert record.steps["hotel"].attempts == 3
            assert record.steps["hotel"].failures == 2

    async def test_start_returns_at_once_and_wait(self, log_factory: LogFactory) -> None:
        """start() persists and returns the id; wait() gives the outcome later."""
        ledger = Ledger()
        saga = trip_saga(ledger)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            saga_id = await orch.start(saga, {"trip_id": "t-9"}, saga_id="my-id")
            assert saga_id == "my-id"
            assert (await orch.get("my-id")).name == "book-trip"
            outcome = await orch.wait("my-id")
            assert outcome.status is SagaStatus.COMPLETED
            assert outcome.data.trip_id == "t-9"
            # a finished saga can be waited for again: read from the log
            again = await orch.wait("my-id")
            assert again.status is SagaStatus.COMPLETED
            assert again.data == outcome.data

    async def test_duplicate_saga_id_refused(self, log_factory: LogFactory) -> None:
        """Starting the same id twice fails: a retried request is safe."""
        from pysaga import ConcurrencyError

        saga = trip_saga(Ledger())
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            await orch.run(saga, Trip(), saga_id="same")
            with pytest.raises(ConcurrencyError, match="exists"):
                await orch.start(saga, Trip(), saga_id="same")


class TestCompensation:
    async def test_business_refusal_compensates(self, log_factory: LogFactory) -> None:
        """A BusinessError is not retried; finished steps are undone in reverse."""
        ledger = Ledger()
        saga = trip_saga(ledger)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip(nights=14))
            assert outcome.status is SagaStatus.COMPENSATED
            assert outcome.failure is not None
            assert outcome.failure.step == "hotel"
            assert outcome.failure.business is True
            assert outcome.failure.details == {"nights": 14}
            assert await kinds(orch, outcome.saga_id) == [
                ("saga_started", None),
                ("step_started", "flight"),
                ("step_succeeded", "flight"),
                ("step_started", "hotel"),
                ("step_failed", "hotel"),
                ("saga_compensating", None),
                ("compensation_started", "flight"),
                ("compensation_succeeded", "flight"),
                ("saga_compensated", None),
            ]
        # the hotel raised, so it is not compensated; the flight is
        assert ledger.calls == [f"do {outcome.saga_id}/flight", f"undo {outcome.saga_id}/flight"]
        assert sum(ledger.effects.values()) == 0

    async def test_retries_exhausted_compensates(self, log_factory: LogFactory) -> None:
        """A technical failure that outlasts the retry budget turns the saga back."""
        ledger = Ledger()
        saga = trip_saga(ledger, fail_hotel=99)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPENSATED
            assert outcome.failure is not None
            assert outcome.failure.type == "ConnectionError"
            assert outcome.failure.business is False
            record = await orch.get(outcome.saga_id)
            assert record.steps["hotel"].status is StepStatus.FAILED
            assert record.steps["hotel"].attempts == 3
            assert record.steps["flight"].status is StepStatus.COMPENSATED
        assert sum(ledger.effects.values()) == 0

    async def test_compensation_retried_then_succeeds(self, log_factory: LogFactory) -> None:
        """A failing compensation is retried within its budget."""
        ledger = Ledger()
        saga = trip_saga(ledger, undo_fails=2)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip(nights=11))
            assert outcome.status is SagaStatus.COMPENSATED
            record = await orch.get(outcome.saga_id)
            assert record.steps["flight"].attempts == 3
            assert record.steps["flight"].failures == 2
        assert sum(ledger.effects.values()) == 0

    async def test_compensation_budget_exhausted_fails(
        self, log_factory: LogFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When a compensation cannot succeed, the saga is FAILED, names the step, and says
        so loudly in the log."""
        ledger = Ledger()
        saga = trip_saga(ledger, undo_fails=99)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip(nights=11))
            assert outcome.status is SagaStatus.FAILED
            assert outcome.failure is not None  # why it turned back, kept
            assert (outcome.failure.step, outcome.failure.business) == ("hotel", True)
            assert outcome.compensation_failure is not None  # what it is stuck on, beside it
            assert outcome.compensation_failure.step == "flight"
            assert outcome.compensation_failure.type == "ConnectionError"
            record = await orch.get(outcome.saga_id)
            assert record.status is SagaStatus.FAILED
            assert record.steps["flight"].status is StepStatus.COMPENSATION_FAILED
            history = await kinds(orch, outcome.saga_id)
            assert history[-2:] == [
                ("compensation_failed", "flight"),
                ("saga_failed", "flight"),
            ]
            assert history.count(("compensation_started", "flight")) == 3
        (loud,) = [r for r in caplog.records if "needs an operator" in r.getMessage()]
        assert loud.levelname == "ERROR"
        assert outcome.saga_id in loud.getMessage()
        assert "airline unreachable" in loud.getMessage()

    async def test_retriable_step_after_pivot_retries_until_it_succeeds(
        self, log_factory: LogFactory
    ) -> None:
        """After the pivot, a step is retried (default: no limit) and never compensated."""
        ledger = Ledger()
        saga = trip_saga(ledger, confirm_fails=7)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPLETED
            record = await orch.get(outcome.saga_id)
            assert record.steps["confirm"].attempts == 8

    async def test_retriable_step_with_budget_fails_the_saga(self, log_factory: LogFactory) -> None:
        """A retriable step that runs out of a finite budget leaves the saga FAILED."""
        ledger = Ledger()
        saga = trip_saga(ledger, confirm_fails=99, confirm_attempts=2)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.FAILED
            assert outcome.failure is not None
            assert outcome.failure.step == "confirm"
        # nothing was compensated: the pivot had passed
        assert not any(c.startswith("undo") for c in ledger.calls)

    async def test_step_error_not_retryable(self, log_factory: LogFactory) -> None:
        """StepError(retryable=False) ends the step at once."""
        saga: Saga[Trip] = Saga("one", Trip)
        calls = 0

        @saga.step
        async def only(trip: Trip) -> None:
            nonlocal calls
            calls += 1
            raise StepError("corrupt input", retryable=False)

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.status is SagaStatus.COMPENSATED
        assert calls == 1

    async def test_abort_on_marks_business_errors(self, log_factory: LogFactory) -> None:
        """Exceptions listed in Retry(abort_on=...) are business refusals."""

        class OutOfStock(Exception):
            pass

        saga: Saga[Trip] = Saga("one", Trip)
        calls = 0

        @saga.step(retry=Retry(attempts=5, backoff=0, abort_on=(OutOfStock,)))
        async def only(trip: Trip) -> None:
            nonlocal calls
            calls += 1
            raise OutOfStock("none left")

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.failure is not None
        assert outcome.failure.business is True
        assert calls == 1

    async def test_bad_return_value(self, log_factory: LogFactory) -> None:
        """A step returning the wrong type is a failure in doubt: it is compensated."""
        saga: Saga[Trip] = Saga("one", Trip)
        undone: list[str] = []

        @saga.step
        async def only(trip: Trip) -> Any:
            return {"not": "a trip"}

        @only.compensate
        async def undo(trip: Trip) -> None:
            undone.append("only")

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.status is SagaStatus.COMPENSATED
        assert outcome.failure is not None
        assert "returned dict" in outcome.failure.message
        assert undone == ["only"]


class TestTimeouts:
    async def test_step_timeout_then_compensate_in_doubt(self, log_factory: LogFactory) -> None:
        """A timed-out step is in doubt: retried, and compensated when the saga turns back."""
        ledger = Ledger()
        saga = trip_saga(ledger, hotel_timeout=0.01, hotel_sleeps=1)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPENSATED
            assert outcome.failure is not None
            assert outcome.failure.type == "TimeoutError"
            record = await orch.get(outcome.saga_id)
            assert record.steps["hotel"].status is StepStatus.COMPENSATED
            history = await kinds(orch, outcome.saga_id)
            assert history.count(("step_failed", "hotel")) == 3
        assert ledger.calls[-2:] == [
            f"undo {outcome.saga_id}/hotel",
            f"undo {outcome.saga_id}/flight",
        ]

    async def test_deadline_compensates(self, log_factory: LogFactory) -> None:
        """A saga that is still before its pivot at the deadline compensates."""
        ledger = Ledger()
        saga = trip_saga(ledger, deadline=0.05, hotel_sleeps=5)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPENSATED
            assert outcome.failure is not None
            assert outcome.failure.type == "DeadlineExceeded"
            record = await orch.get(outcome.saga_id)
            assert record.deadline_at is not None
            assert math.isclose(record.deadline_at - record.created_at, 0.05, abs_tol=1e-6)
        assert sum(ledger.effects.values()) == 0


class TestParallel:
    async def test_parallel_group_merges_disjoint_fields(self, log_factory: LogFactory) -> None:
        """Branches run together; their changes are merged."""
        saga: Saga[Trip] = Saga("parallel", Trip)
        running = 0
        peak = 0

        async def track() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.01)
            running -= 1

        with saga.parallel("book"):

            @saga.step
            async def flight(trip: Trip) -> Trip:
                await track()
                return trip.model_copy(update={"flight": "F"})

            @saga.step
            async def hotel(trip: Trip) -> Trip:
                await track()
                return trip.model_copy(update={"hotel": "H"})

        @saga.step
        async def pay(trip: Trip) -> Trip:
            assert trip.flight == "F"
            assert trip.hotel == "H"
            return trip.model_copy(update={"paid": True})

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.status is SagaStatus.COMPLETED
        assert outcome.data == Trip(flight="F", hotel="H", paid=True)
        assert peak == 2

    async def test_failed_branch_compensates_finished_branches(
        self, log_factory: LogFactory
    ) -> None:
        """When one branch fails, the finished ones (and earlier steps) are compensated."""
        saga: Saga[Trip] = Saga("parallel", Trip)
        undone: list[str] = []

        @saga.step
        async def first(trip: Trip) -> None: ...

        @first.compensate
        async def undo_first(trip: Trip) -> None:
            undone.append("first")

        with saga.parallel("book"):

            @saga.step
            async def good(trip: Trip) -> None: ...

            @good.compensate
            async def undo_good(trip: Trip) -> None:
                undone.append("good")

            @saga.step
            async def bad(trip: Trip) -> None:
                raise BusinessError("sold out")

            @bad.compensate
            async def undo_bad(trip: Trip) -> None:
                undone.append("bad")

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.status is SagaStatus.COMPENSATED
        assert outcome.failure is not None
        assert outcome.failure.step == "bad"
        assert undone == ["good", "first"]

    async def test_conflicting_branches(self, log_factory: LogFactory) -> None:
        """Two branches writing one field differently turn the saga back."""
        saga: Saga[Trip] = Saga("parallel", Trip)
        with saga.parallel("book"):

            @saga.step
            async def a(trip: Trip) -> Trip:
                return trip.model_copy(update={"hotel": "A"})

            @saga.step
            async def b(trip: Trip) -> Trip:
                return trip.model_copy(update={"hotel": "B"})

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.status is SagaStatus.COMPENSATED
        assert outcome.failure is not None
        assert outcome.failure.type == "ParallelConflict"
        assert "'hotel'" in outcome.failure.message


class TestBadInput:
    async def test_invalid_data_rejected_and_nothing_written(self, log_factory: LogFactory) -> None:
        """start() raises pydantic's error and writes nothing."""
        saga = trip_saga(Ledger())
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            with pytest.raises(ValidationError, match="nights"):
                await orch.start(saga, {"trip_id": "t", "nights": "many"})
            assert await orch.log.list() == []

    async def test_unregistered_saga_refused(self, log_factory: LogFactory) -> None:
        """Running a saga the orchestrator was not given says how to fix it."""
        saga = trip_saga(Ledger())
        other: Saga[Trip] = Saga("other", Trip)
        other.step(name="x")(_noop)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            with pytest.raises(SagaNotRegisteredError, match="sagas=\\[...\\]"):
                await orch.start(other, Trip())

    async def test_unknown_saga_id(self, log_factory: LogFactory) -> None:
        """Waiting for an unknown id fails clearly."""
        saga = trip_saga(Ledger())
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            with pytest.raises(SagaNotFoundError, match="nope"):
                await orch.wait("nope")
            with pytest.raises(SagaNotFoundError):
                await orch.get("nope")

    async def test_unknown_saga_in_log_left_untouched(
        self, log_factory: LogFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A log row for a saga this orchestrator does not run is reported and not touched."""
        saga = trip_saga(Ledger())
        stranger: Saga[Trip] = Saga("stranger", Trip)
        gate = anyio.Event()

        @stranger.step
        async def blocked(trip: Trip) -> None:
            await gate.wait()

        async with Orchestrator(
            sagas=[stranger], log=log_factory(), lease=0.05, drain_timeout=0
        ) as first:
            stranger_id = await first.start(stranger, Trip())
            await anyio.lowlevel.checkpoint()
        # ``first`` stopped with the saga unfinished and released its lease.
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=0.05) as second:
            assert second.unknown_sagas == {("stranger", 1)}
            before = await second.log.get(stranger_id)
            await anyio.sleep(0.1)  # several claim rounds
            record = await second.log.get(stranger_id)
            assert before is not None
            assert record is not None
            assert record.status is SagaStatus.RUNNING
            assert record.owner == first.owner
            assert record.revision == before.revision
        assert "stranger" in caplog.text
        assert "left untouched" in caplog.text

    async def test_choreographed_sagas_in_the_log_are_not_reported(
        self, log_factory: LogFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unfinished saga a choreography's observer records is nobody's to run: sharing
        the log with it is not worth a warning."""
        now = time.time()
        async with log_factory() as log:
            await log.create(
                SagaRecord(
                    saga_id="c-1",
                    name="purchase",
                    version=1,
                    status=SagaStatus.RUNNING,
                    data="{}",
                    owner=OBSERVER_PREFIX + "purchase",
                    lease_expires_at=math.inf,
                    created_at=now,
                    updated_at=now,
                ),
                [LogEntry(EntryKind.SAGA_STARTED, at=now, owner=OBSERVER_PREFIX + "purchase")],
            )
        async with Orchestrator(sagas=[trip_saga(Ledger())], log=log_factory()) as orch:
            assert orch.unknown_sagas == {("purchase", 1)}
        assert "holds unfinished sagas" not in caplog.text


async def _noop(trip: Trip) -> None:
    return None


class TestRecovery:
    async def test_in_doubt_step_reruns_on_restart(self, log_factory: LogFactory) -> None:
        """A saga interrupted mid-step is resumed by the next orchestrator; the step re-runs
        with the same idempotency key and the next attempt number."""
        saga: Saga[Trip] = Saga("resume", Trip)
        seen: list[tuple[str, int]] = []
        block = True

        @saga.step
        async def slow(trip: Trip, ctx: StepContext) -> Trip:
            seen.append((ctx.idempotency_key, ctx.attempt))
            if block:
                await anyio.sleep_forever()
            return trip.model_copy(update={"hotel": "H"})

        async with Orchestrator(sagas=[saga], log=log_factory(), drain_timeout=0) as first:
            saga_id = await first.start(saga, Trip())
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
        block = False
        async with Orchestrator(sagas=[saga], log=log_factory()) as second:
            outcome = await second.wait(saga_id)
            assert outcome.status is SagaStatus.COMPLETED
            assert outcome.data.hotel == "H"
            history = await kinds(second, saga_id)
            assert ("saga_claimed", None) in history
        assert seen == [(f"{saga_id}/slow", 1), (f"{saga_id}/slow", 2)]

    async def test_lease_lost_stops_the_old_holder(self, log_factory: LogFactory) -> None:
        """Once another orchestrator claimed a saga, the old holder's writes are refused."""
        from pysaga import LeaseLost, SagaUpdate

        saga: Saga[Trip] = Saga("lease", Trip)
        saga.step(name="x")(_noop)
        log = log_factory()
        async with log:
            from pysaga import LogEntry, SagaRecord

            record = SagaRecord(
                "s-1",
                "lease",
                1,
                SagaStatus.RUNNING,
                Trip().model_dump_json(),
                owner="old",
                lease_expires_at=0.0,
            )
            await log.create(record, [LogEntry(EntryKind.SAGA_STARTED, at=0.0)])
            claimed = await log.claim("new", kinds={("lease", 1)}, lease=10, now=1.0)
            assert [r.saga_id for r in claimed] == ["s-1"]
            with pytest.raises(LeaseLost, match="'old' lost the lease"):
                await log.update(
                    "s-1",
                    SagaUpdate(entries=[], status=SagaStatus.COMPLETED),
                    revision=0,
                    owner="old",
                )
            current = await log.get("s-1")
            assert current is not None
            assert current.status is SagaStatus.RUNNING
            assert current.owner == "new"

    async def test_serve_reports_readiness(self, log_factory: LogFactory) -> None:
        """serve() signals readiness through task_status and runs until cancelled."""
        saga = trip_saga(Ledger())
        orch = Orchestrator(sagas=[saga], log=log_factory())
        async with anyio.create_task_group() as tg:
            await tg.start(orch.serve)
            outcome = await orch.run(saga, Trip())
            assert outcome.status is SagaStatus.COMPLETED
            tg.cancel_scope.cancel()

    async def test_many_concurrent_sagas(self, log_factory: LogFactory) -> None:
        """Hundreds of sagas in flight at once all end correctly (group commit on SQLite)."""
        ledger = Ledger()
        saga = trip_saga(ledger)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            ids = [await orch.start(saga, Trip(nights=1 + i % 12)) for i in range(200)]
            outcomes = [await orch.wait(i) for i in ids]
        statuses = Counter(o.status for o in outcomes)
        refused = sum(1 for i in range(200) if 1 + i % 12 > 10)
        assert statuses == {SagaStatus.COMPLETED: 200 - refused, SagaStatus.COMPENSATED: refused}
        commits = getattr(orch.log, "commits", None)
        if commits is not None:
            assert commits.writes > commits.batches  # writes were batched


class TestPivotInDoubt:
    async def test_pivot_timing_out_fails_the_saga(self, log_factory: LogFactory) -> None:
        """A pivot whose last attempt timed out may have happened and cannot be undone: the
        saga is FAILED for an operator, and the steps before it are not compensated."""
        saga: Saga[Trip] = Saga("pivot-doubt", Trip, deadline=60)
        undone: list[str] = []

        @saga.step
        async def hold(trip: Trip) -> None: ...

        @hold.compensate
        async def release(trip: Trip) -> None:
            undone.append("hold")

        @saga.step(pivot=True, timeout=0.01, retry=Retry(attempts=2, backoff=0))
        async def charge(trip: Trip) -> None:
            await anyio.sleep(1)

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
            record = await orch.get(outcome.saga_id)
        assert outcome.status is SagaStatus.FAILED
        assert outcome.failure is not None
        assert outcome.failure.step == "charge"
        assert outcome.failure.type == "TimeoutError"
        assert "did not finish within 0.01 s (attempt 2)" in outcome.failure.message
        assert record.steps["charge"].status is StepStatus.STARTED
        assert undone == []

    async def test_deadline_does_not_interrupt_a_running_pivot(
        self, log_factory: LogFactory
    ) -> None:
        """A deadline stops the pivot from starting but never cuts a started pivot short."""
        saga: Saga[Trip] = Saga("pivot-deadline", Trip, deadline=0.02)

        @saga.step(pivot=True)
        async def charge(trip: Trip) -> Trip:
            await anyio.sleep(0.05)
            return trip.model_copy(update={"paid": True})

        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Trip())
        assert outcome.status is SagaStatus.COMPLETED
        assert outcome.data.paid is True


def test_new_saga_ids_are_uuid7_and_time_ordered() -> None:
    """Default ids are UUIDs in the version 7 layout, ordered by creation time (ms)."""
    import time
    import uuid

    from pysaga import new_saga_id

    first = new_saga_id()
    time.sleep(0.002)
    second = new_saga_id()
    for value in (first, second):
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    assert first < second
    assert len({new_saga_id() for _ in range(1000)}) == 1000


async def test_started_sagas_leave_nothing_behind(log_factory: LogFactory) -> None:
    """Sagas started and never waited for keep no per-saga state in the orchestrator."""
    saga = trip_saga(Ledger())
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        for _ in range(50):
            await orch.start(saga, Trip())
        with anyio.fail_after(10):
            await orch._idle.wait()
        assert orch._done == {}
        assert orch._running == {}


async def test_a_stopped_orchestrator_says_so(log_factory: LogFactory) -> None:
    """Starting a saga on an orchestrator that is not running explains how to run it."""
    saga = trip_saga(Ledger())
    orch = Orchestrator(sagas=[saga], log=log_factory())
    with pytest.raises(RuntimeError, match="async with Orchestrator"):
        await orch.start(saga, Trip())
    async with orch:
        assert (await orch.run(saga, Trip())).ok
    with pytest.raises(RuntimeError, match="not running"):
        await orch.run(saga, Trip())


async def test_log_given_as_a_path_or_rejected(tmp_path: Path) -> None:
    """A path is a SQLite log in that file; anything else that is not a log is refused."""
    from pysaga.stores.sqlite import SQLiteSagaLog

    saga = trip_saga(Ledger())
    path = tmp_path / "odd dir?" / "sagas.db"
    async with Orchestrator(sagas=[saga], log=path) as orch:
        assert isinstance(orch.log, SQLiteSagaLog)
        assert Path(orch.log.path) == path
        assert (await orch.run(saga, Trip())).ok
    assert path.exists()
    with pytest.raises(TypeError, match="pysaga.SagaLog"):
        Orchestrator(sagas=[saga], log=42)  # type: ignore[arg-type]


async def test_data_that_no_longer_fits_is_left_for_an_operator(
    log_factory: LogFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A saga whose stored data fails the current model is reported and not driven."""
    from pysaga import LogEntry, SagaRecord

    saga = trip_saga(Ledger())
    log = log_factory()
    async with log:
        await log.create(
            SagaRecord(
                "odd",
                "book-trip",
                1,
                SagaStatus.RUNNING,
                '{"nights": "many"}',
                owner="gone",
                lease_expires_at=0.0,
            ),
            [LogEntry(EntryKind.SAGA_STARTED, at=0.0)],
        )
    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        record = await orch.get("odd")
        assert record.status is SagaStatus.RUNNING
        assert record.steps == {}
    assert "no longer fits Trip" in caplog.text
