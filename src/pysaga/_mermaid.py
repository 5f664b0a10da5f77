"""Drawing a saga definition as a mermaid flowchart (no I/O; used by ``Saga.to_mermaid``)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .definition import Saga, Step


def _node_id(prefix: str, index: int) -> str:
    return f"{prefix}{index}"


def _shape(step: Step[Any]) -> str:
    from .definition import StepKind

    label = step.name.replace('"', "'")
    if step.remote is not None:
        label += f" @ {step.remote.service}"
    if step.kind is StepKind.PIVOT:
        return f'{{{{"{label} (pivot)"}}}}'
    if step.kind is StepKind.RETRIABLE:
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

    compensatable = [s for s in saga.steps if s.compensation is not None]
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
