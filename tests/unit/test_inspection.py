"""The inspector answers an operator's questions about a saga log, on every saga log that
needs no server: counts, listings, stuck sagas and one saga's timeline."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    BusinessError,
    EntryKind,
    Failure,
    LogEntry,
    Operator,
    Orchestrator,
    Retry,
    Saga,
    SagaLog,
    SagaNotFoundError,
    SagaRecord,
    SagaStatus,
    SagaUpdate,
    StepContext,
)
from pysaga.inspection import Inspector, Timeline
from pysaga.models import ACTIVE_STATUSES
from pysaga.stores.sqlite import SQLiteSagaLog
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio

NOW = 1_000_000.0
"""The inspector's clock in these tests: records are written with times relative to it."""

ONCE = Retry(attempts=1, backoff=0, jitter=0)


class Order(BaseModel):
    amount: int = 10
    fail_undo: bool = False
    reserved: bool = False


def order_saga() -> Saga[Order]:
    """reserve -> charge; charging over 100 is refused; the undo of reserve may fail."""
    saga: Saga[Order] = Saga("order", Order)

    @saga.step(retry=ONCE)
    async def reserve(order: Order, ctx: StepContext) -> Order:
        return order.model_copy(update={"reserved": True})

    @reserve.compensate(retry=ONCE)
    async def release(order: Order, ctx: StepContext) -> None:
        if order.fail_undo:
            raise ConnectionError("warehouse unreachable")

    @saga.step(retry=ONCE)
    async def charge(order: Order, ctx: StepContext) -> None:
        if order.amount > 100:
            raise BusinessError("over the limit")

    return saga


def record(
    saga_id: str,
    *,
    status: SagaStatus = SagaStatus.RUNNING,
    name: str = "order",
    created_at: float = NOW - 1000.0,
    updated_at: float | None = None,
    deadline_at: float | None = None,
) -> SagaRecord:
    return SagaRecord(
        saga_id=saga_id,
        name=name,
        version=1,
        status=status,
        data="{}",
        owner="gone",
        lease_expires_at=created_at + 15.0,
        deadline_at=deadline_at,
        created_at=created_at,
        updated_at=created_at if updated_at is None else updated_at,
    )


async def write(log: SagaLog, rec: SagaRecord) -> None:
    await log.create(rec, [LogEntry(EntryKind.SAGA_STARTED, at=rec.created_at, owner="gone")])


def ids(records: list[SagaRecord]) -> list[str]:
    return [r.saga_id for r in records]


class TestCountsAndList:
    async def test_every_status(self, log_factory: LogFactory) -> None:
        """Sagas in every status, three run by a real orchestrator, are counted and listed;
        every status has a count, zero where there is none."""
        saga = order_saga()
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            done = await orch.run(saga, Order())
            undone = await orch.run(saga, Order(amount=500))
            failed = await orch.run(saga, Order(amount=500, fail_undo=True))
            settled = await orch.run(saga, Order(amount=500, fail_undo=True))
        assert (done.status, undone.status, failed.status) == (
            SagaStatus.COMPLETED,
            SagaStatus.COMPENSATED,
            SagaStatus.FAILED,
        )
        async with log_factory() as log:
            await write(log, record("running"))
            await write(log, record("undoing", status=SagaStatus.COMPENSATING))
            await Operator(log).resolve(settled.saga_id, reason="refunded by hand", by="alice")
            inspector = Inspector(log)
            assert await inspector.counts() == {status: 1 for status in SagaStatus}
            assert list(await inspector.counts()) == list(SagaStatus)
            assert await inspector.counts(name="nobody") == {status: 0 for status in SagaStatus}
            assert ids(await inspector.list(status=SagaStatus.FAILED)) == [failed.saga_id]
            assert set(ids(await inspector.list(status=ACTIVE_STATUSES))) == {
                "running",
                "undoing",
            }
            assert len(await inspector.list()) == 6
            assert len(await inspector.list(limit=2)) == 2
            assert await inspector.list(name="nobody") == []

    async def test_older_than(self, saga_log: SagaLog) -> None:
        """older_than counts seconds back from the inspector's clock, by start time."""
        await write(saga_log, record("old", created_at=NOW - 3600.0))
        await write(saga_log, record("new", created_at=NOW - 10.0))
        inspector = Inspector(saga_log, clock=lambda: NOW)
        assert ids(await inspector.list(older_than=60.0)) == ["old"]
        assert ids(await inspector.list(older_than=5.0)) == ["new", "old"]
        assert await inspector.list(older_than=7200.0) == []


