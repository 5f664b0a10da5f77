"""The plugin: its fixture gives each test a world of its own, and loading it costs users who
do not use it nothing but the pysaga core."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel

from pysaga import Envelope
from pysaga.testing import SagaWorld, VirtualTimeLoop, virtual_time_backend
from pysaga.testing._loop import asks_for_virtual_time

pytestmark = pytest.mark.anyio


async def test_each_world_has_its_own_broker_and_log(saga_world: SagaWorld) -> None:
    async with SagaWorld() as other:
        assert other.broker_url != saga_world.broker_url
        assert other.log is not saga_world.log
        await other.broker.publish("stock", _ping())
        assert other.broker.pending("stock") == 1
        assert saga_world.broker.pending("stock") == 0


async def test_the_fixture_runs_on_virtual_time(saga_world: SagaWorld) -> None:
    assert saga_world.virtual_time
    assert saga_world.clock.elapsed == 0.0


def test_the_backend_value_is_recognised() -> None:
    backend = virtual_time_backend(autojump_threshold=0.05)
    assert backend[0] == "asyncio"
    loop = backend[1]["loop_factory"]()
    try:
        assert isinstance(loop, VirtualTimeLoop)
        assert loop.clock.autojump_threshold == 0.05
    finally:
        loop.close()
    assert asks_for_virtual_time(backend)
    assert not asks_for_virtual_time("asyncio")
    assert not asks_for_virtual_time(("asyncio", {}))
    with pytest.raises(ValueError, match="autojump_threshold"):
        virtual_time_backend(autojump_threshold=-1.0)


def test_the_plugin_is_registered_and_loads_no_adapter() -> None:
    """pytest finds the plugin through its entry point; importing it loads the pysaga core
    but no store or broker for a server, no client library and no OpenTelemetry SDK."""
    code = (
        "import sys, importlib.metadata as m\n"
        "names = [e.value for e in m.entry_points(group='pytest11')]\n"
        "assert 'pysaga.testing.plugin' in names, names\n"
        "import pysaga.testing.plugin\n"
        "bad = [n for n in sys.modules if n.startswith(('pysaga.stores.sqlite', "
        "'pysaga.stores.postgres', 'pysaga.brokers.rabbitmq', 'pysaga.brokers.kafka', "
        "'aio_pika', 'aiokafka', 'asyncpg', 'opentelemetry.sdk'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class Ping(BaseModel):
    n: int = 1


def _ping() -> Envelope:
    return Envelope.of(Ping())
