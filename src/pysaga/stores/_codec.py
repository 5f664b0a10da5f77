"""How the saga logs that keep text (SQLite, PostgreSQL) write a saga's step states and
failures: compact JSON, one encoding for every store, so a record reads back the same from each.

A step's state is ``[status, attempts, failures]``, followed by ``timeout_at`` and ``retry_at``
only when one of the step's timers or its failure is set, and then by the failure (as
:meth:`~pysaga.Failure.to_json`) only when it is set; older rows without them read back
unchanged.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..models import (
    DefinitionRecord,
    Failure,
    SagaRecord,
    SagaStatus,
    SagaVersion,
    StepState,
    StepStatus,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = (
    "ACTIVE_SQL",
    "RECORD_COLUMNS",
    "VERSION_COUNTS",
    "dump_failure",
    "dump_outline",
    "dump_steps",
    "load_failure",
    "load_steps",
    "record_from_row",
    "versions_from_rows",
)

RECORD_COLUMNS = (
    "saga_id, name, version, status, data, steps, failure, revision, owner, "
    "lease_expires_at, deadline_at, created_at, updated_at, incarnation, fingerprint, held"
)
"""The current-state columns, in the order :func:`record_from_row` reads them."""


def _state(s: StepState) -> list[Any]:
    if s.failure is not None:
        failure = s.failure.to_json()
        return [s.status.value, s.attempts, s.failures, s.timeout_at, s.retry_at, failure]
    if s.timeout_at is None and s.retry_at is None:
        return [s.status.value, s.attempts, s.failures]
    return [s.status.value, s.attempts, s.failures, s.timeout_at, s.retry_at]


def dump_steps(steps: Mapping[str, StepState]) -> str:
    """Step states by step name, as JSON text."""
    return json.dumps(
        {name: _state(s) for name, s in steps.items()}, separators=(",", ":"), default=str
    )


def load_steps(text: str | Mapping[str, Any]) -> dict[str, StepState]:
    """Read :func:`dump_steps`' output (as text, or already parsed)."""
    raw = json.loads(text) if isinstance(text, str) else text
    return {
        name: StepState(
            StepStatus(value[0]),
            value[1],
            value[2],
            value[3] if len(value) > 3 else None,
            value[4] if len(value) > 4 else None,
            Failure.from_json(value[5]) if len(value) > 5 else None,
        )
        for name, value in raw.items()
    }


def dump_failure(failure: Failure | None) -> str | None:
    """A failure as JSON text (``None`` stays ``None``)."""
    if failure is None:
        return None
    return json.dumps(failure.to_json(), separators=(",", ":"), default=str)


def load_failure(text: str | None) -> Failure | None:
    """Read :func:`dump_failure`'s output."""
    return None if text is None else Failure.from_json(json.loads(text))


def record_from_row(row: Sequence[Any]) -> SagaRecord:
    """A saga's current state from a row of :data:`RECORD_COLUMNS`."""
    (
        saga_id,
        name,
        version,
        status,
        data,
        steps,
        failure,
        revision,
        owner,
        lease_expires_at,
        deadline_at,
        created_at,
        updated_at,
        incarnation,
        fingerprint,
        held,
    ) = row
    return SagaRecord(
        saga_id=saga_id,
        name=name,
        version=version,
        status=SagaStatus(status),
        data=data,
        steps=load_steps(steps),
        revision=revision,
        owner=owner,
        lease_expires_at=lease_expires_at,
        deadline_at=deadline_at,
        created_at=created_at,
        updated_at=updated_at,
        failure=load_failure(failure),
        incarnation=incarnation,
        fingerprint=fingerprint,
        held=held,
    )


ACTIVE_SQL = "('running', 'compensating')"
"""The unfinished statuses, as an SQL list."""

VERSION_COUNTS = (
    "SELECT name, version, fingerprint, status, count(*),"
    f" sum(CASE WHEN held IS NOT NULL AND status IN {ACTIVE_SQL} THEN 1 ELSE 0 END)"
    " FROM pysaga_sagas {where} GROUP BY name, version, fingerprint, status"
)
"""Sagas per definition and status, and how many of the unfinished ones are held; ``{where}``
is a filter (or nothing)."""


def versions_from_rows(
    counted: Iterable[Sequence[Any]],
    definitions: Iterable[Sequence[Any]],
    *,
    include_empty: bool,
) -> list[SagaVersion]:
    """Build :meth:`SagaLog.versions` from the rows of :data:`VERSION_COUNTS` and of the
    definitions table (``name, version, fingerprint, outline, registered_at``)."""
    known = {
        (name, version, fingerprint): DefinitionRecord(
            name, version, fingerprint, json.loads(outline), registered_at
        )
        for name, version, fingerprint, outline, registered_at in definitions
    }
    counts: dict[tuple[str, int, str | None], dict[SagaStatus, int]] = {}
    held: dict[tuple[str, int, str | None], int] = {}
    for name, version, fingerprint, status, count, held_count in counted:
        key = (name, version, fingerprint)
        counts.setdefault(key, {})[SagaStatus(status)] = int(count)
        held[key] = held.get(key, 0) + int(held_count or 0)
    if include_empty:
        for key in known:
            counts.setdefault(key, {})
    return [
        SagaVersion(
            name,
            version,
            fingerprint,
            counts[name, version, fingerprint],
            held.get((name, version, fingerprint), 0),
            None if fingerprint is None else known.get((name, version, fingerprint)),
        )
        for name, version, fingerprint in sorted(
            counts, key=lambda k: (k[0], k[1], "" if k[2] is None else k[2])
        )
    ]


def dump_outline(outline: Mapping[str, Any]) -> str:
    """A definition's outline as JSON text."""
    return json.dumps(outline, sort_keys=True, separators=(",", ":"), default=repr)
