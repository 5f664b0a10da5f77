"""The records pysaga keeps about sagas: statuses, history entries, state rows and outcomes.

These are plain, immutable dataclasses (not pydantic models): they sit on the hot path of
every saga and every log write, and the saga log gives them their durable form. The user's
saga *data* is a pydantic model; the log keeps it as JSON text.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _clock

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = (
    "DefinitionRecord",
    "EntryKind",
    "Failure",
    "LogEntry",
    "SagaOutcome",
    "SagaRecord",
    "SagaStatus",
    "SagaUpdate",
    "SagaVersion",
    "StepState",
    "StepStatus",
    "new_saga_id",
)

D = TypeVar("D")


def new_saga_id() -> str:
    """A new saga id: a UUID in the version 7 layout (48-bit millisecond time, then 74
    random bits), so that ids sort by creation time.

    Time-ordered ids keep the saga log's B-trees appending at their right edge instead of
    touching a random page per write, which makes group commit several times cheaper.
    """
    value = int(_clock.now() * 1000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class SagaStatus(enum.StrEnum):
    """Where a saga is in its life. The last four are terminal."""

    RUNNING = "running"
    """Running its steps forward."""
    COMPENSATING = "compensating"
    """A step failed before the pivot: undoing the finished steps in reverse order."""
    COMPLETED = "completed"
    """Every step succeeded."""
    COMPENSATED = "compensated"
    """A step failed and every finished step was undone: the net effect is nothing."""
    FAILED = "failed"
    """A compensation (or a step after the pivot) could not succeed: an operator must look."""
    RESOLVED = "resolved"
    """It failed, then an operator settled it by hand and marked it resolved
    (:meth:`Operator.resolve() <pysaga.Operator.resolve>`): nothing more happens to it."""

    @property
    def is_terminal(self) -> bool:
        """``True`` for COMPLETED, COMPENSATED, FAILED and RESOLVED."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.RESOLVED}
)
ACTIVE_STATUSES: tuple[SagaStatus, ...] = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
OBSERVER_PREFIX = "pysaga.choreography:"
"""How a choreographed saga's owner starts in the log: ``"pysaga.choreography:<flow>"``, the
observer that records it. No orchestrator drives such a saga."""


class StepStatus(enum.StrEnum):
    """Where one step of one saga is."""

    STARTED = "started"
    """Intent written, outcome not (yet): running now, or in doubt after a crash."""
    SUCCEEDED = "succeeded"
    """The action returned: its effect happened."""
    FAILED = "failed"
    """The action raised on its last allowed attempt: its effect is taken not to have happened."""
    COMPENSATING = "compensating"
    """Intent to compensate written, outcome not (yet)."""
    COMPENSATED = "compensated"
    """The compensation returned: the step's effect is undone."""
    COMPENSATION_FAILED = "compensation_failed"
    """The compensation used up its retry budget: an operator must look."""


class EntryKind(enum.StrEnum):
    """The kind of one history entry."""

    SAGA_STARTED = "saga_started"
    """The saga was created with its input data."""
    SAGA_CLAIMED = "saga_claimed"
    """An orchestrator took the saga's lease (on start-up or after another one stopped)."""
    STEP_STARTED = "step_started"
    """Intent: an attempt of a step is about to run."""
    STEP_SUCCEEDED = "step_succeeded"
    """Outcome: the attempt returned."""
    STEP_FAILED = "step_failed"
    """Outcome: the attempt raised or timed out; ``retrying`` says whether another follows."""
    COMPENSATION_STARTED = "compensation_started"
    """Intent: an attempt of a compensation is about to run."""
    COMPENSATION_SUCCEEDED = "compensation_succeeded"
    """Outcome: the compensation returned."""
    COMPENSATION_FAILED = "compensation_failed"
    """Outcome: the compensation attempt raised or timed out."""
    SAGA_COMPENSATING = "saga_compensating"
    """The saga turned back: compensation starts."""
    SAGA_COMPLETED = "saga_completed"
    """Terminal: every step succeeded."""
    SAGA_COMPENSATED = "saga_compensated"
    """Terminal: every finished step was undone."""
    SAGA_FAILED = "saga_failed"
    """Terminal: needs an operator."""
    OPERATOR_RETRIED = "operator_retried"
    """An operator sent a FAILED saga back to work: its failed compensations (or its failed
    step after the pivot) start again with a fresh retry budget."""
    OPERATOR_ABORTED = "operator_aborted"
    """An operator turned a RUNNING saga back: it compensates."""
    OPERATOR_RESOLVED = "operator_resolved"
    """An operator settled a FAILED saga by hand: it is RESOLVED."""
    SAGA_HELD = "saga_held"
    """An orchestrator that hosts the saga's name and version met it, but the saga was
    started on a definition with another fingerprint: it is held for an operator, not
    driven. The entry's ``failure`` says which steps differ."""

    @property
    def is_operator_action(self) -> bool:
        """``True`` for the entries an operator's action wrote (``operator_*``); such an
        entry's ``owner`` is the person and its ``failure`` carries their reason."""
        return self in _OPERATOR_KINDS


