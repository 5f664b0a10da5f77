"""Saga records and timelines as text and as JSON: what ``pysaga list``/``show``/``stats``
print, and what the test kit shows in its assertion messages.

Text tables fit a width when given one (long fields are cut with ``…``), and statuses are
coloured when asked (the command line asks on a terminal only, and never under ``NO_COLOR``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .models import SagaRecord, SagaStatus, SagaVersion, StepStatus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .inspection import Timeline

__all__ = (
    "ELLIPSIS",
    "PLAIN",
    "RECORD_COLUMNS",
    "Style",
    "counts_text",
    "record_json",
    "records_text",
    "table",
    "timeline_json",
    "timeline_text",
    "version_json",
    "versions_text",
    "when",
)

ELLIPSIS = "…"
"""What ends a field cut to fit."""

_GAP = "  "
"""Between two table columns."""

_MIN_CUT = 8
"""The narrowest a cut column becomes (its header may be wider)."""

_RESET = "\x1b[0m"
_COLOURS: Mapping[str, str] = {
    SagaStatus.RUNNING: "\x1b[36m",  # cyan: under way
    SagaStatus.COMPENSATING: "\x1b[33m",  # yellow: turning back
    SagaStatus.COMPLETED: "\x1b[32m",  # green
    SagaStatus.COMPENSATED: "\x1b[35m",  # magenta: ended, undone
    SagaStatus.FAILED: "\x1b[1;31m",  # bold red: an operator must look
    SagaStatus.RESOLVED: "\x1b[2m",  # dim: settled by hand
    # a step's statuses (failed, compensating and compensated are spelled as a saga's)
    StepStatus.STARTED: "\x1b[36m",
    StepStatus.SUCCEEDED: "\x1b[32m",
    StepStatus.COMPENSATION_FAILED: "\x1b[1;31m",
}


@dataclass(frozen=True, slots=True)
class Style:
    """How text output is laid out.

    Attributes:
        width: The most characters a table line takes (``None``: no limit). Columns that
            allow it are cut to fit, longest first, down to a few characters each.
        colour: Whether statuses are coloured with ANSI escape codes.
    """

    width: int | None = None
    colour: bool = False

    def status(self, status: str) -> str:
        """*status* (a saga or step status value), coloured if this style says so."""
        code = _COLOURS.get(status) if self.colour else None
        return f"{code}{status}{_RESET}" if code else status


PLAIN = Style()
"""No width limit, no colour: what a pipe, a file or a test gets."""


def when(at: float | None) -> str:
    """*at* (seconds since the epoch) as an ISO UTC time to the second, or ``-``."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    style: Style = PLAIN,
    cut: Sequence[int] = (),
    drop: Sequence[int] = (),
    status_column: int | None = None,
) -> str:
    """Rows under a header, in left-aligned columns two spaces apart.

    To fit *style.width*, the columns in *cut* are cut (each to a few characters at least,
    the first given first); if that is not enough, the columns in *drop* are left out, in
    that order, until the rest fits. A table that cannot fit even so is printed wider.

    Args:
        header: The column titles.
        rows: The cells, as text.
        style: The width to fit and whether to colour statuses.
        cut: The columns that may be cut to fit, in the order to cut them.
        drop: The columns that may be left out to fit, in the order to leave them out.
        status_column: The column of status values, coloured when the style says so.

    Returns:
        The lines, without trailing spaces and without a final newline.
    """
    natural = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    visible = list(range(len(header)))
    widths = dict(enumerate(natural))
    if style.width is not None:
        droppable = list(drop)
        while True:
            widths = {i: natural[i] for i in visible}
            over = sum(widths.values()) + len(_GAP) * (len(visible) - 1) - style.width
            for column in cut:
                if over <= 0:
                    break
                if column in widths:
                    floor = max(_MIN_CUT, len(header[column]))
                    give = min(over, max(widths[column] - floor, 0))
                    widths[column] -= give
                    over -= give
            if over <= 0 or not droppable:
                break
            visible.remove(droppable.pop(0))

    def line(row: Sequence[str]) -> str:
        cells = []
        for i in visible:
            text = _cut(row[i], widths[i])
            if i == status_column and row is not header:
                cells.append(style.status(text) + " " * (widths[i] - len(text)))
            else:
                cells.append(text.ljust(widths[i]))
        return _GAP.join(cells).rstrip()

    return "\n".join(line(row) for row in (header, *rows))


