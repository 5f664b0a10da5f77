"""Declaring sagas: :class:`Saga`, its steps, their compensations and policies.

A definition is pure data: declaring a saga does no I/O and needs no running loop. Every
mistake that can be seen in a declaration raises :class:`~pysaga.SagaDefinitionError` right
there, when the module that declares the saga is imported, with a message that says how to
fix it.

Step kinds follow Garcia-Molina & Salem's *Sagas* (1987) and the later pivot/retriable split:

* **compensatable** steps come before the pivot and may declare a compensation;
* at most one **pivot** step: once it succeeds the saga can only go forward;
* **retriable** steps come after the pivot: never compensated, retried until they succeed.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import inspect
import json
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from ._mermaid import saga_to_mermaid
from .errors import SagaDefinitionError
from .policies import COMPENSATION_RETRY, DEFAULT_RETRY, RETRIABLE_RETRY, Retry

if typing.TYPE_CHECKING:
    from .models import Failure

__all__ = (
    "DEFAULT_REMOTE_TIMEOUT",
    "Action",
    "Compensation",
    "RemoteCall",
    "Saga",
    "Step",
    "StepContext",
    "StepKind",
    "describe_changes",
)

DataT = TypeVar("DataT", bound=BaseModel)

Action = Callable[..., Awaitable[Any]]
"""A step's action: ``async def step(data, ctx) -> data | None`` (``ctx`` is optional)."""
Compensation = Callable[..., Awaitable[Any]]
"""A step's compensation: ``async def undo(data, ctx) -> None`` (``ctx`` is optional)."""

