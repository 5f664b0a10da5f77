"""An operator retries, aborts and resolves sagas through the saga log, on every saga log:
the action is one history entry of its own (who and why), it reaches the orchestrator that
drives the saga, and it is refused, writing nothing, when the saga's state does not allow it."""

from __future__ import annotations

import logging

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    EntryKind,
    Operator,
    OperatorActionRefused,
    Orchestrator,
    Retry,
    Saga,
    SagaLog,
    SagaNotFoundError,
    SagaStatus,
    StepStatus,
)
from pysaga.operations import default_operator
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio

ONCE = Retry(attempts=1, backoff=0, jitter=0)


class Order(BaseModel):
    amount: int = 10


class World:
    """What the steps did, and switches that make them fail or hang."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.warehouse_up = True
        self.courier_up = True
        self.charge_hangs = False
        self.charge_takes = 0.0
        self.charging = anyio.Event()


def shop(world: World) -> Saga[Order]:
    """reserve (undo: release) -> charge (pivot) -> notify (retriable)."""
    saga: Saga[Order] = Saga("shop", Order)

    @saga.step(retry=ONCE)
    async def reserve(order: Order) -> None:
        world.calls.append("reserve")

    @reserve.compensate(retry=ONCE)
    async def release(order: Order) -> None:
        world.calls.append("release")
        if not world.warehouse_up:
            raise ConnectionError("warehouse unreachable")

    @saga.step(retry=ONCE, pivot=True)
    async def charge(order: Order) -> None:
        world.calls.append("charge")
        world.charging.set()
        if world.charge_hangs:
            await anyio.sleep_forever()
        if world.charge_takes:
            await anyio.sleep(world.charge_takes)
        if order.amount > 100:
            raise ValueError("card declined")

    @saga.step(retry=ONCE)
    async def notify(order: Order) -> None:
        world.calls.append("notify")
        if not world.courier_up:
            raise ConnectionError("courier unreachable")

    return saga


async def wait_for_status(log: SagaLog, saga_id: str, status: SagaStatus) -> None:
    with anyio.fail_after(10):
        while True:
            record = await log.get(saga_id)
            assert record is not None
            if record.status is status:
                return
            await anyio.sleep(0.01)


class TestRetry:
    async def test_compensations_that_gave_up_run_again(self, log_factory: LogFactory) -> None:
        """A saga FAILED because its compensation gave up: once the cause is fixed, a retry
        sends it back to COMPENSATING with a fresh budget and an orchestrator finishes it."""
        world = World()
        world.warehouse_up = False
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
            failed = await orch.run(saga, Order(amount=500))
            assert failed.status is SagaStatus.FAILED
            world.warehouse_up = True
            record = await Operator(orch.log).retry(
                failed.saga_id, reason="warehouse is back", by="alice"
            )
            assert record.status is SagaStatus.COMPENSATING
            assert record.lease_expires_at == 0
            assert (record.steps["reserve"].status, record.steps["reserve"].failures) == (
                StepStatus.COMPENSATING,
                0,
            )
            outcome = await orch.wait(failed.saga_id)
        assert outcome.status is SagaStatus.COMPENSATED
        assert world.calls == ["reserve", "charge", "release", "release"]
        async with log_factory() as log:
            history = await log.history(failed.saga_id)
        kinds = [e.kind for e in history]
        i = kinds.index(EntryKind.OPERATOR_RETRIED)
        assert kinds[i - 1] is EntryKind.SAGA_FAILED
        assert kinds[-3:] == [
            EntryKind.COMPENSATION_STARTED,
            EntryKind.COMPENSATION_SUCCEEDED,
            EntryKind.SAGA_COMPENSATED,
        ]
        entry = history[i]
        assert entry.owner == "alice"
        assert entry.failure is not None
        assert entry.failure.details == {"by": "alice", "reason": "warehouse is back"}
        assert entry.failure.message == "retried by alice: warehouse is back"
        assert history[-2].attempt == 2  # the compensation's attempts go on counting

    async def test_a_step_after_the_pivot_that_gave_up_runs_again(
        self, log_factory: LogFactory
    ) -> None:
        """A saga FAILED because a step after the pivot gave up goes back to RUNNING and
        completes; nothing is compensated."""
        world = World()
        world.courier_up = False
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
            failed = await orch.run(saga, Order())
            assert failed.status is SagaStatus.FAILED
            world.courier_up = True
            async with Operator(orch.log) as operator:
                record = await operator.retry(failed.saga_id, reason="courier fixed")
            assert record.status is SagaStatus.RUNNING
            assert record.steps["notify"].failures == 0
            outcome = await orch.wait(failed.saga_id)
        assert outcome.status is SagaStatus.COMPLETED
        assert world.calls == ["reserve", "charge", "notify", "notify"]
        async with log_factory() as log:
            history = await log.history(failed.saga_id)
        (entry,) = [e for e in history if e.kind is EntryKind.OPERATOR_RETRIED]
        assert entry.owner == default_operator()


class TestAbort:
    async def test_a_live_saga_with_a_hanging_step_is_compensated_once(
        self, log_factory: LogFactory
    ) -> None:
        """An orchestrator drives a saga whose step hangs; an operator aborts it on the same
        log. The hanging step is cut short, the saga ends COMPENSATED (never RUNNING again),
        and each compensation ran once."""
        world = World()
        world.charge_hangs = True
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
            saga_id = await orch.start(saga, Order())
            with anyio.fail_after(10):
                await world.charging.wait()
            record = await Operator(orch.log).abort(saga_id, reason="customer cancelled", by="bob")
            assert record.status is SagaStatus.COMPENSATING
            assert record.failure is not None
            assert record.failure.type == "OperatorAborted"
            assert record.failure.message == "aborted by bob: customer cancelled"
            outcome = await orch.wait(saga_id)
            assert outcome.status is SagaStatus.COMPENSATED
            assert outcome.failure == record.failure
            await anyio.sleep(0.3)  # nothing more happens to it
        assert world.calls == ["reserve", "charge", "release"]
        async with log_factory() as log:
            history = await log.history(saga_id)
            final = await log.get(saga_id)
        assert final is not None
        assert final.status is SagaStatus.COMPENSATED
        kinds = [e.kind for e in history]
        after = kinds[kinds.index(EntryKind.OPERATOR_ABORTED) :]
        assert EntryKind.STEP_SUCCEEDED not in after
        assert EntryKind.SAGA_COMPLETED not in kinds
        assert kinds.count(EntryKind.COMPENSATION_STARTED) == 1

    async def test_the_caller_of_run_gets_the_aborted_outcome(
        self, log_factory: LogFactory
    ) -> None:
        """A saga driven in the caller's task (orch.run) and aborted meanwhile: run returns
        its COMPENSATED outcome."""
        world = World()
        world.charge_hangs = True
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:

            async def abort_when_charging() -> None:
                await world.charging.wait()
                (record,) = await orch.log.list(status=SagaStatus.RUNNING)
                await Operator(orch.log).abort(record.saga_id, reason="fraud", by="bob")

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(abort_when_charging)
                    outcome = await orch.run(saga, Order())
        assert outcome.status is SagaStatus.COMPENSATED
        assert world.calls == ["reserve", "charge", "release"]

    async def test_a_write_refused_after_an_abort_stops_the_run_with_one_line(
        self, log_factory: LogFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When the step returns after the abort (no claim cut it short: the claim interval
        is long), its write is refused; the run stops with one warning line, no traceback,
        and the saga is compensated from the log at once."""
        world = World()
        world.charge_takes = 0.5
        saga = shop(world)
        caplog.set_level(logging.WARNING, "pysaga.orchestrator")
        async with Orchestrator(
            sagas=[saga], log=log_factory(), lease=30.0, claim_interval=300.0
        ) as orch:
            saga_id = await orch.start(saga, Order())
            with anyio.fail_after(10):
                await world.charging.wait()
            await Operator(orch.log).abort(saga_id, reason="customer cancelled", by="bob")
            outcome = await orch.wait(saga_id)
        assert outcome.status is SagaStatus.COMPENSATED
        assert world.calls == ["reserve", "charge", "release"]
        lines = [r for r in caplog.records if r.name == "pysaga.orchestrator"]
        assert len(lines) == 1
        assert lines[0].levelno == logging.WARNING
        assert lines[0].exc_info is None
        assert "was changed in the log" in lines[0].getMessage()


