"""Drawing a saga definition or a choreography as a mermaid flowchart (no I/O; used by
``Saga.to_mermaid`` and ``Choreography.to_mermaid``), and marking one saga's progress on it
(used by ``pysaga draw --saga``)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from .messaging import message_type
from .models import SagaStatus, StepStatus

if TYPE_CHECKING:
    from .choreography import Choreography
    from .definition import Saga, Step
    from .models import SagaRecord

__all__ = (
    "PROGRESS_CLASSES",
    "choreography_to_mermaid",
    "mark_progress",
    "progress_of",
    "saga_to_mermaid",
)


def _node_id(prefix: str, index: int) -> str:
    return f"{prefix}{index}"


def _shape(step: Step[Any]) -> str:
    # step.kind is a StepKind, a string enum; compared by value so that drawing needs no
    # runtime import of the declaration module (which imports this one to draw)
    label = step.name.replace('"', "'")
    if step.remote is not None:
        label += f" @ {step.remote.service}"
    if step.kind == "pivot":
        return f'{{{{"{label} (pivot)"}}}}'
    if step.kind == "retriable":
        return f'("{label} (retriable)")'
    return f'["{label}"]'


def saga_to_mermaid(saga: Saga[Any]) -> str:
    """Return *saga* as a mermaid ``flowchart LR`` text."""
    lines = ["flowchart LR", f'    start(["{saga.name} v{saga.version}"])']
    previous = ["start"]
    for n, stage in enumerate(saga.stages):
        ids = [_node_id("s", step.index) for step in stage]
        if len(stage) > 1:
            lines.append(f'    subgraph g{n}["parallel: {stage[0].group}"]')
            lines.extend(f"        {i}{_shape(step)}" for i, step in zip(ids, stage, strict=True))
            lines.append("    end")
        else:
            lines.append(f"    {ids[0]}{_shape(stage[0])}")
        lines.extend(f"    {p} --> {i}" for p in previous for i in ids)
        previous = ids
    lines.append('    completed(["completed"])')
    lines.extend(f"    {p} --> completed" for p in previous)

    compensatable = [s for s in saga.steps if s.has_compensation]
    if not compensatable:
        return "\n".join(lines) + "\n"
    lines.append('    compensated(["compensated"])')
    for step in compensatable:
        if step.remote is not None and step.remote.compensation is not None:
            comp = step.remote.compensation.__name__
        elif step.remote is not None:
            comp = f"undo {step.name}"
        else:
            comp = getattr(step.compensation, "__name__", "compensate")
        comp = comp.replace('"', "'")
        lines.append(f'    c{step.index}[/"{comp}"/]')
    # Undo runs in reverse: each compensation leads to the one of the step before it.
    ordered = list(reversed(compensatable))
    for a, b in itertools.pairwise(ordered):
        lines.append(f"    c{a.index} -.-> c{b.index}")
    lines.append(f"    c{ordered[-1].index} -.-> compensated")
    # A failing step turns back to the last compensation that can run: that of the nearest
    # step before it or, in a parallel group, of a sibling declared after it that finished.
    pivot_index = saga.pivot.index if saga.pivot is not None else len(saga.steps)
    for step in saga.steps:
        if step.index > pivot_index:
            break
        earlier = [
            c
            for c in compensatable
            if c.index < step.index or (step.group is not None and c.group == step.group)
        ]
        earlier = [c for c in earlier if c is not step]
        target = f"c{earlier[-1].index}" if earlier else "compensated"
        lines.append(f"    s{step.index} -. fails .-> {target}")
    return "\n".join(lines) + "\n"


# How one saga's progress is shown on its definition's chart: one class per state.
_CLASS_DEFS = (
    "    classDef done fill:#d3f9d8,stroke:#2b8a3e,color:#000",
    "    classDef running fill:#fff3bf,stroke:#e67700,stroke-width:3px,color:#000",
    "    classDef failed fill:#ffe3e3,stroke:#c92a2a,stroke-width:3px,color:#000",
    "    classDef compensated fill:#e9ecef,stroke:#495057,color:#000",
    "    classDef pending fill:#fff,stroke:#adb5bd,stroke-dasharray:4 3,color:#868e96",
)

PROGRESS_CLASSES = ("done", "running", "failed", "compensated", "pending")
"""The classes a saga's progress marks its chart's nodes with, in the order they are listed."""


def progress_of(saga: Saga[Any], record: SagaRecord) -> dict[str, str]:
    """Each node of *saga*'s chart that *record* (a saga of that definition) has a state
    for, and its class: ``done``, ``running``, ``failed``, ``compensated`` or ``pending``
    (still to come). Steps are ``s<i>``, compensations ``c<i>``."""
    active = not record.status.is_terminal
    marks: dict[str, str] = {}
    for step in saga.steps:
        state = record.steps.get(step.name)
        node, comp = f"s{step.index}", f"c{step.index}"
        if state is None:
            marks[node] = "pending"
            continue
        status = state.status
        if status is StepStatus.SUCCEEDED:
            marks[node] = "done"
        elif status is StepStatus.STARTED:
            # running now, or (in a saga that ended) an attempt whose outcome stayed in doubt
            marks[node] = "running" if active and record.status is SagaStatus.RUNNING else "failed"
        elif status is StepStatus.FAILED:
            marks[node] = "failed"
        else:  # the step was undone, is being undone, or its undo gave up
            marks[node] = "compensated" if status is StepStatus.COMPENSATED else "done"
            if step.has_compensation:
                marks[comp] = {
                    StepStatus.COMPENSATED: "compensated",
                    StepStatus.COMPENSATING: "running" if active else "failed",
                    StepStatus.COMPENSATION_FAILED: "failed",
                }[status]
    if record.status is SagaStatus.COMPLETED:
        marks["completed"] = "done"
    elif record.status is SagaStatus.COMPENSATED and any(s.has_compensation for s in saga.steps):
        marks["compensated"] = "compensated"
    return marks


def mark_progress(chart: str, saga: Saga[Any], record: SagaRecord) -> str:
    """Add ``classDef`` and ``class`` lines to *chart* (:func:`saga_to_mermaid`'s output for
    *saga*) that show how far the saga *record* got."""
    return mark_nodes(chart, progress_of(saga, record))


def mark_nodes(chart: str, marks: dict[str, str]) -> str:
    """Add ``classDef`` and ``class`` lines to *chart* that give each node of *marks* its
    class (one of :data:`PROGRESS_CLASSES`)."""
    lines = [chart.rstrip("\n"), *_CLASS_DEFS]
    for name in PROGRESS_CLASSES:
        nodes = [node for node, mark in marks.items() if mark == name]
        if nodes:
            lines.append(f"    class {','.join(nodes)} {name}")
    return "\n".join(lines) + "\n"


def choreography_to_mermaid(flow: Choreography) -> str:
    """Return a choreographed *flow* as a mermaid ``flowchart LR`` of its events.

    The declaration orders the steps, so the happy path runs from the starting event through
    each step's ``done`` event to the completing one; a step's ``failed`` event turns back
    through the ``compensated`` events of the steps done before it, latest first, to the
    compensating end.
    """
    return _choreography_chart(flow)[0]


def choreography_progress_of(flow: Choreography, record: SagaRecord) -> dict[str, str]:
    """Each event node of *flow*'s chart that *record* (a saga of that flow, as the
    choreography observer records it) has a state for, and its class: the starting event is
    ``done``; a step's ``done`` events are ``done`` once it succeeded (``pending`` before it
    started, ``running`` while it is under way), its ``failed`` events ``failed`` if it
    failed, its ``compensated`` events ``compensated`` once undone; the end the saga reached
    is marked too. Events are ``e<i>``, as in :func:`choreography_to_mermaid`."""
    from .models import SagaStatus, StepStatus

    ids = _choreography_chart(flow)[1]

    def mark(models: Any, state: str) -> None:
        for model in models:
            marks[ids[message_type(model)]] = state

    marks: dict[str, str] = {}
    mark([flow.starts], "done")
    for step, events in flow.steps.items():
        state = record.steps.get(step)
        if state is None:
            mark(events.done, "pending")
        elif state.status is StepStatus.SUCCEEDED:
            mark(events.done, "done")
        elif state.status is StepStatus.FAILED:
            mark(events.failed, "failed")
        elif state.status is StepStatus.COMPENSATED:
            mark(events.done, "done")
            mark(events.compensated, "compensated")
        elif state.status is StepStatus.COMPENSATION_FAILED:
            mark(events.done, "done")
            mark(events.compensated, "failed")
        else:  # started, or compensating: under way
            mark(
                events.compensated if state.status is StepStatus.COMPENSATING else events.done,
                "running",
            )
    if record.status is SagaStatus.COMPLETED:
        mark(flow.completes, "done")
    elif record.status is SagaStatus.COMPENSATED:
        mark(flow.compensates, "compensated")
    return marks


def _choreography_chart(flow: Choreography) -> tuple[str, dict[str, str]]:
    """The chart of *flow*, and the node id of each of its event types."""

    ids: dict[str, str] = {}
    lines = ["flowchart LR"]

    def node(model: Any, shape: str = "box") -> str:
        kind = message_type(model)
        if kind not in ids:
            ids[kind] = f"e{len(ids)}"
            label = kind.replace('"', "'")
            text = {"start": f'(["{label}"])', "end": f'(["{label}"])'}.get(shape, f'["{label}"]')
            lines.append(f"    {ids[kind]}{text}")
        return ids[kind]

    def edge(a: str, b: str, label: str | None = None) -> None:
        lines.append(f"    {a} -->|{label}| {b}" if label else f"    {a} --> {b}")

    frontier = [node(flow.starts, "start")]
    undo: list[str] = []  # compensated events of the steps done so far, latest last
    back_edges: list[tuple[str, str]] = []
    for step, events in flow.steps.items():
        done = [node(m) for m in events.done]
        failed = [node(m) for m in events.failed]
        for source in frontier:
            for target in done:
                edge(source, target, step)
            for target in failed:
                edge(source, target, f"{step} failed")
        back_edges.extend((f, undo[-1]) if undo else (f, "") for f in failed)
        compensated = [node(m) for m in events.compensated]
        if compensated:
            if undo:
                for c in compensated:
                    edge(c, undo[-1])
            undo.append(compensated[0])
        frontier = done or frontier
    ends_completed = [node(m, "end") for m in flow.completes]
    for source in frontier:
        for target in ends_completed:
            edge(source, target)
    ends_compensated = [node(m, "end") for m in flow.compensates]
    # a failure goes back through the compensations of the steps done before it, then ends
    first_undo = undo[0] if undo else None
    for failed_event, latest_undo in back_edges:
        targets = [latest_undo] if latest_undo else ends_compensated
        for target in targets:
            lines.append(f"    {failed_event} -.-> {target}")
    if first_undo is not None:
        for target in ends_compensated:
            lines.append(f"    {first_undo} -.-> {target}")
    return "\n".join(lines) + "\n", ids
