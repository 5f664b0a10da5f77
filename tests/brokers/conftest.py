"""Fixtures of the broker tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..services import KafkaServer
from .kafka_tools import KafkaSetup


@pytest.fixture
async def kafka(kafka_server: KafkaServer) -> AsyncIterator[KafkaSetup]:
    """A setup on the session's broker whose topics are deleted when the test ends."""
    setup = KafkaSetup(kafka_server)
    try:
        yield setup
    finally:
        await setup.cleanup()
