"""What an operator does to a saga by hand: retry what gave up, abort a running saga, or mark
a failed one resolved.

An :class:`Operator` writes to the saga log an orchestrator uses, over whichever orchestrator
holds the saga (see :meth:`SagaLog.intervene() <pysaga.SagaLog.intervene>`): the write bumps
the saga's revision, so the orchestrator driving it stops at its next write (or at once, if it
is this process's), and it sets the saga's lease free, so an orchestrator that runs its
definition claims it and goes on from the log within its claim interval::

    async with Operator("sqlite:///sagas.db") as operator:
        await operator.retry(saga_id, reason="warehouse is back up", by="alice")

Every action is one entry of its own kind in the saga's history (``operator_retried``,
``operator_aborted``, ``operator_resolved``) whose ``owner`` is the person and whose
``failure`` carries their reason. An action the saga's state does not allow is refused with
:class:`~pysaga.OperatorActionRefused` and writes nothing.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING

from . import _transitions as _machine
from ._optimistic import until_written
from .errors import SagaNotFoundError
from .inspection import LogAccess
from .models import EntryKind, Failure, LogEntry, SagaRecord, SagaUpdate

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("Operator", "default_operator")

"""How often an action re-reads a saga that an orchestrator keeps writing meanwhile."""


def default_operator() -> str:
    """The name an action records when no ``by`` is given: the OS user running it.

    Returns:
        The login name, or ``"unknown"`` when the system cannot tell.
    """
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return "unknown"


class Operator(LogAccess):
    """Retries, aborts and resolves sagas in a saga log, for a person who decided to.

    Give it the log the orchestrators use, as for :class:`~pysaga.Inspector`: a URL (or a
    file path, for SQLite) that ``async with Operator(url) as operator:`` opens and closes,
    or an open log object used as it is (``orchestrator.log``). A log opened from a URL must
    exist: a missing SQLite file or PostgreSQL log fails with :class:`~pysaga.StoreError`
    instead of being created empty.

    Args:
        log: A saga log URL (``"sqlite:///sagas.db"``, ``"postgresql://..."``), a file path
            for a SQLite log, or an object implementing :class:`~pysaga.SagaLog`.
        clock: Returns the current time in seconds since the epoch, for the entries' times.

    Raises:
        TypeError: *log* is none of the above.
        InvalidURLError: *log* is a malformed URL, or one with a scheme pysaga does not know.
    """

    _read_only = False

    async def retry(self, saga_id: str, *, reason: str, by: str | None = None) -> SagaRecord:
        """Send a FAILED saga back to work, with a fresh retry budget.

        * If compensations gave up (status ``compensation_failed``), they go back to pending
          with their failures counted from zero and the saga is COMPENSATING again: its
          compensations run again, the failed ones first (in reverse step order, as ever).
        * If a step gave up going forward (a retriable step after the pivot, or a pivot
          whose outcome was in doubt), that step goes back to pending with its failures
          counted from zero and the saga is RUNNING again: the step runs again with the same
          idempotency key.

        Fix what made it fail first (the service that was down, the bad data): the retry
        runs the same code. An orchestrator that runs the saga's definition picks it up
        within its claim interval.

        Args:
            saga_id: The saga.
            reason: Why, in words; kept in the saga's history.
            by: Who; default the OS user running this (:func:`default_operator`).

        Returns:
            The saga's record after the retry was written.

        Raises:
            OperatorActionRefused: the saga is not FAILED, or has nothing that gave up.
            SagaNotFoundError: there is no saga with this id.
            ConcurrencyError: the saga kept changing while the action was tried.
            RuntimeError: the operator opens its log itself and was not entered.
        """
        return await self._act(saga_id, "retry", reason, by, _machine.retry)

    async def abort(self, saga_id: str, *, reason: str, by: str | None = None) -> SagaRecord:
        """Turn a RUNNING saga back: it compensates every step that finished (or may have).

        The saga becomes COMPENSATING with a failure that says who aborted it and why. The
        orchestrator driving it stops (a step it is awaiting in this process is cancelled;
        in another process, its next write is refused), and an orchestrator then claims the
        saga and compensates it. A step in doubt (started, no outcome) is compensated too,
        so compensations must tolerate "nothing to undo", as always.

        Abort only before the pivot: the pivot's effect cannot be undone, so compensating the
        steps before it would leave half a transaction.

        Args:
            saga_id: The saga.
            reason: Why, in words; kept in the saga's history and failure.
            by: Who; default the OS user running this (:func:`default_operator`).

        Returns:
            The saga's record after the abort was written.

        Raises:
            OperatorActionRefused: the saga is not RUNNING.
            SagaNotFoundError: there is no saga with this id.
            ConcurrencyError: the saga kept changing while the action was tried.
            RuntimeError: the operator opens its log itself and was not entered.
        """
        return await self._act(saga_id, "abort", reason, by, _machine.abort)

    async def resolve(self, saga_id: str, *, reason: str, by: str | None = None) -> SagaRecord:
        """Mark a FAILED saga RESOLVED: a person settled it by hand, nothing more is to run.

        The saga keeps the failure it had, and its history records who resolved it and why.
        RESOLVED is terminal: no orchestrator touches the saga again.

        Args:
            saga_id: The saga.
            reason: Why, in words (what was done by hand); kept in the saga's history.
            by: Who; default the OS user running this (:func:`default_operator`).

        Returns:
            The saga's record after it was marked resolved.

        Raises:
            OperatorActionRefused: the saga is not FAILED.
            SagaNotFoundError: there is no saga with this id.
            ConcurrencyError: the saga kept changing while the action was tried.
            RuntimeError: the operator opens its log itself and was not entered.
        """
        return await self._act(saga_id, "resolve", reason, by, _machine.resolve)

    async def _act(
        self,
        saga_id: str,
        action: str,
        reason: str,
        by: str | None,
        plan: Callable[[SagaRecord, LogEntry], SagaUpdate],
    ) -> SagaRecord:
        reason = " ".join(reason.split())
        if not reason:
            raise ValueError(f"{action}: give a reason (it is kept in the saga's history)")
        who = by if by else default_operator()
        log = self._ready()
        kind, verb = _ACTIONS[action]
        failure = Failure(
            step=None,
            type=f"Operator{verb.capitalize()}",
            message=f"{verb} by {who}: {reason}",
            details={"by": who, "reason": reason},
        )

        async def attempt() -> None:
            record = await log.get(saga_id)
            if record is None:
                raise SagaNotFoundError(saga_id)
            entry = LogEntry(kind, at=self._clock(), failure=failure, owner=who)
            await log.intervene(saga_id, plan(record, entry), revision=record.revision)

        await until_written(attempt, saga_id=saga_id, doing=f"trying to {action} it")
        written = await log.get(saga_id)
        if written is None:  # pragma: no cover - a saga is never deleted
            raise SagaNotFoundError(saga_id)
        return written


_ACTIONS = {
    "retry": (EntryKind.OPERATOR_RETRIED, "retried"),
    "abort": (EntryKind.OPERATOR_ABORTED, "aborted"),
    "resolve": (EntryKind.OPERATOR_RESOLVED, "resolved"),
}