def _data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def record_json(record: SagaRecord) -> dict[str, Any]:
    """A saga record as a JSON-able dict: statuses as strings, times as epoch seconds.

    Args:
        record: The record.

    Returns:
        The record's fields; ``data`` is the saga's data decoded from its JSON text.
    """
    return {
        "saga_id": record.saga_id,
        "name": record.name,
        "version": record.version,
        "status": record.status.value,
        "data": _data(record.data),
        "steps": {
            name: {
                "status": s.status.value,
                "attempts": s.attempts,
                "failures": s.failures,
                "timeout_at": s.timeout_at,
                "retry_at": s.retry_at,
            }
            for name, s in record.steps.items()
        },
        "revision": record.revision,
        "owner": record.owner,
        "lease_expires_at": record.lease_expires_at,
        "deadline_at": record.deadline_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "failure": None if record.failure is None else record.failure.to_json(),
        "compensation_failure": (
            None if record.compensation_failure is None else record.compensation_failure.to_json()
        ),
        "fingerprint": record.fingerprint,
        "held": record.held,
    }


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    """A saga's timeline as a JSON-able dict.

    Args:
        timeline: The timeline.

    Returns:
        ``{"record": ..., "duration": seconds, "events": [...]}``, oldest event first.
    """
    return {
        "record": record_json(timeline.record),
        "steps": {
            name: {
                "attempts": told.attempts,
                "failures": told.failures,
                "compensation_attempts": told.compensation_attempts,
                "compensation_failures": told.compensation_failures,
            }
            for name, told in timeline.steps.items()
        },
        "duration": timeline.duration,
        "events": [
            {
                "kind": event.kind.value,
                "step": event.step,
                "attempt": event.attempt,
                "at": event.at,
                "since_previous": event.since_previous,
                "failure": event.failure,
                "owner": event.owner,
            }
            for event in timeline.events
        ],
    }


RECORD_COLUMNS = ("ID", "NAME", "VERSION", "STATUS", "CREATED", "UPDATED", "OWNER", "FAILURE")
_CUT = (7, 6, 1)  # failure, owner, name; a saga id is never cut: it is what `show` takes
_DROP = (5, 2, 6, 4)  # updated, version, owner, created


def records_text(records: Sequence[SagaRecord], style: Style = PLAIN) -> str:
    """Saga records as a table, one line per saga (``no sagas`` when there are none).

    Args:
        records: The records, in the order to show them.
        style: The width to fit and whether to colour the statuses. To fit, the failure,
            the owner and the name are cut, then the columns UPDATED, VERSION, OWNER and
            CREATED are left out, in that order; the id and the status are always shown
            whole.
    """
    if not records:
        return "no sagas"
    rows = [
        (
            r.saga_id,
            r.name,
            str(r.version),
            r.status.value + (" (held)" if r.held is not None else ""),
            when(r.created_at),
            when(r.updated_at),
            r.owner or "-",
            "-" if r.failure is None else " ".join(str(r.failure).split()),
        )
        for r in records
    ]
    return table(RECORD_COLUMNS, rows, style=style, cut=_CUT, drop=_DROP, status_column=3)


def counts_text(counts: Mapping[SagaStatus, int], style: Style = PLAIN) -> str:
    """Sagas per status as a table, with the total last."""
    rows = [(status.value, str(n)) for status, n in counts.items()]
    rows.append(("total", str(sum(counts.values()))))
    return table(("STATUS", "COUNT"), rows, style=style, status_column=0)


