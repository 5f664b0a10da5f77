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

What the inbox cannot cover on its own is a crash after the handler's effect and before the
inbox write: the command is then delivered again and the handler runs again, with the same
idempotency key. Handlers should use that key to make their effect idempotent (an insert keyed
by it, say), or write the effect and the inbox record in one transaction.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.abc
from pydantic import BaseModel

from . import stores
from .errors import BusinessError, DecodeError, SagaDefinitionError, UnknownMessageType
from .messaging import (
    HEADER_IDEMPOTENCY_KEY,
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
from .protocols import Inbox, InboxRecord
from .tracing import Telemetry, telemetry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from opentelemetry.trace import TracerProvider

__all__ = ("HandlerContext", "Participant")

logger = logging.getLogger("pysaga.participant")

C = TypeVar("C", bound=BaseModel)
_HandlerT = TypeVar("_HandlerT", bound=Callable[..., Awaitable[Any]])


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
    """

    service: str
    message_id: str
    saga_id: str | None
    idempotency_key: str
    step: str | None
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Route:
    model: type[BaseModel]
    handler: Callable[..., Awaitable[Any]]
    wants_context: bool
    compensation: bool


class _Guards:
    """Handles messages with one key in turn: the second waits for the first to finish (a
    second copy then finds its reply in the inbox). Costs two dictionary operations when
    nothing else holds the key."""

    def __init__(self) -> None:
        self._busy: dict[str, list[anyio.Event]] = {}

    async def acquire(self, key: str) -> None:
        while (waiters := self._busy.get(key)) is not None:
            event = anyio.Event()
            waiters.append(event)
            await event.wait()
        self._busy[key] = []

    def release(self, key: str) -> None:
        for event in self._busy.pop(key, ()):
            event.set()


class Participant:
    """A service that handles saga commands from the broker.

    Args:
        service: The service's name: the destination the commands arrive on, and the name
            remote steps give as ``service=``.
        broker: A broker URL (opened and closed with the participant), or a
            :class:`~pysaga.Broker` object the caller has entered.
        inbox: Where handled messages are remembered: a URL (``"memory://"``, the default,
            or ``"sqlite:///stock-inbox.db"`` to remember across restarts) or an
            :class:`~pysaga.Inbox`. Entering the participant enters it.
        group: The consumer group (default: the service name). Copies of a service in one
            group share the commands.
        concurrency: Commands handled at the same time (default: the broker's).
        inbox_retention: Seconds a handled message is remembered (default: 7 days); a
            command re-sent later than that would be handled again.
        tracer_provider: Where spans go (default: the global OpenTelemetry provider).

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
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise ValueError("a participant needs a service name, like Participant('stock')")
        self.service = service
        self.group = group or service
        self.concurrency = concurrency
        self.inbox_retention = inbox_retention
        self.broker = broker
        """The broker URL or object; may be set until the participant is entered."""
        self._inbox: Inbox = stores.inbox_from_url(inbox) if isinstance(inbox, str) else inbox
        if not isinstance(self._inbox, Inbox):
            raise TypeError(f"inbox={inbox!r}: pass an inbox URL or a pysaga.Inbox")
        self._routes: dict[str, _Route] = {}
        self._guards = _Guards()
        self._telemetry = Telemetry(tracer_provider) if tracer_provider else telemetry
        self._stack: contextlib.AsyncExitStack | None = None
        self._broker: Broker | None = None
        self._subscription: Subscription | None = None

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

    def _register(
        self, command: type[C], *, compensation: bool
    ) -> Callable[[_HandlerT], _HandlerT]:
        if not (isinstance(command, type) and issubclass(command, BaseModel)):
            raise SagaDefinitionError(
                f"participant {self.service!r}: handles() takes a pydantic model class (the "
                f"command), got {command!r}"
            )
        kind = message_type(command)

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
                    f"{where}: write it as 'async def {fn.__name__}(cmd: {command.__name__}, "
                    "ctx: HandlerContext)' (ctx may be left out)"
                )
            if kind in self._routes:
                raise SagaDefinitionError(
                    f"{where}: {self._routes[kind].handler.__qualname__} already handles it; "
                    "one handler per command type"
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
            self._routes[kind] = _Route(command, handler, len(params) == 2, compensation)
            return fn

        return register

    @property
    def commands(self) -> Mapping[str, type[BaseModel]]:
        """The command types this participant handles, by message type name."""
        return {kind: route.model for kind, route in self._routes.items()}

    # -- running -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already running; enter it once")
        if not self._routes:
            raise SagaDefinitionError(
                f"participant {self.service!r} handles no command; register handlers with "
                "@participant.handles(Command) before starting it"
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
            self._subscription = await broker.subscribe(
                self.service, self.handle_message, group=self.group, concurrency=self.concurrency
            )
            stack.push_async_callback(self._subscription.close)
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
            record = await self._inbox.get(self.service, envelope.id)
            if record is None:
                reply = await self._run_handler(route, command, envelope)
                if reply is None:  # a technical failure, already answered
                    return
                fresh = _record(reply)
                record = await self._inbox.put(self.service, envelope.id, fresh)
                if route.compensation and HEADER_IDEMPOTENCY_KEY in envelope.headers:
                    await self._bar_late_command(envelope)
                if record is fresh:
                    if envelope.reply_to:
                        await self._reply(envelope, reply, id=envelope.id + "#reply")
                    return
            else:
                logger.info(
                    "%s: message %s (%s) was handled before; answering from the inbox",
                    self.service,
                    envelope.id,
                    envelope.type,
                )
        finally:
            self._guards.release(guard)
        if envelope.reply_to:
            await self._send_reply(envelope, record)

    async def _bar_late_command(self, compensation: Envelope) -> None:
        """After a compensation, make sure the command it undoes is never applied later.

        If the step's command is still on its way (delayed, or re-sent), it would arrive after
        its compensation and leave an effect nobody undoes. Recording a refusal under the
        command's id settles that: the inbox keeps the first record, so a command that was
        handled keeps its real reply, and one that was not is refused when it arrives.
        """
        key = compensation.headers[HEADER_IDEMPOTENCY_KEY]
        refusal = Refused(reason="the step was compensated before its command arrived")
        await self._inbox.put(self.service, command_id(key), _record(refusal))

    async def _run_handler(
        self, route: _Route, command: BaseModel, envelope: Envelope
    ) -> BaseModel | None:
        """The handler's reply (a refusal included), or ``None`` after a technical failure."""
        ctx = HandlerContext(
            service=self.service,
            message_id=envelope.id,
            saga_id=envelope.correlation_id,
            idempotency_key=envelope.headers.get(HEADER_IDEMPOTENCY_KEY) or envelope.id,
            step=envelope.headers.get(HEADER_STEP),
            headers=envelope.headers,
        )
        try:
            with self._span(envelope):
                result = await (
                    route.handler(command, ctx) if route.wants_context else route.handler(command)
                )
            if result is not None and not isinstance(result, BaseModel):
                raise TypeError(
                    f"the handler of {envelope.type!r} returned {type(result).__name__}; "
                    "return a pydantic model (the reply) or None"
                )
        except BusinessError as exc:
            return Refused(reason=exc.message, details=exc.details)
        except DecodeError:
            raise
        except Exception as exc:
            if not envelope.reply_to:
                raise  # nobody to tell: the broker redelivers it, then dead-letters it
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
            return None
        return Done() if result is None else result

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


def _record(reply: BaseModel) -> InboxRecord:
    return InboxRecord(
        reply_type=message_type(type(reply)),
        schema_version=schema_version(type(reply)),
        payload=reply.model_dump_json(),
        handled_at=time.time(),
    )
