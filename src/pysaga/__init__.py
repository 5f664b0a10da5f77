"""pysaga: sagas for Python.

Declare a saga's steps and compensations in typed async code, and run it durably: on the
embedded default (a SQLite saga log, no server) or, later, across services.
"""

from __future__ import annotations

import contextlib as _contextlib
import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._version import __version__ as __version__
from .choreography import Choreography as Choreography
from .choreography import StepEvents as StepEvents
from .definition import RemoteCall as RemoteCall
from .definition import Saga as Saga
from .definition import Step as Step
from .definition import StepContext as StepContext
from .definition import StepKind as StepKind
from .errors import BrokerClosed as BrokerClosed
from .errors import BrokerError as BrokerError
from .errors import BrokerUnavailable as BrokerUnavailable
from .errors import BusinessError as BusinessError
from .errors import ConcurrencyError as ConcurrencyError
from .errors import DeadlineExceeded as DeadlineExceeded
from .errors import DecodeError as DecodeError
from .errors import InvalidURLError as InvalidURLError
from .errors import LeaseLost as LeaseLost
from .errors import MessagingError as MessagingError
from .errors import OperatorActionRefused as OperatorActionRefused
from .errors import PysagaError as PysagaError
from .errors import RemoteStepError as RemoteStepError
from .errors import SagaDefinitionError as SagaDefinitionError
from .errors import SagaIdTaken as SagaIdTaken
from .errors import SagaNotFoundError as SagaNotFoundError
from .errors import SagaNotRegisteredError as SagaNotRegisteredError
from .errors import SchemaVersionError as SchemaVersionError
from .errors import StepError as StepError
from .errors import StoreError as StoreError
from .errors import UnknownMessageType as UnknownMessageType
from .inspection import Inspector as Inspector
from .inspection import Timeline as Timeline
from .inspection import TimelineEvent as TimelineEvent
from .interceptors import StepCall as StepCall
from .messaging import Broker as Broker
from .messaging import DeadLetter as DeadLetter
from .messaging import Envelope as Envelope
from .models import DefinitionRecord as DefinitionRecord
from .models import EntryKind as EntryKind
from .models import Failure as Failure
from .models import LogEntry as LogEntry
from .models import SagaOutcome as SagaOutcome
from .models import SagaRecord as SagaRecord
from .models import SagaStatus as SagaStatus
from .models import SagaUpdate as SagaUpdate
from .models import SagaVersion as SagaVersion
from .models import StepState as StepState
from .models import StepStatus as StepStatus
from .models import new_saga_id as new_saga_id
from .operations import Operator as Operator
from .policies import Retry as Retry
from .protocols import Inbox as Inbox
from .protocols import InboxRecord as InboxRecord
from .protocols import InboxTransaction as InboxTransaction
from .protocols import OutboxMessage as OutboxMessage
from .protocols import SagaLog as SagaLog
from .protocols import TransactionalInbox as TransactionalInbox

if _TYPE_CHECKING:
    from .observer import ChoreographyObserver as ChoreographyObserver
    from .orchestrator import Orchestrator as Orchestrator
    from .participant import HandlerContext as HandlerContext
    from .participant import Participant as Participant

_ON_FIRST_USE = {
    "ChoreographyObserver": "observer",
    "HandlerContext": "participant",
    "Orchestrator": "orchestrator",
    "Participant": "participant",
}
"""The services that run sagas, and what they bring along (the engine, the brokers), load
when one of their names is first used: declaring a saga or a flow (importing
``pysaga.definition`` or ``pysaga.choreography``) loads no runtime."""

__all__ = (
    "Broker",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "BusinessError",
    "Choreography",
    "ChoreographyObserver",
    "ConcurrencyError",
    "DeadLetter",
    "DeadlineExceeded",
    "DecodeError",
    "DefinitionRecord",
    "EntryKind",
    "Envelope",
    "Failure",
    "HandlerContext",
    "Inbox",
    "InboxRecord",
    "InboxTransaction",
    "Inspector",
    "InvalidURLError",
    "LeaseLost",
    "LogEntry",
    "MessagingError",
    "Operator",
    "OperatorActionRefused",
    "Orchestrator",
    "OutboxMessage",
    "Participant",
    "PysagaError",
    "RemoteCall",
    "RemoteStepError",
    "Retry",
    "Saga",
    "SagaDefinitionError",
    "SagaIdTaken",
    "SagaLog",
    "SagaNotFoundError",
    "SagaNotRegisteredError",
    "SagaOutcome",
    "SagaRecord",
    "SagaStatus",
    "SagaUpdate",
    "SagaVersion",
    "SchemaVersionError",
    "Step",
    "StepCall",
    "StepContext",
    "StepError",
    "StepEvents",
    "StepKind",
    "StepState",
    "StepStatus",
    "StoreError",
    "Timeline",
    "TimelineEvent",
    "TransactionalInbox",
    "UnknownMessageType",
    "__version__",
    "new_saga_id",
)


def _shown_here(obj: _Any) -> _Any:
    """*obj*, shown in tracebacks and docs as ``pysaga.X`` rather than ``pysaga.module.X``."""
    if hasattr(obj, "__module__"):
        with _contextlib.suppress(AttributeError, TypeError):
            obj.__module__ = "pysaga"
    return obj


def __getattr__(name: str) -> _Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _shown_here(getattr(_importlib.import_module(f"{__name__}.{module}"), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in __all__:
    if not _name.startswith("__") and _name not in _ON_FIRST_USE:
        _shown_here(globals()[_name])
del _name