class TestStuck:
    async def test_silent_and_late_not_busy_or_finished(self, saga_log: SagaLog) -> None:
        """Unfinished sagas not written for too long, and those past their deadline, are
        stuck (longest silent first); a recently written one and finished ones are not."""
        await write(saga_log, record("silent", updated_at=NOW - 600.0))
        await write(
            saga_log, record("undoing", status=SagaStatus.COMPENSATING, updated_at=NOW - 900.0)
        )
        await write(saga_log, record("late", updated_at=NOW - 1.0, deadline_at=NOW - 10.0))
        await write(saga_log, record("done", status=SagaStatus.COMPLETED, updated_at=NOW - 900))
        await write(saga_log, record("failed", status=SagaStatus.FAILED, updated_at=NOW - 900))
        await write(saga_log, record("in-time", updated_at=NOW - 1.0, deadline_at=NOW + 60.0))
        # started long ago, but written a moment ago: making progress
        await write(saga_log, record("busy", created_at=NOW - 600.0))
        step = LogEntry(EntryKind.STEP_STARTED, at=NOW - 5.0, step="reserve", attempt=1)
        await saga_log.update("busy", SagaUpdate([step]), revision=0, owner="gone")
        await write(saga_log, record("other", name="other", updated_at=NOW - 600.0))

        inspector = Inspector(saga_log, clock=lambda: NOW)
        stuck = await inspector.stuck(no_progress_for=300.0, name="order")
        assert ids(stuck) == ["undoing", "silent", "late"]
        assert "other" in ids(await inspector.stuck(no_progress_for=300.0))
        (one,) = await inspector.stuck(no_progress_for=300.0, name="order", limit=1)
        assert one.saga_id in ids(stuck)
        # with a short enough threshold the busy saga counts as silent too
        assert "busy" in ids(await inspector.stuck(no_progress_for=2.0))

    async def test_an_overdue_step_timer_not_a_slow_healthy_step(
        self, log_factory: LogFactory
    ) -> None:
        """A remote step whose participant never replies, on a saga whose orchestrator is
        gone (no other runs its kind), keeps its timer in the log: once that timer is overdue
        by more than the grace the saga is stuck. A healthy slow step, still within its
        timeout on a live orchestrator, is not, though neither saga has been written for a
        while (which no_progress_for alone cannot tell apart)."""

        class Parcel(BaseModel):
            parcel_id: str = "p-1"

        class BookCourier(BaseModel):
            parcel_id: str

        dispatch: Saga[Parcel] = Saga("dispatch", Parcel)
        dispatch.remote(
            "book_courier", service="courier", command=BookCourier, timeout=0.5, retry=ONCE
        )
        slow: Saga[Parcel] = Saga("slow", Parcel)
        finish = anyio.Event()

        @slow.step(timeout=30.0, retry=ONCE)
        async def pack(parcel: Parcel) -> None:
            await finish.wait()

        async with Orchestrator(sagas=[slow], log=log_factory(), lease=1.0) as live:
            slow_id = await live.start(slow, Parcel())
            async with Orchestrator(
                sagas=[dispatch],
                log=log_factory(),
                broker="memory://nobody-replies",
                lease=1.0,
                drain_timeout=0,
            ) as gone:
                lost_id = await gone.start(dispatch, Parcel())
                await anyio.sleep(0.1)
            # the courier never replied, and the orchestrator that would time it out is gone
            inspector = Inspector(live.log)
            lost = await live.log.get(lost_id)
            assert lost is not None
            timeout_at = lost.steps["book_courier"].timeout_at
            assert lost.status is SagaStatus.RUNNING
            assert timeout_at is not None
            assert await inspector.stuck(no_progress_for=3600.0, timer_grace=0.5) == []
            await anyio.sleep(timeout_at + 0.6 - time.time())
            stuck = await inspector.stuck(no_progress_for=3600.0, timer_grace=0.5)
            assert ids(stuck) == [lost_id]
            # by silence alone, both look the same
            assert set(ids(await inspector.stuck(no_progress_for=0.2))) == {lost_id, slow_id}
            # the slow saga is healthy: it finishes
            finish.set()
            assert (await live.wait(slow_id)).status is SagaStatus.COMPLETED
            assert ids(await inspector.stuck(no_progress_for=3600.0, timer_grace=0.5)) == [lost_id]

    async def test_healthy_log_has_none(self, log_factory: LogFactory) -> None:
        """Sagas an orchestrator just ran are not stuck."""
        saga = order_saga()
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            await orch.run(saga, Order())
            assert await Inspector(orch.log).stuck(no_progress_for=60.0) == []

    async def test_negative_threshold(self, saga_log: SagaLog) -> None:
        """A negative no_progress_for is refused."""
        with pytest.raises(ValueError, match="no_progress_for"):
            await Inspector(saga_log).stuck(no_progress_for=-1.0)
        with pytest.raises(ValueError, match="timer_grace"):
            await Inspector(saga_log).stuck(no_progress_for=1.0, timer_grace=-1.0)


