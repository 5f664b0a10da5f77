"""Incarnations: each start of an orchestrator is a new run of its ``owner=`` name, and a lease
is held by that run. A restart under the same name takes its predecessor's sagas back at
once; renewal and release touch only the run's own sagas; a claim wakes as soon as a lease it
could take lapses. (The same with real processes and SIGKILL: tests/faults/
test_named_restart.py.)"""

from __future__ import annotations

import time

import anyio
import pytest
from pydantic import BaseModel

from pysaga import (
    EntryKind,
    LogEntry,
    Orchestrator,
    Saga,
    SagaLog,
    SagaRecord,
    SagaStatus,
)
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio


class Parcel(BaseModel):
    n: int = 1


def parcel_saga() -> Saga[Parcel]:
    saga: Saga[Parcel] = Saga("parcel", Parcel)

    @saga.step
    async def label(parcel: Parcel) -> None:
        pass

    @saga.step
    async def ship(parcel: Parcel) -> None:
        pass

    return saga


async def left_behind(
    log: SagaLog,
    saga_id: str,
    *,
    owner: str,
    incarnation: str | None,
    lease_for: float,
    name: str = "parcel",
) -> None:
    """A saga as a killed orchestrator leaves it: running, nothing started, its lease live
    for *lease_for* more seconds."""
    now = time.time()
    await log.create(
        SagaRecord(
            saga_id,
            name,
            1,
            SagaStatus.RUNNING,
            Parcel().model_dump_json(),
            owner=owner,
            incarnation=incarnation,
            lease_expires_at=now + lease_for,
            created_at=now,
            updated_at=now,
        ),
        [LogEntry(EntryKind.SAGA_STARTED, at=now, owner=owner)],
    )


async def status_of(log: SagaLog, saga_id: str) -> SagaStatus:
    record = await log.get(saga_id)
    assert record is not None
    return record.status


async def test_each_start_is_a_new_incarnation(log_factory: LogFactory) -> None:
    """The incarnation is a fresh id per orchestrator and per start, read-only, and written
    with the lease of every saga the orchestrator creates."""
    saga = parcel_saga()
    orch = Orchestrator(sagas=[saga], log=log_factory(), owner="orch-1")
    other = Orchestrator(sagas=[saga], log=log_factory(), owner="orch-1")
    assert orch.incarnation != other.incarnation
    with pytest.raises(AttributeError):
        orch.incarnation = "mine"  # type: ignore[misc]
    async with orch:
        first = orch.incarnation
        outcome = await orch.run(saga, Parcel())
        record = await orch.get(outcome.saga_id)
        assert (record.owner, record.incarnation) == ("orch-1", first)
        assert first in repr(orch)
    async with orch:
        assert orch.incarnation != first


async def test_a_restart_under_the_same_name_takes_the_sagas_back_at_once(
    log_factory: LogFactory,
) -> None:
    """Sagas held under an orchestrator's name by a dead incarnation are resumed by its
    successor as it starts, though their leases have minutes to run; an orchestrator of
    another name leaves them alone until then."""
    saga = parcel_saga()
    async with log_factory() as log:
        await left_behind(log, "a", owner="orch-1", incarnation="dead", lease_for=300)
        await left_behind(log, "b", owner="orch-1", incarnation=None, lease_for=300)
        async with Orchestrator(sagas=[saga], log=log_factory(), owner="other", lease=30):
            await anyio.sleep(0.3)
            for saga_id in ("a", "b"):
                record = await log.get(saga_id)
                assert record is not None
                assert (record.owner, record.revision) == ("orch-1", 0)
        async with Orchestrator(sagas=[saga], log=log_factory(), owner="orch-1", lease=30) as orch:
            with anyio.fail_after(5):
                for saga_id in ("a", "b"):
                    assert (await orch.wait(saga_id, poll_interval=0.01)).ok
            history = await orch.history("a")
            claims = [e for e in history if e.kind is EntryKind.SAGA_CLAIMED]
            assert [e.owner for e in claims] == ["orch-1"]


async def test_renewal_leaves_a_predecessors_sagas_alone(log_factory: LogFactory) -> None:
    """A restarted orchestrator renews only the leases of its own incarnation: a saga its
    name's predecessor held and that it does not run (another kind) keeps its old lease,
    and lapses for whoever runs it. Leaving, it releases only its own sagas."""
    saga = parcel_saga()
    async with log_factory() as log:
        await left_behind(
            log, "foreign", owner="orch-1", incarnation="dead", lease_for=1.0, name="other"
        )
        before = await log.get("foreign")
        assert before is not None
        gate = anyio.Event()
        slow: Saga[Parcel] = Saga("slow", Parcel)

        @slow.step
        async def wait(parcel: Parcel) -> None:
            await gate.wait()

        async with Orchestrator(
            sagas=[saga, slow], log=log_factory(), owner="orch-1", lease=0.6, drain_timeout=0.1
        ) as orch:
            mine = await orch.start(slow, Parcel())
            created = await log.get(mine)
            assert created is not None
            with anyio.fail_after(10):  # renewals every 0.2 s
                while True:
                    renewed = await log.get(mine)
                    assert renewed is not None
                    if renewed.lease_expires_at > created.lease_expires_at:
                        break
                    await anyio.sleep(0.05)
        after = await log.get("foreign")
        assert after == before
        released = await log.get(mine)
        assert released is not None
        assert released.lease_expires_at == 0.0
        assert released.status is SagaStatus.RUNNING


async def test_the_claim_wakes_when_a_lease_lapses(log_factory: LogFactory) -> None:
    """An orchestrator does not wait for its next periodic look (``claim_interval``, here
    15 s) to resume a dead orchestrator's sagas: it looks as each lease lapses."""
    saga = parcel_saga()
    async with log_factory() as log:
        await left_behind(log, "soon", owner="dead", incarnation="x", lease_for=0.3)
        await left_behind(log, "late", owner="dead", incarnation="x", lease_for=0.8)
        async with Orchestrator(sagas=[saga], log=log_factory(), owner="new", lease=30) as orch:
            assert orch.claim_interval == 15
            with anyio.fail_after(3):
                for saga_id in ("soon", "late"):
                    assert (await orch.wait(saga_id, poll_interval=0.01)).ok
        for saga_id, lease_for in (("soon", 0.3), ("late", 0.8)):
            history = await log.history(saga_id)
            claimed = next(e for e in history if e.kind is EntryKind.SAGA_CLAIMED)
            lapsed = history[0].at + lease_for
            # (the periodic look alone would come 15 s after the start)
            assert lapsed <= claimed.at < lapsed + 2.0, (saga_id, claimed.at - lapsed)
