"""What every broker adapter shares: the lifecycle, delivery rules and tracing.

An adapter subclasses :class:`BaseBroker` and supplies the transport: how to connect, send
bytes to a destination, consume a destination as a group (acknowledging what
:meth:`Consumer.process` says to), and keep a private reply address. Everything the
:class:`~pysaga.messaging.Broker` contract promises about a message once it arrived — decoding,
redelivery with backoff, dead-lettering with the reason, graceful close, trace context — is
written once, here, so the adapters cannot drift apart.

Redelivery happens in the consumer, not on the broker: a failed message is retried in place
after a backoff (keeping its place in line, which Kafka's per-key order needs), and only a
process that dies hands it back to the broker unacknowledged. The broker's own redelivery is
thus the crash path, and the retry budget is the same on every broker.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import anyio.abc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from ..errors import BrokerClosed, DecodeError
from ..messaging import DeadLetter, DeadLetterHandler, Envelope, Handler
from ..policies import Retry
from ..tracing import Telemetry, mark_error, telemetry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping
    from types import TracebackType

    from opentelemetry.trace import TracerProvider

__all__ = ("DEFAULT_REDELIVERY", "BaseBroker", "Consumer")

logger = logging.getLogger("pysaga.brokers")

DEFAULT_REDELIVERY = Retry(attempts=5, backoff=0.05, multiplier=3.0, max_backoff=5.0)
"""Five deliveries in all, 0.05 s, 0.15 s, 0.45 s and 1.35 s apart (less jitter)."""

_DEAD_LETTER_RETRY = Retry(attempts=None, backoff=0.1, max_backoff=30.0)

ATTR_DESTINATION = "messaging.destination.name"
ATTR_MESSAGE_ID = "messaging.message.id"
ATTR_CONVERSATION = "messaging.message.conversation_id"
ATTR_GROUP = "messaging.consumer.group.name"
ATTR_SYSTEM = "messaging.system"


class Consumer:
    """One running subscription: what an adapter's consume loop hands each message to.

    The adapter calls :meth:`process` for each message it receives and acknowledges the
    message when it returns ``True``; on ``False`` (the subscription is closing) it leaves the
    message to the broker for another consumer. If :meth:`process` raises (it is cancelled),
    the message must not be acknowledged either.
    """

    __slots__ = (
        "_broker",
        "_deliver",
        "_idle",
        "_inflight",
        "_scope",
        "_stopped",
        "closing",
        "concurrency",
        "destination",
        "group",
    )

    def __init__(
        self,
        broker: BaseBroker,
        destination: str,
        group: str,
        concurrency: int,
        deliver: Callable[[Consumer, bytes, Mapping[str, str]], Awaitable[None]],
    ) -> None:
        self._broker = broker
        self.destination = destination
        self.group = group
        self.concurrency = concurrency
        self._deliver = deliver
        self.closing = False
        self._inflight = 0
        self._idle: anyio.Event | None = None  # made by close() when it has to wait
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    def __repr__(self) -> str:
        return f"<Consumer {self.destination!r} group={self.group!r} inflight={self._inflight}>"

    @property
    def inflight(self) -> int:
        """Messages being handled right now."""
        return self._inflight

    async def process(self, body: bytes, headers: Mapping[str, str] | None = None) -> bool:
        """Handle one message; ``True`` means acknowledge it, ``False`` leave it unacknowledged."""
        if self.closing:
            return False
        self._inflight += 1
        try:
            await self._deliver(self, body, headers or {})
        finally:
            self._inflight -= 1
            if self._inflight == 0 and self._idle is not None:
                self._idle.set()
        return True

    async def close(self) -> None:
        """Stop taking messages, let those in flight finish (up to the drain timeout), stop.

        It runs to its end even when the caller is being cancelled (it is bounded by the
        drain timeout), so that a consumer is never left half stopped.
        """
        with anyio.CancelScope(shield=True):
            if not self.closing:
                self.closing = True
                if self._inflight:
                    self._idle = anyio.Event()
                    with anyio.move_on_after(self._broker.drain_timeout):
                        await self._idle.wait()
                if self._scope is not None:
                    self._scope.cancel()
            await self._stopped.wait()


class BaseBroker(abc.ABC):
    """The shared half of every broker adapter.

    Args:
        redelivery: How often, and how far apart, a failing handler gets a message again
            before it is dead-lettered (default: five deliveries, from 0.05 s to 1.35 s apart).
        concurrency: Messages one subscription handles at the same time (the prefetch).
        drain_timeout: On close, seconds to let the handlers in flight finish.
        tracer_provider: Where spans go (default: the global OpenTelemetry provider).
    """

    system: ClassVar[str] = "pysaga"
    """The ``messaging.system`` span attribute: ``memory``, ``rabbitmq``, ``kafka``."""

    def __init__(
        self,
        *,
        redelivery: Retry = DEFAULT_REDELIVERY,
        concurrency: int = 64,
        drain_timeout: float = 10.0,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if not isinstance(redelivery, Retry):
            raise TypeError(f"redelivery must be a pysaga.Retry, got {redelivery!r}")
        if redelivery.attempts is None:
            raise ValueError(
                "redelivery=Retry(attempts=None) would retry a poison message forever; give "
                "a number of deliveries after which it is dead-lettered"
            )
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.redelivery = redelivery
        self.concurrency = concurrency
        self.drain_timeout = drain_timeout
        self._telemetry = Telemetry(tracer_provider) if tracer_provider else telemetry
        self._tg: anyio.abc.TaskGroup | None = None
        self._consumers: set[Consumer] = set()
        self._state = "new"

    # -- what an adapter supplies ------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect. Translate the client's errors into :class:`~pysaga.BrokerUnavailable`."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Disconnect (every consumer has already stopped)."""

    @abc.abstractmethod
    async def _send(
        self, destination: str, body: bytes, *, key: str | None, headers: Mapping[str, str]
    ) -> None:
        """Send *body* to *destination*; return once the broker has accepted it. *key* is the
        correlation id, to keep one saga's messages in order where the broker partitions."""

    @abc.abstractmethod
    async def _consume(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Consume ``consumer.destination`` as ``consumer.group`` until cancelled; call
        ``task_status.started()`` once a message published from then on will be received."""

    @abc.abstractmethod
    async def _consume_replies(
        self, consumer: Consumer, *, task_status: anyio.abc.TaskStatus[str]
    ) -> None:
        """Consume a private address of this connection until cancelled; call
        ``task_status.started(address)`` once it is ready."""

    async def _send_reply(self, address: str, body: bytes, *, key: str | None) -> None:
        """Send a reply to a private address (default: like any destination)."""
        await self._send(address, body, key=key, headers={})

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise BrokerClosed(
                f"{type(self).__name__} was already entered once; create a new broker object "
                "to connect again"
            )
        self._state = "opening"
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await self._open()
        except BaseException:
            self._state = "closed"
            tg.cancel_scope.cancel()
            # Exit the task group as if nothing happened (it holds no task yet), so that the
            # caller sees the connection error itself, not an exception group around it.
            await tg.__aexit__(None, None, None)
            raise
        self._tg = tg
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        self._state = "closing"
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as closing:
                    for consumer in list(self._consumers):
                        closing.start_soon(consumer.close)
                with contextlib.suppress(Exception):
                    await self._close()
        finally:
            self._state = "closed"
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)

    def _check_open(self) -> anyio.abc.TaskGroup:
        if self._tg is None or self._state != "open":
            raise BrokerClosed(
                f"{type(self).__name__} is {self._state}: use it inside 'async with broker:'"
            )
        return self._tg

    @property
    def is_open(self) -> bool:
        """Whether the broker is entered and not closing."""
        return self._state == "open"

    # -- the Broker protocol -----------------------------------------------------------------

    def dead_letter_destination(self, destination: str) -> str:
        """Where messages given up on from *destination* go: ``<destination>.dead-letter``."""
        return f"{destination}.dead-letter"

    async def publish(self, destination: str, envelope: Envelope) -> None:
        """Send *envelope* to *destination*; returns once the broker has accepted it."""
        self._check_open()
        if self._telemetry.tracer is None:
            await self._send(
                destination, envelope.encode(), key=envelope.correlation_id, headers={}
            )
            return
        with self._sending(destination, envelope) as traced:
            await self._send(destination, traced.encode(), key=envelope.correlation_id, headers={})

    async def reply(self, address: str, envelope: Envelope) -> None:
        """Send *envelope* to a reply address taken from a message's ``reply_to``."""
        self._check_open()
        if self._telemetry.tracer is None:
            await self._send_reply(address, envelope.encode(), key=envelope.correlation_id)
            return
        with self._sending(address, envelope) as traced:
            await self._send_reply(address, traced.encode(), key=envelope.correlation_id)

    @contextlib.contextmanager
    def _sending(self, destination: str, envelope: Envelope) -> Iterator[Envelope]:
        """A producer span for sending *envelope*, and the envelope carrying its context."""
        tracer = self._telemetry.tracer
        assert tracer is not None
        with tracer.start_as_current_span(
            f"send {envelope.type}",
            kind=SpanKind.PRODUCER,
            attributes=self._attributes(destination, envelope),
        ):
            headers = dict(envelope.headers)
            propagate.inject(headers)
            yield envelope.model_copy(update={"headers": headers})

    async def subscribe(
        self,
        destination: str,
        handler: Handler,
        *,
        group: str | None = None,
        concurrency: int | None = None,
    ) -> Consumer:
        """Consume *destination* in *group* (default: the destination's own group); returns
        once a message published from now on will reach *handler*."""
        tg = self._check_open()
        group = group or destination

        async def deliver(consumer: Consumer, body: bytes, headers: Mapping[str, str]) -> None:
            await self._deliver(consumer, handler, body)

        consumer = Consumer(self, destination, group, concurrency or self.concurrency, deliver)
        await tg.start(self._run, consumer, self._consume)
        return consumer

    async def subscribe_dead_letters(
        self, destination: str, handler: DeadLetterHandler, *, group: str | None = None
    ) -> Consumer:
        """Consume what consumers of *destination* gave up on (see :class:`DeadLetter`)."""
        tg = self._check_open()
        dead = self.dead_letter_destination(destination)

        async def deliver(consumer: Consumer, body: bytes, headers: Mapping[str, str]) -> None:
            letter = DeadLetter.from_message(body, headers)
            failures = 0
            while True:  # a dead-letter handler is retried until it succeeds: nothing is lost
                try:
                    await handler(letter)
                    return
                except Exception:
                    failures += 1
                    logger.exception("dead-letter handler for %r failed; retrying", dead)
                    await anyio.sleep(_DEAD_LETTER_RETRY.delay(failures))

        consumer = Consumer(self, dead, group or dead, 1, deliver)
        await tg.start(self._run, consumer, self._consume)
        return consumer

    async def open_reply_channel(self, handler: Handler) -> Consumer:
        """Receive on a private address of this connection; its ``destination`` is the
        address to put in ``reply_to``."""
        tg = self._check_open()

        async def deliver(consumer: Consumer, body: bytes, headers: Mapping[str, str]) -> None:
            try:
                envelope = Envelope.decode(body)
                with self._received(consumer, envelope):
                    await handler(envelope)
            except Exception:  # a reply can be asked for again: never block the channel
                logger.exception("dropped a reply that could not be handled")

        consumer = Consumer(self, "(replies)", "(private)", self.concurrency, deliver)
        address: str = await tg.start(self._run, consumer, self._consume_replies)
        consumer.destination = address
        return consumer

    # -- delivery ----------------------------------------------------------------------------

    async def _run(
        self,
        consumer: Consumer,
        consume: Callable[..., Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._consumers.add(consumer)
        try:
            with anyio.CancelScope() as scope:
                consumer._scope = scope
                await consume(consumer, task_status=task_status)
        finally:
            self._consumers.discard(consumer)
            consumer._stopped.set()

    async def _deliver(self, consumer: Consumer, handler: Handler, body: bytes) -> None:
        """Decode, hand to *handler* with redelivery, and dead-letter what cannot be handled."""
        try:
            envelope = Envelope.decode(body)
        except DecodeError as exc:
            await self._dead_letter(consumer, body, str(exc), deliveries=0)
            return
        policy = self.redelivery
        failures = 0
        traced = self._telemetry.tracer is not None
        while True:
            try:
                if traced:
                    with self._received(consumer, envelope):
                        await handler(envelope)
                else:
                    await handler(envelope)
                return
            except DecodeError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                await self._dead_letter(consumer, body, reason, deliveries=failures + 1)
                return
            except Exception as exc:
                failures += 1
                if not policy.may_retry(exc, failures):
                    reason = f"{type(exc).__name__}: {exc}"
                    logger.error(
                        "message %s (%s) on %r failed %d times; dead-lettered: %s",
                        envelope.id,
                        envelope.type,
                        consumer.destination,
                        failures,
                        reason,
                    )
                    await self._dead_letter(consumer, body, reason, deliveries=failures)
                    return
                logger.warning(
                    "message %s (%s) on %r failed (delivery %d), redelivering: %s: %s",
                    envelope.id,
                    envelope.type,
                    consumer.destination,
                    failures,
                    type(exc).__name__,
                    exc,
                )
                await anyio.sleep(policy.delay(failures))

    async def _dead_letter(
        self, consumer: Consumer, body: bytes, reason: str, *, deliveries: int
    ) -> None:
        letter = DeadLetter(
            body=body,
            reason=reason,
            destination=consumer.destination,
            group=consumer.group,
            deliveries=deliveries,
            dead_lettered_at=_dt.datetime.now(_dt.UTC),
        )
        dead = self.dead_letter_destination(consumer.destination)
        logger.warning(
            "dead-lettered a message from %r to %r: %s", consumer.destination, dead, reason
        )
        await self._send(dead, body, key=None, headers=letter.to_headers())

    def _attributes(self, destination: str, envelope: Envelope) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            ATTR_SYSTEM: self.system,
            ATTR_DESTINATION: destination,
            ATTR_MESSAGE_ID: envelope.id,
        }
        if envelope.correlation_id:
            attributes[ATTR_CONVERSATION] = envelope.correlation_id
        return attributes

    @contextlib.contextmanager
    def _received(self, consumer: Consumer, envelope: Envelope) -> Any:
        """Run the handler in the sender's trace, inside a consumer span."""
        tracer = self._telemetry.tracer
        if tracer is None:
            yield
            return
        token = otel_context.attach(propagate.extract(envelope.headers))
        try:
            attributes = self._attributes(consumer.destination, envelope)
            attributes[ATTR_GROUP] = consumer.group
            with tracer.start_as_current_span(
                f"process {envelope.type}",
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    yield
                except Exception as exc:
                    mark_error(span, exc)
                    raise
        finally:
            otel_context.detach(token)
