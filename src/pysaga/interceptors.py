"""Interceptors: code that wraps every attempt of every step and compensation.

A step is called through one seam, whether it is local (an async function the orchestrator
awaits) or remote (a command sent to a participant, whose reply is awaited): an
:data:`Interceptor` sees each attempt as a :class:`StepCall` and passes it on with
``await proceed(call)``, in the manner of ASGI middleware. Tracing is one such interceptor; the
test kit's fault injection is another; yours go in ``Orchestrator(interceptors=[...])``, outermost
first::

    async def log_attempts(call: StepCall, proceed: Proceed) -> Any:
        what = "compensating" if call.ctx.compensating else "running"
        print(f"{what} {call.ctx.step} (attempt {call.ctx.attempt})")
        return await proceed(call)

An interceptor may change the call (``dataclasses.replace(call, data=...)``), raise instead of
proceeding (the attempt then fails with that error, under the step's retry policy), or look at
what the next link returns. It runs inside the attempt's time limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .definition import Step, StepContext

__all__ = ("Interceptor", "Invoke", "Proceed", "StepCall", "chain")


@dataclass(frozen=True, slots=True)
class StepCall:
    """One attempt of a step, or of its compensation (``ctx.compensating``).

    Attributes:
        step: The step, as declared (``step.remote`` is set for a remote step).
        data: The saga's data the attempt receives.
        ctx: The attempt's context: saga id and name, step, attempt number, idempotency key,
            and, for a compensation, why the saga turned back.
    """

    step: Step[Any]
    data: BaseModel
    ctx: StepContext


Proceed: TypeAlias = Callable[[StepCall], Awaitable[Any]]
"""The rest of the chain: call it with the (possibly changed) call to go on."""

Interceptor: TypeAlias = Callable[[StepCall, Proceed], Awaitable[Any]]
"""``async def interceptor(call, proceed) -> Any``: wraps every attempt."""

Invoke: TypeAlias = Callable[["BaseModel", "StepContext"], Awaitable[Any]]
"""One attempt of a step or compensation: ``await invoke(data, ctx)``. It returns the saga's
new data, or ``None`` to keep it (a compensation returns ``None``)."""


def chain(step: Step[Any], invoke: Invoke, interceptors: Sequence[Interceptor]) -> Invoke:
    """Wrap *invoke* (the step's own call) in *interceptors*, the first one outermost."""
    if not interceptors:
        return invoke

    async def innermost(call: StepCall) -> Any:
        return await invoke(call.data, call.ctx)

    proceed: Proceed = innermost
    for interceptor in reversed(interceptors):
        proceed = _link(interceptor, proceed)
    outermost = proceed

    async def invoke_through_chain(data: BaseModel, ctx: StepContext) -> Any:
        return await outermost(StepCall(step, data, ctx))

    return invoke_through_chain


def _link(interceptor: Interceptor, proceed: Proceed) -> Proceed:
    async def link(call: StepCall) -> Any:
        return await interceptor(call, proceed)

    return link
