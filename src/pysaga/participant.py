"""The service side of remote steps: typed command handlers behind an inbox.

A :class:`Participant` is one service (``"stock"``, ``"payments"``) that handles the commands a
saga's remote steps send it. It consumes the destination named after the service as a
competing-consumer group, so several copies of the service share the work.

For each command:

* the handler registered for its type gets the typed command and a :class:`HandlerContext`
  (the saga id and the step's idempotency key among it);
* what the handler returns is the reply; raising :class:`~pysaga.BusinessError` replies with
  a refusal (the saga compensates); any other exception replies with a technical failure (the
  saga's retry policy decides whether to send the command again);
* success and refusal replies are recorded in the inbox under the command's message id, so a
  command that arrives again — redelivered by the broker, or re-sent by an orchestrator after
  a timeout or a restart — is answered from the inbox without running the handler twice.

What an inbox cannot cover on its own is a crash after the handler's effect and before the
inbox write: the command is then delivered again and the handler runs again, with the same
idempotency key. Handlers should use that key to make their effect idempotent (an insert keyed
by it, say), or use a :class:`~pysaga.TransactionalInbox` (``inbox="postgresql://..."``): the
participant then handles each command in one database transaction, the handler's own writes
(through ``ctx.transaction``), the inbox record and the reply (in an outbox, sent after the
commit) together, so the effect happens once per message and the reply is sent if and only if
it committed. A relay task sends what a crash left in the outbox.

A participant also takes part in choreographed sagas (:class:`~pysaga.Choreography`): it
reacts to a flow's events with handlers registered by :meth:`Participant.on`, through the same
inbox and outbox, and publishes the next events with ``ctx.publish(event)``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, overload

import anyio
import anyio.abc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from pydantic import BaseModel

from . import stores
from ._keyed_lock import KeyedLock
from .errors import BusinessError, DecodeError, SagaDefinitionError, UnknownMessageType
from .messaging import (
    HEADER_FAILURE,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_SERVICE,
    HEADER_STEP,
    Broker,
    Done,
    Envelope,
    Failed,
    Refused,
    Subscription,
    command_id,
    message_type,
    schema_version,
)
from .models import Failure
from .protocols import Inbox, InboxRecord, InboxTransaction, OutboxMessage, TransactionalInbox
from .tracing import Telemetry, telemetry

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

    from opentelemetry.trace import TracerProvider

    from .choreography import Choreography

__all__ = ("HandlerContext", "Participant")

logger = logging.getLogger("pysaga.participant")

C = TypeVar("C", bound=BaseModel)

_HandlerT = TypeVar("_HandlerT", bound=Callable[..., Awaitable[Any]])


class _Published:
    """The events a handler published with ``ctx.publish``, in order. The participant hands
    one to the handler's context and, once the handler returned, sends them (or writes them
    to the outbox in the handler's transaction)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[tuple[str, Envelope]] = []


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a command handler is told about the message it handles.

    Attributes:
        service: The participant's service name.
        message_id: The command's message id (the same on every re-send of it).
        saga_id: The saga that sent it (the envelope's correlation id), if any.
        idempotency_key: Stable for one saga step across retries, re-sends and restarts:
            key the handler's effect by it. Its compensation command carries the same key.
        step: The saga step that sent it, if any.
        headers: The envelope's headers.
        transaction: With a :class:`~pysaga.TransactionalInbox`, the store's connection
            inside the transaction the command is handled in (an asyncpg connection for the
            PostgreSQL inbox): write the handler's own rows through it and they commit with
            the inbox record and the reply, or not at all. ``None`` with other inboxes.
        failure: In a compensation handler (:meth:`Participant.compensates`): why the saga
            turned back (the failed step's error, a passed deadline, an operator's abort),
            as the orchestrator sent it. ``None`` for other commands, for events, and for a
            compensation command that carries no readable reason (one not sent by a pysaga
            orchestrator, say).
        sent_at: When the message was created (its envelope's timestamp, in seconds since the
            epoch): for an event, when it happened, which may be before an event heard
            earlier.

    For an event handler (:meth:`Participant.on`) the message is the event: ``saga_id`` is
    the choreographed saga's id, ``idempotency_key`` the event's id (the same on every
    redelivery of it), and ``step`` is ``None``.
    """

    service: str
    message_id: str
    saga_id: str | None
    idempotency_key: str
    step: str | None
    headers: Mapping[str, str]
    transaction: Any = None
    failure: Failure | None = None
    sent_at: float | None = None
    _published: _Published = field(default_factory=_Published, repr=False, compare=False)
    _flow: Choreography | None = field(default=None, repr=False, compare=False)

    @overload
    async def publish(self, event: BaseModel, /) -> None: ...

    @overload
    async def publish(self, destination: str, message: BaseModel, /) -> None: ...

    async def publish(
        self, destination: str | BaseModel, message: BaseModel | None = None, /
    ) -> None:
        """Publish the event *message* to *destination* as part of handling this message.

        In an event handler of a choreographed flow (:meth:`Participant.on`), give the event
        alone, ``await ctx.publish(StockReserved(...))``: it goes to the flow's destination
        for its type (:meth:`Choreography.destination() <pysaga.Choreography.destination>`),
        where every service that reacts to it, and the flow's observer, receive it.

        The event's envelope belongs to the same saga (its correlation id) and names this
        command as its cause; its id is derived from the command's, so the same event
        published again (a handler that ran again) carries the same id. Events of one
        handler are sent in the order they were published.

        With a transactional inbox the event is written to the outbox in the handler's
        transaction: it is sent if and only if that transaction commits. Otherwise it is
        published once the handler has returned. Either way, a handler that raises (a
        refusal included) publishes nothing.

        Raises:
            TypeError: *message* is not a pydantic model, or *destination* not a name.
            SagaDefinitionError: an event given alone is not declared by the flow whose
                event is being handled (or no flow's event is being handled).
        """
        if message is None and isinstance(destination, BaseModel):
            message = destination
            if self._flow is None:
                raise TypeError(
                    f"publish({type(message).__name__}(...)) without a destination works in "
                    "the event handler of a choreographed flow; here pass one: "
                    "ctx.publish('destination', message)"
                )
            destination = self._flow.destination(type(message))
        if not isinstance(destination, str) or not destination:
            raise TypeError(f"publish() needs a destination name, got {destination!r}")
        if not isinstance(message, BaseModel):
            raise TypeError(
                f"publish() takes a pydantic model (the event), got {type(message).__name__}"
            )
        envelope = Envelope.of(
            message,
            id=f"{self.message_id}#event-{len(self._published.events) + 1}",
            correlation_id=self.saga_id,
            causation_id=self.message_id,
            headers={HEADER_SERVICE: self.service},
        )
        self._published.events.append((destination, envelope))


@dataclass(frozen=True, slots=True)
class _Route:
    model: type[BaseModel]
    handler: Callable[..., Awaitable[Any]]
    wants_context: bool
    compensation: bool
    flow: Choreography | None = None
    """The choreographed flow of an event handler; ``None`` for a command handler."""


class _RollBack(Exception):
    """Leaves a handler's savepoint (a refusal) or its transaction (a technical failure) so
    that it rolls back."""


_LATE_REFUSAL = Refused(reason="the step was compensated before its command arrived")


class Participant:
    """A service that handles saga commands from the broker.

    Args:
        service: The service's name: the destination the commands arrive on, and the name
            remote steps give as ``service=``.
        broker: A broker URL (opened and closed with the participant), or a
            :class:`~pysaga.Broker` object the caller has entered.
        inbox: Where handled messages are remembered: a URL (``"memory://"``, the default,
            ``"sqlite:///stock-inbox.db"`` to remember across restarts, or
            ``"postgresql://..."`` to handle each command in one transaction with the
            handler's own writes) or an :class:`~pysaga.Inbox`. Entering the participant
            enters it.
        group: The consumer group (default: the service name). Copies of a service in one
            group share the commands.
        concurrency: Commands handled at the same time (default: the broker's).
        inbox_retention: Seconds a handled message is remembered (default: 7 days); a
            command re-sent later than that would be handled again.
        relay_interval: With a transactional inbox: seconds between two rounds of the relay
            that sends what the outbox still holds (default: 1). It also runs once at start.
        relay_grace: With a transactional inbox: seconds an outbox message is left to the
            copy that wrote it (which sends it right after its commit) before the relay
            sends it (default: 5).
        tracer_provider: Where spans go (default: the global OpenTelemetry provider).
        flows: The choreographed flows (:class:`~pysaga.Choreography`) whose events this
            service reacts to with :meth:`on`.
        event_groups: The consumer group the service reads its events' destinations in.
            ``"service"`` (the default): its own, *group*, so every service that reacts to
            an event gets a copy and the copies of one service share them. ``"destination"``:
            the destination's own group, which the broker keeps from the first publish on,
            so events published before the service first ran wait for it; every reader in
            that group shares the events, so only one kind of service per flow may read so
            (the :class:`~pysaga.ChoreographyObserver` does).
        on_commit: Hooks called, in order, with each message's envelope right after the
            transaction that handled it commits and before the reply and events it wrote to
            the outbox are sent (with a transactional inbox only): for metrics, or for a crash
            test that kills the process at that point. A hook may be a plain or an async
            function; an exception from it is logged and does not undo the commit (the
            outbox relay sends what it wrote).

    Example::

        stock = Participant("stock", broker="amqp://guest:guest@localhost/")

        @stock.handles(ReserveStock)
        async def reserve(cmd: ReserveStock, ctx: HandlerContext) -> StockReserved:
            ...

        async with stock:
            await anyio.sleep_forever()
    """

    def __init__(
        self,
        service: str,
        *,
        broker: str | Broker | None = None,
        inbox: str | Inbox = "memory://",
        group: str | None = None,
        concurrency: int | None = None,
        inbox_retention: float = 7 * 24 * 3600.0,
        relay_interval: float = 1.0,
        relay_grace: float = 5.0,
        tracer_provider: TracerProvider | None = None,
        flows: Iterable[Choreography] = (),
        event_groups: Literal["service", "destination"] = "service",
        on_commit: Iterable[Callable[[Envelope], object]] = (),
    ) -> None:
        if not isinstance(service, str) or not service:
            raise ValueError("a participant needs a service name, like Participant('stock')")
        if not relay_interval > 0:
            raise ValueError(f"relay_interval must be positive, got {relay_interval!r}")
        if not relay_grace >= 0:
            raise ValueError(f"relay_grace must not be negative, got {relay_grace!r}")
        if event_groups not in ("service", "destination"):
            raise ValueError(
                f"event_groups is 'service' (each service its own group, the default) or "
                f"'destination' (the destination's own group), got {event_groups!r}"
            )
        self.service = service
        self.group = group or service
        self.concurrency = concurrency
        self.inbox_retention = inbox_retention
        self.relay_interval = relay_interval
        self.relay_grace = relay_grace
        self.broker = broker
        """The broker URL or object; may be set until the participant is entered."""
        self._inbox: Inbox = stores.inbox_from_url(inbox) if isinstance(inbox, str) else inbox
        if not isinstance(self._inbox, Inbox):
            raise TypeError(f"inbox={inbox!r}: pass an inbox URL or a pysaga.Inbox")
        self._transactional = self._inbox if isinstance(self._inbox, TransactionalInbox) else None
        self._routes: dict[str, _Route] = {}
        self._flows: tuple[Choreography, ...] = tuple(flows)
        self.event_groups = event_groups
        self._subscriptions: list[Subscription] = []
        self._guards = KeyedLock()
        self._telemetry = Telemetry(tracer_provider) if tracer_provider else telemetry
        self._stack: contextlib.AsyncExitStack | None = None
        self._broker: Broker | None = None
        self._subscription: Subscription | None = None
        self._on_commit = tuple(on_commit)
        for hook in self._on_commit:
            if not callable(hook):
                raise TypeError(f"on_commit=[...] takes functions of the envelope, got {hook!r}")

    def __repr__(self) -> str:
        return f"<Participant {self.service!r} handles={sorted(self._routes)}>"

    # -- declaring ---------------------------------------------------------------------------

    def handles(self, command: type[C]) -> Callable[[_HandlerT], _HandlerT]:
        """Register the decorated function as the handler of *command*.

        The handler is ``async def handler(cmd, ctx) -> Reply | None`` (``ctx`` may be left
        out). Its return value is the reply; ``None`` replies with a plain acknowledgement.
        Raise :class:`~pysaga.BusinessError` to refuse the command.
        """
        return self._register(command, compensation=False)

    def compensates(self, command: type[C]) -> Callable[[_HandlerT], _HandlerT]:
        """Register the handler of a compensation command (one that undoes a step).

        Like :meth:`handles`, but it should return ``None``, and it must tolerate having
        nothing to undo: a saga compensates a step whose outcome it does not know. Once it
        has run, the command it undoes is refused if it arrives late (delayed on the way, or
        re-sent), so an undone step is never done afterwards.
        """
        return self._register(command, compensation=True)

    def on(
        self, event: type[C], *, flow: Choreography | None = None
    ) -> Callable[[_HandlerT], _HandlerT]:
        """Register the decorated function as this service's reaction to the *event* of a
        choreographed flow.

        The handler is ``async def handler(event, ctx) -> None`` (``ctx`` may be left out). It
        does its work and publishes the flow's next events with ``await ctx.publish(Event(...))``
        (a refusal too is an event, such as ``StockNotAvailable``). The service consumes the
        event's destination in its own consumer group: every service that reacts to an event
        gets a copy of it, and copies of one service share them. Each event is handled once per
        service (the inbox), and with a transactional inbox the handler's writes and the events
        it publishes commit together. A handler that raises gets the event again, and in the end
        it is dead-lettered.

        Args:
            event: The event model, declared by *flow*.
            flow: The flow the event belongs to; may be left out when exactly one of the
                participant's ``flows=[...]`` declares it.

        Raises:
            SagaDefinitionError: *event* is no event of *flow* (or of exactly one of the
                participant's flows), or the function does not fit.
        """
        if not (isinstance(event, type) and issubclass(event, BaseModel)):
            raise SagaDefinitionError(
                f"participant {self.service!r}: on() takes a pydantic model class (the event), "
                f"got {event!r}"
            )
        if flow is None:
            found = [f for f in self._flows if f.declares(event)]
            if len(found) != 1:
                known = ", ".join(repr(f.name) for f in self._flows) or "none"
                problem = "none declares it" if not found else "several declare it"
                raise SagaDefinitionError(
                    f"participant {self.service!r}, on({event.__name__}): give the flow, as "
                    f"on({event.__name__}, flow=...), or list it in Participant(flows=[...]); "
                    f"of its flows ({known}) {problem}"
                )
            flow = found[0]
        elif not flow.declares(event):
            raise SagaDefinitionError(
                f"participant {self.service!r}, on({event.__name__}): flow {flow.name!r} does "
                f"not declare {event.__name__}; its events are "
                f"{', '.join(sorted(flow.events))}"
            )
        return self._register(event, compensation=False, flow=flow)

    def _register(
        self, command: type[C], *, compensation: bool, flow: Choreography | None = None
    ) -> Callable[[_HandlerT], _HandlerT]:
        if not (isinstance(command, type) and issubclass(command, BaseModel)):
            raise SagaDefinitionError(
                f"participant {self.service!r}: handles() takes a pydantic model class (the "
                f"command), got {command!r}"
            )
        kind = message_type(command)
        what = "event" if flow is not None else "cmd"

        def register(fn: _HandlerT) -> _HandlerT:
            where = f"participant {self.service!r}, handler of {kind!r}"
            handler: Callable[..., Awaitable[Any]] = fn
            if not inspect.iscoroutinefunction(handler):
                raise SagaDefinitionError(f"{where}: {fn!r} must be an 'async def' function")
            params = [
                p
                for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
            if not 1 <= len(params) <= 2:
                raise SagaDefinitionError(
                    f"{where}: write it as 'async def {fn.__name__}({what}: "
                    f"{command.__name__}, ctx: HandlerContext)' (ctx may be left out)"
                )
            if kind in self._routes:
                raise SagaDefinitionError(
                    f"{where}: {self._routes[kind].handler.__qualname__} already handles it; "
                    "one handler per message type"
                )
            try:
                returns = typing.get_type_hints(handler).get("return")
            except Exception:  # unresolvable annotations: nothing to check
                returns = None
            if isinstance(returns, type) and not issubclass(returns, (BaseModel, type(None))):
                raise SagaDefinitionError(
                    f"{where}: it is annotated to return {returns.__name__}; a handler returns "
                    "its reply (a pydantic model) or None"
                )
            if flow is not None and isinstance(returns, type) and returns is not type(None):
                raise SagaDefinitionError(
                    f"{where}: an event handler returns None (it is annotated to return "
                    f"{returns.__name__}); publish the next events with ctx.publish(event)"
                )
            self._routes[kind] = _Route(command, handler, len(params) == 2, compensation, flow)
            return fn

        return register

    @property
    def commands(self) -> Mapping[str, type[BaseModel]]:
        """The command types this participant handles, by message type name."""
        return {kind: r.model for kind, r in self._routes.items() if r.flow is None}

    @property
    def events(self) -> Mapping[str, type[BaseModel]]:
        """The event types this participant reacts to (:meth:`on`), by message type name."""
        return {kind: r.model for kind, r in self._routes.items() if r.flow is not None}

    # -- running -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already running; enter it once")
        if not self._routes:
            raise SagaDefinitionError(
                f"participant {self.service!r} handles no command and no event; register "
                "handlers with @participant.handles(Command) or @participant.on(Event) before "
                "starting it"
            )
        async with contextlib.AsyncExitStack() as stack:
            broker = self.broker
            if broker is None:
                raise ValueError(
                    f"participant {self.service!r} has no broker; pass broker='memory://name', "
                    "'amqp://...', 'kafka://...' or a Broker object"
                )
            from . import brokers

            broker, owned = brokers.resolve(broker)
            if owned:
                await stack.enter_async_context(broker)
            self._broker = broker
            await stack.enter_async_context(self._inbox)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(self._purge_periodically)
            if self._transactional is not None:
                tg.start_soon(self._relay_periodically, self._transactional)
            if self.commands:
                self._subscription = await broker.subscribe(
                    self.service,
                    self.handle_message,
                    group=self.group,
                    concurrency=self.concurrency,
                )
                stack.push_async_callback(self._subscription.close)
            for route in self._routes.values():
                if route.flow is None:
                    continue
                subscription = await broker.subscribe(
                    route.flow.destination(route.model),
                    self.handle_message,
                    group=None if self.event_groups == "destination" else self.group,
                    concurrency=self.concurrency,
                )
                self._subscriptions.append(subscription)
                stack.push_async_callback(subscription.close)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._subscription = None
        self._subscriptions = []
        if stack is not None:
            await stack.aclose()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; reports readiness once it consumes its commands."""
        async with self:
            task_status.started()
            await anyio.sleep_forever()

    async def _purge_periodically(self) -> None:
        while True:
            await anyio.sleep(min(3600.0, self.inbox_retention))
            try:
                removed = await self._inbox.purge(time.time() - self.inbox_retention)
                if removed:
                    logger.info("%s: forgot %d old inbox records", self.service, removed)
            except Exception:
                logger.exception("%s: purging the inbox failed; will retry", self.service)

    async def _relay_periodically(self, inbox: TransactionalInbox) -> None:
        """Send what the outbox still holds: at once (what a crash left), then every
        ``relay_interval`` seconds. Failures are logged and retried in the next round."""
        while True:
            try:
                while True:
                    sent = await inbox.relay(
                        self._send_outbox_message, older_than=self.relay_grace, limit=100
                    )
                    if sent:
                        logger.info("%s: the relay sent %d outbox messages", self.service, sent)
                    if sent < 100:
                        break
            except Exception as exc:
                logger.warning(
                    "%s: relaying the outbox failed (%s: %s); will retry",
                    self.service,
                    type(exc).__name__,
                    exc,
                )
            await anyio.sleep(self.relay_interval)

    async def _send_outbox_message(self, message: OutboxMessage) -> None:
        assert self._broker is not None
        try:
            envelope = Envelope.decode(message.envelope)
        except DecodeError:
            logger.error(
                "%s: an outbox message to %r is not an envelope; dropped: %r",
                self.service,
                message.destination,
                message.envelope[:200],
            )
            return
        # Sent later than it was written (by the relay, or by a copy of its message after a
        # crash): send it in the trace of the handler that wrote it, which its headers carry.
        token = (
            otel_context.attach(propagate.extract(envelope.headers))
            if self._telemetry.tracer is not None and "traceparent" in envelope.headers
            else None
        )
        try:
            if message.reply:
                await self._broker.reply(message.destination, envelope)
            else:
                await self._broker.publish(message.destination, envelope)
        finally:
            if token is not None:
                otel_context.detach(token)

    # -- handling ----------------------------------------------------------------------------

    async def handle_message(self, envelope: Envelope) -> None:
        """Handle one command envelope and send the reply (what the subscription calls).

        Raises:
            UnknownMessageType: no handler for the envelope's type (dead-lettered).
            DecodeError: the payload does not fit the command's model (dead-lettered).
        """
        route = self._routes.get(envelope.type)
        if route is None:
            known = ", ".join(map(repr, sorted(self._routes)))
            raise UnknownMessageType(
                f"participant {self.service!r} has no handler for message type "
                f"{envelope.type!r} (it handles {known})"
            )
        command = envelope.parse(route.model)
        # One step's command and its compensation carry one idempotency key: taking them in
        # turn means a compensation never runs while its command is being handled (and then
        # bars it), which would leave the command's effect in place with nobody to undo it.
        guard = envelope.headers.get(HEADER_IDEMPOTENCY_KEY) or envelope.id
        await self._guards.acquire(guard)
        try:
            if self._transactional is not None:
                record = await self._handle_in_transaction(
                    self._transactional, route, command, envelope
                )
            else:
                record = await self._handle(route, command, envelope)
        finally:
            self._guards.release(guard)
        if record is not None and envelope.reply_to:
            await self._send_reply(envelope, record)

    async def _handle(
        self, route: _Route, command: BaseModel, envelope: Envelope
    ) -> InboxRecord | None:
        """Handle *envelope* with a plain inbox and send its reply. Returns the record of an
        earlier copy of the message instead, if there was one (the handler did not run)."""
        record = await self._inbox.get(self.service, envelope.id)
        if record is not None:
            logger.info(
                "%s: message %s (%s) was handled before; answering from the inbox",
                self.service,
                envelope.id,
                envelope.type,
            )
            return record
        published = _Published()
        ctx = self._context(
            envelope, flow=route.flow, compensation=route.compensation, published=published
        )
        try:
            reply = await self._call_handler(route, command, envelope, ctx)
        except DecodeError:
            raise
        except Exception as exc:
            await self._technical_failure(envelope, exc)
            return None
        if not isinstance(reply, Refused):
            for destination, event in published.events:
                await self._broker_or_fail().publish(destination, event)
        fresh = _record(reply)
        record = await self._inbox.put(self.service, envelope.id, fresh)
        if route.compensation and HEADER_IDEMPOTENCY_KEY in envelope.headers:
            await self._bar_late_command(envelope)
        if record is not fresh:
            return record
        if envelope.reply_to:
            await self._reply(envelope, reply, id=envelope.id + "#reply")
        return None

    async def _handle_in_transaction(
        self, inbox: TransactionalInbox, route: _Route, command: BaseModel, envelope: Envelope
    ) -> InboxRecord | None:
        """Handle *envelope* in one transaction of *inbox*; send its reply and events once it
        committed. Returns the record of an earlier copy of the message instead, if there was
        one (the handler did not run).

        The transaction claims the message first (a copy being handled elsewhere is waited
        for), bars the command a compensation undoes before the compensation runs (so a
        command handled concurrently elsewhere either committed first, and is undone, or is
        refused), runs the handler in a savepoint (a refusal undoes its writes only), and
        records the reply and writes it, with the handler's events, to the outbox.
        """
        failure: Exception | None = None
        try:
            async with inbox.transaction(self.service) as tx:
                found = await tx.claim(envelope.id)
                if found is not None:
                    return await self._answer_handled(tx, found, envelope)
                key = envelope.headers.get(HEADER_IDEMPOTENCY_KEY)
                if route.compensation and key:
                    await tx.add(command_id(key), _record(_LATE_REFUSAL))
                published = _Published()
                ctx = self._context(
                    envelope,
                    tx.connection,
                    route.flow,
                    compensation=route.compensation,
                    published=published,
                )
                try:
                    async with tx.savepoint():
                        reply = await self._call_handler(route, command, envelope, ctx)
                        if isinstance(reply, Refused):
                            raise _RollBack  # undo the handler's writes, keep the refusal
                except _RollBack:
                    published.events.clear()
                except DecodeError:
                    raise
                except Exception as exc:
                    failure = exc
                    raise _RollBack from None
                events = published.events
                if events and self._telemetry.tracer is not None:
                    events = [(d, _traced(e)) for d, e in events]
                outbox = [(OutboxMessage(d, e.encode()), d, e) for d, e in events]
                if envelope.reply_to:
                    answer = envelope.reply(reply, id=envelope.id + "#reply")
                    outbox.append(
                        (
                            OutboxMessage(envelope.reply_to, answer.encode(), reply=True),
                            envelope.reply_to,
                            answer,
                        )
                    )
                ids = await tx.finish(envelope.id, _record(reply), [m for m, _, _ in outbox])
        except _RollBack:
            assert failure is not None
            await self._technical_failure(envelope, failure)
            return None
        for hook in self._on_commit:
            await self._committed(hook, envelope)
        if ids:
            await self._send_committed(inbox, ids, [(m, e) for m, _, e in outbox])
        return None

    async def _committed(self, hook: Callable[[Envelope], object], envelope: Envelope) -> None:
        try:
            result = hook(envelope)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception(
                "%s: an on_commit hook failed after message %s committed; what it wrote to "
                "the outbox is still sent",
                self.service,
                envelope.id,
            )

    async def _answer_handled(
        self, tx: InboxTransaction, found: InboxRecord, envelope: Envelope
    ) -> InboxRecord | None:
        """A copy of a message that was handled before: send what its handling left unsent
        in the outbox (its process died after the commit), or else answer from the inbox.
        Returns the record to answer from, or ``None`` when it is answered."""
        unsent = await tx.unsent(envelope.id)
        if unsent is None:
            logger.info(
                "%s: message %s (%s) was handled before; answering from the inbox",
                self.service,
                envelope.id,
                envelope.type,
            )
            return found
        logger.info(
            "%s: message %s (%s) was handled before; sending what it left in the outbox",
            self.service,
            envelope.id,
            envelope.type,
        )
        for _, message in unsent:
            await self._send_outbox_message(message)
        await tx.delete_outbox([outbox_id for outbox_id, _ in unsent])
        if not unsent:  # a relay is sending them right now
            return None
        # A new requester asking again from another address is not answered by a reply left
        # for an earlier one: answer it from the inbox.
        if any(m.reply and m.destination == envelope.reply_to for _, m in unsent):
            return None
        return found

    async def _send_committed(
        self,
        inbox: TransactionalInbox,
        ids: list[int],
        messages: list[tuple[OutboxMessage, Envelope]],
    ) -> None:
        """Send what a committed transaction wrote to the outbox, then delete it there. What
        cannot be sent now stays in the outbox for the relay."""
        broker = self._broker_or_fail()
        try:
            for message, envelope in messages:
                if message.reply:
                    await broker.reply(message.destination, envelope)
                else:
                    await broker.publish(message.destination, envelope)
        except Exception as exc:
            logger.warning(
                "%s: sending a committed reply or event failed (%s: %s); the relay will send it",
                self.service,
                type(exc).__name__,
                exc,
            )
            return
        try:
            await inbox.delete_outbox(ids)
        except Exception as exc:
            logger.warning(
                "%s: deleting sent messages from the outbox failed (%s: %s); the relay will "
                "send them again",
                self.service,
                type(exc).__name__,
                exc,
            )

    async def _bar_late_command(self, compensation: Envelope) -> None:
        """After a compensation, make sure the command it undoes is never applied later.

        If the step's command is still on its way (delayed, or re-sent), it would arrive after
        its compensation and leave an effect nobody undoes. Recording a refusal under the
        command's id settles that: the inbox keeps the first record, so a command that was
        handled keeps its real reply, and one that was not is refused when it arrives.
        """
        key = compensation.headers[HEADER_IDEMPOTENCY_KEY]
        await self._inbox.put(self.service, command_id(key), _record(_LATE_REFUSAL))

    def _context(
        self,
        envelope: Envelope,
        transaction: Any = None,
        flow: Choreography | None = None,
        *,
        compensation: bool = False,
        published: _Published,
    ) -> HandlerContext:
        return HandlerContext(
            service=self.service,
            message_id=envelope.id,
            saga_id=envelope.correlation_id,
            idempotency_key=envelope.headers.get(HEADER_IDEMPOTENCY_KEY) or envelope.id,
            step=envelope.headers.get(HEADER_STEP),
            headers=envelope.headers,
            transaction=transaction,
            failure=self._failure(envelope) if compensation and flow is None else None,
            sent_at=envelope.timestamp.timestamp(),
            _published=published,
            _flow=flow,
        )

    def _failure(self, envelope: Envelope) -> Failure | None:
        """Why the saga turned back, from a compensation command's header; ``None`` (with a
        warning) if the header is there but cannot be read: the handler runs all the same."""
        text = envelope.headers.get(HEADER_FAILURE)
        if text is None:
            return None
        try:
            value = json.loads(text)
            if not (
                isinstance(value, dict)
                and isinstance(value.get("type"), str)
                and isinstance(value.get("message"), str)
                and isinstance(value.get("step"), (str, type(None)))
                and isinstance(value.get("business", False), bool)
            ):
                raise ValueError("not a failure's JSON object")
            return Failure.from_json(value)
        except (ValueError, RecursionError) as exc:
            logger.warning(
                "%s: compensation %s (%s) has a %s header that cannot be read (%s); the "
                "handler runs with ctx.failure = None",
                self.service,
                envelope.id,
                envelope.type,
                HEADER_FAILURE,
                exc,
            )
            return None

    async def _call_handler(
        self, route: _Route, command: BaseModel, envelope: Envelope, ctx: HandlerContext
    ) -> BaseModel:
        """The handler's reply (a refusal included); a technical failure raises."""
        try:
            with self._span(envelope):
                result = await (
                    route.handler(command, ctx) if route.wants_context else route.handler(command)
                )
        except BusinessError as exc:
            if route.flow is not None:
                logger.warning(
                    "%s: the handler of event %s (message %s) raised BusinessError (%s); in a "
                    "choreography a refusal is an event: publish it with ctx.publish(...). The "
                    "event is taken as handled and nothing was published",
                    self.service,
                    envelope.type,
                    envelope.id,
                    exc.message,
                )
            return Refused(reason=exc.message, details=exc.details)
        if result is not None and not isinstance(result, BaseModel):
            raise TypeError(
                f"the handler of {envelope.type!r} returned {type(result).__name__}; "
                "return a pydantic model (the reply) or None"
            )
        return Done() if result is None else result

    async def _technical_failure(self, envelope: Envelope, exc: Exception) -> None:
        """Answer a handler's technical failure with a ``Failed`` reply (nothing is recorded,
        so a retry runs the handler again); with nobody to answer, raise it for the broker to
        redeliver and, in the end, dead-letter the command."""
        if not envelope.reply_to:
            raise exc
        logger.warning(
            "%s: the handler of %s (message %s) failed: %s: %s",
            self.service,
            envelope.type,
            envelope.id,
            type(exc).__name__,
            exc,
        )
        failed = Failed(error_type=type(exc).__name__, message=str(exc) or type(exc).__name__)
        await self._reply(envelope, failed)

    def _broker_or_fail(self) -> Broker:
        assert self._broker is not None, "the participant is not running"
        return self._broker

    async def _send_reply(self, envelope: Envelope, record: InboxRecord) -> None:
        assert envelope.reply_to is not None
        assert self._broker is not None
        reply = Envelope.from_parts(
            id=envelope.id + "#reply",
            type=record.reply_type,
            schema_version=record.schema_version,
            payload=json.loads(record.payload),
            correlation_id=envelope.correlation_id,
            causation_id=envelope.id,
        )
        await self._broker.reply(envelope.reply_to, reply)

    async def _reply(
        self, envelope: Envelope, message: BaseModel, *, id: str | None = None
    ) -> None:
        assert envelope.reply_to is not None
        assert self._broker is not None
        await self._broker.reply(envelope.reply_to, envelope.reply(message, id=id))

    @contextlib.contextmanager
    def _span(self, envelope: Envelope) -> Iterator[None]:
        attributes = {"saga.id": envelope.correlation_id or "", "messaging.message.id": envelope.id}
        with self._telemetry.span(f"handle {envelope.type}", attributes):
            yield


def _traced(envelope: Envelope) -> Envelope:
    """*envelope* carrying the current trace context, so that it is sent in this trace even
    when the outbox relay sends it later, outside the handler."""
    headers = dict(envelope.headers)
    propagate.inject(headers)
    return envelope.model_copy(update={"headers": headers})


def _record(reply: BaseModel) -> InboxRecord:
    return InboxRecord(
        reply_type=message_type(type(reply)),
        schema_version=schema_version(type(reply)),
        payload=reply.model_dump_json(),
        handled_at=time.time(),
    )
