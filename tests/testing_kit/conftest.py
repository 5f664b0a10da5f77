"""The kit's own tests run on virtual time, as its users' tests would."""

from __future__ import annotations

from typing import Any

import pytest

from pysaga.testing import virtual_time_backend


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return virtual_time_backend()


@pytest.fixture(autouse=True)
def _fresh_services() -> None:
    """Each test starts with stand-in services that have done nothing."""
    from .sagas import services

    services.__init__()  # type: ignore[misc]