class TestTimeline:
    async def test_events_and_gaps(self, saga_log: SagaLog) -> None:
        """One event per history entry, with the gap since the one before and the failure."""
        await write(saga_log, record("a", created_at=NOW))
        failure = Failure("reserve", "ConnectionError", "warehouse unreachable")
        entries = [
            LogEntry(EntryKind.STEP_STARTED, at=NOW + 1.5, step="reserve", attempt=1, owner="o"),
            LogEntry(
                EntryKind.STEP_FAILED,
                at=NOW + 4.0,
                step="reserve",
                attempt=1,
                failure=failure,
                owner="o",
            ),
        ]
        await saga_log.update("a", SagaUpdate(entries), revision=0, owner="gone")
        timeline = await Inspector(saga_log).timeline("a")
        assert isinstance(timeline, Timeline)
        assert timeline.record == await saga_log.get("a")
        assert [(e.kind, e.step, e.attempt, e.at, e.since_previous) for e in timeline.events] == [
            (EntryKind.SAGA_STARTED, None, 0, NOW, 0.0),
            (EntryKind.STEP_STARTED, "reserve", 1, NOW + 1.5, 1.5),
            (EntryKind.STEP_FAILED, "reserve", 1, NOW + 4.0, 2.5),
        ]
        assert [e.failure for e in timeline.events] == [
            None,
            None,
            "step 'reserve': ConnectionError: warehouse unreachable",
        ]
        assert [e.owner for e in timeline.events] == ["gone", "o", "o"]
        assert timeline.duration == 4.0

    async def test_of_a_run_saga(self, log_factory: LogFactory) -> None:
        """The timeline of a saga an orchestrator ran follows its history entry by entry."""
        saga = order_saga()
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            outcome = await orch.run(saga, Order(amount=500))
            history = await orch.history(outcome.saga_id)
            timeline = await Inspector(orch.log).timeline(outcome.saga_id)
        assert timeline.record.status is SagaStatus.COMPENSATED
        assert [(e.kind, e.step, e.at) for e in timeline.events] == [
            (h.kind, h.step, h.at) for h in history
        ]
        gaps = [e.since_previous for e in timeline.events]
        assert gaps == [0.0] + [b.at - a.at for a, b in pairwise(history)]
        assert all(gap >= 0 for gap in gaps)
        (failed,) = [e for e in timeline.events if e.kind is EntryKind.STEP_FAILED]
        assert failed.failure is not None
        assert "over the limit" in failed.failure

    async def test_unknown_saga(self, saga_log: SagaLog) -> None:
        """An unknown id raises SagaNotFoundError."""
        with pytest.raises(SagaNotFoundError):
            await Inspector(saga_log).timeline("nope")


class TestOpening:
    async def test_url_is_opened_and_closed(self, tmp_path: Path) -> None:
        """Given a URL, the inspector opens the log on entry (and only then can answer)."""
        path = tmp_path / "sagas.db"
        async with SQLiteSagaLog(path) as log:
            await write(log, record("a"))
        inspector = Inspector(f"sqlite:///{path}")
        with pytest.raises(RuntimeError, match="async with"):
            await inspector.counts()
        async with inspector as entered:
            assert entered is inspector
            assert (await inspector.counts())[SagaStatus.RUNNING] == 1
        with pytest.raises(RuntimeError, match="async with"):
            await inspector.list()
        async with Inspector(path) as by_path:
            assert ids(await by_path.list()) == ["a"]
        async with Inspector("memory://") as empty:
            assert set((await empty.counts()).values()) == {0}

    async def test_open_log_is_not_entered_or_closed(self, tmp_path: Path) -> None:
        """Given a log object, the inspector uses it as it is and leaves it open."""
        async with SQLiteSagaLog(tmp_path / "sagas.db") as log:
            async with Inspector(log) as inspector:
                assert inspector.log is log
                await write(log, record("a"))
                assert ids(await inspector.list()) == ["a"]
            assert await log.get("a") is not None  # still open

    def test_bad_log(self) -> None:
        """Something that is not a log, a URL or a path is refused."""
        with pytest.raises(TypeError, match="SagaLog"):
            Inspector(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="scheme"):
            Inspector("nosuch://x")


