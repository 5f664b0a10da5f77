"""What every adapter inherits from BaseBroker, checked on a transport that fails on purpose."""

from __future__ import annotations

from typing import Any

import pytest

from pysaga import BrokerClosed, BrokerUnavailable, Retry
from pysaga.brokers import BaseBroker, from_url

pytestmark = pytest.mark.anyio


class Unreachable(BaseBroker):
    async def _open(self) -> None:
        raise BrokerUnavailable("cannot reach the broker at example:1; is it running?")

    async def _close(self) -> None:
        pass

    async def _send(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def _consume(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def _consume_replies(self, *args: Any, **kwargs: Any) -> None:
        pass


async def test_a_connection_error_reaches_the_caller_as_itself() -> None:
    with pytest.raises(BrokerUnavailable, match="is it running"):
        async with Unreachable():
            pass


async def test_a_broker_is_entered_once() -> None:
    broker = from_url("memory://")
    async with broker:
        pass
    with pytest.raises(BrokerClosed, match="create a new broker"):
        async with broker:
            pass


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="forever"):
        from_url("memory://", redelivery=Retry(attempts=None))
    with pytest.raises(ValueError, match="at least 1"):
        from_url("memory://", concurrency=0)
    with pytest.raises(ValueError, match="unknown scheme 'nats'"):
        from_url("nats://127.0.0.1:4222")
