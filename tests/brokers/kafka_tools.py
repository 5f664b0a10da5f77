"""Helpers for the Kafka tests: the contract's setup, a cuttable loopback proxy, and a second
Kafka-protocol broker that advertises the proxy's address (so every connection a client makes,
not only the first, goes through the proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from pysaga.brokers.kafka import KafkaBroker

from ..services import KafkaServer, _bundled_broker_binary, free_port, reachable
from .contract import BrokerSetup

FAST: dict[str, Any] = {
    "fetch_max_wait_ms": 5,
    "session_timeout_ms": 2_000,
    "heartbeat_interval_ms": 300,
    "request_timeout_ms": 3_000,
    "connect_timeout": 10.0,
}
"""Options that keep a test broker quick: short fetch waits, and group sessions short enough
that a group's first join (which the broker delays by part of the session) takes about 1 s."""


class RecordingBroker(KafkaBroker):
    """A Kafka broker that notes the topics it made sure of, so a test can delete them."""

    __test__ = False

    def __init__(self, bootstrap: str, topics: set[str], **options: Any) -> None:
        super().__init__(bootstrap, **options)
        self._recorded = topics

    async def _ensure_topic(self, topic: str) -> None:
        if topic != self.replies_topic:
            self._recorded.add(topic)
        await super()._ensure_topic(topic)


class KafkaSetup(BrokerSetup):
    """How the contract reaches a Kafka broker; :meth:`cleanup` deletes the test's topics."""

    __test__ = False
    ordered_by_key = True

    def __init__(self, server: KafkaServer, *, pause: float = 4.0) -> None:
        self.server = server
        self.bootstrap = server.url.removeprefix("kafka://")
        self.topics: set[str] = set()
        self.pause = pause

    def make(self, **options: Any) -> RecordingBroker:
        return RecordingBroker(self.bootstrap, self.topics, **{**FAST, **options})

    async def drop_connections(self) -> None:
        """Freeze the broker longer than a group session and a request may last, then let
        it go on: requests time out, connections are closed and opened again, and groups
        lose their members, who join again."""
        if self.server.process is None:
            pytest.skip("the Kafka broker was not started by the tests: cannot freeze it")
        self.server.pause()
        try:
            await anyio.sleep(self.pause)
        finally:
            self.server.resume()

    async def cleanup(self) -> None:
        await delete_topics(self.bootstrap, self.topics)


async def delete_topics(bootstrap: str, topics: set[str]) -> None:
    """Delete *topics* (those that exist), ignoring a broker that is gone."""
    if not topics:
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    with anyio.move_on_after(15), contextlib.suppress(Exception):
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            names = sorted(topics & existing)
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()


class Proxy:
    """A loopback TCP proxy, run on a thread of its own so it serves across tests.

    :meth:`cut` drops every connection through it and, for *refuse_for* seconds, closes new
    ones at once (the broker seems gone); after that it forwards new connections again.
    """

    __test__ = False

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="kafka-test-proxy", daemon=True)

    def start(self) -> None:
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread.start()
        ready.wait(10)
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._drop()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut(self, refuse_for: float = 0.0) -> int:
        """Drop every proxied connection (both sides, with a reset); returns how many."""

        async def cut() -> int:
            self._refuse_until = time.monotonic() + refuse_for
            return self._drop()

        dropped = asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)
        self.cuts += 1
        return dropped

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    def _drop(self) -> int:
        writers, self._writers = self._writers, set()
        for writer in writers:
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()
        return len(writers) // 2

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


@contextlib.contextmanager
def proxied_broker() -> Iterator[tuple[str, Proxy] | None]:
    """A Kafka-protocol broker of its own whose advertised address is a proxy in front of it:
    yields ``(bootstrap servers, proxy)``, or ``None`` when the bundled broker is missing."""
    binary = _bundled_broker_binary()
    if binary is None:
        yield None
        return
    listen_port = free_port()
    proxy = Proxy(listen_port)
    listen = f"tcp://127.0.0.1:{listen_port}"
    advertised = f"tcp://127.0.0.1:{proxy.port}"
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", listen, "--advertised-listener-url", advertised],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not reachable(listen, listen_port, timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.05)
        proxy.start()
        try:
            yield f"127.0.0.1:{proxy.port}", proxy
        finally:
            proxy.stop()
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