class TestVersions:
    async def test_versions_and_held(self, log_factory: LogFactory) -> None:
        """versions() counts a definition's sagas with its outline; held() lists the sagas an
        orchestrator refused because their definition changed, with what differs."""
        original = order_saga()
        async with Orchestrator(sagas=[original], log=log_factory()) as orch:
            await orch.run(original, Order())
            await orch.run(original, Order(amount=500))
        now = time.time()
        async with log_factory() as log:
            await log.create(
                SagaRecord(
                    saga_id="in-flight",
                    name="order",
                    version=1,
                    status=SagaStatus.RUNNING,
                    data=Order().model_dump_json(),
                    created_at=now,
                    updated_at=now,
                    fingerprint=original.fingerprint,
                ),
                [LogEntry(EntryKind.SAGA_STARTED, at=now)],
            )
        changed: Saga[Order] = Saga("order", Order)

        @changed.step
        async def reserve(order: Order) -> None:
            return None

        async with Orchestrator(sagas=[changed], log=log_factory()) as orch:
            inspector = Inspector(orch.log)
            found = {v.fingerprint: v for v in await inspector.versions(name="order")}
            assert set(found) == {original.fingerprint, changed.fingerprint}
            first = found[original.fingerprint]
            assert first.counts == {
                SagaStatus.COMPLETED: 1,
                SagaStatus.COMPENSATED: 1,
                SagaStatus.RUNNING: 1,
            }
            assert (first.held, first.total) == (1, 3)
            assert first.definition is not None
            assert first.definition.outline == original.outline()
            assert found[changed.fingerprint].total == 0
            assert await inspector.versions(name="nobody") == []
            (held,) = await inspector.held()
            assert held.saga_id == "in-flight"
            assert held.held is not None
            assert "step 'charge' is gone" in held.held
            assert "step 'reserve' lost its compensation" in held.held
            assert await inspector.held(name="other") == []


async def test_show_counts_attempts_and_failures_as_the_history_has_them(
    log_factory: LogFactory,
) -> None:
    """A step that failed twice and then succeeded, and was later compensated (the record's
    counters now count its compensation), is shown with its 3 attempts and 2 failures, and
    its compensation beside them; a saga-level entry carries no '#0'."""
    from pysaga._render import timeline_json, timeline_text

    tries: dict[str, int] = {}
    saga: Saga[Order] = Saga("flaky-order", Order)

    @saga.step(retry=Retry(attempts=5, backoff=0, jitter=0))
    async def reserve(order: Order, ctx: StepContext) -> None:
        tries[ctx.saga_id] = tries.get(ctx.saga_id, 0) + 1
        if tries[ctx.saga_id] < 3:
            raise ConnectionError("warehouse busy")

    @reserve.compensate(retry=Retry(attempts=3, backoff=0, jitter=0))
    async def release(order: Order, ctx: StepContext) -> None:
        if ctx.attempt < 2:
            raise ConnectionError("warehouse busy")

    @saga.step(retry=ONCE)
    async def charge(order: Order) -> None:
        raise BusinessError("card declined")

    async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
        outcome = await orch.run(saga, Order())
        assert outcome.status is SagaStatus.COMPENSATED
        async with Inspector(orch.log) as inspector:
            timeline = await inspector.timeline(outcome.saga_id)
    record = timeline.record
    assert record.steps["reserve"].attempts == 2  # the record counts the compensation now
    counted = timeline.steps["reserve"]
    assert (counted.attempts, counted.failures) == (3, 2)
    assert (counted.compensation_attempts, counted.compensation_failures) == (2, 1)
    assert (timeline.steps["charge"].attempts, timeline.steps["charge"].failures) == (1, 1)
    text = timeline_text(timeline)
    reserve_line = next(line for line in text.splitlines() if line.strip().startswith("reserve"))
    assert "attempts 3" in reserve_line
    assert "failures 2" in reserve_line
    assert "compensations 2, failures 1" in reserve_line
    assert " #0" not in text
    assert timeline_json(timeline)["steps"]["reserve"] == {
        "attempts": 3,
        "failures": 2,
        "compensation_attempts": 2,
        "compensation_failures": 1,
    }