_OPERATOR_KINDS = frozenset(
    {EntryKind.OPERATOR_RETRIED, EntryKind.OPERATOR_ABORTED, EntryKind.OPERATOR_RESOLVED}
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a step, a compensation or a saga failed.

    Attributes:
        step: The step concerned, if any (``None`` for a saga-level failure such as a deadline).
        type: The exception's class name (``"TimeoutError"``, ``"BusinessError"``...).
        message: The exception's message.
        business: ``True`` for a business refusal (:class:`~pysaga.BusinessError`).
        details: JSON-able details the step attached to its error, if any.
    """

    step: str | None
    type: str
    message: str
    business: bool = False
    details: Any = None

    def to_json(self) -> dict[str, Any]:
        """Return the failure as a JSON-able dict."""
        return {
            "step": self.step,
            "type": self.type,
            "message": self.message,
            "business": self.business,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Failure:
        """Build a failure from :meth:`to_json`'s output."""
        return cls(
            step=value.get("step"),
            type=value["type"],
            message=value["message"],
            business=bool(value.get("business", False)),
            details=value.get("details"),
        )

    def __str__(self) -> str:
        where = f"step {self.step!r}: " if self.step else ""
        return f"{where}{self.type}: {self.message}"


@dataclass(slots=True)
class LogEntry:
    """One transition in a saga's append-only history.

    Attributes:
        kind: What happened.
        at: When, as seconds since the epoch.
        step: The step concerned, if any.
        attempt: The attempt number (1-based) for step and compensation entries, else 0.
        failure: Why, for failure entries. For an operator's entry (``operator_*``): the
            action and the reason the operator gave (``details`` holds ``by`` and
            ``reason``).
        owner: The orchestrator that wrote the entry; for an operator's entry, the person
            (``by``).
    """

    kind: EntryKind
    at: float
    step: str | None = None
    attempt: int = 0
    failure: Failure | None = None
    owner: str | None = None


@dataclass(slots=True)
class StepState:
    """The current state of one step of one saga.

    Attributes:
        status: Where the step is.
        attempts: How many times the action (or, once compensating, the compensation) started.
        failures: How many of those attempts failed.
        timeout_at: While an attempt runs (``STARTED`` or ``COMPENSATING``): when it times out
            (seconds since the epoch), if it has a time limit. Kept in the log, so an attempt
            resumed after a restart keeps its original limit.
        retry_at: After a failed attempt that will be retried: when the next attempt may
            start, so a restart waits out the rest of the backoff instead of starting over.
        failure: The last failure of the action (or, once compensating, of the
            compensation), kept while the step is ``FAILED`` or ``COMPENSATION_FAILED``: for
            a compensation that gave up, the error an operator has to look at, kept beside
            the saga's own ``failure`` (the reason it turned back) rather than over it.

    A state is never changed in place: each transition makes a new one.
    """

    status: StepStatus
    attempts: int = 0
    failures: int = 0
    timeout_at: float | None = None
    retry_at: float | None = None
    failure: Failure | None = None


@dataclass(slots=True)
class SagaRecord:
    """The current-state row of one saga, as kept by the saga log.

    Attributes:
        saga_id: The saga's id.
        name: The saga definition's name.
        version: The saga definition's version.
        status: Where the saga is.
        data: The saga's data, as JSON text.
        steps: Each started step's state, by step name.
        revision: Optimistic-concurrency counter: every write adds one.
        owner: The orchestrator holding the lease, if any.
        lease_expires_at: When the owner's lease ends (seconds since the epoch).
        deadline_at: When the saga must have passed its pivot, if it has a deadline.
        created_at: When the saga was started.
        updated_at: When the row was last written.
        failure: Why the saga turned back (the step's error, a deadline, an operator's abort),
            or why it failed going forward (a step after the pivot, a pivot in doubt). A
            compensation that gives up later does not replace it: see
            :attr:`compensation_failure`.
        incarnation: Which run of the owner holds the lease: an orchestrator takes a fresh
            incarnation each time it starts, so a lease is held by ``(owner, incarnation)``
            (``None`` for a holder without incarnations, such as a choreography's observer).
        fingerprint: The :attr:`~pysaga.Saga.fingerprint` of the definition the saga was
            started on; only an orchestrator hosting that same definition drives it.
            ``None`` for a saga recorded before fingerprints existed (driven, unchecked, by
            an orchestrator hosting its name and version) and for a choreographed saga.
        held: Set when an orchestrator hosting the saga's name and version refused to drive
            it because its definition changed: what differs. ``None`` otherwise; cleared when
            an orchestrator hosting the saga's own definition claims it.
    """

    saga_id: str
    name: str
    version: int
    status: SagaStatus
    data: str
    steps: dict[str, StepState] = field(default_factory=dict)
    revision: int = 0
    owner: str | None = None
    lease_expires_at: float = 0.0
    deadline_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    failure: Failure | None = None
    incarnation: str | None = None
    fingerprint: str | None = None
    held: str | None = None

    @property
    def compensation_failure(self) -> Failure | None:
        """The error of the compensation that gave up, when the saga is stuck on one;
        ``None`` otherwise."""
        return compensation_failure(self.steps)

    def apply(self, update: SagaUpdate) -> None:
        """Fold *update* into this record, as every saga log does when it writes one.

        The revision is the log's to count and is left alone; ``updated_at`` becomes the time
        of the update's last entry.
        """
        if update.status is not None:
            self.status = update.status
        if update.steps:
            self.steps.update(update.steps)
        if update.data is not None:
            self.data = update.data
        if update.failure is not None:
            self.failure = update.failure
        if update.entries:
            self.updated_at = update.entries[-1].at


def compensation_failure(steps: Mapping[str, StepState]) -> Failure | None:
    """The failure of the compensation that gave up among *steps*, if one did."""
    for state in steps.values():
        if state.status is StepStatus.COMPENSATION_FAILED:
            return state.failure  # the saga stops at the first compensation that gives up
    return None


@dataclass(frozen=True, slots=True)
class DefinitionRecord:
    """What the saga log keeps of one saga definition, once per ``(name, version,
    fingerprint)``: its outline, written by each orchestrator that hosts it when it starts.

    Attributes:
        name: The definition's name.
        version: Its version.
        fingerprint: Its :attr:`~pysaga.Saga.fingerprint`.
        outline: Its :meth:`~pysaga.Saga.outline` (steps, kinds, groups, compensations,
            local or remote, the data model's schema), as JSON-able data.
        registered_at: When an orchestrator first recorded it (seconds since the epoch).
    """

    name: str
    version: int
    fingerprint: str
    outline: Mapping[str, Any]
    registered_at: float


@dataclass(frozen=True, slots=True)
class SagaVersion:
    """The sagas of one definition in a log: per ``(name, version, fingerprint)``, how many
    are in each status, and the definition's outline when the log has it.

    Attributes:
        name: The definition's name.
        version: Its version.
        fingerprint: Its fingerprint; ``None`` for sagas recorded before fingerprints
            existed (and for choreographed sagas).
        counts: How many sagas are in each status (statuses with none are left out).
        held: How many of the unfinished ones are held for an operator (their definition
            changed under them).
        definition: What the log keeps of this definition, if an orchestrator recorded it.
    """

    name: str
    version: int
    fingerprint: str | None
    counts: Mapping[SagaStatus, int]
    held: int = 0
    definition: DefinitionRecord | None = None

    @property
    def total(self) -> int:
        """How many sagas in all."""
        return sum(self.counts.values())


@dataclass(slots=True)
class SagaUpdate:
    """One atomic write to a saga: history entries to append and the new current state.

    Attributes:
        entries: Appended to the history, in order.
        status: The saga's new status, or ``None`` when it did not change.
        steps: The steps whose state changed (merged into the record's ``steps``).
        data: The saga's new data as JSON text, or ``None`` when it did not change.
        failure: The saga's failure, or ``None`` to keep the current one.
    """

    entries: Sequence[LogEntry]
    status: SagaStatus | None = None
    steps: Mapping[str, StepState] = field(default_factory=dict)
    data: str | None = None
    failure: Failure | None = None

    @staticmethod
    def join(updates: Sequence[SagaUpdate]) -> SagaUpdate:
        """*updates*, in order, as one write: their entries one after the other, and for each
        field the last value set."""
        if len(updates) == 1:
            return updates[0]
        entries: list[LogEntry] = []
        steps: dict[str, StepState] = {}
        status: SagaStatus | None = None
        data: str | None = None
        failure: Failure | None = None
        for part in updates:
            entries.extend(part.entries)
            if part.steps:
                steps.update(part.steps)
            if part.status is not None:
                status = part.status
            if part.data is not None:
                data = part.data
            if part.failure is not None:
                failure = part.failure
        return SagaUpdate(entries, status, steps, data, failure)


@dataclass(frozen=True, slots=True)
class SagaOutcome(Generic[D]):
    """How a saga ended, as :meth:`Orchestrator.run() <pysaga.Orchestrator.run>` returns it.

    Attributes:
        saga_id: The saga's id.
        name: The saga definition's name.
        status: COMPLETED, COMPENSATED or FAILED (or RESOLVED, read back from the log).
        data: The saga's data at the end, as the saga's pydantic model.
        failure: Why it turned back or failed; ``None`` when it completed.
        compensation_failure: When it is FAILED because a compensation gave up: that
            compensation's error (``failure`` still says why the saga turned back).
    """

    saga_id: str
    name: str
    status: SagaStatus
    data: D
    failure: Failure | None = None
    compensation_failure: Failure | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the saga completed."""
        return self.status is SagaStatus.COMPLETED