class TestResolve:
    async def test_a_failed_saga_is_resolved_for_good(self, log_factory: LogFactory) -> None:
        """Resolve makes a FAILED saga RESOLVED (terminal); it keeps its failure and no
        orchestrator touches it again."""
        world = World()
        world.warehouse_up = False
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
            failed = await orch.run(saga, Order(amount=500))
            record = await Operator(orch.log).resolve(
                failed.saga_id, reason="released the stock by hand", by="carol"
            )
            assert record.status is SagaStatus.RESOLVED
            assert record.status.is_terminal
            assert record.failure == failed.failure
            outcome = await orch.wait(failed.saga_id)
            assert outcome.status is SagaStatus.RESOLVED
            await anyio.sleep(0.6)
        assert world.calls == ["reserve", "charge", "release"]
        async with log_factory() as log:
            history = await log.history(failed.saga_id)
        assert history[-1].kind is EntryKind.OPERATOR_RESOLVED
        assert history[-1].owner == "carol"
        assert history[-1].kind.is_operator_action


class TestRefused:
    async def test_actions_that_do_not_fit_write_nothing(self, log_factory: LogFactory) -> None:
        """Each action is refused with a clear error when the saga's state does not allow
        it; the saga and its history stay as they were."""
        world = World()
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory()) as orch:
            done = await orch.run(saga, Order())
            world.warehouse_up = False
            failed = await orch.run(saga, Order(amount=500))
            operator = Operator(orch.log)
            cases = [
                (operator.abort, done.saga_id, "it ended COMPLETED"),
                (operator.retry, done.saga_id, "it ended COMPLETED"),
                (operator.resolve, done.saga_id, "it ended COMPLETED"),
                (operator.abort, failed.saga_id, "it is FAILED, not RUNNING"),
            ]
            for action, saga_id, why in cases:
                before = await orch.log.history(saga_id)
                with pytest.raises(OperatorActionRefused, match=why) as refused:
                    await action(saga_id, reason="try", by="dan")
                assert refused.value.saga_id == saga_id
                assert await orch.log.history(saga_id) == before
            await operator.resolve(failed.saga_id, reason="done by hand")
            with pytest.raises(OperatorActionRefused, match="resolved it already"):
                await operator.retry(failed.saga_id, reason="again")
            with pytest.raises(SagaNotFoundError):
                await operator.abort("no-such-saga", reason="x")
            with pytest.raises(ValueError, match="give a reason"):
                await operator.abort(done.saga_id, reason="  ")

    async def test_a_running_saga_cannot_be_resolved_or_retried(
        self, log_factory: LogFactory
    ) -> None:
        """While an orchestrator drives a saga, resolve and retry are refused; abort then
        resolve is the way."""
        world = World()
        world.charge_hangs = True
        saga = shop(world)
        async with Orchestrator(sagas=[saga], log=log_factory(), lease=1.0) as orch:
            saga_id = await orch.start(saga, Order())
            operator = Operator(orch.log)
            for action in (operator.resolve, operator.retry):
                with pytest.raises(OperatorActionRefused, match="RUNNING, not FAILED"):
                    await action(saga_id, reason="x")
            await operator.abort(saga_id, reason="stop")
            with pytest.raises(OperatorActionRefused, match="COMPENSATING already"):
                await operator.abort(saga_id, reason="again")
            await wait_for_status(orch.log, saga_id, SagaStatus.COMPENSATED)

    async def test_an_operator_on_a_url_must_be_entered(self) -> None:
        """An operator that opens its log itself says how to use it."""
        with pytest.raises(RuntimeError, match=r"async with Operator\(url\) as operator"):
            await Operator("memory://").abort("x", reason="y")
