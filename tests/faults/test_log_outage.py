"""A saga log that fails for a while: the sagas it interrupted are driven again, by the same
orchestrator, once the log answers; none is left leased to an orchestrator that does not
drive it."""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any, Self

import anyio
import pytest
from pydantic import BaseModel

from pysaga import EntryKind, Orchestrator, Saga, SagaLog, SagaStatus, SagaUpdate, StoreError
from tests.conftest import LogFactory

pytestmark = pytest.mark.anyio


class Outage:
    """Delegates to a saga log, failing the first write of each saga's second step and the
    first ``release_failures`` releases, as a log that lost its connection would."""

    def __init__(self, inner: SagaLog, *, release_failures: int) -> None:
        self.inner = inner
        self.release_failures = release_failures
        self.failed: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def update(self, saga_id: str, update: SagaUpdate, *, revision: int, owner: str) -> int:
        second = any(e.kind is EntryKind.STEP_STARTED and e.step == "ship" for e in update.entries)
        if second and not self.failed[saga_id]:
            self.failed[saga_id] += 1
            raise StoreError("the connection to the saga log was lost")
        return await self.inner.update(saga_id, update, revision=revision, owner=owner)

    async def release(self, owner: str, saga_ids: Any = None, *, incarnation: Any = None) -> None:
        if self.release_failures > 0:
            self.release_failures -= 1
            raise StoreError("the connection to the saga log was lost")
        await self.inner.release(owner, saga_ids, incarnation=incarnation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Parcel(BaseModel):
    n: int


async def test_sagas_a_failing_log_interrupted_are_resumed_by_their_own_orchestrator(
    log_factory: LogFactory,
) -> None:
    saga = Saga("parcel", Parcel)
    calls: Counter[str] = Counter()

    @saga.step
    async def label(parcel: Parcel) -> None:
        calls["label"] += 1

    @saga.step
    async def ship(parcel: Parcel) -> None:
        calls["ship"] += 1

    log = Outage(log_factory(), release_failures=3)
    async with Orchestrator(sagas=[saga], log=log, lease=0.6) as orch:
        ids = [await orch.start(saga, Parcel(n=n)) for n in range(5)]
        with anyio.fail_after(20):
            outcomes = [await orch.wait(saga_id) for saga_id in ids]
        histories = [await orch.history(saga_id) for saga_id in ids]
    assert [o.status for o in outcomes] == [SagaStatus.COMPLETED] * 5
    assert sum(log.failed.values()) == 5
    for history in histories:
        claims = [e for e in history if e.kind is EntryKind.SAGA_CLAIMED]
        assert [e.owner for e in claims] == [orch.owner], "taken up again by its own orchestrator"
    # label's outcome was to be written with ship's intent, the write that failed: label was
    # in doubt and ran again (with the same idempotency key); ship ran once
    assert calls == {"label": 10, "ship": 5}
