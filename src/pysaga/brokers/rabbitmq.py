"""The RabbitMQ broker, on aio-pika: durable queues, persistent messages, publisher confirms.

Topology. A destination is a durable fanout exchange named like it. Each consumer group is a
durable queue bound to that exchange: the destination's own group is the queue named like the
destination, any other group the queue ``<destination>.<group>``. Publishing to a destination
declares (once per broker object) its exchange and its own group's queue, so a command sent
before its service ever ran waits for it. Every queue names ``<destination>.dead-letter`` as
its ``x-dead-letter-exchange``: pysaga itself dead-letters by publishing there with the reason
in the headers, and the argument is a safety net for a message RabbitMQ drops on its own (a
length limit or a message TTL set by a policy). A *prefix* goes before every name.

Sending. Messages are persistent, and a send returns once RabbitMQ confirmed it. Confirms are
pipelined: concurrent sends share one channel and each waits only for its own confirm, so many
are in flight at once. The routing key is the correlation id (the saga id).

Receiving. A subscription asks RabbitMQ for at most *prefetch* unacknowledged messages
(default: its concurrency) and acknowledges one only after its handler returned. A message
that is not acknowledged — the subscription was closing, or the process went away — is not
handed back with a ``nack``: it stays with the channel until the channel closes, and RabbitMQ
then gives it to another consumer. (A ``nack`` on a subscription that is still consuming would
hand the message straight back to the same closing consumer, over and over.) The one exception
is a message whose settling itself failed (the dead-letter destination could not be reached):
it is handed back with a ``nack`` after a pause, so another try can go elsewhere.

Connection loss. When the connection drops, the broker connects again (every
*reconnect_interval* seconds until it succeeds). A send that was waiting for its confirm is
sent again on the new connection until it is confirmed (at least once: RabbitMQ may then hold
it twice, never zero times), subscriptions consume again, and what they had not acknowledged
RabbitMQ delivers again. A reply address is a queue private to the connection and keeps its
name across a reconnect; replies sent while the connection was down are lost, which the reply
contract allows.

URL: ``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS); query parameters such as
``?heartbeat=30`` go to the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import os
import re
import socket
import uuid
from typing import TYPE_CHECKING, Any, Final, Self, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc

try:
    import aio_pika
    import aiormq
    import aiormq.exceptions
    from pamqp import commands as spec
except ImportError as exc:  # pragma: no cover - depends on what is installed
    if exc.name not in {"aio_pika", "aiormq", "pamqp"}:
        raise
    raise ImportError(
        "the RabbitMQ broker needs aio-pika: pip install 'pysaga-core[rabbitmq]'"
    ) from exc

from .._backends import require_asyncio
from ..errors import BrokerClosed, BrokerError, BrokerUnavailable
from ._base import BaseBroker, Consumer

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Coroutine, Mapping

    from aio_pika.abc import AbstractChannel, AbstractConnection
    from aiormq.abc import AbstractChannel as RawChannel
    from aiormq.abc import DeliveredMessage

__all__ = ("RabbitMQBroker",)

logger = logging.getLogger("pysaga.brokers.rabbitmq")

DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"

_PERSISTENT: Final = 2
_TRANSIENT: Final = 1
_CONTENT_TYPE: Final = "application/json"
_NO_HEADERS: Final[Mapping[str, str]] = {}
_SETTLE_PAUSE = 0.1
"""Seconds before a message whose settling failed is handed back to the queue."""

# The envelope's first two fields, as Envelope.encode() writes them: read without decoding.
_ENVELOPE_HEAD = re.compile(rb'\{"pysaga":1,"id":"([^"\\]{1,255})","type":"([^"\\]{1,255})"')

# Errors of the connection or a channel that a retry on a (new) connection can get past.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPChannelError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.DeliveryError,
    ConnectionError,
    OSError,
)
# Errors a retry cannot help with: the server refuses what was asked.
_REFUSALS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
)


def _mask(url: str) -> str:
    """*url* with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _cancelled_by_the_client() -> bool:
    """Whether a CancelledError being handled came from the client library closing a channel
    (a confirm it rejected), not from anyone cancelling this task."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _headers_of(headers: Mapping[str, Any]) -> dict[str, str]:
    return {key: _text(value) for key, value in headers.items()}


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _REFUSALS):
        return False
    # A channel closed without a reason rejects what waits on it with a bare Exception.
    if isinstance(exc, _TRANSIENT_ERRORS) or type(exc) is Exception:
        return True
    # Opening a channel on a connection that has just closed (or is not ready yet) raises a
    # RuntimeError that says so: the next connection will do.
    return type(exc) is RuntimeError and any(
        phrase in str(exc) for phrase in _CONNECTION_STATE_PHRASES
    )


_CONNECTION_STATE_PHRASES = (" closed", "closed channel", "not opened", "not ready")


class _Link:
    """One connection and the channels every send shares."""

    __slots__ = ("connection", "lock", "lost", "publisher", "publisher_raw", "topology")

    def __init__(
        self,
        connection: AbstractConnection,
        publisher: AbstractChannel,
        publisher_raw: RawChannel,
        topology: AbstractChannel,
    ) -> None:
        self.connection = connection
        self.publisher = publisher
        self.publisher_raw = publisher_raw
        self.topology = topology
        self.lost = anyio.Event()
        self.lock = anyio.Lock()

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self.connection.is_closed

    def on_close(self, *_: Any) -> None:
        self.lost.set()


class RabbitMQBroker(BaseBroker):
    """A broker on RabbitMQ (AMQP 0-9-1), through aio-pika.

    Args:
        url: ``amqp://user:password@host:port/vhost``, or ``amqps://`` for TLS (default:
            guest on 127.0.0.1:5672, vhost ``/``).
        prefetch: Unacknowledged messages RabbitMQ hands each subscription ahead (default:
            the subscription's concurrency). More than the concurrency buffers messages in
            this process; they are still handled at most *concurrency* at a time.
        prefix: Put before every exchange and queue name (e.g. ``"shop."``), so several
            applications can share a vhost. May also be given in the URL,
            ``amqp://host/?prefix=shop.``; the keyword wins over it.
        reconnect_interval: Seconds between attempts to connect again after the connection
            was lost.
        publish_timeout: Seconds a send may take, reconnecting included, before it fails with
            :class:`~pysaga.BrokerUnavailable`.
        connect_timeout: Seconds one attempt to connect may take.
        connection_name: The name RabbitMQ shows for this connection (default: ``pysaga``,
            the host name and the process id).
        ssl_context: TLS settings for ``amqps://`` (default: the system's trusted CAs).
        **options: See :class:`~pysaga.brokers.BaseBroker` (``redelivery``, ``concurrency``,
            ``drain_timeout``, ``tracer_provider``).

    Raises:
        ValueError: *url* is not an ``amqp://`` or ``amqps://`` URL, an option is out of
            range, or the prefix is not one RabbitMQ could use in a name.

    Example::

        async with RabbitMQBroker("amqp://guest:guest@127.0.0.1:5672/") as broker:
            await broker.subscribe("stock", handle)
            await broker.publish("stock", Envelope.of(ReserveStock(sku="book", qty=1)))
    """

    system = "rabbitmq"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefetch: int | None = None,
        prefix: str | None = None,
        reconnect_interval: float = 1.0,
        publish_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        connection_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"RabbitMQ URL {_mask(url)!r} must start with 'amqp://' or 'amqps://', "
                "e.g. 'amqp://guest:guest@127.0.0.1:5672/'"
            )
        url, prefix = _take_prefix(url, prefix)
        if prefetch is not None and prefetch < 1:
            raise ValueError("prefetch must be at least 1 (or None: the concurrency)")
        if reconnect_interval <= 0 or publish_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("reconnect_interval, publish_timeout and connect_timeout must be > 0")
        self.url = url
        """The URL the broker connects to (without ``?prefix=``, which is :attr:`prefix`)."""
        self.prefetch = prefetch
        self.prefix = prefix
        """Put before every exchange and queue name."""
        self.reconnect_interval = reconnect_interval
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.connection_name = connection_name or f"pysaga {socket.gethostname()} pid {os.getpid()}"
        self._ssl_context = ssl_context
        self._link: _Link | None = None
        self._relink = anyio.Lock()
        self._declared: set[str] = set()
        self._declaring: dict[str, anyio.Lock] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQBroker:
        """A broker for *url* (``amqp://`` or ``amqps://``); *options* as for the class."""
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"<RabbitMQBroker {_mask(self.url)} {self._state}>"

    # -- naming ------------------------------------------------------------------------------

    def exchange_name(self, destination: str) -> str:
        """The exchange that *destination* is published to."""
        return self.prefix + destination

    def queue_name(self, destination: str, group: str) -> str:
        """The queue that *group* consumes *destination* from: named like the destination
        for its own group, ``<destination>.<group>`` for any other."""
        if group == destination:
            return self.prefix + destination
        return f"{self.prefix}{destination}.{group}"

    def _is_dead_letter(self, destination: str) -> bool:
        return destination.endswith(self.dead_letter_destination(""))

    # -- connection --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        require_asyncio("the RabbitMQ broker", "aio-pika", "the in-memory broker (memory://)")
        # Connect before the shared lifecycle opens its task group, so that a connection
        # error reaches the caller as the BrokerUnavailable it is, not inside a group.
        if self._state != "new" or self._link is not None:
            return await super().__aenter__()  # refuses: entered before
        self._link = await self._connect()
        try:
            return await super().__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close()
            raise

    async def _open(self) -> None:
        if self._link is None:
            self._link = await self._connect()

    async def _close(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.lost.set()
            with anyio.move_on_after(5), contextlib.suppress(Exception):
                await link.connection.close()

    def _explain(self, exc: BaseException) -> str:
        where = _mask(self.url)
        parts = urlsplit(self.url)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        if isinstance(exc, TimeoutError):
            return (
                f"RabbitMQ at {where} did not answer within {self.connect_timeout} s; "
                "check the host and port, and that nothing blocks the connection"
            )
        if isinstance(
            exc,
            aiormq.exceptions.AuthenticationError | aiormq.exceptions.ProbableAuthenticationError,
        ):
            return (
                f"RabbitMQ at {where} refused the login ({exc}); check the user name and "
                f"password in the URL, and that the user may use vhost {vhost!r}"
            )
        if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
            return (
                f"RabbitMQ at {where} closed the connection while opening vhost {vhost!r}; "
                "check that the vhost exists and that the user may use it"
            )
        if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, aiormq.exceptions.AMQPConnectionError)
            and exc.args
            and exc.args[0] == 111
        ):
            return (
                f"nothing accepted a connection at {where}; check that RabbitMQ is running "
                "and listening on that host and port (rabbitmq-server starts it)"
            )
        return (
            f"cannot connect to RabbitMQ at {where} ({type(exc).__name__}: {exc}); check that "
            f"RabbitMQ is running there, that the user and password are right and that vhost "
            f"{vhost!r} exists and the user may use it"
        )

    async def _connect(self) -> _Link:
        try:
            with anyio.fail_after(self.connect_timeout):
                connection = await aio_pika.connect(
                    self.url,
                    timeout=self.connect_timeout,
                    ssl_context=self._ssl_context,
                    client_properties={"connection_name": self.connection_name},
                )
                try:
                    publisher = await connection.channel(publisher_confirms=True)
                    topology = await connection.channel(publisher_confirms=False)
                    link = _Link(
                        connection, publisher, await publisher.get_underlay_channel(), topology
                    )
                except BaseException:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await connection.close()
                    raise
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(self._explain(exc)) from exc
        connection.close_callbacks.add(link.on_close)
        return link

    async def _connected(self) -> _Link:
        """The live connection; connects again (until it succeeds) if it was lost."""
        link = self._link
        if link is not None and link.alive:
            return link
        async with self._relink:
            link = self._link
            if link is not None and link.alive:
                return link
            if self._closed:
                raise BrokerClosed("the RabbitMQ broker is closed; create a new one to connect")
            if link is not None:
                link.lost.set()
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(1),
                    contextlib.suppress(Exception),
                ):
                    await link.connection.close()
            failures = 0
            while True:
                if self._closed:
                    raise BrokerClosed("the RabbitMQ broker closed while connecting again")
                try:
                    link = await self._connect()
                    break
                except BrokerUnavailable as exc:
                    failures += 1
                    if failures == 1 or failures % 60 == 0:
                        logger.warning(
                            "lost the connection to RabbitMQ; trying again every %s s: %s",
                            self.reconnect_interval,
                            exc,
                        )
                await anyio.sleep(self.reconnect_interval)
            self._link = link
            logger.info("connected to RabbitMQ at %s again", _mask(self.url))
            return link

    async def _channel(self, link: _Link, *, confirms: bool) -> AbstractChannel:
        """A fresh channel on *link* (for the shared ones whose channel was closed)."""
        channel = await link.connection.channel(publisher_confirms=confirms)
        return channel

    async def _publisher(self, link: _Link) -> RawChannel:
        if not link.publisher.is_closed:
            return link.publisher_raw
        async with link.lock:
            if link.publisher.is_closed:
                publisher = await self._channel(link, confirms=True)
                link.publisher_raw = await publisher.get_underlay_channel()
                link.publisher = publisher
        return link.publisher_raw

    async def _topology(self, link: _Link) -> AbstractChannel:
        if not link.topology.is_closed:
            return link.topology
        async with link.lock:
            if link.topology.is_closed:
                link.topology = await self._channel(link, confirms=False)
        return link.topology

    # -- topology ----------------------------------------------------------------------------

    async def _declare_group(self, channel: AbstractChannel, destination: str, group: str) -> str:
        """Declare *destination*'s exchange and *group*'s queue bound to it (and, for a
        destination that is not itself a dead-letter one, the dead-letter destination the
        queue falls back to); returns the queue's name."""
        name = self.queue_name(destination, group)
        try:
            exchange = await channel.declare_exchange(
                self.exchange_name(destination), aio_pika.ExchangeType.FANOUT, durable=True
            )
            arguments: dict[str, Any] | None = None
            if not self._is_dead_letter(destination):
                dead = self.dead_letter_destination(destination)
                await self._declare_group(channel, dead, dead)
                arguments = {"x-dead-letter-exchange": self.exchange_name(dead)}
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            await queue.bind(exchange, routing_key="")
        except _REFUSALS as exc:
            raise BrokerError(
                f"RabbitMQ refused to set up queue {name!r} for {destination!r} ({exc}); if an "
                "exchange or queue of that name already exists with other settings (not "
                "durable, another type, other arguments), delete it or choose another prefix"
            ) from exc
        return name

    async def _declare_destination(self, link: _Link, destination: str) -> None:
        """Declare, once per broker object, what a send to *destination* needs."""
        lock = self._declaring.get(destination)
        if lock is None:
            lock = self._declaring[destination] = anyio.Lock()
        async with lock:
            if destination in self._declared:
                return
            channel = await self._topology(link)
            await self._declare_group(channel, destination, destination)
            self._declared.add(destination)
        self._declaring.pop(destination, None)

    # -- sending -----------------------------------------------------------------------------

    def _properties(
        self, body: bytes, key: str | None, headers: Mapping[str, str], delivery_mode: int
    ) -> spec.Basic.Properties:
        head = _ENVELOPE_HEAD.match(body)
        return spec.Basic.Properties(
            content_type=_CONTENT_TYPE,
            delivery_mode=delivery_mode,
            message_id=head[1].decode() if head else None,
            message_type=head[2].decode() if head else None,
            correlation_id=key if key is not None and len(key) <= 255 else None,
            timestamp=_dt.datetime.now(_dt.UTC),
            headers=dict(headers) if headers else None,
        )

    async def _send(
        self, destination: str, body: bytes, *, key: str | None, headers: Mapping[str, str]
    ) -> None:
        routing_key = key if key is not None and len(key.encode()) <= 255 else ""
        await self._publish(
            self.exchange_name(destination),
            routing_key,
            body,
            self._properties(body, key, headers, _PERSISTENT),
            declare=destination,
        )

    async def _send_reply(self, address: str, body: bytes, *, key: str | None) -> None:
        # The default exchange routes by queue name; with no such queue (the requester went
        # away) RabbitMQ drops the reply, as the reply contract allows.
        await self._publish(
            "", address, body, self._properties(body, key, _NO_HEADERS, _TRANSIENT), declare=None
        )

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        declare: str | None,
    ) -> None:
        """Publish until RabbitMQ confirms it, across reconnects, for up to publish_timeout."""
        started = anyio.current_time()
        failure: BaseException | None = None
        link = self._link
        if link is not None and link.alive and (declare is None or declare in self._declared):
            # The usual case, bounded by the client's own timeout rather than a cancel scope.
            try:
                failure = await self._attempt(
                    link, exchange, routing_key, body, properties, declare, self.publish_timeout
                )
            except TimeoutError as exc:
                raise self._unconfirmed(exchange, exc) from exc
            if failure is None:
                return
        remaining = self.publish_timeout - (anyio.current_time() - started)
        try:
            with anyio.fail_after(max(remaining, 0.0)):
                while True:
                    if failure is not None:
                        logger.debug("sending again after %r", failure)
                        if link is not None and link.alive:
                            await anyio.sleep(0.05)  # only a channel failed: do not spin
                    link = await self._connected()
                    failure = await self._attempt(
                        link, exchange, routing_key, body, properties, declare, None
                    )
                    if failure is None:
                        return
        except TimeoutError:
            raise self._unconfirmed(exchange, failure) from failure

    async def _attempt(
        self,
        link: _Link,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        declare: str | None,
        within: float | None,
    ) -> BaseException | None:
        """Publish once on *link*; returns what went wrong if another try may succeed."""
        try:
            if declare is not None and declare not in self._declared:
                await self._declare_destination(link, declare)
            channel = await self._publisher(link)
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                timeout=within,
            )
            return None
        except asyncio.CancelledError as exc:
            if not _cancelled_by_the_client():
                raise
            return exc
        except (BrokerError, TimeoutError):
            raise
        except Exception as exc:
            if not _is_transient(exc):
                raise BrokerError(
                    f"RabbitMQ at {_mask(self.url)} refused a message for exchange "
                    f"{exchange!r}: {exc}"
                ) from exc
            if declare is not None and isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                self._declared.discard(declare)  # deleted behind our back: declare it again
            return exc

    def _unconfirmed(self, exchange: str, failure: BaseException | None) -> BrokerUnavailable:
        problem = f" (last problem: {failure!r})" if failure is not None else ""
        return BrokerUnavailable(
            f"RabbitMQ at {_mask(self.url)} did not confirm a message for exchange "
            f"{exchange or '(default)'!r} within {self.publish_timeout} s{problem}; check that "
            "RabbitMQ is running and not blocking publishers for a memory or disk alarm"
        )

    # -- receiving ---------------------------------------------------------------------------

    async def _consume(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        destination, group = consumer.destination, consumer.group

        async def declare(channel: AbstractChannel) -> str:
            return await self._declare_group(channel, destination, group)

        await self._consume_loop(consumer, declare, None, task_status)

    async def _consume_replies(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[str]
    ) -> None:
        # A name of our own rather than a server-named queue: it stays the same after a
        # reconnect, so the address handed out keeps working.
        name = f"{self.prefix}pysaga.reply.{uuid.uuid4().hex}"

        async def declare(channel: AbstractChannel) -> str:
            await channel.declare_queue(name, durable=False, exclusive=True, auto_delete=True)
            return name

        await self._consume_loop(consumer, declare, name, task_status)

    async def _consume_loop(
        self,
        consumer: Consumer,
        declare: Callable[[AbstractChannel], Coroutine[Any, Any, str]],
        started_with: str | None,
        task_status: anyio.abc.TaskStatus[Any],
    ) -> None:
        """Consume on a channel of the live connection; on a new one after it is lost."""
        prefetch = self.prefetch or consumer.concurrency
        limit = anyio.Semaphore(consumer.concurrency) if prefetch > consumer.concurrency else None
        on_message = self._on_message(consumer, limit)
        started = False
        while True:
            link = await self._connected()
            channel: AbstractChannel | None = None
            try:
                channel = await link.connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                queue = await declare(channel)
                raw = await channel.get_underlay_channel()
                # Start again when the channel closes, or when RabbitMQ cancels the consumer
                # (its queue was deleted): the next round declares the queue again.
                gone = anyio.Event()

                def on_cancel(*_: Any, gone: anyio.Event = gone) -> None:
                    gone.set()

                raw.on_consumer_cancel_callbacks.add(on_cancel)
                raw.closing.add_done_callback(on_cancel)
                await raw.basic_consume(queue, on_message, no_ack=False)
                if not started:
                    started = True
                    task_status.started(started_with)
                else:
                    logger.info("consuming %r again", queue)
                await gone.wait()
            except asyncio.CancelledError:
                if not _cancelled_by_the_client():
                    raise
            except BrokerError:
                if not started:
                    raise
                logger.exception("cannot consume %r; trying again", consumer.destination)
            except Exception as exc:
                if not started and not _is_transient(exc):
                    raise BrokerError(
                        f"cannot consume {consumer.destination!r} from RabbitMQ at "
                        f"{_mask(self.url)}: {exc}"
                    ) from exc
                logger.warning(
                    "consuming %r stopped (%s: %s); starting again",
                    consumer.destination,
                    type(exc).__name__,
                    exc,
                )
            finally:
                if channel is not None and not channel.is_closed:
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(5),
                        contextlib.suppress(Exception),
                    ):
                        await channel.close()
            if link.alive:  # only the channel failed: do not spin
                await anyio.sleep(self.reconnect_interval)

    def _on_message(
        self, consumer: Consumer, limit: anyio.Semaphore | None
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        """The callback the client runs (in a task of its own) for each delivery."""

        async def on_message(message: DeliveredMessage) -> None:
            # A consumer only gets Basic.Deliver, whose tag is always set.
            tag = cast("int", cast("spec.Basic.Deliver", message.delivery).delivery_tag)
            amqp_headers = message.header.properties.headers
            headers = _headers_of(amqp_headers) if amqp_headers else _NO_HEADERS
            try:
                if limit is None:
                    done = await consumer.process(message.body, headers)
                else:
                    async with limit:
                        done = await consumer.process(message.body, headers)
            except Exception:
                logger.exception(
                    "could not settle a message from %r; handing it back to the queue",
                    consumer.destination,
                )
                await anyio.sleep(_SETTLE_PAUSE)
                with contextlib.suppress(Exception):
                    await message.channel.basic_nack(tag, requeue=True)
                return
            # Not done: the subscription is closing; the message goes back when its channel
            # closes (see the module's docstring).
            if done:
                # Without waiting for the write: a lost ack only means a redelivery.
                with contextlib.suppress(Exception):
                    await message.channel.basic_ack(tag, wait=False)

        return on_message


_PREFIX_MAX: Final = 200
"""The longest prefix: RabbitMQ names are at most 255 bytes, and a queue's name is the prefix,
the destination, and for a group of its own a dot and the group's name."""


def _take_prefix(url: str, prefix: str | None) -> tuple[str, str]:
    """Split ``?prefix=`` off *url*; return the URL without it and the prefix to use (the
    keyword *prefix* wins over the URL's).

    Raises:
        ValueError: the URL gives ``prefix`` twice, or the prefix is too long or has a
            character RabbitMQ names cannot hold.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for key, value in query if key == "prefix"]
    if len(given) > 1:
        raise ValueError(
            f"RabbitMQ URL {_mask(url)!r} gives prefix= {len(given)} times; give it once"
        )
    if given:
        url = urlunsplit(parts._replace(query=urlencode([kv for kv in query if kv[0] != "prefix"])))
    if prefix is None:
        prefix = given[0] if given else ""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, like 'shop.', got {prefix!r}")
    if len(prefix.encode()) > _PREFIX_MAX:
        raise ValueError(
            f"prefix is {len(prefix.encode())} bytes long; at most {_PREFIX_MAX} leave room "
            "for the destination in RabbitMQ's 255-byte names"
        )
    if any(ord(char) < 32 for char in prefix):
        raise ValueError(f"prefix {prefix!r} has a control character; use letters, digits, '.'")
    return url, prefix
