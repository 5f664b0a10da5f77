"""Without virtual time, the world works on the real clock and says how to get virtual time."""

from __future__ import annotations

import pytest

from pysaga import SagaStatus
from pysaga.testing import SagaWorld

from .sagas import Trip, book_trip

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the plain event loop, for this module only


async def test_a_world_on_the_real_clock(saga_world: SagaWorld) -> None:
    assert not saga_world.virtual_time
    with pytest.raises(RuntimeError, match="virtual_time_backend"):
        _ = saga_world.clock
    orch = await saga_world.start_orchestrator(book_trip)
    saga_id = await orch.start(book_trip, Trip(traveller="Ada"))
    record = await saga_world.wait_for(saga_id, status=SagaStatus.COMPLETED, timeout=10.0)
    assert record.steps["take_payment"].attempts == 1