_ActionT = TypeVar("_ActionT", bound=Action)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step (or compensation) is told about the call it is in.

    Attributes:
        saga_id: The running saga's id.
        saga_name: The saga definition's name.
        step: The step's name.
        attempt: 1 for the first attempt, 2 for the first retry, and so on. A step that was
            interrupted by a crash runs again with the next attempt number.
        idempotency_key: Stable for this step of this saga across retries, restarts and
            orchestrators. Pass it to the service you call so that a repeated call has no
            second effect; the compensation receives the same key, naming the effect to undo.
        compensating: ``True`` when the compensation is running.
        failure: When ``compensating``: why the saga turned back, i.e. the saga's failure (the
            failed step's error, a passed deadline, or an operator's abort with the reason
            they gave). ``None`` for a step going forward.
    """

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    idempotency_key: str
    compensating: bool = False
    failure: Failure | None = None


DEFAULT_REMOTE_TIMEOUT = 30.0
"""Seconds a remote step waits for its reply before the attempt counts as timed out (and
the command is sent again, under the step's retry policy)."""


@dataclass(frozen=True, slots=True)
class RemoteCall:
    """What makes a step remote: the command it sends to a service, and how its data maps.

    Attributes:
        service: The participant service that handles the command (its destination).
        command: The command's pydantic model.
        reply: The reply's model (``None``: any success reply will do).
        compensation: The compensation command's model, if the step has a remote compensation.
        build: Makes the command from the saga's data.
        on_reply: Folds the reply into the saga's data (returns the new data, or ``None``).
        build_compensation: Makes the compensation command from the saga's data.
    """

    service: str
    command: type[BaseModel]
    reply: type[BaseModel] | None
    compensation: type[BaseModel] | None
    build: Callable[[Any], BaseModel]
    on_reply: Callable[[Any, Any], Any]
    build_compensation: Callable[[Any], BaseModel] | None


class StepKind(enum.StrEnum):
    """What a step is, given where it stands relative to the pivot."""

    COMPENSATABLE = "compensatable"
    """Before the pivot: undone (if it declares a compensation) when a later step fails."""
    PIVOT = "pivot"
    """The point of no return: after it succeeds the saga only goes forward."""
    RETRIABLE = "retriable"
    """After the pivot: never compensated, retried until it succeeds."""


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")


class Step(Generic[DataT]):
    """One step of a saga, as the step decorator returns it.

    A step object is still callable like the function it wraps, so a step can be unit-tested
    by calling it directly.
    """

    __slots__ = (
        "_compensation",
        "_compensation_ctx",
        "_compensation_retry",
        "_compensation_timeout",
        "action",
        "group",
        "index",
        "kind",
        "name",
        "remote",
        "retry",
        "saga",
        "timeout",
        "wants_context",
    )

    def __init__(
        self,
        saga: Saga[DataT],
        action: Action | None,
        *,
        name: str,
        kind: StepKind,
        retry: Retry,
        timeout: float | None,
        group: str | None,
        index: int,
    ) -> None:
        self.saga = saga
        self.action = action
        """The step's own function; ``None`` for a remote step (its call is a command)."""
        self.name = name
        self.kind = kind
        self.retry = retry
        self.timeout = timeout
        self.group = group
        self.index = index
        self.wants_context = action is None or _check_callable(
            action, saga, f"step {name!r} in saga {saga.name!r}"
        )
        self.remote: RemoteCall | None = None
        self._compensation: Compensation | None = None
        self._compensation_ctx = False
        self._compensation_retry = COMPENSATION_RETRY
        self._compensation_timeout: float | None = None

    def __repr__(self) -> str:
        where = f" -> {self.remote.service}" if self.remote is not None else ""
        return f"<Step {self.saga.name}.{self.name}{where} ({self.kind.value})>"

    async def __call__(self, data: DataT, ctx: StepContext | None = None) -> Any:
        """Run the action directly (for unit tests); the orchestrator does not go through here.

        Raises:
            TypeError: the step is remote: its call is a command an orchestrator sends.
        """
        if self.action is None:
            raise TypeError(
                f"step {self.name!r} is remote: an Orchestrator with a broker sends its command "
                f"to {self.remote.service if self.remote else 'its service'!r}; test its "
                "participant's handler instead, or run the saga in pysaga.testing.SagaWorld"
            )
        if self.wants_context:
            return await self.action(data, ctx)
        return await self.action(data)

    @property
    def compensation(self) -> Compensation | None:
        """The compensation function, if one was declared (``None`` for a remote step, whose
        compensation is a command: see :attr:`has_compensation`)."""
        return self._compensation

    @property
    def has_compensation(self) -> bool:
        """Whether the step can be undone: a local compensation, or a remote step's
        compensation command."""
        if self.remote is not None:
            return self.remote.build_compensation is not None
        return self._compensation is not None

    @property
    def compensation_retry(self) -> Retry:
        """The compensation's retry budget."""
        return self._compensation_retry

    @property
    def compensation_timeout(self) -> float | None:
        """The compensation's per-attempt timeout, in seconds."""
        return self._compensation_timeout

    @property
    def compensation_wants_context(self) -> bool:
        """Whether the compensation takes the context argument."""
        return self._compensation_ctx

    @overload
    def compensate(self, fn: _ActionT, /) -> _ActionT: ...

    @overload
    def compensate(
        self, /, *, retry: Retry | None = None, timeout: float | None = None
    ) -> Callable[[_ActionT], _ActionT]: ...

    def compensate(
        self,
        fn: _ActionT | None = None,
        /,
        *,
        retry: Retry | None = None,
        timeout: float | None = None,
    ) -> _ActionT | Callable[[_ActionT], _ActionT]:
        """Declare this step's compensation; usable bare or with arguments.

        Args:
            fn: ``async def undo(data, ctx) -> None``. It receives the saga's latest data and
                the step's idempotency key, and must be idempotent: it may run more than once
                (after a crash), and for a step whose outcome is in doubt it may run when the
                step's effect never happened.
            retry: Its retry budget (default: ten attempts). When it runs out the saga ends
                FAILED and names this step.
            timeout: Seconds allowed per attempt.
        """

        def register(func: _ActionT) -> _ActionT:
            self._set_compensation(func, retry, timeout)
            return func

        if fn is not None:
            return register(fn)
        return register

    def _set_compensation(
        self, fn: Compensation, retry: Retry | None, timeout: float | None
    ) -> None:
        where = self._check_compensable()
        if self._compensation is not None:
            raise SagaDefinitionError(
                f"{where}: step {self.name!r} already has the compensation "
                f"{_qualname(self._compensation)}; a step has at most one"
            )
        wants_context = _check_callable(fn, self.saga, where)
        _check_policy(retry, timeout, where)
        self._compensation = fn
        self._compensation_ctx = wants_context
        self._set_compensation_policy(retry, timeout)

    def _set_compensation_policy(self, retry: Retry | None, timeout: float | None) -> None:
        if retry is not None:
            self._compensation_retry = retry
        self._compensation_timeout = timeout

    def _check_compensable(self) -> str:
        """Check that this step may have a compensation; return how errors name it."""
        self.saga._check_open()
        where = f"compensation of step {self.name!r} in saga {self.saga.name!r}"
        if self.kind is not StepKind.COMPENSATABLE:
            raise SagaDefinitionError(
                f"{where}: a {self.kind.value} step cannot be compensated "
                + (
                    "(the pivot is the point of no return). Move the compensation to a step "
                    "before the pivot, or drop pivot=True."
                    if self.kind is StepKind.PIVOT
                    else "(it comes after the pivot, so it is retried until it succeeds instead). "
                    "Declare it before the pivot step if it must be undoable."
                )
            )
        return where


class Saga(Generic[DataT]):
    """A saga definition: a name, a version, the pydantic model of its data, and its steps.

    Args:
        name: Unique among the sagas one orchestrator runs; stored in the saga log.
        data_type: The pydantic model that every step receives and returns.
        version: Bump it when you change the saga's shape (what its :attr:`fingerprint`
            covers): an orchestrator drives a saga only on the definition it was started on,
            and holds the sagas of a changed definition under an unchanged version for an
            operator. One orchestrator can host the old and the new version side by side.
        deadline: Seconds a saga has to get past its pivot (or to complete, without a pivot);
            when it runs out before that, the saga compensates. Kept in the log, so it
            survives restarts.

    Example::

        place_order = Saga("place-order", Order, version=1)

        @place_order.step(retry=Retry(attempts=5))
        async def reserve_stock(order: Order, ctx: StepContext) -> Order: ...
    """

    def __init__(
        self,
        name: str,
        data_type: type[DataT],
        *,
        version: int = 1,
        deadline: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SagaDefinitionError(
                f"saga name {name!r} is not usable: use 1-200 characters, letters, digits and "
                "'_.:-', starting with a letter or '_' (for example 'place-order')"
            )
        if not (isinstance(data_type, type) and issubclass(data_type, BaseModel)):
            raise SagaDefinitionError(
                f"saga {name!r}: data_type must be a pydantic model class (a subclass of "
                f"pydantic.BaseModel), got {data_type!r}"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SagaDefinitionError(f"saga {name!r}: version must be an int >= 1")
        if deadline is not None and not deadline > 0:
            raise SagaDefinitionError(f"saga {name!r}: deadline must be > 0 seconds or None")
        self.name = name
        self.data_type: type[DataT] = data_type
        self.version = version
        self.deadline = deadline
        self._steps: list[Step[DataT]] = []
        self._by_name: dict[str, Step[DataT]] = {}
        self._pivot: Step[DataT] | None = None
        self._group: str | None = None
        self._groups_seen: set[str] = set()
        self._sealed = False
        self._stages: tuple[tuple[Step[DataT], ...], ...] | None = None
        self._outline: dict[str, Any] | None = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"<Saga {self.name} v{self.version}: {len(self._steps)} steps>"

    # -- declaring ---------------------------------------------------------------------------

    @overload
    def step(self, fn: Action, /) -> Step[DataT]: ...

    @overload
    def step(
        self,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        pivot: bool = False,
    ) -> Callable[[Action], Step[DataT]]: ...

    def step(
        self,
        fn: Action | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        pivot: bool = False,
    ) -> Step[DataT] | Callable[[Action], Step[DataT]]:
        """Declare the next step; usable bare (``@saga.step``) or with arguments.

        Steps run in the order they are declared (steps declared inside
        :meth:`parallel` run together).

        Args:
            fn: ``async def step(data, ctx) -> data | None``. Return the updated data
                (``data.model_copy(update=...)``), or ``None`` to leave it as it was.
            name: The step's name in the log (default: the function's name).
            retry: Its retry policy. Default: three attempts before the pivot, and until it
                succeeds after it.
            timeout: Seconds allowed per attempt; a timed-out attempt counts as a failure
                that may be retried.
            pivot: Make this step the pivot: the point of no return.
        """

        def register(func: Action) -> Step[DataT]:
            return self._add_step(func, name=name, retry=retry, timeout=timeout, pivot=pivot)

        if fn is not None:
            return register(fn)
        return register

    def compensate(
        self, step_name: str, *, retry: Retry | None = None, timeout: float | None = None
    ) -> Callable[[_ActionT], _ActionT]:
        """Declare the compensation of the step called *step_name* (same as ``step.compensate``)."""
        step = self._by_name.get(step_name)
        if step is None:
            known = ", ".join(repr(s) for s in self._by_name) or "none yet"
            raise SagaDefinitionError(
                f"saga {self.name!r}: cannot declare a compensation for unknown step "
                f"{step_name!r} (steps declared so far: {known}). Declare the step first, "
                "then its compensation."
            )
        return step.compensate(retry=retry, timeout=timeout)

    def remote(
        self,
        name: str,
        *,
        service: str,
        command: type[BaseModel],
        reply: type[BaseModel] | None = None,
        compensation: type[BaseModel] | None = None,
        build: Callable[[DataT], BaseModel] | None = None,
        on_reply: Callable[[DataT, Any], DataT | None] | None = None,
        build_compensation: Callable[[DataT], BaseModel] | None = None,
        retry: Retry | None = None,
        timeout: float | None = DEFAULT_REMOTE_TIMEOUT,
        pivot: bool = False,
        compensation_retry: Retry | None = None,
        compensation_timeout: float | None = DEFAULT_REMOTE_TIMEOUT,
    ) -> Step[DataT]:
        """Declare the next step as a command to another service, sent over the broker.

        The orchestrator sends the command (with a reply address and the step's idempotency
        key), waits for the participant's reply under *timeout*, and retries under *retry*.
        A reply that refuses the command is a business "no" (compensate now); a technical
        failure reply is retried. The command keeps its message id on every retry and after
        restarts, so the participant applies it once.

        Without *build*, the command is made from the saga's data fields of the same names;
        without *on_reply*, the reply's fields that the saga's data also has are copied into
        it. Both are checked here: a command field the data cannot fill is an error now.

        Args:
            name: The step's name.
            service: The participant that handles the command (``Participant(service)``).
            command: The command's model.
            reply: The success reply's model (default: any success reply; data unchanged).
            compensation: The model of the command that undoes the step, sent to the same
                service when the saga turns back.
            build: ``def build(data) -> command`` (a plain function: no I/O).
            on_reply: ``def on_reply(data, reply) -> data | None``.
            build_compensation: ``def build(data) -> compensation command``.
            retry: The step's retry policy (as for local steps).
            timeout: Seconds to wait for a reply, per attempt (default 30).
            pivot: Make this step the pivot.
            compensation_retry: The compensation's retry budget.
            compensation_timeout: Seconds to wait for the compensation's reply, per attempt.
        """
        where = f"remote step {name!r} in saga {self.name!r}"
        if not isinstance(service, str) or not _NAME.match(service):
            raise SagaDefinitionError(
                f"{where}: service {service!r} is not a usable name; use 1-200 letters, "
                "digits or '_.:-' (the name the participant was created with)"
            )
        for label, model in (
            ("command", command),
            ("reply", reply),
            ("compensation", compensation),
        ):
            if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise SagaDefinitionError(
                    f"{where}: {label}= must be a pydantic model class, got {model!r}"
                )
        for label, fn in (
            ("build", build),
            ("on_reply", on_reply),
            ("build_compensation", build_compensation),
        ):
            if fn is not None and (not callable(fn) or inspect.iscoroutinefunction(fn)):
                raise SagaDefinitionError(
                    f"{where}: {label}= must be a plain function (not async: it only maps "
                    f"data, with no I/O), got {fn!r}"
                )
        if build is None:
            build = _builder(self.data_type, command, where, "command", "build")
        if compensation is not None and build_compensation is None:
            build_compensation = _builder(
                self.data_type, compensation, where, "compensation", "build_compensation"
            )
        call = RemoteCall(
            service=service,
            command=command,
            reply=reply,
            compensation=compensation,
            build=build,
            on_reply=on_reply if on_reply is not None else _merger(self.data_type, reply),
            build_compensation=build_compensation,
        )
        step = self._add_step(None, name=name, retry=retry, timeout=timeout, pivot=pivot)
        step.remote = call
        if build_compensation is not None:
            try:
                where = step._check_compensable()
                _check_policy(compensation_retry, compensation_timeout, where)
            except SagaDefinitionError:
                self._forget(step)
                raise
            step._set_compensation_policy(compensation_retry, compensation_timeout)
        return step

    def _forget(self, step: Step[DataT]) -> None:
        """Undo the declaration of *step* (the last one), after a mistake was found in it."""
        self._steps.remove(step)
        del self._by_name[step.name]
        if self._pivot is step:
            self._pivot = None

    @contextlib.contextmanager
    def parallel(self, name: str) -> Iterator[None]:
        """Steps declared inside this block run concurrently, as one group.

        The group finishes when all its steps have; if one fails, the others are awaited and
        those that succeeded are compensated. Steps in a group must update disjoint fields of
        the saga's data. The pivot cannot be part of a group.
        """
        self._check_open()
        where = f"saga {self.name!r}: parallel({name!r})"
        if self._group is not None:
            raise SagaDefinitionError(
                f"{where} is inside parallel({self._group!r}); groups do not nest. Put all "
                "the concurrent steps in one group."
            )
        if not isinstance(name, str) or not _NAME.match(name):
            raise SagaDefinitionError(f"{where}: the group needs a name like 'reserve-all'")
        if name in self._groups_seen or name in self._by_name:
            raise SagaDefinitionError(f"{where}: the name {name!r} is already used in this saga")
        self._groups_seen.add(name)
        self._group = name
        before = len(self._steps)
        try:
            yield
        finally:
            self._group = None
        if len(self._steps) == before:
            raise SagaDefinitionError(f"{where} declares no step; declare steps inside the block")

    def _add_step(
        self,
        fn: Action | None,
        *,
        name: str | None,
        retry: Retry | None,
        timeout: float | None,
        pivot: bool,
    ) -> Step[DataT]:
        self._check_open()
        step_name = name if name is not None else getattr(fn, "__name__", None)
        where = f"step {step_name!r} in saga {self.name!r}"
        if not isinstance(step_name, str) or not _NAME.match(step_name):
            raise SagaDefinitionError(
                f"{where}: a step name needs 1-200 letters, digits or '_.:-'; "
                "pass name='...' to the decorator"
            )
        if step_name in self._by_name or step_name in self._groups_seen:
            raise SagaDefinitionError(
                f"{where}: the name is already used in this saga. Step names must be unique; "
                "rename the function or pass name='...'"
            )
        _check_policy(retry, timeout, where)
        if pivot:
            if self._pivot is not None:
                raise SagaDefinitionError(
                    f"{where}: saga already has the pivot {self._pivot.name!r}; a saga has at "
                    "most one pivot (the point of no return)"
                )
            if self._group is not None:
                raise SagaDefinitionError(
                    f"{where}: the pivot cannot run inside parallel({self._group!r}); declare "
                    "it outside the group"
                )
            kind = StepKind.PIVOT
        elif self._pivot is not None:
            kind = StepKind.RETRIABLE
        else:
            kind = StepKind.COMPENSATABLE
        if retry is None:
            retry = RETRIABLE_RETRY if kind is StepKind.RETRIABLE else DEFAULT_RETRY
        step = Step(
            self,
            fn,
            name=step_name,
            kind=kind,
            retry=retry,
            timeout=timeout,
            group=self._group,
            index=len(self._steps),
        )
        self._steps.append(step)
        self._by_name[step_name] = step
        if pivot:
            self._pivot = step
        return step

    def _check_open(self) -> None:
        if self._sealed:
            raise SagaDefinitionError(
                f"saga {self.name!r} is already in use by an orchestrator; declare all its "
                "steps before creating the Orchestrator (at import time)"
            )

    def seal(self) -> None:
        """Freeze the definition and compute its :attr:`fingerprint`; called when an
        orchestrator takes the saga.

        Raises:
            SagaDefinitionError: if the saga has no step.
        """
        if not self._steps:
            raise SagaDefinitionError(
                f"saga {self.name!r} has no steps; declare at least one with @saga.step"
            )
        if not self._sealed:
            self._outline = self._make_outline()
            self._fingerprint = _digest(self._outline)
        self._sealed = True

    # -- reading -----------------------------------------------------------------------------

    @property
    def steps(self) -> Sequence[Step[DataT]]:
        """The steps, in declaration order."""
        return tuple(self._steps)

    @property
    def pivot(self) -> Step[DataT] | None:
        """The pivot step, if any."""
        return self._pivot

    def get_step(self, name: str) -> Step[DataT]:
        """The step called *name*.

        Raises:
            KeyError: when there is no such step.
        """
        return self._by_name[name]

    @property
    def stages(self) -> tuple[tuple[Step[DataT], ...], ...]:
        """The steps grouped in the order they run: one step, or one parallel group, a stage."""
        if self._stages is not None and self._sealed:
            return self._stages
        stages: list[tuple[Step[DataT], ...]] = []
        for step in self._steps:
            if step.group is not None and stages and stages[-1][0].group == step.group:
                stages[-1] = (*stages[-1], step)
            else:
                stages.append((step,))
        self._stages = tuple(stages)
        return self._stages

    @property
    def fingerprint(self) -> str:
        """A stable hash of the definition's shape: 16 hexadecimal digits.

        It covers what a saga already in flight depends on: the steps' names and order,
        their kinds, their parallel groups, which steps have a compensation, which steps are
        remote (and to which service), and the structure of the data model's JSON schema
        (its fields, their types, which are required, enumerations and nesting). It does not
        cover what may change safely under a running saga: the code inside steps and
        compensations, retry policies, timeouts, the deadline, and the data model's titles,
        descriptions, defaults and constraints (the log keeps every field of a saga's data,
        and data that no longer fits a changed constraint is left for an operator when it is
        read back).

        Each saga record keeps the fingerprint of the definition it was started on, and an
        orchestrator drives only the sagas whose ``(name, version, fingerprint)`` it hosts.
        Computed once when the saga is sealed (when an orchestrator takes it); read before
        that, it describes the steps declared so far.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        return _digest(self._make_outline())

    def outline(self) -> dict[str, Any]:
        """The definition's shape as its :attr:`fingerprint` hashes it, as JSON-able data.

        Returns:
            ``{"steps": [{"name", "kind", "group", "compensated", "remote"}, ...],
            "data": <the structure of the data model's JSON schema>}``,
            steps in declaration order; ``remote`` is the service of a remote step, ``None``
            for a local one. The saga log keeps it once per definition, so that a changed
            definition can be told apart step by step (:func:`describe_changes`).
        """
        if self._outline is not None:
            copied: dict[str, Any] = json.loads(json.dumps(self._outline))
            return copied  # a copy the caller may change
        return self._make_outline()

    def _make_outline(self) -> dict[str, Any]:
        return {
            "steps": [
                {
                    "name": step.name,
                    "kind": step.kind.value,
                    "group": step.group,
                    "compensated": step.has_compensation,
                    "remote": None if step.remote is None else step.remote.service,
                }
                for step in self._steps
            ],
            "data": _data_shape(self.data_type),
        }

    def to_mermaid(self) -> str:
        """Draw the saga as a mermaid flowchart: forward steps, and compensations going back.

        Shapes: a rectangle is a compensatable step, a hexagon the pivot, a rounded box a
        retriable step, a parallelogram a compensation.
        """
        return saga_to_mermaid(self)


# -- fingerprints ---------------------------------------------------------------------------

_SHAPE_KEYS = frozenset(
    {
        "type",
        "format",
        "properties",
        "patternProperties",
        "additionalProperties",
        "items",
        "prefixItems",
        "$ref",
        "$defs",
        "definitions",
        "anyOf",
        "oneOf",
        "allOf",
    }
)
"""JSON-schema keywords that give the data's structure: the types, the fields and how they
nest. Documentation (titles, descriptions, examples), defaults (the log keeps every field of
a saga's data) and constraints (checked when the data is read back) are left out, so a change
to them does not change a fingerprint."""
_VERBATIM_KEYS = frozenset({"required", "enum", "const", "discriminator"})
"""Structural keywords whose values are kept as they are."""
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
"""JSON-schema keywords whose keys are names (a property called ``title`` is kept)."""


def _schema_shape(node: Any, *, names: bool = False) -> Any:
    if isinstance(node, dict):
        if names:
            return {key: _schema_shape(value) for key, value in node.items()}
        return {
            key: value if key in _VERBATIM_KEYS else _schema_shape(value, names=key in _NAME_MAPS)
            for key, value in node.items()
            if key in _SHAPE_KEYS or key in _VERBATIM_KEYS
        }
    if isinstance(node, list):
        return [_schema_shape(item) for item in node]
    return node


def _data_shape(data_type: type[BaseModel]) -> Any:
    """The structure of the data model's JSON schema (its keywords in ``_SHAPE_KEYS`` and
    ``_VERBATIM_KEYS``); for a model pydantic cannot describe in JSON schema, its fields and
    their annotations."""
    try:
        return _schema_shape(data_type.model_json_schema())
    except Exception:  # arbitrary types: describe the fields as declared
        return {
            "fields": {name: repr(info.annotation) for name, info in data_type.model_fields.items()}
        }


def _digest(outline: dict[str, Any]) -> str:
    text = json.dumps(outline, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two definitions' :meth:`Saga.outline`, one short line per change.

    Args:
        before: The outline of the definition a saga was started on.
        after: The outline of the definition now hosted under the same name and version.

    Returns:
        Lines such as ``"step 'reserve' is gone"``, ``"step 'charge' lost its
        compensation"``, ``"steps reordered: a, b -> b, a"`` or ``"the data model changed:
        field 'qty' is new"``; empty when the outlines are the same.
    """
    changes: list[str] = []
    old_steps = {step["name"]: step for step in before.get("steps", [])}
    new_steps = {step["name"]: step for step in after.get("steps", [])}
    changes.extend(f"step {name!r} is gone" for name in old_steps if name not in new_steps)
    changes.extend(f"step {name!r} is new" for name in new_steps if name not in old_steps)
    for name, old in old_steps.items():
        new = new_steps.get(name)
        if new is None:
            continue
        if old.get("kind") != new.get("kind"):
            changes.append(f"step {name!r} was {old.get('kind')}, is now {new.get('kind')}")
        if old.get("group") != new.get("group"):
            changes.append(
                f"step {name!r} moved from group {old.get('group')!r} to {new.get('group')!r}"
            )
        if old.get("compensated") != new.get("compensated"):
            changes.append(
                f"step {name!r} "
                + ("lost its compensation" if old.get("compensated") else "gained a compensation")
            )
        if old.get("remote") != new.get("remote"):
            changes.append(
                f"step {name!r} was {_placed(old.get('remote'))}, "
                f"is now {_placed(new.get('remote'))}"
            )
    kept_old = [name for name in old_steps if name in new_steps]
    kept_new = [name for name in new_steps if name in old_steps]
    if kept_old != kept_new:
        changes.append(f"steps reordered: {', '.join(kept_old)} -> {', '.join(kept_new)}")
    if before.get("data") != after.get("data"):
        changes.append(_data_change(before.get("data"), after.get("data")))
    return changes


def _placed(service: Any) -> str:
    return "local" if service is None else f"sent to service {service!r}"


def _data_change(before: Any, after: Any) -> str:
    old = before.get("properties") if isinstance(before, dict) else None
    new = after.get("properties") if isinstance(after, dict) else None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "the data model changed"
    parts = [f"field {name!r} is gone" for name in old if name not in new]
    parts += [f"field {name!r} is new" for name in new if name not in old]
    parts += [f"field {name!r} changed" for name in old if name in new and old[name] != new[name]]
    if not parts:
        parts = ["its schema changed"]
    return "the data model changed: " + ", ".join(parts)


# -- remote steps --------------------------------------------------------------------------


def _builder(
    data_type: type[BaseModel], model: type[BaseModel], where: str, label: str, option: str
) -> Callable[[Any], BaseModel]:
    """Make *model* from the saga data's fields of the same names; check now that it can."""
    fields = [f for f in model.model_fields if f in data_type.model_fields]
    missing = [
        f for f, info in model.model_fields.items() if info.is_required() and f not in fields
    ]
    if missing:
        raise SagaDefinitionError(
            f"{where}: the {label} {model.__name__} needs {', '.join(map(repr, missing))}, "
            f"which {data_type.__name__} does not have; pass {option}=lambda data: "
            f"{model.__name__}(...) to make it yourself"
        )

    def build(data: Any) -> BaseModel:
        return model.model_validate({f: getattr(data, f) for f in fields})

    build.__name__ = f"build_{model.__name__}"
    return build


def _merger(data_type: type[BaseModel], reply: type[BaseModel] | None) -> Callable[[Any, Any], Any]:
    """Copy the reply's fields that the saga's data also has into the data."""
    fields = [f for f in reply.model_fields if f in data_type.model_fields] if reply else []

    def merge(data: Any, answer: Any) -> Any:
        if not fields:
            return None
        return data.model_copy(update={f: getattr(answer, f) for f in fields})

    return merge


# -- declaration checks ----------------------------------------------------------------------


def _qualname(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _positional(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    sig = inspect.signature(fn)
    return [
        p
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _check_callable(fn: Any, saga: Saga[Any], where: str) -> bool:
    """Check a step's or compensation's signature; return whether it takes ``ctx``."""
    if not callable(fn):
        raise SagaDefinitionError(f"{where}: expected an async function, got {fn!r}")
    if not inspect.iscoroutinefunction(fn):
        raise SagaDefinitionError(
            f"{where}: {_qualname(fn)} must be an 'async def' function (steps and "
            "compensations are awaited); add 'async' to its definition"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:  # pragma: no cover - builtins only
        raise SagaDefinitionError(f"{where}: cannot read the signature of {fn!r}") from exc
    positional = _positional(fn)
    required_other = [
        p.name
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    has_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if required_other or has_varargs or not 1 <= len(required) <= 2:
        raise SagaDefinitionError(
            f"{where}: {_qualname(fn)}{sig} has the wrong signature; write it as "
            f"'async def {getattr(fn, '__name__', 'fn')}(data: {saga.data_type.__name__}, "
            "ctx: StepContext)' (ctx may be left out)"
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # forward references we cannot resolve: nothing to check
        hints = {}
    first = hints.get(positional[0].name)
    if (
        isinstance(first, type)
        and issubclass(first, BaseModel)
        and not issubclass(saga.data_type, first)
    ):
        raise SagaDefinitionError(
            f"{where}: its first parameter is annotated {first.__name__}, but saga "
            f"{saga.name!r} carries {saga.data_type.__name__}; annotate it "
            f"'{positional[0].name}: {saga.data_type.__name__}'"
        )
    returned = hints.get("return")
    if (
        isinstance(returned, type)
        and issubclass(returned, BaseModel)
        and not issubclass(returned, saga.data_type)
    ):
        raise SagaDefinitionError(
            f"{where}: it is annotated to return {returned.__name__}, but a step returns the "
            f"saga's data ({saga.data_type.__name__}) or None"
        )
    return len(required) == 2 or (
        len(positional) >= 2
        and (positional[1].name == "ctx" or hints.get(positional[1].name) is StepContext)
    )


def _check_policy(retry: Retry | None, timeout: float | None, where: str) -> None:
    if retry is not None and not isinstance(retry, Retry):
        raise SagaDefinitionError(f"{where}: retry must be a pysaga.Retry, got {retry!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise SagaDefinitionError(f"{where}: timeout must be a number of seconds > 0, or None")
