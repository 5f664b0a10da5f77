"""A choreographed flow drawn as mermaid, from its declaration alone."""

from __future__ import annotations

from pydantic import BaseModel

from pysaga import Choreography, StepEvents


class Asked(BaseModel):
    pass


class Held(BaseModel):
    pass


class Full(BaseModel):
    pass


class Freed(BaseModel):
    pass


class Paid(BaseModel):
    pass


class Refused(BaseModel):
    pass


class Shipped(BaseModel):
    pass


class Booked(BaseModel):
    pass


class Cancelled(BaseModel):
    pass


def test_forward_by_done_events_back_through_compensations() -> None:
    flow = Choreography(
        "trip",
        starts=Asked,
        steps={
            "hold": StepEvents(done=Held, failed=Full, compensated=Freed),
            "pay": StepEvents(done=Paid, failed=Refused),
            "ship": StepEvents(done=Shipped),
        },
        completes=Booked,
        compensates=Cancelled,
        deadline=60,
    )
    drawing = flow.to_mermaid()
    ids = {line.split("[")[0].split("(")[0].strip(): line for line in drawing.splitlines()}
    name = {
        node: label
        for node, line in ids.items()
        for label in (
            "Asked",
            "Held",
            "Full",
            "Freed",
            "Paid",
            "Refused",
            "Shipped",
            "Booked",
            "Cancelled",
        )
        if f'"{label}"' in line
    }
    edges = set()
    for line in drawing.splitlines():
        for arrow in (" -->", " -.->"):
            if arrow in line:
                a, rest = line.strip().split(arrow, 1)
                b = rest.split("|")[-1].strip()
                edges.add((name[a], arrow.strip(), name[b]))
    assert drawing.startswith("flowchart LR\n")
    assert edges == {
        ("Asked", "-->", "Held"),
        ("Asked", "-->", "Full"),
        ("Held", "-->", "Paid"),
        ("Held", "-->", "Refused"),
        ("Paid", "-->", "Shipped"),
        ("Shipped", "-->", "Booked"),
        ("Full", "-.->", "Cancelled"),  # nothing done before it: straight to the end
        ("Refused", "-.->", "Freed"),  # the hold is undone first
        ("Freed", "-.->", "Cancelled"),
    }
    assert "|hold failed|" in drawing