def timeline_text(timeline: Timeline, style: Style = PLAIN) -> str:
    """A saga's state, its steps, and one line per event of its history, oldest first."""
    r = timeline.record
    lines = [
        f"saga {r.saga_id}: {r.name} v{r.version}, {style.status(r.status.value)}",
        f"  created   {when(r.created_at)}",
        f"  updated   {when(r.updated_at)}",
        f"  deadline  {when(r.deadline_at)}",
        f"  owner     {r.owner or '-'}",
        f"  defined   fingerprint {r.fingerprint or '- (recorded before fingerprints)'}",
    ]
    if r.held is not None:
        lines.append(f"  held      {r.held}")
    if r.failure is not None:
        lines.append(f"  failure   {r.failure}")
    if r.compensation_failure is not None:
        lines.append(f"  stuck on  {r.compensation_failure}")
    lines.append(f"  data      {r.data}")
    if r.steps:
        lines.append("steps:")
        counted = timeline.steps
        rows = []
        for name, s in r.steps.items():
            told = counted.get(name)
            attempts = told.attempts if told else s.attempts
            failures = told.failures if told else s.failures
            row = [name, s.status.value, f"attempts {attempts}", f"failures {failures}"]
            if told is not None and told.compensation_attempts:
                row.append(
                    f"compensations {told.compensation_attempts}, "
                    f"failures {told.compensation_failures}"
                )
            else:
                row.append("")
            rows.append(tuple(row))
        steps = table(("",) * 5, rows, style=Style(colour=style.colour), status_column=1)
        lines.extend("  " + line.rstrip() for line in steps.splitlines()[1:])
    lines.append(f"timeline ({len(timeline.events)} events, {timeline.duration:.3f}s):")
    for event in timeline.events:
        number = f" #{event.attempt}" if event.attempt else ""
        step = f" {event.step}{number}" if event.step else ""
        failure = f"  ({event.failure})" if event.failure else ""
        gap = f"+{event.since_previous:.3f}s"
        lines.append(f"  {gap:>10}  {event.kind.value}{step}{failure}")
    return "\n".join(lines)


def version_json(found: SagaVersion) -> dict[str, Any]:
    """One definition's sagas (:meth:`Inspector.versions`) as a JSON-able dict.

    Args:
        found: The definition's entry.

    Returns:
        Name, version, fingerprint, a count for every status, the held and total counts,
        and the definition's steps (``None`` when the log has no record of it).
    """
    definition = found.definition
    return {
        "name": found.name,
        "version": found.version,
        "fingerprint": found.fingerprint,
        "counts": {status.value: found.counts.get(status, 0) for status in SagaStatus},
        "held": found.held,
        "total": found.total,
        "steps": None if definition is None else definition.outline.get("steps"),
        "registered_at": None if definition is None else definition.registered_at,
    }


def _outline_text(found: SagaVersion) -> str:
    if found.definition is None:
        return "-"
    steps = found.definition.outline.get("steps") or []
    return ", ".join(
        str(step.get("name")) + ("*" if step.get("compensated") else "") for step in steps
    )


def versions_text(found: Sequence[SagaVersion], style: Style = PLAIN) -> str:
    """Sagas per name, version and fingerprint as a table: a count per status, the held
    ones, and the definition's steps (``*`` marks a compensated one); the steps are cut to
    fit."""
    if not found:
        return "no sagas"
    header = (
        "NAME",
        "VERSION",
        "FINGERPRINT",
        *(status.value.upper() for status in SagaStatus),
        "HELD",
        "STEPS (* compensated)",
    )
    rows = [
        (
            v.name,
            str(v.version),
            v.fingerprint or "-",
            *(str(v.counts.get(status, 0)) for status in SagaStatus),
            str(v.held),
            _outline_text(v),
        )
        for v in found
    ]
    return table(header, rows, style=style, cut=(len(header) - 1,))
