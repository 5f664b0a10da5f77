"""pysaga's pytest plugin: the ``saga_world`` fixture.

pytest loads it on its own once pysaga is installed (it is registered under the ``pytest11``
entry point). It defines fixtures only: a test that does not ask for them is not touched, and
importing it loads nothing of pysaga until a fixture is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from . import SagaWorld

__all__ = ("saga_world",)


@pytest.fixture
async def saga_world(anyio_backend: object) -> AsyncIterator[SagaWorld]:
    """A fresh :class:`~pysaga.testing.SagaWorld` for the test, closed after it.

    It runs on anyio's pytest plugin (mark the test with ``@pytest.mark.anyio``). When the
    ``anyio_backend`` fixture returns :func:`~pysaga.testing.virtual_time_backend`, the world
    runs on virtual time.
    """
    from . import SagaWorld
    from ._loop import asks_for_virtual_time, current_clock

    if asks_for_virtual_time(anyio_backend):
        try:
            current_clock()
        except RuntimeError:
            pytest.fail(
                "this test asked for virtual time, but its event loop was already running "
                "without it (an async fixture of a wider scope started it); give that fixture "
                "the same anyio_backend, or make it function-scoped",
                pytrace=False,
            )
    async with SagaWorld() as world:
        yield world
