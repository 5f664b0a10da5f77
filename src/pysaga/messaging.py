"""Messages between services: the :class:`Envelope` every broker carries, and the
:class:`Broker` protocol every adapter implements.

An envelope wraps one typed message (a pydantic model) with what is needed to route, correlate,
de-duplicate and trace it. On the wire it is one JSON object; the same bytes travel over the
in-memory broker, RabbitMQ and Kafka, so a message can be read anywhere it lands (a dead-letter
queue included) without knowing which broker carried it.

A message type is named by the model's ``__message_type__`` class variable, or else by the
class name; its payload schema version by ``__schema_version__`` (default 1)::

    class ReserveStock(BaseModel):
        __message_type__: ClassVar[str] = "stock.reserve"
        __schema_version__: ClassVar[int] = 2

        sku: str
        qty: int

A reader refuses (:class:`~pysaga.DecodeError`) a payload whose schema version is newer than
the model it was given: an old service must not half-understand a new message.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Literal,
    Protocol,
    Self,
    TypeVar,
    runtime_checkable,
)

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import DecodeError

if TYPE_CHECKING:
    import builtins
    from types import TracebackType

__all__ = (
    "HEADER_FAILURE",
    "HEADER_IDEMPOTENCY_KEY",
    "HEADER_SERVICE",
    "HEADER_STEP",
    "Broker",
    "DeadLetter",
    "DeadLetterHandler",
    "Done",
    "Envelope",
    "Failed",
    "Handler",
    "Refused",
    "Subscription",
    "command_id",
    "message_type",
    "schema_version",
)

M = TypeVar("M", bound=BaseModel)
_E = TypeVar("_E", bound="Envelope")

ENVELOPE_FORMAT = 1
"""The version of the envelope's own layout, written as ``"pysaga"`` in every message."""

# Headers a dead-lettered message carries (next to its original body, unchanged).
HEADER_REASON = "x-pysaga-dead-letter-reason"
HEADER_DESTINATION = "x-pysaga-original-destination"
HEADER_GROUP = "x-pysaga-group"
HEADER_DELIVERIES = "x-pysaga-deliveries"
HEADER_DEAD_AT = "x-pysaga-dead-lettered-at"

# Headers a saga step's command carries.
HEADER_IDEMPOTENCY_KEY = "x-pysaga-idempotency-key"
HEADER_STEP = "x-pysaga-step"
HEADER_FAILURE = "x-pysaga-failure"
"""On a compensation command: why the saga turned back, as the JSON of
:meth:`Failure.to_json() <pysaga.Failure.to_json>` (a participant reads it as
:attr:`HandlerContext.failure <pysaga.HandlerContext.failure>`)."""

# Headers an event of a choreographed flow carries.
HEADER_SERVICE = "x-pysaga-service"
"""The service that published the event (set by ``ctx.publish``; the observer shows it
in the saga's history)."""


@functools.cache
def message_type(model: type[BaseModel]) -> str:
    """The type name a message model travels under: ``__message_type__`` or the class name."""
    name = getattr(model, "__message_type__", None)
    return name if isinstance(name, str) and name else model.__name__


@functools.cache
def schema_version(model: type[BaseModel]) -> int:
    """The model's payload schema version: ``__schema_version__``, 1 if not set."""
    version = getattr(model, "__schema_version__", 1)
    return version if isinstance(version, int) else 1


class _MessageIds:
    """Unique message ids, cheaply: a random prefix per process and a counter.

    96 random bits make a clash between two processes' prefixes negligible, and the counter
    keeps one process's ids apart; a forked child draws a new prefix. Five times cheaper than
    a random UUID per message.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = secrets.token_hex(12) + "-"
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():x}"


new_message_id = _MessageIds()
"""A new unique message id."""
os.register_at_fork(after_in_child=new_message_id.reset)


def _trusted(cls: builtins.type[_E], values: dict[str, Any]) -> _E:
    """Make an envelope from values that are valid by construction, without validation.

    What ``model_construct`` does for a model without defaults to fill or private
    attributes, at a third of its cost: this runs for every message pysaga sends.
    """
    envelope = object.__new__(cls)
    object.__setattr__(envelope, "__dict__", values)
    object.__setattr__(envelope, "__pydantic_fields_set__", set(values))
    object.__setattr__(envelope, "__pydantic_extra__", None)
    object.__setattr__(envelope, "__pydantic_private__", None)
    return envelope


def command_id(idempotency_key: str, *, compensation: bool = False) -> str:
    """The message id of a saga step's command (or of its compensation's command).

    It is the step's idempotency key (``"<saga id>/<step>"``, with ``#compensate`` for the
    compensation), so a command sent again — on a retry, or by another orchestrator after a
    crash — carries the same id, and the participant's inbox recognises it.
    """
    return idempotency_key + "#compensate" if compensation else idempotency_key


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _describe(exc: ValidationError, limit: int = 3) -> str:
    """The first few problems of a validation error, on one line."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(the whole value)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


