"""Choreographed sagas: no coordinator, each service reacts to the previous one's event.

A :class:`Choreography` declares one flow: the event that starts it, the events that end it
completed or compensated, which events mark the outcome of each named step and of its
compensation, and a deadline. The services themselves are :class:`~pysaga.Participant`
objects that react to the flow's events with ``@service.on(Event)`` handlers and publish the
next events with ``ctx.publish(event)``, through the same inbox (and, on PostgreSQL, the same
transactional outbox) as command handlers.

Routing. Every event type of a flow has its own destination, ``"<flow name>.<event type>"``
(:meth:`Choreography.destination`). A service consumes the destinations of the events it
reacts to in its own consumer group (named after the service), so every interested service
gets each event and copies of one service share them. The broker keys every message by its
correlation id, the saga id, so on Kafka one saga's events of one type stay in order; events
of different types travel apart, and the observer makes no assumption about their order.

Visibility. A :class:`~pysaga.ChoreographyObserver` (in :mod:`pysaga.observer`) consumes
every event of the flow and records each choreographed saga in the saga log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeAlias

from pydantic import BaseModel

from ._mermaid import choreography_to_mermaid
from .errors import SagaDefinitionError
from .messaging import HEADER_SERVICE, Envelope, message_type
from .models import new_saga_id

if TYPE_CHECKING:
    from .messaging import Broker

__all__ = ("Choreography", "EventMeaning", "MeaningKind", "StepEvents")

EventTypes: TypeAlias = type[BaseModel] | Sequence[type[BaseModel]]
"""One event model, or several."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""What a flow name and an event type name may be: they make destination names, which every
broker accepts in this form."""

MeaningKind: TypeAlias = Literal[
    "start", "done", "failed", "compensated", "completes", "compensates"
]
"""What an event does in a flow: ``start``, ``completes`` and ``compensates`` begin and end a
saga; ``done``, ``failed`` and ``compensated`` mark one step's outcome."""


class StepEvents:
    """The events that mark the outcome of one named step of a choreographed flow.

    Args:
        done: The event(s) a service publishes when the step's work is done
            (``StockReserved``).
        failed: The event(s) it publishes when the step cannot be done (``StockNotAvailable``,
            ``PaymentFailed``): the saga turns back (COMPENSATING).
        compensated: The event(s) a service publishes once the step's work is undone
            (``StockReleased``).

    Raises:
        SagaDefinitionError: no ``done`` and no ``failed`` event, ``compensated`` without
            ``done``, or an argument that is not a pydantic model class.
    """

    __slots__ = ("compensated", "done", "failed")

    def __init__(
        self,
        *,
        done: EventTypes = (),
        failed: EventTypes = (),
        compensated: EventTypes = (),
    ) -> None:
        self.done: tuple[type[BaseModel], ...] = _models("done", done)
        self.failed: tuple[type[BaseModel], ...] = _models("failed", failed)
        self.compensated: tuple[type[BaseModel], ...] = _models("compensated", compensated)
        if not self.done and not self.failed:
            raise SagaDefinitionError(
                "StepEvents needs done=Event (what says the step's work is done) or "
                "failed=Event (what says it cannot be done), or both"
            )
        if self.compensated and not self.done:
            raise SagaDefinitionError(
                "StepEvents: compensated= undoes a step's work, so it needs done= too (only a "
                "step that was done is compensated)"
            )

    def __repr__(self) -> str:
        parts = [
            f"{label}={[m.__name__ for m in models]}"
            for label, models in (
                ("done", self.done),
                ("failed", self.failed),
                ("compensated", self.compensated),
            )
            if models
        ]
        return f"StepEvents({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class EventMeaning:
    """What hearing one event type means for a saga of the flow (see
    :attr:`Choreography.meanings`).

    Attributes:
        kind: What the event does: starts or ends the saga, or marks a step's outcome.
        model: The event's model class.
        step: The step whose outcome it marks; ``None`` for a starting or ending event.
    """

    kind: MeaningKind
    model: type[BaseModel]
    step: str | None = None


