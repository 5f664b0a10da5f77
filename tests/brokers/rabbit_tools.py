"""Helpers for the RabbitMQ tests: a broker that notes what it declares (so a test can delete
it afterwards), dropping a test's connections from the server side, a loopback proxy that
makes RabbitMQ unreachable for a while, and raw access for checks the broker protocol does
not expose."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import anyio
import pytest

from pysaga.brokers.rabbitmq import RabbitMQBroker

from ..services import free_port
from .contract import BrokerSetup

if TYPE_CHECKING:
    import anyio.abc
    from aio_pika.abc import AbstractChannel


class Created:
    """The exchanges and queues a test's brokers declared."""

    __test__ = False

    def __init__(self) -> None:
        self.exchanges: set[str] = set()
        self.queues: set[str] = set()

    async def delete(self, url: str) -> None:
        """Delete them all, over a connection of their own."""
        if not self.exchanges and not self.queues:
            return
        async with raw_channel(url) as channel:
            for queue in sorted(self.queues):
                await channel.queue_delete(queue)
            for exchange in sorted(self.exchanges):
                await channel.exchange_delete(exchange)
        self.exchanges.clear()
        self.queues.clear()


class RecordingBroker(RabbitMQBroker):
    """A RabbitMQ broker that notes each exchange and queue it declares in *created*."""

    __test__ = False

    def __init__(self, url: str, created: Created, **options: Any) -> None:
        super().__init__(url, **options)
        self._created = created

    async def _declare_group(self, channel: AbstractChannel, destination: str, group: str) -> str:
        self._created.exchanges.add(self.exchange_name(destination))
        self._created.queues.add(self.queue_name(destination, group))
        return await super()._declare_group(channel, destination, group)


class RabbitSetup(BrokerSetup):
    """Brokers on the test server, whose connections carry a name of this test's own (so
    :meth:`drop_connections` drops only them) and whose topology is deleted afterwards."""

    __test__ = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.marker = f"pysaga-test-{uuid.uuid4().hex[:12]}"
        self.created = Created()

    def make(self, **options: Any) -> RecordingBroker:
        options.setdefault("connection_name", self.marker)
        options.setdefault("reconnect_interval", 0.2)
        return RecordingBroker(self.url, self.created, **options)

    async def drop_connections(self) -> None:
        closed = await close_connections(self.marker)
        assert closed > 0, "the test's connections were found on the server"

    async def cleanup(self) -> None:
        await self.created.delete(self.url)


def rabbitmqctl() -> str:
    """The path of rabbitmqctl, or skip: it is how the tests make the server drop connections."""
    path = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip("rabbitmqctl is needed to make RabbitMQ drop connections")
    return path


async def close_connections(name: str) -> int:
    """Make the server close every connection named *name*; returns how many it closed."""
    ctl = rabbitmqctl()
    listing = await anyio.run_process(
        [ctl, "list_connections", "-q", "--no-table-headers", "pid", "client_properties"]
    )
    wanted = f'{{"connection_name","{name}"}}'
    pids = [
        line.split("\t", 1)[0] for line in listing.stdout.decode().splitlines() if wanted in line
    ]
    async with anyio.create_task_group() as tg:
        for pid in pids:
            tg.start_soon(anyio.run_process, [ctl, "close_connection", pid, "test"])
    return len(pids)


@asynccontextmanager
async def raw_channel(url: str) -> AsyncIterator[AbstractChannel]:
    """A plain aio-pika channel on a connection of its own."""
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


class Proxy:
    """A loopback TCP proxy in front of RabbitMQ. :meth:`cut` drops every connection through
    it and refuses new ones (RabbitMQ seems gone); :meth:`restore` lets connections in again.
    """

    __test__ = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.port = free_port()
        netloc = parts.netloc.rsplit("@", 1)
        auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
        self.url = urlunsplit((parts.scheme, f"{auth}127.0.0.1:{self.port}", parts.path, "", ""))
        self._tg: anyio.abc.TaskGroup | None = None
        self._serving: anyio.CancelScope | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        """Serve until the block ends."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self.restore()
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None

    async def restore(self) -> None:
        """Accept connections again."""
        assert self._tg is not None
        if self._serving is None:
            self._serving = await self._tg.start(self._serve)

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
            async with listener, anyio.create_task_group() as connections:
                task_status.started(scope)
                await listener.serve(self._forward, task_group=connections)

    async def _forward(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp(*self._target)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:

                async def pump(
                    source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream
                ) -> None:
                    try:
                        async for chunk in source:
                            await sink.send(chunk)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)