class Envelope(BaseModel):
    """One message, as every broker carries it.

    Attributes:
        id: Unique per message, and the key a receiver de-duplicates on: a message sent
            again on purpose (a saga step re-sending its command) keeps its id.
        type: The payload's type name (see :func:`message_type`).
        schema_version: The payload's schema version (see :func:`schema_version`).
        correlation_id: The saga this message belongs to.
        causation_id: The id of the message that caused this one (a reply names its command).
        reply_to: Where the receiver should send its reply.
        timestamp: When the message was created (UTC).
        headers: Free-form string headers; W3C ``traceparent``/``tracestate`` travel here.
        payload: The message itself, as JSON data; read it with :meth:`parse`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal[1] = Field(default=1, alias="pysaga")
    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    schema_version: int = Field(default=1, ge=1)
    correlation_id: str | None = None
    causation_id: str | None = None
    reply_to: str | None = None
    timestamp: _dt.datetime = Field(default_factory=_now)
    headers: dict[str, str] = Field(default_factory=dict)
    payload: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls,
        message: BaseModel,
        *,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Wrap *message* in a new envelope (a fresh id unless *id* is given)."""
        model = type(message)
        return cls.from_parts(
            id=id or new_message_id(),
            type=message_type(model),
            schema_version=schema_version(model),
            payload=message.model_dump(mode="json"),
            correlation_id=correlation_id,
            causation_id=causation_id,
            reply_to=reply_to,
            headers=headers,
        )

    @classmethod
    def from_parts(
        cls,
        *,
        id: str,
        type: str,
        schema_version: int,
        payload: dict[str, Any],
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """An envelope from values already known to be valid (a stored reply, say), made
        without validating them again."""
        return _trusted(
            cls,
            {
                "format": ENVELOPE_FORMAT,
                "id": id,
                "type": type,
                "schema_version": schema_version,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "reply_to": reply_to,
                "timestamp": _now(),
                "headers": dict(headers) if headers else {},
                "payload": payload,
            },
        )

    def reply(self, message: BaseModel, *, id: str | None = None) -> Envelope:
        """An envelope answering this one: same correlation id, caused by this message."""
        return Envelope.of(message, id=id, correlation_id=self.correlation_id, causation_id=self.id)

    def encode(self) -> bytes:
        """The envelope as UTF-8 JSON bytes."""
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Envelope:
        """Read an envelope from the bytes :meth:`encode` made.

        Raises:
            DecodeError: the bytes are not a pysaga envelope; the message says what is wrong.
        """
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            preview = bytes(data[:80]) if isinstance(data, bytes) else data[:80].encode()
            raise DecodeError(
                f"not a pysaga message envelope ({_describe(exc)}); the message begins {preview!r}"
            ) from None

    def parse(self, model: builtins.type[M]) -> M:
        """The payload as an instance of *model*.

        Raises:
            DecodeError: the envelope's type is not *model*'s, its schema version is newer
                than *model*'s, or the payload does not validate.
        """
        expected = message_type(model)
        if self.type != expected:
            raise DecodeError(
                f"message {self.id} is of type {self.type!r}, not {expected!r} ({model.__name__})"
            )
        known = schema_version(model)
        if self.schema_version > known:
            raise DecodeError(
                f"message {self.id} of type {self.type!r} has schema version "
                f"{self.schema_version}, newer than the {known} this service knows "
                f"({model.__name__}); deploy the newer model here first"
            )
        try:
            return model.model_validate(self.payload)
        except ValidationError as exc:
            raise DecodeError(
                f"message {self.id} of type {self.type!r}: the payload does not fit "
                f"{model.__name__} ({_describe(exc)})"
            ) from None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a consumer gave up on, as found in a dead-letter destination.

    Attributes:
        body: The original message bytes, unchanged (they may not be an envelope at all).
        reason: Why it was given up on: the decode error, or the handler's last exception.
        destination: Where it was originally sent.
        group: The consumer group that gave up on it.
        deliveries: How many times a handler was tried.
        dead_lettered_at: When it was given up on (UTC).
        headers: The broker headers it carried.
    """

    body: bytes
    reason: str
    destination: str
    group: str
    deliveries: int
    dead_lettered_at: _dt.datetime
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def envelope(self) -> Envelope | None:
        """The original envelope, or ``None`` if the body was not one."""
        try:
            return Envelope.decode(self.body)
        except DecodeError:
            return None

    def to_headers(self) -> dict[str, str]:
        """The headers that carry this record next to the original body."""
        return {
            **self.headers,
            HEADER_REASON: self.reason,
            HEADER_DESTINATION: self.destination,
            HEADER_GROUP: self.group,
            HEADER_DELIVERIES: str(self.deliveries),
            HEADER_DEAD_AT: self.dead_lettered_at.isoformat(),
        }

    @classmethod
    def from_message(cls, body: bytes, headers: Mapping[str, str]) -> DeadLetter:
        """Read a record back from a dead-letter destination's body and headers."""
        when = headers.get(HEADER_DEAD_AT)
        try:
            at = _dt.datetime.fromisoformat(when) if when else _now()
            deliveries = int(headers.get(HEADER_DELIVERIES, "0"))
        except ValueError:
            at, deliveries = _now(), 0
        return cls(
            body=body,
            reason=headers.get(HEADER_REASON, "(no reason recorded)"),
            destination=headers.get(HEADER_DESTINATION, ""),
            group=headers.get(HEADER_GROUP, ""),
            deliveries=deliveries,
            dead_lettered_at=at,
            headers={k: v for k, v in headers.items() if not k.startswith("x-pysaga-")},
        )


class Refused(BaseModel):
    """A participant's reply: the command was refused for a business reason (compensate)."""

    __message_type__: ClassVar[str] = "pysaga.refused"

    reason: str
    details: Any = None


class Failed(BaseModel):
    """A participant's reply: the command failed for a technical reason (may be retried)."""

    __message_type__: ClassVar[str] = "pysaga.failed"

    error_type: str
    message: str


class Done(BaseModel):
    """A participant's reply to a command whose handler returns nothing (a compensation)."""

    __message_type__: ClassVar[str] = "pysaga.done"


Handler = Callable[[Envelope], Awaitable[None]]
"""Receives one message. Returning acknowledges it; raising asks for a redelivery, and
:class:`~pysaga.DecodeError` sends it to the dead-letter destination at once."""

DeadLetterHandler = Callable[[DeadLetter], Awaitable[None]]
"""Receives one dead-lettered message."""


@runtime_checkable
class Subscription(Protocol):
    """A running consumer; see :meth:`Broker.subscribe`."""

    @property
    def destination(self) -> str:
        """What it consumes from."""
        ...

    @property
    def group(self) -> str:
        """Its consumer group."""
        ...

    async def close(self) -> None:
        """Stop taking messages, let the handlers in flight finish, then stop.

        Messages not yet handled stay on the broker for the group's other consumers, or for
        the next subscription.
        """
        ...


@runtime_checkable
class Broker(Protocol):
    """What pysaga needs from a message broker. Every adapter implements it, and one contract
    test suite checks each against the same rules:

    * **destinations and groups**: a message published to a destination reaches every group
      subscribed to it, and within a group exactly one consumer (competing consumers). The
      destination's *own* group (``group=None``, named like the destination) exists from the
      first publish, so commands wait for a service that is not up yet; other groups receive
      what is published after they first subscribed (Kafka also keeps what came before).
    * **at least once**: a message is acknowledged only after its handler returned; a handler
      that raises gets the message again after a backoff, up to the broker's redelivery limit,
      then the message goes to the dead-letter destination with the reason. A message that
      cannot be decoded, or whose type nobody handles, goes there at once.
    * **graceful close**: leaving ``async with`` stops taking messages and lets the handlers
      in flight finish (up to a drain timeout).
    * **reply channels**: a private address for replies to this process.

    Use a broker as an async context manager; who creates a broker object enters it (an
    :class:`~pysaga.Orchestrator` or :class:`~pysaga.Participant` given a URL creates and
    enters its own; given an object, it uses it as it is).
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def publish(self, destination: str, envelope: Envelope) -> None:
        """Send *envelope* to *destination*; returns once the broker has accepted it."""
        ...

    async def subscribe(
        self,
        destination: str,
        handler: Handler,
        *,
        group: str | None = None,
        concurrency: int | None = None,
    ) -> Subscription:
        """Consume *destination* as a member of *group* (default: the destination's own group).

        Returns once the consumer is ready: a message published after this returns reaches it.
        """
        ...

    async def open_reply_channel(self, handler: Handler) -> Subscription:
        """Start receiving on a private address of this connection; the subscription's
        ``destination`` is the address to put in ``reply_to``. Replies that arrive while
        nobody listens are dropped, so a requester must be ready to ask again."""
        ...

    async def reply(self, address: str, envelope: Envelope) -> None:
        """Send *envelope* to a reply address taken from a message's ``reply_to``."""
        ...

    async def subscribe_dead_letters(
        self, destination: str, handler: DeadLetterHandler, *, group: str | None = None
    ) -> Subscription:
        """Consume what consumers of *destination* gave up on."""
        ...

    def dead_letter_destination(self, destination: str) -> str:
        """Where messages given up on from *destination* are sent."""
        ...