def _models(label: str, value: EventTypes) -> tuple[type[BaseModel], ...]:
    models = (value,) if isinstance(value, type) else tuple(value)
    for model in models:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SagaDefinitionError(
                f"{label}= takes pydantic model classes (the events), got {model!r}"
            )
    return models


class Choreography:
    """The declaration of a choreographed flow: which event starts a saga, which end it, what
    the events in between mean, and how long it may take.

    Args:
        name: The flow's name: the saga name its sagas have in the saga log, and the first
            part of its events' destinations. Letters, digits, ``.``, ``_`` and ``-``.
        starts: The event that starts a saga of this flow (``OrderCreated``); its payload is
            the saga's data in the log.
        completes: The event(s) that end a saga COMPLETED (``OrderCompleted``).
        compensates: The event(s) that end it COMPENSATED: it turned back and every step
            done was undone (``OrderRejected``).
        steps: The named steps, in order, with the events that mark their outcome (see
            :class:`StepEvents`). Optional, but they make the log show each step's status.
        deadline: Seconds a saga may take from its first event to its end. One still
            unfinished after it is marked FAILED by the observer, for an operator.
        version: The flow's version, as recorded in the log.

    Raises:
        SagaDefinitionError: the declaration is inconsistent; the message says what to change.

    Example::

        purchase = Choreography(
            "purchase",
            starts=OrderCreated,
            steps={
                "reserve_stock": StepEvents(
                    done=StockReserved, failed=StockNotAvailable, compensated=StockReleased
                ),
                "charge_payment": StepEvents(done=PaymentCompleted, failed=PaymentFailed),
            },
            completes=OrderCompleted,
            compensates=OrderRejected,
            deadline=30,
        )
    """

    def __init__(
        self,
        name: str,
        *,
        starts: type[BaseModel],
        completes: EventTypes,
        compensates: EventTypes = (),
        steps: Mapping[str, StepEvents] | None = None,
        deadline: float,
        version: int = 1,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SagaDefinitionError(
                f"a choreography needs a name of letters, digits, '.', '_' and '-' (it names "
                f"destinations), like Choreography('purchase', ...); got {name!r}"
            )
        where = f"choreography {name!r}"
        if not (isinstance(starts, type) and issubclass(starts, BaseModel)):
            raise SagaDefinitionError(
                f"{where}: starts= takes the pydantic model class of the starting event, got "
                f"{starts!r}"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SagaDefinitionError(f"{where}: version must be an int >= 1, got {version!r}")
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not math.isfinite(deadline)
            or deadline <= 0
        ):
            raise SagaDefinitionError(
                f"{where}: deadline must be a positive number of seconds (how long a saga may "
                f"take from its first event to its end), got {deadline!r}"
            )
        self.name = name
        self.version = version
        self.deadline = float(deadline)
        self.starts = starts
        try:
            self.completes = _models("completes", completes)
            self.compensates = _models("compensates", compensates)
        except SagaDefinitionError as exc:
            raise SagaDefinitionError(f"{where}: {exc}") from None
        if not self.completes:
            raise SagaDefinitionError(
                f"{where}: completes= names no event; give the event that ends a saga "
                "completed (OrderCompleted, say)"
            )
        self.steps: Mapping[str, StepEvents] = dict(steps or {})
        self._meanings: dict[str, EventMeaning] = {}
        self._add(where, EventMeaning("start", starts))
        for model in self.completes:
            self._add(where, EventMeaning("completes", model))
        for model in self.compensates:
            self._add(where, EventMeaning("compensates", model))
        for step, events in self.steps.items():
            if not isinstance(step, str) or not step:
                raise SagaDefinitionError(
                    f"{where}: step names are non-empty strings, got {step!r}"
                )
            if not isinstance(events, StepEvents):
                raise SagaDefinitionError(
                    f"{where}, step {step!r}: give StepEvents(done=..., failed=..., "
                    f"compensated=...), got {events!r}"
                )
            for kind, models in (
                ("done", events.done),
                ("failed", events.failed),
                ("compensated", events.compensated),
            ):
                for model in models:
                    self._add(where, EventMeaning(kind, model, step))  # type: ignore[arg-type]
        turns_back = [
            m.model.__name__ for m in self._meanings.values() if m.kind in ("failed", "compensated")
        ]
        if turns_back and not self.compensates:
            raise SagaDefinitionError(
                f"{where}: {', '.join(turns_back)} turn the saga back, but compensates= names "
                "no event that ends it compensated; add one (OrderRejected, say)"
            )

    def _add(self, where: str, meaning: EventMeaning) -> None:
        kind = message_type(meaning.model)
        if not _NAME.fullmatch(kind):
            raise SagaDefinitionError(
                f"{where}: event type {kind!r} ({meaning.model.__name__}) makes a destination "
                "name, so it may hold only letters, digits, '.', '_' and '-'; set "
                "__message_type__ on the model"
            )
        known = self._meanings.get(kind)
        if known is not None:
            if known.model is not meaning.model:
                raise SagaDefinitionError(
                    f"{where}: {known.model.__qualname__} and {meaning.model.__qualname__} both "
                    f"travel as message type {kind!r}; give one another __message_type__"
                )
            raise SagaDefinitionError(
                f"{where}: {meaning.model.__name__} is declared as {_said(known)} and as "
                f"{_said(meaning)}; an event has one meaning in a flow"
            )
        self._meanings[kind] = meaning

    def __repr__(self) -> str:
        return f"<Choreography {self.name!r} v{self.version} events={sorted(self._meanings)}>"

    @property
    def events(self) -> Mapping[str, type[BaseModel]]:
        """Every event type of the flow, by message type name."""
        return {kind: meaning.model for kind, meaning in self._meanings.items()}

    @property
    def meanings(self) -> Mapping[str, EventMeaning]:
        """What each event type of the flow means for a saga, by message type name."""
        return MappingProxyType(self._meanings)

    def to_mermaid(self) -> str:
        """The flow as a mermaid flowchart of its events: the happy path from the starting
        event through each step's ``done`` event to the completing one, each step's ``failed``
        event, and (dotted) the way back through the ``compensated`` events to the
        compensating end. Paste it into a markdown ```` ```mermaid ```` block."""
        return choreography_to_mermaid(self)

    def declares(self, event: type[BaseModel]) -> bool:
        """Whether *event* is one of this flow's event types."""
        known = self._meanings.get(message_type(event))
        return known is not None and known.model is event

    def destination(self, event: type[BaseModel] | BaseModel) -> str:
        """Where the flow's events of this type are published: ``"<flow>.<event type>"``.

        Raises:
            SagaDefinitionError: the flow does not declare this event type.
        """
        model = event if isinstance(event, type) else type(event)
        if not self.declares(model):
            raise SagaDefinitionError(
                f"choreography {self.name!r} does not declare the event {model.__name__}; its "
                f"events are {', '.join(sorted(self._meanings))}. Declare it (as a step's "
                "done=, failed= or compensated= event, say) so the observer records it"
            )
        return f"{self.name}.{message_type(model)}"

    async def start(
        self,
        broker: Broker,
        event: BaseModel,
        *,
        saga_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Publish the starting *event* of a new saga of this flow; return the saga's id.

        Args:
            broker: An entered broker.
            event: An instance of the flow's ``starts`` event.
            saga_id: The saga's id (default: a new time-ordered one). Every event of the saga
                carries it as its correlation id. Publishing again with the same id (a retried
                request) is recorded once by the observer.
            source: The name of the service publishing it, shown in the saga's history.

        Raises:
            SagaDefinitionError: *event* is not the flow's starting event.
        """
        if type(event) is not self.starts:
            raise SagaDefinitionError(
                f"choreography {self.name!r} starts with {self.starts.__name__}, not "
                f"{type(event).__name__}"
            )
        saga_id = saga_id or new_saga_id()
        envelope = Envelope.of(
            event,
            id=f"{saga_id}#start",
            correlation_id=saga_id,
            headers={HEADER_SERVICE: source} if source else None,
        )
        await broker.publish(self.destination(type(event)), envelope)
        return saga_id


def _said(meaning: EventMeaning) -> str:
    if meaning.step is None:
        return {"start": "starts=", "completes": "completes=", "compensates": "compensates="}[
            meaning.kind
        ]
    return f"step {meaning.step!r} {meaning.kind}="
